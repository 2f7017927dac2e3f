"""``infer`` and ``eval``: frames from a source through a detector into sinks.

Both commands are the same flow (``frame_loop.run_frames``) with different sinks: ``infer``
writes detections (and, for a dataset, a nuScenes submission and pictures), ``eval`` scores the
run with nuscenes-devkit. Options are checked before anything loads, inputs are read before the
model loads, so that a bad flag or a bad file fails in milliseconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from bevdeploy.cli._distributed import open_detector, ray_options
from bevdeploy.cli._progress import say_if_compiling
from bevdeploy.cli._app import claim_output, console, command, err_console, finish, warn
from bevdeploy.cli._options import (BackendOpt, BagOpt, CheckpointOpt, ErrorPolicyOpt,
                                    GpuConfigOpt, InferencePrecisionOpt, KeepAllOpt, LimitOpt,
                                    PackageOpt, PresetOpt,
                                    ScheduleOpt, ScoreThresholdOpt, SplitOpt, SyncSlopOpt,
                                    ThreadsOpt, TopicsOpt, VersionOpt)
from bevdeploy.cli._options import OverwriteOpt, WideOpt
from bevdeploy.cli._options import DataRootOpt, InfoOpt
from bevdeploy.cli._options import CpusPerWorkerOpt, GpusPerWorkerOpt, RayOpt, WorkersOpt
from bevdeploy.cli._options import OnMissingCameraOpt
from bevdeploy.cli._dropout import camera_dropout
from bevdeploy.data.camera_dropout import OnMissingCamera
from bevdeploy.frame_loop import OnError

if TYPE_CHECKING:
    from bevdeploy.detector import DetectorOptions
    from bevdeploy.package import DeployPackage


def _say_weights(detector: Any) -> None:
    """The reference's weights on the console: the checkpoint's load report, or a warning that
    they are random (a package carries its own, already verified)."""
    weights = getattr(detector, "weights", None)
    if weights is None:
        return
    if weights.report is None:
        warn(f"no checkpoint for preset {detector.preset.name}: the weights are randomly "
             f"initialised (seed {weights.seed}); boxes are meaningless")
        return
    report = weights.report
    console.print(report.summary() if report.ok and not report.notes else report.table(),
                  soft_wrap=True)


def _say_backend(options: DetectorOptions, package: DeployPackage | None) -> DetectorOptions:
    """``options`` with ``auto`` resolved for ``package``; a CPU backend other than the default
    is said on the console (which one, and for ``auto`` why), so a log shows what ran."""
    if package is None:
        return options
    options = options.for_package(package)
    if options.backend != "onnxruntime" or options.choice is not None:
        err_console.print(options.line(), highlight=False, soft_wrap=True)
    return options


@command()
def infer(out: Path = typer.Option(..., help="Output directory (detections.json, "
                                   "results_nusc.json, render/)."),
          package: PackageOpt = None,
          data: Optional[Path] = typer.Option(None, help="nuScenes-format dataset root (dataset "
                                              "mode)."),
          version: VersionOpt = "v1.0-mini",
          split: SplitOpt = "mini_val",
          info: InfoOpt = None,
          data_root: DataRootOpt = None,
          pcd: Optional[Path] = typer.Option(None, help="One point cloud (single-frame mode): "
                                             ".pcd, .pcd.bin (nuScenes; its ring-index column "
                                             "becomes time lag 0), .bin (KITTI) or .npy "
                                             "(bevdeploy.data.point_files)."),
          intensity_scale: Optional[float] = typer.Option(
              None, help="Multiply the --pcd intensities (255 for a 0-1 KITTI-style "
              "reflectance: the presets expect 0-255)."),
          images: Optional[list[Path]] = typer.Option(None, help="One image per camera: "
                                                      "--images F1 ... FN, matched to the "
                                                      "preset's cameras by the camera name in "
                                                      "each file name (in the given order only "
                                                      "when no file name carries one)."),
          more_images: Optional[list[Path]] = typer.Argument(None, metavar="IMAGE",
                                                             help="The images after the first "
                                                             "one of --images.",
                                                             show_default=False),
          calib: Optional[Path] = typer.Option(None, help="Calibration YAML of the rig (README "
                                               "'Rig files'; write one with `bevdeploy rig`)."),
          bag: BagOpt = None,
          topics: TopicsOpt = None,
          sync_slop: SyncSlopOpt = 0.05,
          bag_out: Optional[Path] = typer.Option(None, help="With --bag: also write the "
                                                 "detections as foxglove.SceneUpdate into this "
                                                 ".mcap, the input bag copied beside them."),
          backend: BackendOpt = None,
          preset: PresetOpt = "tiny",
          checkpoint: CheckpointOpt = None,
          limit: LimitOpt = None,
          threads: ThreadsOpt = None,
          render: bool = typer.Option(False, help="Write a BEV and a camera PNG per frame to "
                                      "OUT/render."),
          lidar_points: bool = typer.Option(True, "--lidar-points/--no-lidar-points",
                                            help="--render: draw the key sweep's LiDAR points, "
                                            "coloured by depth, in the camera pictures."),
          score_threshold: ScoreThresholdOpt = None,
          keep_all: KeepAllOpt = False,
          fp16_points: bool = typer.Option(False, help="torch backend: round points through "
                                           "float16 first, as the published numbers did."),
          seed: int = typer.Option(0, help="torch backend: seed of the initial weights when no "
                                   "checkpoint exists."),
          gpu_config: GpuConfigOpt = None,
          schedule: ScheduleOpt = "sequential",
          inference_precision: InferencePrecisionOpt = "fp32",
          on_error: ErrorPolicyOpt = OnError.stop,
          on_missing_camera: OnMissingCameraOpt = OnMissingCamera.error,
          overwrite: OverwriteOpt = False,
          ray: RayOpt = None,
          workers: WorkersOpt = 2,
          cpus_per_worker: CpusPerWorkerOpt = 1.0,
          gpus_per_worker: GpusPerWorkerOpt = 0.0) -> None:
    """Detect objects in every frame of a dataset split (--data), of an info file (--info), of
    a ROS 2 bag (--bag) or in one frame given as files (--pcd, --images, --calib); write
    detections (bevdeploy convention) and, for a dataset or info file, a nuScenes submission
    (global frame), atomically.

    Once frames run, the outputs always hold exactly the frames that finished, and
    detections.json's "run" record says whether the run was complete, partial (frames skipped),
    stopped by an error or interrupted by Ctrl-C (then exit 130), with every failure."""
    from bevdeploy import detector
    from bevdeploy.data.sources import DatasetSource, FileSource, FrameFiles
    from bevdeploy.errors import ConfigError
    from bevdeploy.frame_loop import run_frames
    from bevdeploy.package import load_package
    from bevdeploy.presets import get_preset
    from bevdeploy.sinks import DetectionsJson, Renders, StageTimings, Submission
    from bevdeploy.sinks.threshold import BoxCount, Selected, report_threshold
    from bevdeploy.viz import view_extent

    camera_files = [*(images or []), *(more_images or [])]
    if more_images and not images:
        raise ConfigError(f"unexpected argument(s) {[str(f) for f in more_images]}; camera images "
                          "follow --images", field="--images")
    single = pcd is not None or bool(camera_files) or calib is not None
    if (data is not None) + single + (bag is not None) + (info is not None) != 1:
        raise ConfigError("give one of --data (a dataset), --info (an info .pkl), --bag (a "
                          "ROS 2 bag) or --pcd, --images and --calib (one frame)",
                          field="--data")
    if data_root is not None and info is None:
        raise ConfigError("--data-root locates the files of an --info file", field="--data-root")
    if bag_out is not None and bag is None:
        raise ConfigError("--bag-out writes the detections beside an input bag: give --bag",
                          field="--bag-out")
    if single and (pcd is None or not camera_files or calib is None):
        raise ConfigError("single-frame mode needs all of --pcd, --images and --calib",
                          field="--pcd")
    cluster = ray_options(ray, workers, cpus_per_worker, gpus_per_worker)
    dropout = camera_dropout(on_missing_camera, None, dataset=data is not None, ray=ray)
    target = claim_output(out, overwrite=overwrite)  # locked and checked before any frame
    staging = target.staging
    assert staging is not None
    options = detector.check_options(package=package is not None, backend=backend,
                                     schedule=schedule, gpu_config=gpu_config,
                                     inference_precision=inference_precision)
    pkg = load_package(package) if package is not None else None
    options = _say_backend(options, pkg)
    p = pkg.preset if pkg is not None else get_preset(preset)
    if single:
        assert pcd is not None and calib is not None
        source: Any = FileSource(FrameFiles(pcd, tuple(camera_files), calib,
                                            intensity_scale=intensity_scale), p)
        for note in source.notes:
            warn(note)
    elif bag is not None:
        from bevdeploy.cli.bag import open_bag

        source = open_bag(bag, p, topics=topics, slop=sync_slop)
    elif info is not None:
        from bevdeploy.cli._info import info_source

        source = info_source(info, data_root, p, limit)
    else:
        source = DatasetSource(data, p, version=version, split=split, limit=limit,
                               dropout=dropout)
    timings = StageTimings()
    threshold = report_threshold(p, score_threshold, keep_all)
    counted = BoxCount()
    reported: list[Any] = [Renders(staging / "render", extent=view_extent(p),
                                   score_threshold=threshold, points=lidar_points)
                           ] if render else []
    reported += [DetectionsJson(staging / "detections.json",
                                {"preset": p.name, "backend": options.backend,
                                 "package": None if package is None else str(package),
                                 "score_threshold": threshold}), counted]
    if bag_out is not None:
        from bevdeploy.cli.bag import scene_sink

        reported.append(scene_sink(bag_out, source, target, overwrite=overwrite))
    sinks: list[Any] = [Selected(threshold, reported), timings]
    if source.global_poses:  # every proposal: nuScenes' mAP integrates the whole score range
        sinks.append(Submission(staging / "results_nusc.json"))
    with open_detector(pkg if pkg is not None else p, cluster, source, keep_sensors=render,
                       backend=options.backend, checkpoint=checkpoint, threads=threads,
                       gpu_config=options.gpu_config, schedule=options.schedule, seed=seed,
                       fp16_points=fp16_points,
                       inference_precision=options.inference_precision) as model:
        _say_weights(model)
        if cluster is None:
            say_if_compiling(err_console, options.backend)
        loop, written = run_frames(source, model, sinks, on_error=on_error,
                                   console=err_console,
                                   description=f"{options.backend} inference",
                                   backend=options.record())
    written = [target.final(w) for w in written]
    target.commit()  # the finished frames, whatever ended the run
    if timings.frames:
        console.print(f"{loop.done} frame(s); median ms: {timings.line()}")
    console.print(f"{counted.line(threshold)} in detections.json"
                  + (" and the pictures" if render else ""), highlight=False)
    console.print(f"{loop.summary()}; wrote " + ", ".join(str(w) for w in written),
                  highlight=False, soft_wrap=True)
    finish(loop)


@command(name="eval")
def eval_cmd(data: Optional[Path] = typer.Option(None, help="nuScenes-format dataset root: "
                                                 "the frames, or with --bag the ground truth."),
             out: Path = typer.Option(..., help="Output directory: results_nusc.json, "
                                      "metrics.json."),
             package: PackageOpt = None,
             backend: BackendOpt = None,
             preset: PresetOpt = "tiny",
             checkpoint: CheckpointOpt = None,
             version: VersionOpt = "v1.0-mini",
             split: SplitOpt = "mini_val",
             limit: LimitOpt = None,
             info: InfoOpt = None,
             data_root: DataRootOpt = None,
             bag: BagOpt = None,
             topics: TopicsOpt = None,
             sync_slop: SyncSlopOpt = 0.05,
             threads: ThreadsOpt = None,
             gpu_config: GpuConfigOpt = None,
             schedule: ScheduleOpt = "sequential",
             inference_precision: InferencePrecisionOpt = "fp32",
             on_error: ErrorPolicyOpt = OnError.stop,
             on_missing_camera: OnMissingCameraOpt = OnMissingCamera.error,
             drop_camera: Optional[list[str]] = typer.Option(
                 None, "--drop-camera", help="Run as if this camera had no data (zero "
                 "features), to measure what it is worth; repeatable."),
             overwrite: OverwriteOpt = False,
             plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the devkit's "
                                        "PR and TP-error figures and a per-class AP chart to "
                                        "OUT/plots."),
             ray: RayOpt = None,
             workers: WorkersOpt = 2,
             cpus_per_worker: CpusPerWorkerOpt = 1.0,
             gpus_per_worker: GpusPerWorkerOpt = 0.0,
             wide: WideOpt = False) -> None:
    """mAP, NDS, TP errors and per-class AP through nuscenes-devkit's DetectionEval, for the
    reference or a deployed package, on real nuScenes or the synthetic world. A metric covers
    the whole run or nothing: a stopped or interrupted run writes no metrics; with --limit the
    run is scored on those samples only. The machine-readable form of the table is
    OUT/metrics.json (no --json needed: every figure of the table is there)."""
    from bevdeploy import detector
    from bevdeploy.data.sources import DatasetSource
    from bevdeploy.frame_loop import run_frames
    from bevdeploy.package import load_package
    from bevdeploy.presets import get_preset
    from bevdeploy.eval.plots import PLOTS_DIR
    from bevdeploy.sinks import Metrics
    from bevdeploy.tables import print_report

    if (data is None) == (info is None) or (info is None) != (data_root is None) or (
            info is not None and bag is not None):
        from bevdeploy.errors import ConfigError

        raise ConfigError("give --data (a dataset, or with --bag its ground truth) or --info "
                          "with --data-root (an info file scored on that dataset)",
                          field="--data")
    cluster = ray_options(ray, workers, cpus_per_worker, gpus_per_worker)
    dropout = camera_dropout(on_missing_camera, drop_camera, dataset=bag is None and info is None,
                             ray=ray)
    target = claim_output(out, overwrite=overwrite)
    options = detector.check_options(package=package is not None, backend=backend,
                                     schedule=schedule, gpu_config=gpu_config,
                                     inference_precision=inference_precision)
    pkg = load_package(package) if package is not None else None
    options = _say_backend(options, pkg)
    p = pkg.preset if pkg is not None else get_preset(preset)
    if bag is not None:  # the bag's sweeps stamped as samples of the split, scored on --data
        from bevdeploy.cli.bag import dataset_keys, open_bag
        from bevdeploy.errors import ConfigError

        if limit is not None:
            raise ConfigError("--limit selects dataset samples; a bag runs every sample it "
                              "holds", field="--limit")
        source: Any = open_bag(bag, p, topics=topics, slop=sync_slop,
                               keys=dataset_keys(data, p, version=version, split=split))
    elif info is not None:  # its samples scored on --data-root's tables
        from bevdeploy.cli._info import scored_info_source

        source = scored_info_source(info, data_root, p, version=version, split=split,
                                    limit=limit)
    else:
        source = DatasetSource(data, p, version=version, split=split,  # before the model
                               limit=limit, dropout=dropout)
    assert target.staging is not None
    truth = data if info is None else data_root  # the tables scoring reads
    assert truth is not None
    metrics = Metrics(truth, target.staging, version=version, split=split,
                      final_dir=target.out)
    with open_detector(pkg if pkg is not None else p, cluster, source,
                       backend=options.backend, checkpoint=checkpoint, threads=threads,
                       gpu_config=options.gpu_config, schedule=options.schedule,
                       random_ok=False,
                       inference_precision=options.inference_precision) as model:
        _say_weights(model)
        metrics.plots = plots
        if cluster is None:
            say_if_compiling(err_console, options.backend)
        loop, written = run_frames(source, model, [metrics], on_error=on_error,
                                   console=err_console,
                                   description=f"{options.backend} on {split}",
                                   backend=options.record())
    written = [target.final(w) for w in written]
    if written:  # a stopped run writes no metrics: the previous output stays as it was
        target.commit()
    loop.raise_if_ended()
    assert metrics.result is not None
    print_report(console, metrics.result.table() if wide else metrics.result.narrow_table(),
                 wide=wide)
    if plots and written:
        console.print(f"plots in {Path(written[-1]).parent / PLOTS_DIR}", highlight=False)
    console.print(f"{loop.summary()}; wrote " + " and ".join(str(w) for w in written),
                  highlight=False, soft_wrap=True)
    finish(loop)
