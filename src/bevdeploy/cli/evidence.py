"""``compare`` and ``train``: evidence that the deployed model is the reference, and a model
trained on the synthetic world to make accuracy deltas meaningful."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from bevdeploy.cli._app import claim_output, command, console, err_console
from bevdeploy.cli._options import (GPU_CONFIG_HELP, DataOpt, InferencePrecisionOpt, JsonOutOpt,
                                    OverwriteOpt, SplitOpt, ThreadsOpt, VersionOpt, WideOpt)

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
          split: str = typer.Option("mini_train", help="Training split."),
          overwrite: OverwriteOpt = False) -> None:
    """Train a preset with the TransFusion losses (heatmap focal, Hungarian-matched focal
    classification and L1 boxes) on the CPU. Ctrl-C or SIGTERM keeps the run directory
    with the last finished epoch's checkpoint."""
    from bevdeploy.errors import ConfigError
    from bevdeploy.train.trainer import CHECKPOINT_NAME
    from bevdeploy.train.trainer import train as run_training

    if minutes is None and epochs is None:
        raise ConfigError("give --minutes or --epochs", field="--minutes")
    def show(record: dict) -> None:  # one line per logged step: the user sees it learn
        done = f"{record['iter']}/{record['iters']}" if record["iters"] else str(record["iter"])
        rate = record["iter"] / record["elapsed_s"] if record["elapsed_s"] else 0.0
        err_console.print(f"iter {done} epoch {record['epoch']}: loss {record['loss']:.4f} "
                          f"(heatmap {record['loss_heatmap']:.4f}, cls {record['loss_cls']:.4f},"
                          f" bbox {record['loss_bbox']:.4f}), lr {record['lr']:.2e}, "
                          f"{rate:.2f} it/s", highlight=False)

    target = claim_output(out, overwrite=overwrite)
    assert target.staging is not None
    t0 = time.perf_counter()
    try:
        ckpt = target.final(run_training(preset, data, target.staging, epochs=epochs,
                                         minutes=minutes, seed=seed, version=version,
                                         split=split, progress=show))
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM: an epoch's checkpoint is worth keeping
        if (target.staging / CHECKPOINT_NAME).is_file():
            target.commit()
        raise
    target.commit()
    console.print(f"trained in {(time.perf_counter() - t0) / 60:.1f} min; checkpoint {ckpt}")



@command(name="compare")
def compare_cmd(package: Path = typer.Option(..., help="Deploy package to check."),
                data: DataOpt = ...,
                checkpoint: Optional[Path] = typer.Option(None, help="The checkpoint the package "
                                                          "was exported from (its SHA-256 is "
                                                          "checked). Omitted: the preset's "
                                                          "checkpoint or a file of the recorded "
                                                          "name beside the package, when its "
                                                          "SHA-256 matches (else refused); a "
                                                          "package of random weights uses the "
                                                          "exporter's seeded initialisation."),
                version: VersionOpt = "v1.0-mini",
                split: SplitOpt = "mini_val",
                frames: int = typer.Option(2, min=1, help="Number of frames."),
                precision: Optional[str] = typer.Option(None, help="Force one tolerance set "
                                                        "(fp32/fp16/int8) for every stage; by "
                                                        "default each stage uses its modules' "
                                                        "precision from the manifest."),
                save: Optional[Path] = typer.Option(None, help="Write every compared tensor "
                                                    "pair (one .npz per frame) to this "
                                                    "directory (replaced whole)."),
                overwrite: OverwriteOpt = False,
                json_out: JsonOutOpt = None,
                wide: WideOpt = False,
                threads: ThreadsOpt = None,
                backend: str = typer.Option("onnxruntime", help="Deployed side: onnxruntime, "
                                            "openvino, auto (one of the two for the package on "
                                            "this CPU), torch-cuda or tensorrt."),
                inference_precision: InferencePrecisionOpt = "fp32",
                gpu_config: Optional[str] = typer.Option(None, help=GPU_CONFIG_HELP + " A "
                                                         "precision other than fp32 selects "
                                                         "its limits unless --precision is "
                                                         "given.")
                ) -> None:
    """Reference vs deployed package, stage by stage and box by box (max-abs, mean-abs,
    cosine, NaN/Inf) against per-precision tolerances; exits 1 when any stage fails."""
    from bevdeploy import detector
    from bevdeploy.data.sources import DatasetSource
    from bevdeploy.errors import ConfigError
    from bevdeploy.eval.compare import Tolerances, compare
    from bevdeploy.frame_loop import FrameLoop
    from bevdeploy.io import atomic_write
    from bevdeploy.package import load_package
    from bevdeploy.runtime.backends import RunnerOptions
    from bevdeploy.runtime.backends.gpu import GPU_BACKENDS, GpuConfig
    from bevdeploy.tables import print_report

    options = detector.check_options(package=True, backend=backend, gpu_config=gpu_config,
                                     inference_precision=inference_precision)
    gpu = options.gpu_config
    if gpu is None and backend in GPU_BACKENDS:
        gpu = GpuConfig()
    if precision is None and gpu is not None and gpu.precision != "fp32":
        if gpu.precision == "bf16":
            raise ConfigError("compare has no bf16 limits (an 8-bit mantissa); choose the "
                              "limits with --precision fp16 or int8", field="--precision")
        precision = gpu.precision
    if precision is None and inference_precision == "bf16":
        raise ConfigError("compare has no bf16 limits (an 8-bit mantissa); choose the limits "
                          "with --precision fp16 or int8", field="--precision")
    tolerances = Tolerances.for_precision(precision) if precision else None
    saved = None if save is None else claim_output(save, overwrite=overwrite, flag="--save")
    pkg = load_package(package)
    options = options.for_package(pkg)
    if options.backend != "onnxruntime" or options.choice is not None:
        err_console.print(options.line(), highlight=False, soft_wrap=True)
    source = DatasetSource(data, pkg.preset, version=version, split=split, limit=frames)
    loop = FrameLoop(len(source), label=source.label, console=err_console,
                     description=f"compare on {split}")
    report = compare(package, checkpoint, loop.results(source.__getitem__),
                     tolerances=tolerances, save=None if saved is None else saved.staging,
                     backend=options.backend, threads=threads,
                     runner_options=gpu.options(threads) if gpu else RunnerOptions(
                         threads=threads, inference_precision=options.inference_precision),
                     schedule=gpu.schedule() if gpu else "sequential")
    if saved is not None:  # pass or fail: the tensors are the evidence either way
        report.saved = [saved.final(f) for f in report.saved]
        saved.commit()
    print_report(console, report.table() if wide else report.narrow_table(), wide=wide)
    if json_out is not None:
        atomic_write(json_out, report.to_json().encode())
    if not report.passed:
        err_console.print(f"[red]FAILED[/red] stages: {', '.join(report.failed_stages)}")
        raise typer.Exit(1)
    console.print("[green]PASSED[/green]: every stage within tolerance")
