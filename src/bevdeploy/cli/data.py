"""``synth`` and ``demo``: data to run on, and the main job end to end."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from bevdeploy.cli._app import (claim_output, claim_workdir, command, console, err_console,
                                warn)
from bevdeploy.cli._progress import say_if_compiling
from bevdeploy.cli._summary import print_demo_summary
from bevdeploy.cli._options import ThreadsOpt
from bevdeploy.data.frame import Detections, Frame


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
          overwrite: bool = typer.Option(False, help="Replace an existing directory."),
          preset: Optional[str] = typer.Option(
              None, help="Render this preset's cameras (count, names, raw size; name or YAML "
              "path): nuScenes' geometry for nuScenes' cameras, else evenly around the roof "
              "facing outwards. Default: nuScenes' six cameras."),
          rig: Optional[Path] = typer.Option(
              None, help="With --preset: a rig file (`bevdeploy rig`, README 'Rig files') whose "
              "intrinsics and extrinsics the cameras get."),
          bag: Optional[Path] = typer.Option(None, help="Also write the world as a ROS 2 bag "
                                             "(.mcap); the dataset at --out is its ground "
                                             "truth (`eval --bag BAG --data OUT`).")) -> None:
    """Write a synthetic world as a nuScenes-format dataset (v1.0-mini tables and files)."""
    from bevdeploy.data.synthetic import write_world
    from bevdeploy.data.synthetic.preset_rig import synth_rig
    from bevdeploy.data.synthetic.writer import check_replaceable
    from bevdeploy.errors import ConfigError
    from bevdeploy.presets import get_preset

    if bag is not None and bag.exists() and not overwrite:  # before minutes of simulation
        from bevdeploy.errors import OutputError

        raise OutputError("already exists; pass --overwrite to replace it", path=bag,
                          field="--bag")
    if rig is not None and preset is None:
        raise ConfigError("--rig places the cameras of a preset: give --preset too",
                          field="--rig")
    cameras = synth_rig(None if preset is None else get_preset(preset), rig)
    console.print(f"cameras: {cameras.description}", highlight=False, soft_wrap=True)
    target = claim_output(out, overwrite=overwrite, replaceable=check_replaceable)
    assert target.staging is not None
    t0 = time.perf_counter()
    write_world(target.staging, scenes=scenes, samples=samples, seed=seed, density=density,
                overwrite=True, cameras=cameras.cameras)  # into the (empty) staging directory
    root = target.commit()
    console.print(f"wrote {root} in {time.perf_counter() - t0:.1f} s")
    if bag is not None:
        from bevdeploy.data.synthetic.bag import write_bag

        t0 = time.perf_counter()
        write_bag(root, bag, overwrite=overwrite)
        console.print(f"wrote {bag} in {time.perf_counter() - t0:.1f} s")
    _print_summary(root)



class _FrameLines:
    """A sink printing one line per finished frame: points, boxes and milliseconds (it sits
    behind the same ``Selected`` as the pictures, so both count the same boxes)."""

    def __init__(self, threshold: float | None) -> None:
        self.which = "" if threshold is None else f" (score ≥ {threshold:.2f})"

    def write(self, frame: Frame, detections: Detections, timings: Mapping[str, float]) -> None:
        console.print(f"frame {frame.token}: {frame.points.shape[0]:,} points, {len(detections)} "
                      f"boxes{self.which}, {timings['total']:.0f} ms", highlight=False)

    def close(self, run: Mapping[str, object]) -> list[Path]:
        return []


@command()
def demo(out: Path = typer.Option(Path("out/demo"), help="Working directory of the demo."),
         data: Optional[Path] = typer.Option(None, help="An existing nuScenes-format dataset; "
                                             "a small synthetic world is generated if omitted."),
         preset: str = typer.Option("tiny", help="Preset to export and run."),
         frames: int = typer.Option(3, min=1, help="Frames of mini_val to run and render."),
         threads: ThreadsOpt = None) -> None:
    """The main job end to end on the embedded default: a synthetic world, the preset exported
    as a deploy package, the torch-free runtime on a few frames, pictures and stage timings."""
    from bevdeploy import detector
    from bevdeploy.data.sources import DatasetSource
    from bevdeploy.data.synthetic import write_world
    from bevdeploy.errors import ConfigError, PackageError
    from bevdeploy.frame_loop import run_frames
    from bevdeploy.package import load_package
    from bevdeploy.presets import get_preset
    from bevdeploy.shipped import install_shipped, shipped_package
    from bevdeploy.sinks import Metrics, Renders, StageTimings
    from bevdeploy.sinks.threshold import BoxCount, Selected
    from bevdeploy.viz import view_extent

    p = get_preset(preset)
    claim_workdir(out)  # one demo per working directory: world and package are reused
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
    shipped = None if reusable else shipped_package(p)
    if reusable:
        console.print(f"reusing the deploy package {package}")
    elif shipped is not None:
        install_shipped(shipped, package)
        console.print(f"copied the shipped {p.name} package to {package} (no PyTorch needed)")
    else:
        try:
            from bevdeploy.export.writer import export_package
        except ModuleNotFoundError as exc:  # the runtime-only install: no torch, no spconv
            raise ConfigError(f"preset {p.name} ships no deploy package and exporting one "
                              f"needs {exc.name}: pip install 'bevdeploy[export]'",
                              field="--preset") from None
        t0 = time.perf_counter()
        export_package(p, p.checkpoint_path, package)
        console.print(f"exported {p.name} to {package} ({time.perf_counter() - t0:.1f} s)")
    random_weights = p.checkpoint is None
    if random_weights:
        warn(f"preset {p.name} has no checkpoint: the weights are seeded random, so the boxes "
             "are meaningless; the pictures show the 20 best-scoring ones")

    source = DatasetSource(data, p, version="v1.0-mini", split="mini_val", limit=frames)
    threshold = 0.0 if random_weights else p.model.head.report_threshold
    # render/ and eval/ are this run's alone (no stale picture of an earlier run), each
    # replaced whole once the frames finished; the working directory's lock covers them
    render_dir = claim_output(out / "render", overwrite=True, locked=False)
    eval_dir = claim_output(out / "eval", overwrite=True, locked=False)
    assert render_dir.staging is not None and eval_dir.staging is not None
    renders = Renders(render_dir.staging, extent=view_extent(p), score_threshold=threshold)
    counted, timings = BoxCount(), StageTimings()
    metrics = Metrics(data, eval_dir.staging, version="v1.0-mini", split="mini_val",
                      final_dir=eval_dir.out)
    shown = Selected(threshold, [renders, counted, _FrameLines(threshold)],
                     max_boxes=20 if random_weights else None)
    say_if_compiling(err_console, None)
    with detector.open(package, threads=threads) as deployed:
        loop, _ = run_frames(source, deployed, [shown, metrics, timings],
                             console=err_console, description="demo frames")
    loop.raise_if_ended()
    pictures = [render_dir.final(f) for f in renders.pictures]
    render_dir.commit()
    eval_dir.commit()
    print_demo_summary(console, frames=loop.done, boxes=counted.line(threshold),
                       metrics=metrics.result, timings=timings, pictures=pictures)
