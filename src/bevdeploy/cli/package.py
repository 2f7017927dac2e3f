"""``export``, ``optimize``, ``build``, ``inspect``: making and reading deploy packages."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from bevdeploy.cli._app import claim_output, command, console, err_console, warn
from bevdeploy.cli._options import (
    CpusPerWorkerOpt, JsonOutOpt, OverwriteOpt, RayOpt, ThreadsOpt, WideOpt, WorkersOpt,
)

@command()
def export(out: Path = typer.Option(..., help="Package directory to write (atomically)."),
           preset: str = typer.Option("tiny", help="Preset name or YAML path."),
           checkpoint: Optional[Path] = typer.Option(None, help="Weights; the preset's default "
                                                     "checkpoint, else a seeded random init."),
           opset: int = typer.Option(17, help="ONNX opset of the dense graphs."),
           box_convention: Optional[str] = typer.Option(
               None, help="The box convention the head was trained in: mit (mit-han-lab, "
               "CUDA-BEVFusion) or mmdet3d-1.x (mmdetection3d >= 1.0 projects/BEVFusion). "
               "Default: detected from the checkpoint's key names; override it for weights "
               "converted between the two."),
           overwrite: OverwriteOpt = False) -> None:
    """Export the five ONNX modules and the manifest as a self-contained deploy package; the
    checkpoint's load report and the box convention go into the manifest (shown below)."""
    from bevdeploy.export.inspect import print_package
    from bevdeploy.export.writer import export_package
    from bevdeploy.package import check_replaceable
    from bevdeploy.presets import get_preset

    from bevdeploy.errors import ConfigError
    from bevdeploy.vocabulary import BOX_CONVENTIONS

    if box_convention is not None and box_convention not in BOX_CONVENTIONS:
        raise ConfigError(f"{box_convention!r} is none of {list(BOX_CONVENTIONS)}",
                          field="--box-convention")
    p = get_preset(preset)
    target = claim_output(out, overwrite=overwrite, replaceable=check_replaceable)
    assert target.staging is not None
    weights = checkpoint or p.checkpoint_path
    if weights is None:
        warn(f"no checkpoint for preset {p.name}: exporting seeded random weights (fine for "
             "shapes and speed, not for boxes)")
    t0 = time.perf_counter()
    export_package(p, weights, target.staging, opset=opset, box_convention=box_convention)
    root = target.commit()
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
             int8: bool = typer.Option(False, "--int8", help="INT8 QDQ camera.backbone, fuser "
                                       "and head.bbox's convolutions (post-training, needs "
                                       "--calib)."),
             int8_head: bool = typer.Option(True, help="With --int8, quantize head.bbox's "
                                            "convolutions (its decoder stays float); "
                                            "--no-int8-head keeps the whole head float (FP16 "
                                            "with --fp16, as NVIDIA builds it for TensorRT)."),
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
             use_recipe_excludes: bool = typer.Option(
                 True, "--recipe-excludes/--no-recipe-excludes", help="Also keep the recipe's "
                 "float layers (fuser deblocks.0, the head's last heatmap conv and velocity "
                 "head)."),
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
                                                                    "all)."),
             threads: ThreadsOpt = None,
             ray: RayOpt = None,
             workers: WorkersOpt = 2,
             cpus_per_worker: CpusPerWorkerOpt = 1.0,
             wide: WideOpt = False,
             overwrite: OverwriteOpt = False) -> None:
    """Simplify, convert to FP16 and/or quantize to INT8 (QDQ) the dense modules of a package;
    the optimized modules are checked for NaN/Inf on the calibration frames. --sensitivity ranks
    the INT8 layer groups (each quantized alone) by output cosine; with --sensitivity-map each
    group's mAP on held-out frames, and its drop from the FP32 mAP, too (worst first); with
    --ray those probes are scored by the cluster's workers, the same numbers."""
    import dataclasses

    from bevdeploy.cli._distributed import ray_options
    from bevdeploy.cli._progress import frame_progress
    from bevdeploy.errors import ConfigError
    from bevdeploy.optimize import (
        CalibrationSource, Int8Options, OptimizeOptions, optimize_package,
    )
    from bevdeploy.optimize.int8 import INT8_MODULES, recipe_excludes
    from bevdeploy.optimize.sensitivity import EvalSource
    from bevdeploy.optimize.writer import check_not_source
    from bevdeploy.package import check_replaceable
    from bevdeploy.tables import print_report

    if sensitivity_granularity not in ("block", "layer"):
        raise ConfigError(f"expected block or layer, got {sensitivity_granularity!r}",
                          field="--sensitivity-granularity")
    modules = tuple(m for m in INT8_MODULES if int8_head or m != "head.bbox")
    patterns = (*(recipe_excludes(modules) if use_recipe_excludes else ()), *(exclude or ()))
    options = OptimizeOptions(
        simplify=simplify, fp16=fp16,
        int8=Int8Options(calibrator=calibrator, excludes=patterns, reduce_range=reduce_range,
                         modules=modules) if int8 else None,
        calib=None if calib is None else CalibrationSource(calib, calib_frames, version,
                                                           calib_split),
        sensitivity=sensitivity_granularity if sensitivity else None,  # type: ignore[arg-type]
        sensitivity_map=EvalSource(sensitivity_data, sensitivity_frames, version,
                                   sensitivity_split) if sensitivity_map else None,
        sensitivity_modules=tuple(sensitivity_module) if sensitivity_module else None,
        threads=threads, ray=ray_options(ray, workers, cpus_per_worker, 0.0))
    check_not_source(package, out)
    target = claim_output(out, overwrite=overwrite, replaceable=check_replaceable)
    assert target.staging is not None
    t0 = time.perf_counter()
    with frame_progress(err_console, "INT8 calibration") as progress:
        result = optimize_package(package, target.staging, options, progress=progress)
    root = target.commit()
    result = dataclasses.replace(result, root=root)  # its title names the package, not staging
    print_report(console, result.table() if wide else result.narrow_table(), wide=wide)
    if result.sensitivity is not None:
        print_report(console, result.sensitivity.table(sensitivity_top) if wide else
                     result.sensitivity.narrow_table(sensitivity_top), wide=wide)
        cluster = (result.sensitivity.evaluation or {}).get("ray")
        if cluster is not None:
            console.print(f"{cluster['probes']} probes scored by {cluster['workers']} Ray "
                          f"worker(s) at {cluster['address']}: "
                          f"{cluster['model_bytes_per_probe']:,} model bytes per probe through "
                          f"the object store, {len(cluster['retries'])} retries")
    console.print(f"wrote {root} in {time.perf_counter() - t0:.1f} s")


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
          device: str = typer.Option("cuda", help="CUDA device to build for."),
          overwrite: OverwriteOpt = False) -> None:
    """Build TensorRT engines of the four dense modules into the package and record TensorRT
    version, GPU, compute capability, flags and hashes in its manifest (SCN: sparse executor)."""
    from bevdeploy.engines import build_engines
    from bevdeploy.export.inspect import print_package
    from bevdeploy.package import check_replaceable

    target = None  # in place: each engine file and then the manifest replaced atomically
    if out is not None and out.resolve() != package.resolve():
        target = claim_output(out, overwrite=overwrite, replaceable=check_replaceable)
    t0 = time.perf_counter()
    root = build_engines(package, precision=precision, workspace_gb=workspace,
                         timing_cache=timing_cache, out=None if target is None else target.staging,
                         device=device, log=console.print)
    if target is not None:
        root = target.commit()
    console.print(f"built {precision} engines into {root} in {time.perf_counter() - t0:.1f} s")
    print_package(root, console=console)


@command(name="inspect")
def inspect_package(package: Path = typer.Argument(..., help="Deploy package directory."),
                    wide: WideOpt = False,
                    json_out: JsonOutOpt = None) -> None:
    """Print a package's manifest as tables (every file's hash is verified first); the
    manifest itself (PACKAGE/manifest.json) is the machine-readable form, and --json writes
    it once verified."""
    from bevdeploy.export.inspect import print_package

    pkg = print_package(package, console=console, wide=wide)
    if json_out is not None:
        import json

        from bevdeploy.io import atomic_write

        manifest = pkg.manifest.to_dict()
        console.print(f"wrote {atomic_write(json_out, json.dumps(manifest, indent=1).encode())}",
                      highlight=False)
