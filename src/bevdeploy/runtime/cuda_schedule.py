"""``CudaSchedule``: a ``Pipeline`` schedule for the GPU backends (``torch-cuda``, ``tensorrt``).

CUDA-BEVFusion runs every stage one after another on one stream (spec/deploy.md §5). Here the
two branches overlap and the data stays on the device between the dense modules:

* **camera stream**: normalize and depth (CPU kernels) → host→device copy → ``camera.backbone``
  → BEV pooling on the device (``kernels.cuda``: the geometry plan is built on the device once
  per calibration, the pooled grid written into one reused buffer) → ``camera.vtransform``;
* **LiDAR**: voxelization and the SCN stay on the CPU (TensorRT has no sparse convolution; the
  SCN executor is ours) on a worker thread, whose BEV map is copied up on the **LiDAR stream**;
* the fuser waits on an event of each stream, then fuser → head on the current stream, and the
  head outputs come back to the CPU for the box decode (the one synchronisation of the frame).

Switches, so that ``bench`` can show what each is worth: ``streams`` here (False: both branches
on the calling thread and the current stream, in sequence, as CUDA-BEVFusion does), and in the
runners' ``GpuOptions``: ``precision`` (fp16), ``channels_last``, ``cuda_graph`` (each dense
module captured once and replayed). A CUDA graph of the *whole* frame is not possible while
normalize, depth, voxelize and the SCN run on the CPU between the modules; per-module graphs
capture every launch of the dense work.

The stage timings of device work measure the time to *enqueue* it (the GPU runs
asynchronously); ``total`` is the true wall time of the frame, the decode having synchronised.
On a machine without CUDA, constructing the schedule raises ``ConfigError`` ("needs CUDA").
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.data.preprocess import lidar2image
from bevdeploy.errors import ConfigError
from bevdeploy.runtime.backends.gpu import GpuOptions, cuda_unusable_reason, resolve_device
from bevdeploy.runtime.stages.geometry import calibration_key

if TYPE_CHECKING:
    import numpy as np
    import torch

    from bevdeploy.runtime.pipeline import Pipeline, StageTimer


class CudaSchedule:
    """``schedule(pipeline, frame, timer) -> Detections`` for a pipeline on a GPU backend.

    One instance serves one pipeline (it keeps that pipeline's device geometry plan and pooled
    BEV buffer); like the pipeline, it runs one frame at a time.
    """

    def __init__(self, *, streams: bool = True, device: str = "cuda") -> None:
        reason = cuda_unusable_reason()
        if reason is not None:
            raise ConfigError(f"the cuda schedule needs CUDA: {reason}", field="schedule")
        import torch

        self.device = resolve_device(GpuOptions(device=device), "cuda schedule", allow_cpu=False)
        self.streams = streams
        self._camera_stream = torch.cuda.Stream(self.device) if streams else None
        self._lidar_stream = torch.cuda.Stream(self.device) if streams else None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="lidar") if streams else None
        self._lidar_done: torch.cuda.Event | None = None  # set by the LiDAR worker
        self._plan_key: bytes | None = None
        self._plan: Any = None
        self._pooled: torch.Tensor | None = None

    def __call__(self, pipeline: "Pipeline", frame: Frame, timer: "StageTimer") -> Detections:
        import torch

        _check_runners(pipeline)
        points = pipeline.select_points(frame, timer)
        if not self.streams:
            lidar_bev = self._lidar(pipeline, points, timer)
            camera_bev = self._camera(pipeline, frame, points, timer)
        else:
            assert self._worker is not None and self._camera_stream is not None
            lidar_job = self._worker.submit(self._lidar, pipeline, points, timer)
            with torch.cuda.stream(self._camera_stream):
                camera_bev = self._camera(pipeline, frame, points, timer)
                camera_done = torch.cuda.current_stream().record_event()
            lidar_bev = lidar_job.result()
            current = torch.cuda.current_stream()
            current.wait_event(camera_done)
            assert self._lidar_done is not None
            current.wait_event(self._lidar_done)
            # Allocated on the branch streams, consumed on this one: keep the allocator from
            # reusing their memory before this stream is done with them.
            camera_bev.record_stream(current)
            lidar_bev.record_stream(current)
        return self._detect(pipeline, camera_bev, lidar_bev, timer)

    # ---- the branches ---------------------------------------------------------------------

    def _lidar(self, pipeline: "Pipeline", points: "np.ndarray", timer: "StageTimer"
               ) -> "torch.Tensor":
        """Voxelize + SCN on the CPU, the BEV map copied to the device on the LiDAR stream."""
        import torch

        bev = torch.from_numpy(pipeline.lidar_branch(points, timer)).pin_memory()
        if self._lidar_stream is None:
            return bev.to(self.device, non_blocking=True)
        with torch.cuda.stream(self._lidar_stream):
            device_bev = bev.to(self.device, non_blocking=True)
            self._lidar_done = torch.cuda.current_stream().record_event()
        return device_bev

    def _camera(self, pipeline: "Pipeline", frame: Frame, points: "np.ndarray",
                timer: "StageTimer") -> "torch.Tensor":
        import torch

        with timer(pipeline.normalize.name):
            img = torch.from_numpy(pipeline.normalize.run(frame.images)).pin_memory()
        with timer(pipeline.depth.name):
            depth = torch.from_numpy(pipeline.depth.run(points, lidar2image(frame.calib)))
            depth = depth.pin_memory()
        with timer("camera.backbone"):
            out = pipeline.runners["camera.backbone"].run_device({
                "img": img.to(self.device, non_blocking=True),
                "depth": depth.to(self.device, non_blocking=True)})
        with timer(pipeline.geometry.name):
            plan = self._device_plan(pipeline, frame)
        with timer(pipeline.bevpool.name):
            weights = out["camera_depth_weights"]
            if self._pooled is None or self._pooled.dtype != weights.dtype:
                nx, ny, nz = plan.bev_size
                channels = out["camera_feature"].shape[-1]
                self._pooled = torch.empty((1, channels * nz, nx, ny), dtype=weights.dtype,
                                           device=self.device)
            bev = _cuda_kernels().bev_pool(weights, out["camera_feature"], plan, out=self._pooled)
        with timer("camera.vtransform"):
            return pipeline.runners["camera.vtransform"].run_device({"feat_in": bev})["feat_out"]

    def _detect(self, pipeline: "Pipeline", camera_bev: "torch.Tensor",
                lidar_bev: "torch.Tensor", timer: "StageTimer") -> Detections:
        with timer("fuser"):
            middle = pipeline.runners["fuser"].run_device(
                {"camera": camera_bev, "lidar": lidar_bev})["middle"]
        with timer("head.bbox"):
            outputs = pipeline.runners["head.bbox"].run_device({"middle": middle})
            host = {name: tensor.float().cpu().numpy() for name, tensor in outputs.items()}
        with timer(pipeline.decode.name):
            return pipeline.decode.run(host)

    def _device_plan(self, pipeline: "Pipeline", frame: Frame) -> Any:
        """The geometry plan on the device, rebuilt only when the calibration changes (the same
        float32 key as the CPU ``GeometryStage``)."""
        import numpy as np

        p = pipeline.geometry.params
        camera2lidar = np.ascontiguousarray(frame.calib.camera2lidar, dtype=np.float32)
        intrinsics = np.ascontiguousarray(frame.calib.intrinsics, dtype=np.float32)
        lidar_aug = np.eye(4, dtype=np.float32)
        key = calibration_key(camera2lidar, intrinsics, p.img_aug, lidar_aug)
        if key != self._plan_key:
            self._plan = _cuda_kernels().geometry(
                camera2lidar, intrinsics, p.img_aug, lidar_aug, p.image_size, p.feature_size,
                p.dbound, p.xbound, p.ybound, p.zbound, device=self.device)
            self._plan_key = key
        return self._plan


def _check_runners(pipeline: "Pipeline") -> None:
    missing = [name for name, r in pipeline.runners.items() if not hasattr(r, "run_device")]
    if missing:
        raise ConfigError(f"the cuda schedule needs a GPU backend (torch-cuda or tensorrt); "
                          f"the pipeline's backend {pipeline.backend!r} keeps {missing} on the "
                          "host", field="schedule")


def _cuda_kernels() -> Any:
    """The Triton kernels (``runtime/kernels/cuda``), imported on first use: Triton compiles
    them for the device the first time they run."""
    from bevdeploy.runtime.kernels import cuda

    return cuda
