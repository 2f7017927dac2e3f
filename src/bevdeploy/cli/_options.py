"""Option definitions shared by the commands, declared once (Polygraphy's argument groups):
the same flag means the same thing, with the same help, wherever it appears.

Each is an ``Annotated`` type; a command gives the default in its signature, e.g.
``threads: Threads = None``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bevdeploy.data.camera_dropout import OnMissingCamera
from bevdeploy.frame_loop import OnError

GPU_CONFIG_HELP = ("GPU switches of torch-cuda / tensorrt, '+'-joined: fp32|fp16|bf16 "
                   "(torch-cuda), cl (channels-last, torch-cuda), graph (CUDA graphs), streams "
                   "(camera and LiDAR branches on two CUDA streams), host (normalize, depth, "
                   "voxelize, SCN and decode on the CPU instead of the GPU); e.g. "
                   "fp16+cl+graph+streams.")

SCHEDULE_HELP = ("CPU backends: sequential, or branches (camera and LiDAR branches on two "
                 "threads, joined before the fuser). The frames schedule (consecutive frames "
                 "overlapped) is for `bevdeploy bench` and Pipeline.run_stream: a per-frame "
                 "error policy needs frames run one at a time.")

# ---- the dataset
DataOpt = Annotated[Path, typer.Option(help="nuScenes-format dataset root.")]
VersionOpt = Annotated[str, typer.Option(help="nuScenes version folder.")]
SplitOpt = Annotated[str, typer.Option(help="Split: train/val/test/mini_train/mini_val/all.")]
LimitOpt = Annotated[Optional[int], typer.Option(min=1, help="Only the first N frames.")]

# ---- info files (data/info_files.py: legacy infos or mmdet3d >= 1.1 data_list)
InfoOpt = Annotated[Optional[Path], typer.Option(
    help="An info .pkl as the frames: the legacy 'infos' (mmdet3d 0.x / mit-han-lab) or "
         "mmdet3d >= 1.1 'metainfo' + 'data_list'; the format is detected. GT boxes are read "
         "in the file's own convention.")]
DataRootOpt = Annotated[Optional[Path], typer.Option(
    help="--info: the nuScenes root holding samples/ and sweeps/ (legacy paths are re-anchored "
         "there; data_list file names are looked up there, default: the info file's "
         "directory). For eval it must also hold the --version table folder (e.g. "
         "v1.0-mini/), whose --split the file's samples must belong to: scoring reads the "
         "ground truth there by sample token.")]

# ---- what runs
PackageOpt = Annotated[Optional[Path], typer.Option(
    help="Deploy package: run the torch-free runtime (ONNX Runtime on the CPU by default).")]
BACKEND_HELP = ("onnxruntime (the default with --package), openvino (CPU, the [openvino] "
                "extra), auto (onnxruntime or openvino for the package on this CPU: printed and "
                "recorded with its reason), torch-cuda or tensorrt (GPU, with --package) or "
                "torch (the PyTorch reference, the default without).")
INFERENCE_PRECISION_HELP = ("What the CPU backend computes the package's float parts in: fp32 "
                            "(the package as it is; INT8 layers stay INT8), or bf16 (openvino "
                            "or auto, on a CPU with AVX-512 BF16 or AMX; recorded in the "
                            "outputs).")
BackendOpt = Annotated[Optional[str], typer.Option(help=BACKEND_HELP)]
InferencePrecisionOpt = Annotated[str, typer.Option(help=INFERENCE_PRECISION_HELP)]
PresetOpt = Annotated[str, typer.Option(help="Preset name or YAML path (the torch backend's; a "
                                          "package carries its own).")]
CheckpointOpt = Annotated[Optional[Path], typer.Option(
    help="Weights of the torch backend; the preset's default checkpoint when omitted.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(min=1, help="CPU threads of the runtime "
                                                            "(default: all cores).")]
GpuConfigOpt = Annotated[Optional[str], typer.Option(help=GPU_CONFIG_HELP)]
ScheduleOpt = Annotated[str, typer.Option(help=SCHEDULE_HELP)]
ErrorPolicyOpt = Annotated[OnError, typer.Option(
    "--on-error", help="A frame that fails (a damaged file): stop the run, or skip it, go on "
                       "and exit 8 with the failures listed in the outputs' run record.")]
OnMissingCameraOpt = Annotated[OnMissingCamera, typer.Option(
    "--on-missing-camera", help="A camera without a readable image or without calibration: "
                                "error (the frame fails), or zero (it gets zero features; the "
                                "run record lists it under camera_dropouts).")]

# ---- which boxes a run reports (sinks/threshold.py)
ScoreThresholdOpt = Annotated[Optional[float], typer.Option(
    min=0.0, max=1.0, help="Report, write and draw boxes scoring at least this (default: the "
                           "preset's head.report_threshold; recorded in detections.json).")]
KeepAllOpt = Annotated[bool, typer.Option(
    "--keep-all", help="Report every proposal of the decode (raw, down to scores near 0).")]

# ---- a Ray cluster (cli/_distributed.py, bevdeploy.distributed; the [ray] extra)
RayOpt = Annotated[Optional[str], typer.Option(
    "--ray", help="Run the frames on a Ray cluster: local (start one on this machine), auto "
                  "(the cluster this machine belongs to) or HOST:PORT (the head from `ray start "
                  "--head`). The package and dataset paths must be readable on every node.")]
WorkersOpt = Annotated[int, typer.Option(min=1, help="--ray: worker actors, each opening the "
                                                     "detector once.")]
CpusPerWorkerOpt = Annotated[float, typer.Option(help="--ray: CPUs each worker reserves (its "
                                                      "runtime threads unless --threads).")]
GpusPerWorkerOpt = Annotated[float, typer.Option(help="--ray: GPUs each worker reserves.")]

# ---- ROS 2 bags (cli/bag.py, data/bags)
BagOpt = Annotated[Optional[Path], typer.Option(
    help="A ROS 2 bag (.mcap, or its directory): every LiDAR sweep is a frame.")]
TopicsOpt = Annotated[Optional[Path], typer.Option(
    help="Topic map YAML of the bag (topic → LiDAR / camera); detected when omitted, see "
         "`bevdeploy bag info`.")]
SyncSlopOpt = Annotated[float, typer.Option(
    help="Seconds: each camera's nearest image must be this close to the LiDAR sweep.")]

# ---- outputs
JsonOutOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the result as JSON "
                                                                "(atomically).")]
WideOpt = Annotated[bool, typer.Option(
    "--wide", help="Print the full tables unfolded (wider than a terminal; for a pager or a "
                   "file). By default they fit the terminal, long notes numbered below.")]
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Replace an existing output directory (atomically: the new one is "
                        "written beside it and swapped in; without this an existing one is "
                        "refused).")]
