"""``CudaSchedule``: the camera and LiDAR branches on two CUDA streams joined before the fuser.

Only a CUDA device can run it; here it must import and refuse cleanly. On a GPU its detections
are held to ONNX Runtime's on the CPU at ``bevdeploy compare``'s FP32 limits (the device BEV
pooling sums in another order than the CPU kernel), with and without the second stream.
"""

from __future__ import annotations

import pytest
import torch

from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.errors import ConfigError
from bevdeploy.eval.compare import Tolerances, box_failures, match_boxes
from bevdeploy.runtime import Pipeline
from bevdeploy.runtime.cuda_schedule import CudaSchedule


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is usable here")
def test_without_cuda_the_schedule_refuses_cleanly():
    with pytest.raises(ConfigError, match="the cuda schedule needs CUDA: ") as err:
        CudaSchedule()
    assert err.value.field == "schedule"


@pytest.mark.gpu
def test_a_host_backend_is_refused(trained_tiny_package, synthetic_world):
    loader = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val", preset="tiny")
    pipeline = Pipeline(trained_tiny_package, schedule=CudaSchedule())
    with pytest.raises(ConfigError, match="needs a GPU backend"):
        pipeline.run(loader[0])


@pytest.mark.gpu
@pytest.mark.parametrize("streams", [True, False], ids=["two_streams", "one_stream"])
def test_detections_equal_onnxruntime(trained_tiny_package, synthetic_world, streams):
    tol = Tolerances.for_precision("fp32")
    loader = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val", preset="tiny")
    reference = Pipeline(trained_tiny_package, threads=2)
    gpu = Pipeline(trained_tiny_package, backend="torch-cuda", threads=2,
                   schedule=CudaSchedule(streams=streams))
    for i in range(2):
        metrics, _ = match_boxes(reference.run(loader[i]), gpu.run(loader[i]), tol)
        assert metrics.judged_reference >= 10 and not box_failures(metrics, tol)
    assert {"camera.backbone", "bevpool", "scn", "fuser", "total"} <= set(gpu.last_timings)
