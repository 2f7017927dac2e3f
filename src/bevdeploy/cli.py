"""The ``bevdeploy`` command line.

Every command turns a ``BevDeployError`` into one red line and the exit code of its class,
Ctrl-C into one line and exit 130, and any other exception (a bug) into one line and exit 70 (the
table is in ``bevdeploy.errors``); ``--debug`` shows the traceback instead. Heavy imports (torch,
the model) happen inside the commands that need them, so ``bevdeploy doctor`` and the runtime
commands work on a machine without PyTorch.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.exceptions import TyperException

from bevdeploy import __version__
from bevdeploy.errors import (EXIT_CODE_HELP, INTERNAL_EXIT, INTERRUPTED_EXIT, PARTIAL_EXIT,
                              BevDeployError)
from bevdeploy.frame_loop import FrameLoop, OnError

if TYPE_CHECKING:
    from bevdeploy.package import DeployPackage
    from bevdeploy.runtime.backends.gpu import GpuConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, epilog=EXIT_CODE_HELP,
                  help="BEVFusion from a PyTorch checkpoint to a fast, verified deployment.")
presets_app = typer.Typer(no_args_is_help=True, help="List and show model presets.")
app.add_typer(presets_app, name="presets")

console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}


def _reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print a ``BevDeployError`` as one line and exit with its class's code; Ctrl-C and any
    other exception likewise, with codes 130 and 70 (``--debug``: raise, with the traceback)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, TyperException):
            raise  # typer's own exits and usage errors
        except BevDeployError as exc:
            if _state["debug"]:
                raise
            _error_line(f"[red]error[/red] ({type(exc).__name__})", _with_notes(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            if _state["debug"]:
                raise
            _error_line("[red]interrupted[/red]", "Ctrl-C")
            raise typer.Exit(INTERRUPTED_EXIT) from None
        except Exception as exc:
            if _state["debug"]:
                raise
            _error_line(f"[red]internal error[/red] ({type(exc).__name__})",
                        f"{_with_notes(exc)} — a bug in bevdeploy: rerun with "
                        "`bevdeploy --debug ...` for the traceback to report")
            raise typer.Exit(INTERNAL_EXIT) from None
    return wrapper


def _with_notes(exc: BaseException) -> str:
    """The message and, on the same line, the notes added on the way up (e.g. which frame of a
    stream failed, ``Pipeline.run_stream``)."""
    notes = [str(n) for n in getattr(exc, "__notes__", ())]
    return str(exc) + "".join(f" ({note})" for note in notes)


def _error_line(head: str, text: str) -> None:
    """``head: text`` on stderr; ``text`` is printed verbatim (a ``[field]`` is not markup)."""
    err_console.print(f"{head}: {escape(text)}", highlight=False, soft_wrap=True)


def command(group: typer.Typer = app, name: str | None = None) -> Callable[..., Any]:
    """``group.command`` with the error policy applied."""
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        return group.command(name)(_reports_errors(fn))
    return register


def _print_version(value: bool) -> None:
    if value:
        console.print(f"bevdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
          version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    _state["debug"] = debug
    # spconv 2.3.8 indexes with a list inside dense(); the warning is its own, not the user's.
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional "
                            "indexing is deprecated", category=UserWarning)
    # ...and torch.fx warns once per process when spconv asks whether it is being traced.
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------- data


def _print_summary(root: Path) -> None:
    from bevdeploy.data.summary import summarize

    s = summarize(root)
    table = Table(title=f"nuScenes-format dataset {s.root} ({s.version})")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("scenes", f"{len(s.scenes)}: {', '.join(s.scenes)}")
    table.add_row("samples (key frames)", str(s.samples))
    table.add_row("LiDAR sweeps (key + intermediate)", f"{s.lidar_key_sweeps} + "
                  f"{s.lidar_sweeps - s.lidar_key_sweeps}")
    table.add_row("mean points per key sweep", f"{s.mean_points_per_key_sweep:,.0f}")
    table.add_row("camera images", str(s.camera_images))
    table.add_row("annotations", str(s.annotations))
    for name, count in sorted(s.per_class.items()):
        table.add_row(f"  {name}", str(count))
    console.print(table)


@command()
def synth(out: Path = typer.Option(..., "--out", help="Directory to create (written atomically)."),
          scenes: int = typer.Option(2, help="Number of scenes (≤ 10, named after the mini splits)."),
          samples: int = typer.Option(10, help="Key frames per scene (2 Hz)."),
          seed: int = typer.Option(0, help="Random seed; the same seed writes the same bytes."),
          density: float = typer.Option(1.0, help="LiDAR azimuth density (1.0 ≈ 30k points/sweep)."),
          overwrite: bool = typer.Option(False, help="Replace an existing directory.")) -> None:
    """Write a synthetic world as a nuScenes-format dataset (v1.0-mini tables and files)."""
    from bevdeploy.data.synthetic import write_world

    t0 = time.perf_counter()
    root = write_world(out, scenes=scenes, samples=samples, seed=seed, density=density,
                       overwrite=overwrite)
    console.print(f"wrote {root} in {time.perf_counter() - t0:.1f} s")
    _print_summary(root)


@command()
def demo(out: Path = typer.Option(Path("out/demo"), help="Working directory of the demo."),
         data: Optional[Path] = typer.Option(None, help="An existing nuScenes-format dataset; "
                                             "a small synthetic world is generated if omitted."),
         preset: str = typer.Option("tiny", help="Preset to export and run."),
         frames: int = typer.Option(3, min=1, help="Frames of mini_val to run and render."),
         threads: Optional[int] = typer.Option(None, min=1, help="CPU threads of the runtime "
                                               "(default: all cores).")) -> None:
    """The main job end to end on the embedded default: a synthetic world, the preset exported
    as a deploy package, the torch-free runtime on a few frames, pictures and stage timings."""
    import statistics

    from bevdeploy.data.nuscenes import NuScenesLoader
    from bevdeploy.data.synthetic import write_world
    from bevdeploy.errors import PackageError
    from bevdeploy.export.writer import export_package
    from bevdeploy.package import load_package
    from bevdeploy.presets import get_preset
    from bevdeploy.runtime import Pipeline
    from bevdeploy.viz import render_frame, view_extent

    p = get_preset(preset)
    if data is None:
        data = out / "world"
        if not (data / "v1.0-mini").exists():
            t0 = time.perf_counter()
            write_world(data, scenes=2, samples=4, seed=0, density=1.0)  # as trained
            console.print(f"generated a synthetic world in {data} "
                          f"({time.perf_counter() - t0:.1f} s)")
    _print_summary(data)

    package = out / "package"
    try:
        reusable = load_package(package).preset == p
    except PackageError:
        reusable = False
    if reusable:
        console.print(f"reusing the deploy package {package}")
    else:
        t0 = time.perf_counter()
        export_package(p, p.checkpoint_path, package)
        console.print(f"exported {p.name} to {package} ({time.perf_counter() - t0:.1f} s)")
    random_weights = p.checkpoint is None
    if random_weights:
        err_console.print(f"[yellow]warning[/yellow]: preset {p.name} has no checkpoint: the "
                          "weights are seeded random, so the boxes are meaningless; the pictures "
                          "show the 20 best-scoring ones")

    pipeline = Pipeline(package, threads=threads)
    loader = NuScenesLoader(data, version="v1.0-mini", split="mini_val", preset=p)
    timings, pictures = [], []
    for i in range(min(frames, len(loader))):
        frame = loader[i]
        dets = pipeline.run(frame)
        timings.append(pipeline.last_timings)
        pictures += render_frame(frame, dets, out / "render", extent=view_extent(p),
                                 score_threshold=0.0 if random_weights else 0.3,
                                 max_boxes=20 if random_weights else 100)
        console.print(f"frame {frame.token}: {frame.points.shape[0]:,} points, {len(dets)} boxes, "
                      f"{pipeline.last_timings['total']:.0f} ms")
    console.print("pictures:\n" + "\n".join(f"  {path}" for path in pictures))
    warm = timings[1:] or timings
    console.print(f"median ms per stage over {len(warm)} frame(s)"
                  + (" after the first (JIT compilation, geometry)" if len(timings) > 1 else "")
                  + ": " + " | ".join(f"{k} {statistics.median(t[k] for t in warm):.1f}"
                                   for k in warm[0]))


# ---------------------------------------------------------------------------------- model


@command(name="model-info")
def model_info(preset: str = typer.Option("nuscenes-resnet50", help="Preset name or YAML path."),
               seed: int = typer.Option(0, help="Seed of the probe frame the MACs are counted on.")
               ) -> None:
    """Parameters and MACs per top-level module, counted on a real forward of a probe frame
    (sparse convolutions from their kernel maps): the floor for the performance work."""
    from bevdeploy.model.macs import model_info as count, model_info_table, probe_frame
    from bevdeploy.presets import get_preset

    p = get_preset(preset)
    console.print(model_info_table(count(p, probe_frame(p, seed=seed)), title=f"{p.name} model info"))


GPU_CONFIG_HELP = ("GPU switches of torch-cuda / tensorrt, '+'-joined: fp32|fp16|bf16 "
                   "(torch-cuda), cl (channels-last, torch-cuda), graph (CUDA graphs), streams "
                   "(camera and LiDAR branches on two CUDA streams), host (normalize, depth, "
                   "voxelize, SCN and decode on the CPU instead of the GPU); e.g. "
                   "fp16+cl+graph+streams.")


SCHEDULE_HELP = ("CPU backends: sequential, or branches (camera and LiDAR branches on two "
                 "threads, joined before the fuser). The frames schedule (consecutive frames "
                 "overlapped) is for `bevdeploy bench` and Pipeline.run_stream: a per-frame "
                 "error policy needs frames run one at a time.")


def _schedule(name: str, backend: str) -> str:
    """``--schedule`` checked before anything loads: a per-frame schedule of the CPU pipeline
    (GPU backends run under the CUDA schedule, set with ``--gpu-config``)."""
    from bevdeploy.errors import ConfigError
    from bevdeploy.runtime.backends.gpu import GPU_BACKENDS

    if name not in ("sequential", "branches"):
        reason = ("overlaps consecutive frames, so one failing frame would end the stream; "
                  "measure it with `bevdeploy bench --schedule frames`" if name == "frames"
                  else "is not a schedule")
        raise ConfigError(f"{name!r} {reason}; choose sequential or branches",
                          field="--schedule")
    if name != "sequential" and (backend in GPU_BACKENDS or backend == "torch"):
        raise ConfigError(f"--schedule is the CPU pipeline's; the {backend} backend "
                          + ("runs the CUDA schedule (--gpu-config streams)"
                             if backend in GPU_BACKENDS else "is the eager reference"),
                          field="--schedule")
    return name


def _gpu_config(text: str | None, backend: str) -> GpuConfig | None:
    """``--gpu-config`` parsed and checked against ``backend`` (refused for the CPU ones), or
    None when not given; called before anything slow is loaded."""
    if text is None:
        return None
    from bevdeploy.runtime.backends.gpu import GpuConfig

    config = GpuConfig.parse(text)
    config.check_backend(backend)
    return config


def _detector(backend: str, package: Path | DeployPackage | None, preset: str,
              checkpoint: Path | None, *,
              threads: int | None, random_ok: bool, seed: int = 0, fp16_points: bool = False,
              gpu_config: GpuConfig | None = None, schedule: str = "sequential"
              ) -> tuple[Any, Callable[..., Any]]:
    """The preset and a ``frame → (Detections, stage timings in ms)`` function for a backend:
    the deploy runtime on ``package`` (onnxruntime, torch-cuda or tensorrt: any name
    ``create_runner`` knows) or the PyTorch reference (torch), shared by ``infer`` and
    ``eval``. A GPU backend runs with ``gpu_config``'s switches (default: fp32, no graphs, one
    stream) under ``CudaSchedule``; ONNX Runtime under ``schedule`` (sequential or branches). ``random_ok`` lets the reference run seeded random weights
    (with a warning) when neither ``checkpoint`` nor the preset names any."""
    from bevdeploy.errors import ConfigError

    if package is not None:
        if backend == "torch":
            raise ConfigError("--package runs the deploy runtime; drop it to use the torch "
                              "backend", field="--backend")
        from bevdeploy.runtime import Pipeline
        from bevdeploy.runtime.backends.gpu import GPU_BACKENDS, GpuConfig

        if backend in GPU_BACKENDS:
            config = gpu_config or GpuConfig()
            pipeline = Pipeline(package, backend=backend, threads=threads,
                                runner_options=config.options(threads),
                                schedule=config.schedule())
        else:
            pipeline = Pipeline(package, backend=backend, threads=threads, schedule=schedule)

        def run_package(frame: Any) -> tuple[Any, dict[str, float]]:
            return pipeline.run(frame), pipeline.last_timings
        return pipeline.preset, run_package
    if backend != "torch":
        raise ConfigError(f"backend {backend!r} runs a deploy package: give --package "
                          "(export one with `bevdeploy export`)", field="--backend")
    import torch

    from bevdeploy.model.bevfusion import BEVFusion
    from bevdeploy.model.checkpoint import load_checkpoint
    from bevdeploy.presets import get_preset

    p = get_preset(preset)
    weights = checkpoint or p.checkpoint_path
    if weights is None and not random_ok:
        raise ConfigError(f"preset {p.name} has no default checkpoint: give --checkpoint",
                          field="--checkpoint")
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = BEVFusion(p).eval()
    if weights is None:
        err_console.print(f"[yellow]warning[/yellow]: no checkpoint for preset {p.name}: the "
                          f"weights are randomly initialised (seed {seed}); boxes are meaningless")
    else:
        report = load_checkpoint(model, weights, strict=True)
        console.print(report.summary() if report.ok and not report.notes else report.table(),
                      soft_wrap=True)

    def run_model(frame: Any) -> tuple[Any, dict[str, float]]:
        t0 = time.perf_counter()
        dets = model.predict(frame, fp16_points=fp16_points)
        return dets, {"total": (time.perf_counter() - t0) * 1e3}
    return p, run_model


@command()
def infer(out: Path = typer.Option(..., help="Output directory (detections.json, "
                                   "results_nusc.json, render/)."),
          package: Optional[Path] = typer.Option(None, help="Deploy package: run the torch-free "
                                                 "runtime (ONNX Runtime on the CPU)."),
          data: Optional[Path] = typer.Option(None, help="nuScenes-format dataset root (dataset "
                                              "mode)."),
          version: str = typer.Option("v1.0-mini", help="nuScenes version folder."),
          split: str = typer.Option("mini_val", help="Split: train/val/test/mini_train/mini_val/"
                                    "all."),
          pcd: Optional[Path] = typer.Option(None, help="One point cloud (single-frame mode): "
                                             ".pcd, .pcd.bin (nuScenes), .bin (KITTI) or .npy."),
          images: Optional[list[Path]] = typer.Option(None, help="The camera images in the "
                                                      "preset's camera order: --images F1 ... FN."),
          more_images: Optional[list[Path]] = typer.Argument(None, metavar="IMAGE",
                                                             help="The images after the first "
                                                             "one of --images.",
                                                             show_default=False),
          calib: Optional[Path] = typer.Option(None, help="Calibration YAML of the rig "
                                               "(bevdeploy.data.calib_yaml)."),
          backend: Optional[str] = typer.Option(None, help="onnxruntime (the default with "
                                                "--package), torch-cuda or tensorrt (GPU, with "
                                                "--package) or torch (the PyTorch reference, the "
                                                "default without)."),
          preset: str = typer.Option("tiny", help="Preset of the torch backend (a package carries "
                                     "its own)."),
          checkpoint: Optional[Path] = typer.Option(None, help="Weights of the torch backend; the "
                                                    "preset's default checkpoint when omitted."),
          limit: Optional[int] = typer.Option(None, min=1, help="Only the first N frames."),
          threads: Optional[int] = typer.Option(None, min=1, help="CPU threads (default: all "
                                                "cores)."),
          render: bool = typer.Option(False, help="Write a BEV and a camera PNG per frame to "
                                      "OUT/render."),
          render_threshold: float = typer.Option(0.3, help="Draw boxes scoring at least this."),
          fp16_points: bool = typer.Option(False, help="torch backend: round points through "
                                           "float16 first, as the published numbers did."),
          seed: int = typer.Option(0, help="torch backend: seed of the initial weights when no "
                                   "checkpoint exists."),
          gpu_config: Optional[str] = typer.Option(None, help=GPU_CONFIG_HELP),
          schedule: str = typer.Option("sequential", help=SCHEDULE_HELP),
          on_error: OnError = typer.Option(OnError.stop, help="A frame that fails (a damaged "
                                           "file): stop the run, or skip it, go on and exit 8 "
                                           "with the failures listed in detections.json.")
          ) -> None:
    """Detect objects in every frame of a dataset split (--data) or in one frame given as files
    (--pcd, --images, --calib); write detections (bevdeploy convention) and, for a dataset, a
    nuScenes submission (global frame), atomically.

    Once frames run, the outputs always hold exactly the frames that finished, and
    detections.json's "run" record says whether the run was complete, partial (frames skipped),
    stopped by an error or interrupted by Ctrl-C (then exit 130), with every failure."""
    import json
    import statistics

    from bevdeploy.data.frame import Frame
    from bevdeploy.errors import ConfigError
    from bevdeploy.io import atomic_write
    from bevdeploy.viz import render_frame, view_extent

    camera_files = [*(images or []), *(more_images or [])]
    if more_images and not images:
        raise ConfigError(f"unexpected argument(s) {[str(f) for f in more_images]}; camera images "
                          "follow --images", field="--images")
    single = pcd is not None or bool(camera_files) or calib is not None
    if (data is None) == (not single):
        raise ConfigError("give either --data (a dataset) or --pcd, --images and --calib (one "
                          "frame)", field="--data")
    if single and (pcd is None or not camera_files or calib is None):
        raise ConfigError("single-frame mode needs all of --pcd, --images and --calib",
                          field="--pcd")
    from bevdeploy.io import check_output_dir
    from bevdeploy.package import load_package
    from bevdeploy.presets import get_preset

    check_output_dir(out)  # before hours of frames, not after
    backend = backend or ("onnxruntime" if package is not None else "torch")
    gpu = _gpu_config(gpu_config, backend)
    schedule = _schedule(schedule, backend)
    # The inputs are read before the model loads, so that a bad file fails in milliseconds.
    pkg = load_package(package) if package is not None else None
    p = pkg.preset if pkg is not None else get_preset(preset)
    if single:
        from bevdeploy.data.calib_yaml import read_calibration
        from bevdeploy.data.readers import read_images, read_points
        from bevdeploy.errors import InputError

        names = p.cameras.names
        if len(camera_files) != len(names):
            raise InputError(f"{len(camera_files)} images given but the preset has "
                             f"{len(names)} cameras {list(names)}", field="--images")
        frames = [Frame(images=read_images(camera_files, names, p.cameras.raw_size),
                        points=read_points(pcd, p.points.num_features),
                        calib=read_calibration(calib, names),
                        token=pcd.name.split(".")[0], source=str(pcd))]
        labels: Any = [str(pcd)]
    else:
        from bevdeploy.data.nuscenes import (NuScenesLoader, detections_to_nuscenes,
                                             write_submission)

        frames = NuScenesLoader(data, version=version, split=split, preset=p)
        labels = frames.sample_tokens
    n = len(frames) if limit is None else min(limit, len(frames))
    p, predict = _detector(backend, pkg, preset, checkpoint, threads=threads, seed=seed,
                           fp16_points=fp16_points, random_ok=True, gpu_config=gpu,
                           schedule=schedule)

    detections, submission, timings = {}, {}, []

    def run_frame(i: int) -> None:
        frame = frames[i]
        dets, frame_timings = predict(frame)
        if render:
            render_frame(frame, dets, out / "render", score_threshold=render_threshold,
                         extent=view_extent(p))
        timings.append(frame_timings)
        detections[frame.token] = dets.to_dict()
        if not single:
            submission[frame.token] = detections_to_nuscenes(dets, frame.calib, frame.token)

    loop = FrameLoop(n, on_error, label=labels.__getitem__, console=err_console,
                     description=f"{backend} inference")
    loop.run(run_frame)
    atomic_write(out / "detections.json", json.dumps(
        {"preset": p.name, "backend": backend,
         "package": None if package is None else str(package), "run": loop.to_dict(),
         "frames": detections}).encode())
    written = [out / "detections.json"]
    if not single:
        written.append(write_submission(out / "results_nusc.json", submission))
    if render and loop.done:
        written.append(out / "render")
    if timings:
        stages = {k: statistics.median(t[k] for t in timings) for k in timings[0]}
        console.print(f"{loop.done} frame(s); median ms: "
                      + " | ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    console.print(f"{loop.summary()}; wrote " + ", ".join(str(w) for w in written),
                  highlight=False, soft_wrap=True)
    _finish(loop)


def _finish(loop: FrameLoop) -> None:
    """End a multi-frame command with its outcome: re-raise what stopped it (the error, or
    Ctrl-C: exit 130), or exit 8 when frames were skipped."""
    loop.raise_if_ended()
    if loop.failures:
        err_console.print(f"[yellow]partial[/yellow]: {len(loop.failures)} of {loop.total} "
                          f"frame(s) skipped (--on-error skip)", highlight=False)
        raise typer.Exit(PARTIAL_EXIT)


# ---------------------------------------------------------------------------------- package


@command()
def export(out: Path = typer.Option(..., help="Package directory to write (atomically)."),
           preset: str = typer.Option("tiny", help="Preset name or YAML path."),
           checkpoint: Optional[Path] = typer.Option(None, help="Weights; the preset's default "
                                                     "checkpoint, else a seeded random init."),
           opset: int = typer.Option(17, help="ONNX opset of the dense graphs.")) -> None:
    """Export the five ONNX modules and the manifest as a self-contained deploy package."""
    from bevdeploy.export.inspect import print_package
    from bevdeploy.export.writer import export_package
    from bevdeploy.presets import get_preset

    p = get_preset(preset)
    weights = checkpoint or p.checkpoint_path
    if weights is None:
        err_console.print(f"[yellow]warning[/yellow]: no checkpoint for preset {p.name}: exporting "
                          "seeded random weights (fine for shapes and speed, not for boxes)")
    t0 = time.perf_counter()
    root = export_package(p, weights, out, opset=opset)
    console.print(f"exported {root} in {time.perf_counter() - t0:.1f} s")
    print_package(root, console=console)


@command()
def optimize(package: Path = typer.Argument(..., help="Deploy package to optimize (only read)."),
             out: Path = typer.Option(..., help="Optimized package directory (written "
                                      "atomically)."),
             simplify: bool = typer.Option(False, "--simplify", help="onnxslim: constant and "
                                           "BN folding, dead-node removal."),
             fp16: bool = typer.Option(False, "--fp16", help="FP16 dense modules (FP32 I/O; head "
                                       "LayerNorm/Softmax/TopK/Sigmoid in FP32); with --int8 "
                                       "only the modules INT8 leaves alone."),
             int8: bool = typer.Option(False, "--int8", help="INT8 QDQ camera.backbone and fuser "
                                       "(post-training, needs --calib)."),
             calib: Optional[Path] = typer.Option(None, help="nuScenes-format dataset of the "
                                                  "calibration frames."),
             calib_frames: int = typer.Option(8, min=1, help="Calibration frames (spread over "
                                              "the split)."),
             calib_split: str = typer.Option("mini_train", help="Split of the calibration "
                                             "frames."),
             version: str = typer.Option("v1.0-mini", help="nuScenes version folder."),
             calibrator: str = typer.Option("percentile", help="minmax, entropy, percentile or "
                                            "distribution (ONNX Runtime's calibrators)."),
             exclude: Optional[list[str]] = typer.Option(None, help="Keep matching layers in "
                                                         "float: MODULE:GLOB or GLOB over node "
                                                         "names (repeatable)."),
             recipe_excludes: bool = typer.Option(True, help="Also keep the reference recipe's "
                                                  "float layer (fuser deblocks.0)."),
             reduce_range: bool = typer.Option(True, help="7-bit INT8 weights: avoids the U8S8 "
                                               "saturation of x86 CPUs without VNNI."),
             sensitivity: bool = typer.Option(False, "--sensitivity", help="Rank INT8 layer "
                                              "groups by the output cosine when quantized "
                                              "alone; writes sensitivity.json."),
             sensitivity_granularity: str = typer.Option("block", help="block or layer."),
             sensitivity_top: int = typer.Option(15, min=1, help="Rows of the printed ranking."),
             sensitivity_map: bool = typer.Option(False, "--sensitivity-map", help="Also score "
                                                  "each group's mAP: the FP32 package with only "
                                                  "that group quantized, on the evaluation "
                                                  "frames (nuscenes-devkit); ranks by mAP drop. "
                                                  "Needs --sensitivity."),
             sensitivity_data: Optional[Path] = typer.Option(None, help="Dataset of the "
                                                             "evaluation frames (default: "
                                                             "--calib's)."),
             sensitivity_split: str = typer.Option("mini_val", help="Split of the evaluation "
                                                   "frames (none may be a calibration frame)."),
             sensitivity_frames: int = typer.Option(8, min=1, help="Evaluation frames (spread "
                                                    "over the split)."),
             sensitivity_module: Optional[list[str]] = typer.Option(None, help="Probe only this "
                                                                    "INT8 module's groups "
                                                                    "(repeatable; default "
                                                                    "both)."),
             threads: Optional[int] = typer.Option(None, min=1, help="CPU threads of the "
                                                   "calibration and mAP-probe pipelines.")
             ) -> None:
    """Simplify, convert to FP16 and/or quantize to INT8 (QDQ) the dense modules of a package;
    the optimized modules are checked for NaN/Inf on the calibration frames. --sensitivity ranks
    the INT8 layer groups (each quantized alone) by output cosine; with --sensitivity-map each
    group's mAP on held-out frames, and its drop from the FP32 mAP, too (worst first)."""
    from bevdeploy.errors import ConfigError
    from bevdeploy.optimize import (
        CalibrationSource, Int8Options, OptimizeOptions, optimize_package,
    )
    from bevdeploy.optimize.int8 import INT8_MODULES, RECIPE_EXCLUDES
    from bevdeploy.optimize.sensitivity import EvalSource

    if sensitivity_granularity not in ("block", "layer"):
        raise ConfigError(f"expected block or layer, got {sensitivity_granularity!r}",
                          field="--sensitivity-granularity")
    patterns = (*(RECIPE_EXCLUDES if recipe_excludes else ()), *(exclude or ()))
    options = OptimizeOptions(
        simplify=simplify, fp16=fp16,
        int8=Int8Options(calibrator=calibrator, excludes=patterns, reduce_range=reduce_range)
        if int8 else None,
        calib=None if calib is None else CalibrationSource(calib, calib_frames, version,
                                                           calib_split),
        sensitivity=sensitivity_granularity if sensitivity else None,  # type: ignore[arg-type]
        sensitivity_map=EvalSource(sensitivity_data, sensitivity_frames, version,
                                   sensitivity_split) if sensitivity_map else None,
        sensitivity_modules=tuple(sensitivity_module or INT8_MODULES),
        threads=threads)
    t0 = time.perf_counter()
    result = optimize_package(package, out, options)
    console.print(result.table())
    if result.sensitivity is not None:
        console.print(result.sensitivity.table(sensitivity_top))
    console.print(f"wrote {result.root} in {time.perf_counter() - t0:.1f} s")


@command()
def build(package: Path = typer.Argument(..., help="Deploy package whose dense modules to build."),
          precision: str = typer.Option(..., help="fp16, or int8 (needs an INT8 QDQ package "
                                        "from `bevdeploy optimize --int8`)."),
          workspace: Optional[float] = typer.Option(None, help="Builder workspace limit, GB "
                                                    "(default: TensorRT's)."),
          timing_cache: Optional[Path] = typer.Option(None, help="Timing cache file: read if "
                                                      "it exists, written back after the "
                                                      "build (faster rebuilds)."),
          out: Optional[Path] = typer.Option(None, help="Write a copy with the engines here "
                                             "(atomically) instead of adding them in place."),
          device: str = typer.Option("cuda", help="CUDA device to build for.")) -> None:
    """Build TensorRT engines of the four dense modules into the package and record TensorRT
    version, GPU, compute capability, flags and hashes in its manifest (SCN: sparse executor)."""
    from bevdeploy.build import build_engines
    from bevdeploy.export.inspect import print_package

    t0 = time.perf_counter()
    root = build_engines(package, precision=precision, workspace_gb=workspace,
                         timing_cache=timing_cache, out=out, device=device, log=console.print)
    console.print(f"built {precision} engines into {root} in {time.perf_counter() - t0:.1f} s")
    print_package(root, console=console)


@command(name="inspect")
def inspect_package(package: Path = typer.Argument(..., help="Deploy package directory.")) -> None:
    """Print a package's manifest as tables (every file's hash is verified first)."""
    from bevdeploy.export.inspect import print_package

    print_package(package, console=console)


# ---------------------------------------------------------------------------------- evidence


@command()
def train(data: Path = typer.Option(..., help="nuScenes-format dataset root (e.g. from synth)."),
          out: Path = typer.Option(..., help="Run directory: checkpoint.pth, train_log.jsonl, "
                                   "train_config.json."),
          preset: str = typer.Option("tiny", help="Preset name or YAML path."),
          minutes: Optional[float] = typer.Option(None, help="Wall-clock budget (the schedule is "
                                                  "stretched over it)."),
          epochs: Optional[int] = typer.Option(None, help="Epochs instead of a time budget."),
          seed: int = typer.Option(0, help="Seed of the initial weights, order and augmentation."),
          version: str = typer.Option("v1.0-mini", help="nuScenes version folder."),
          split: str = typer.Option("mini_train", help="Training split.")) -> None:
    """Train a preset with the TransFusion losses (heatmap focal, Hungarian-matched focal
    classification and L1 boxes) on the CPU."""
    from bevdeploy.errors import ConfigError
    from bevdeploy.train.trainer import train as run_training

    if minutes is None and epochs is None:
        raise ConfigError("give --minutes or --epochs", field="--minutes")
    t0 = time.perf_counter()
    ckpt = run_training(preset, data, out, epochs=epochs, minutes=minutes, seed=seed,
                        version=version, split=split)
    console.print(f"trained in {(time.perf_counter() - t0) / 60:.1f} min; checkpoint {ckpt}")


@command(name="eval")
def eval_cmd(data: Path = typer.Option(..., help="nuScenes-format dataset root."),
             out: Path = typer.Option(..., help="Output directory: results_nusc.json, "
                                      "metrics.json."),
             package: Optional[Path] = typer.Option(None, help="Deploy package (backend "
                                                    "onnxruntime)."),
             backend: Optional[str] = typer.Option(None, help="onnxruntime (the default with "
                                                   "--package), torch-cuda or tensorrt (GPU, "
                                                   "with --package) or torch (the reference)."),
             preset: str = typer.Option("tiny", help="Preset of the torch backend."),
             checkpoint: Optional[Path] = typer.Option(None, help="Weights of the torch backend; "
                                                       "the preset's default when omitted."),
             version: str = typer.Option("v1.0-mini", help="nuScenes version folder."),
             split: str = typer.Option("mini_val", help="Split to evaluate."),
             limit: Optional[int] = typer.Option(None, min=1, help="Only the first N frames "
                                                 "(scored on those samples only)."),
             threads: Optional[int] = typer.Option(None, min=1, help="Runtime CPU threads."),
             gpu_config: Optional[str] = typer.Option(None, help=GPU_CONFIG_HELP),
             schedule: str = typer.Option("sequential", help=SCHEDULE_HELP),
             on_error: OnError = typer.Option(OnError.stop, help="A frame that fails: stop "
                                              "(nothing written), or skip it, score the rest and "
                                              "exit 8 with the failures in metrics.json.")
             ) -> None:
    """mAP, NDS, TP errors and per-class AP through nuscenes-devkit's DetectionEval, for the
    reference or a deployed package, on real nuScenes or the synthetic world. A metric covers
    the whole run or nothing: a stopped or interrupted run writes no metrics."""
    from bevdeploy.data.nuscenes import NuScenesLoader
    from bevdeploy.eval.nuscenes_eval import evaluate
    from bevdeploy.io import check_output_dir
    from bevdeploy.package import load_package
    from bevdeploy.presets import get_preset

    check_output_dir(out)
    chosen = backend or ("onnxruntime" if package is not None else "torch")
    gpu = _gpu_config(gpu_config, chosen)
    schedule = _schedule(schedule, chosen)
    pkg = load_package(package) if package is not None else None  # the dataset opens before
    loader = NuScenesLoader(data, version=version, split=split,  # the model loads
                            preset=pkg.preset if pkg is not None else get_preset(preset))
    _, predict = _detector(chosen, pkg, preset, checkpoint, threads=threads, random_ok=False,
                           gpu_config=gpu, schedule=schedule)
    n = len(loader) if limit is None else min(limit, len(loader))
    loop = FrameLoop(n, on_error, label=loader.sample_tokens.__getitem__, console=err_console,
                     description=f"{chosen} on {split}")

    def detect(i: int) -> tuple[Any, Any]:
        frame = loader[i]
        return frame, predict(frame)[0]

    result = evaluate(loop.results(detect), data, out, version=version, split=split,
                      run=loop.to_dict)
    console.print(result.table())
    console.print(f"{loop.summary()}; wrote {out}/results_nusc.json and {out}/metrics.json",
                  highlight=False, soft_wrap=True)
    _finish(loop)


@command(name="compare")
def compare_cmd(package: Path = typer.Option(..., help="Deploy package to check."),
                data: Path = typer.Option(..., help="nuScenes-format dataset root."),
                checkpoint: Optional[Path] = typer.Option(None, help="The checkpoint the package "
                                                          "was exported from (its SHA-256 is "
                                                          "checked); omit for random weights."),
                version: str = typer.Option("v1.0-mini", help="nuScenes version folder."),
                split: str = typer.Option("mini_val", help="Split whose frames are compared."),
                frames: int = typer.Option(2, min=1, help="Number of frames."),
                precision: Optional[str] = typer.Option(None, help="Force one tolerance set "
                                                        "(fp32/fp16/int8) for every stage; by "
                                                        "default each stage uses its modules' "
                                                        "precision from the manifest."),
                save: Optional[Path] = typer.Option(None, help="Write every compared tensor "
                                                    "pair (one .npz per frame) here."),
                json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the "
                                                        "report as JSON."),
                threads: Optional[int] = typer.Option(None, min=1, help="Runtime CPU threads."),
                backend: str = typer.Option("onnxruntime", help="Deployed side: onnxruntime, "
                                            "torch-cuda or tensorrt."),
                gpu_config: Optional[str] = typer.Option(None, help=GPU_CONFIG_HELP + " A "
                                                         "precision other than fp32 selects "
                                                         "its limits unless --precision is "
                                                         "given.")
                ) -> None:
    """Reference vs deployed package, stage by stage and box by box (max-abs, mean-abs,
    cosine, NaN/Inf) against per-precision tolerances; exits 1 when any stage fails."""
    from bevdeploy.data.nuscenes import NuScenesLoader
    from bevdeploy.errors import ConfigError
    from bevdeploy.eval.compare import Tolerances, compare
    from bevdeploy.io import atomic_write
    from bevdeploy.package import load_package
    from bevdeploy.runtime.backends.gpu import GPU_BACKENDS, GpuConfig

    gpu = _gpu_config(gpu_config, backend)
    if gpu is None and backend in GPU_BACKENDS:
        gpu = GpuConfig()
    if precision is None and gpu is not None and gpu.precision != "fp32":
        if gpu.precision == "bf16":
            raise ConfigError("compare has no bf16 limits (an 8-bit mantissa); choose the "
                              "limits with --precision fp16 or int8", field="--precision")
        precision = gpu.precision
    tolerances = Tolerances.for_precision(precision) if precision else None
    pkg = load_package(package)
    loader = NuScenesLoader(data, version=version, split=split, preset=pkg.preset)
    chosen = (loader[i] for i in range(min(frames, len(loader))))
    report = compare(package, checkpoint, chosen, tolerances=tolerances, save=save,
                     backend=backend, threads=threads,
                     runner_options=gpu.options(threads) if gpu else None,
                     schedule=gpu.schedule() if gpu else "sequential")
    console.print(report.table())
    if json_out is not None:
        atomic_write(json_out, report.to_json().encode())
    if not report.passed:
        err_console.print(f"[red]FAILED[/red] stages: {', '.join(report.failed_stages)}")
        raise typer.Exit(1)
    console.print("[green]PASSED[/green]: every stage within tolerance")


# ---------------------------------------------------------------------------------- bench


@command(name="bench-kernels")
def bench_kernels(preset: str = typer.Option("nuscenes-resnet50", help="Preset whose shapes "
                                             "are timed."),
                  points: int = typer.Option(350_000, help="Points fed to voxelize/depth."),
                  voxels: int = typer.Option(120_000, help="Voxels fed to the SCN executor."),
                  scn: bool = typer.Option(True, help="cpu: also time the SCN executor "
                                           "against spconv's CPU path on the same voxels (needs "
                                           "torch); cuda always times the SCN on torch."),
                  repeats: int = typer.Option(10, min=3, help="Timed runs after warm-up."),
                  device: str = typer.Option("cpu", help="cpu: the numba kernels; cuda: the "
                                             "Triton kernels on the GPU, CUDA-event timed, "
                                             "floors from its copy bandwidth (no SCN rows)."),
                  json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the "
                                                          "rows as JSON.")) -> None:
    """Each kernel's median time after warm-up next to its floor on this machine (bytes
    over the measured copy bandwidth, or MACs over the measured float32 GEMM rate)."""
    import dataclasses
    import json

    from bevdeploy.errors import ConfigError
    from bevdeploy.io import atomic_write
    from bevdeploy.presets import get_preset
    from bevdeploy.runtime.kernels.bench import kernel_benchmarks

    p = get_preset(preset)
    if device == "cuda":
        try:
            import torch
            from bevdeploy.runtime.kernels.cuda.bench import cuda_kernel_benchmarks
        except ImportError as exc:
            raise ConfigError(f"the CUDA kernels need torch and triton (pip install "
                              f"'bevdeploy[gpu]'): {exc}", field="--device") from None
        if not torch.cuda.is_available():
            raise ConfigError("no CUDA device is usable", field="--device")
        rows = cuda_kernel_benchmarks(p, num_points=points, repeats=repeats)
    elif device == "cpu":
        rows = kernel_benchmarks(p, num_points=points, repeats=repeats)
    else:
        raise ConfigError(f"expected cpu or cuda, got {device!r}", field="--device")
    digits = 3 if device == "cuda" else 1
    table = Table(title=f"{device.upper()} kernels, {p.name} shapes (median of {repeats} after "
                        "warm-up)")
    for col in ("kernel", "work", "median ms", "p90 ms", "floor ms", "× floor", "floor basis"):
        table.add_column(col, justify="right" if "ms" in col or "×" in col else "left")
    for r in rows:
        table.add_row(r.kernel, r.work, f"{r.median_ms:.{digits}f}", f"{r.p90_ms:.{digits}f}",
                      f"{r.floor_ms:.{digits}f}", f"{r.ratio:.1f}", r.floor_basis)
    result: dict = {"kernels": [dataclasses.asdict(r) for r in rows]}
    if scn and device == "cpu":
        from bevdeploy.runtime.kernels.cpu.bench_scn import scn_benchmark

        s = scn_benchmark(p.name, voxels, repeats=repeats)
        result["scn"] = s
        table.add_row("scn (ours)", f"{s['num_voxels']:,} voxels, {s['conv_macs'] / 1e9:.1f} GMAC",
                      f"{s['ours_median_s'] * 1e3:.0f}", "", f"{s['floor_s'] * 1e3:.0f}",
                      f"{s['ours_median_s'] / s['floor_s']:.1f}",
                      f"MACs at {s['gemm_macs_per_s'] / 1e9:.0f} GMAC/s")
        table.add_row("scn (spconv, 1 thread)", "same voxels",
                      f"{s['spconv_1_thread_median_s'] * 1e3:.0f}", "", "", "",
                      f"ours is {s['speedup_median']:.2f}× faster (wall), "
                      f"{s['speedup_1_thread_cpu_median']:.2f}× per core; cosine {s['cosine']:.6f}")
    console.print(table)
    if json_out is not None:
        atomic_write(json_out, json.dumps(result, indent=1).encode())


@command(name="bench")
def bench(package: list[Path] = typer.Option(..., help="Deploy package; repeat to compare "
                                             "several (e.g. fp32 and int8) in one run."),
          backend: list[str] = typer.Option(["onnxruntime"], help="onnxruntime, torch-cuda or "
                                            "tensorrt; repeatable."),
          schedule: list[str] = typer.Option(["sequential"], help="sequential, branches or "
                                             "frames (the CPU backends'; a GPU backend runs "
                                             "under the CUDA schedule); repeatable."),
          gpu_config: Optional[list[str]] = typer.Option(None, help=GPU_CONFIG_HELP + " "
                                                         "Repeatable: each GPU backend runs with "
                                                         "each (default fp32); CPU backends "
                                                         "ignore it."),
          gpu_ladder: bool = typer.Option(False, "--gpu-ladder", help="GPU backends run the "
                                          "ladder fp32+host, fp32, fp16, fp16+cl, "
                                          "fp16+cl+graph, fp16+cl+graph+streams (tensorrt: "
                                          "fp32+host, fp32, graph, graph+streams), one switch "
                                          "changed per step, so each step shows its worth."),
          reference: bool = typer.Option(True, "--reference/--no-reference", help="Also time "
                                         "the PyTorch eager reference and print ratios to it."),
          reference_device: str = typer.Option("cpu", help="Where the eager reference runs: "
                                                "cpu, or cuda (the GPU targets' baseline; its "
                                                "sparse encoder on spconv's CUDA build, else "
                                                "on bevdeploy's torch SCN, as its column "
                                                "says)."),
          checkpoint: Optional[Path] = typer.Option(None, help="Weights of the reference "
                                                    "(default: the package's own when found, "
                                                    "else a seeded random init)."),
          precision: Optional[str] = typer.Option(None, help="Refuse packages whose dense "
                                                  "modules are not at this precision "
                                                  "(fp32/fp16/int8)."),
          threads: Optional[int] = typer.Option(None, min=1, help="Thread budget of every "
                                                "variant (default: all cores)."),
          frames: int = typer.Option(10, min=1, help="Timed frames per variant."),
          warmup: int = typer.Option(2, min=0, help="Untimed frames first (JIT, caches)."),
          data: Optional[Path] = typer.Option(None, help="nuScenes-format dataset (default: a "
                                              "small synthetic world, generated once)."),
          version: str = typer.Option("v1.0-mini", help="nuScenes version folder of --data."),
          split: str = typer.Option("mini_val", help="Split of --data."),
          json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report "
                                                  "as JSON (atomically).")) -> None:
    """Per-stage and end-to-end latency (median, p90), frames/s and peak memory of packages,
    backends and schedules side by side with the PyTorch eager reference, each variant in its
    own process; the dense modules' GFLOP/s against this machine's GEMM peak."""
    import numba

    from bevdeploy.eval.bench import (FrameSource, check_devices, default_world, plan_variants,
                                      run_bench)

    budget = threads or numba.config.NUMBA_NUM_THREADS
    variants = plan_variants(package, backends=backend, schedules=schedule, threads=budget,
                             reference=reference, checkpoint=checkpoint, precision=precision,
                             gpu_configs=gpu_config or (), gpu_ladder=gpu_ladder,
                             reference_device=reference_device)
    check_devices(variants)  # before the default world is generated
    source = default_world() if data is None else FrameSource(str(data), version, split)
    report = run_bench(variants, source, frames=frames, warmup=warmup, threads=budget,
                       progress=lambda message: err_console.print(message, markup=False,
                                                                   highlight=False))
    console.print(report.table())
    console.print(report.dense_table())
    if json_out is not None:
        console.print(f"wrote {report.write_json(json_out)}")


# ---------------------------------------------------------------------------------- presets


@command(presets_app, "list")
def presets_list() -> None:
    """Names of the registered presets."""
    from bevdeploy.presets import get_preset, list_presets

    table = Table(title="presets")
    for col in ("name", "cameras", "image", "BEV", "voxel grid", "backbone"):
        table.add_column(col)
    for name in list_presets():
        p = get_preset(name)
        bb = p.model.backbone
        table.add_row(name, str(p.cameras.num_cameras), "×".join(map(str, p.cameras.image_size)),
                      "×".join(map(str, p.bev_size)), "×".join(map(str, p.grid_size)),
                      f"{bb.type}{bb.depth if bb.type == 'resnet' else '-T'}")
    console.print(table)


@command(presets_app, "show")
def presets_show(name: str = typer.Argument(..., help="Preset name or YAML path.")) -> None:
    """Print a preset as YAML (edit it and pass the file wherever a preset is accepted)."""
    from bevdeploy.presets import get_preset

    console.print(get_preset(name).to_yaml(), markup=False, highlight=False)


# ---------------------------------------------------------------------------------- system


@command()
def doctor() -> None:
    """Versions of the stack, and whether CUDA / TensorRT are usable (with the reason if not)."""
    from bevdeploy.doctor import run_checks

    table = Table(title=f"bevdeploy {__version__}")
    table.add_column("component")
    table.add_column("status")
    table.add_column("detail")
    for c in run_checks():
        table.add_row(c.name, "[green]ok[/green]" if c.ok else "[yellow]no[/yellow]", c.detail)
    console.print(table)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
