"""``CudaSchedule``: a ``Pipeline`` schedule for the GPU backends (``torch-cuda``, ``tensorrt``).

CUDA-BEVFusion runs every stage one after another on one stream, with a host sync in the
middle of voxelization (spec/deploy.md §5). Here the frame's data goes to the device once and
stays there, and the two branches overlap:

* the points are range-filtered on the CPU (it also shrinks the upload and checks the
  package's point bound), then copied up once with the raw uint8 images;
* **camera stream**: normalize and depth (``kernels.cuda``) → ``camera.backbone`` → geometry
  plan (built on the device once per calibration) → BEV pooling into one reused buffer →
  ``camera.vtransform``;
* **LiDAR stream**: voxelize (``kernels.cuda``) → the SCN on torch (``TorchScnExecutor``);
  the branch waits for the device twice, for the voxel count (the SCN's shapes) and in
  ``torch.unique`` of each strided rulebook: it is enqueued after the camera branch, so the
  GPU works on the camera while the host waits;
* the fuser waits on an event of each stream, then fuser → head → decode (``kernels.cuda``)
  on the current stream; the kept boxes come back to the host (the frame's last sync).

Switches, so that ``bench`` can show what each is worth: ``streams`` (False: both branches on
the current stream, one after the other, as CUDA-BEVFusion does); ``host_kernels`` (True:
normalize, depth, voxelize, the SCN executor and decode on the CPU as in the CPU backends,
only the dense modules, geometry and BEV pooling on the device; the LiDAR branch then runs on
a worker thread); ``precision`` of the SCN on the device (the runners' own precision,
channels-last and CUDA graphs are their ``GpuOptions``). A CUDA graph of the *whole* frame is
not possible: the voxel count shapes the SCN. Per-module graphs capture the dense work.

``device="cpu"`` runs the same schedule on CPU tensors (one stream; the Triton kernels in
Triton's interpreter, thousands of times slower than a GPU): how the schedule is checked
against the CPU backends on machines without a GPU.

The stage timings of device work measure the time to *enqueue* it (the GPU runs
asynchronously), except where the host waits; ``total`` is the true wall time of the frame.
On a machine without CUDA, a CUDA device raises ``ConfigError`` ("needs CUDA").
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.data.preprocess import lidar2image
from bevdeploy.errors import ConfigError
from bevdeploy.runtime.backends.gpu import (GpuOptions, Precision, cuda_unusable_reason,
                                            float_dtype, ieee_fp32, resolve_device)
from bevdeploy.runtime.stages.decode import HEAD_OUTPUTS
from bevdeploy.runtime.stages.geometry import calibration_key

if TYPE_CHECKING:
    import torch

    from bevdeploy.runtime.pipeline import Pipeline, StageTimer
    from bevdeploy.runtime.scn_torch import TorchScnExecutor


class CudaSchedule:
    """``schedule(pipeline, frame, timer) -> Detections`` for a pipeline on a GPU backend.

    One instance serves one pipeline (it keeps that pipeline's device geometry plan, pooled
    BEV buffer and SCN weights); like the pipeline, it runs one frame at a time.

    ``taps``, when set to a dict, receives a host copy of every stage's result of the frames
    that run (``bevdeploy compare`` sets it): ``normalize``, ``depth``, ``voxelize``
    (``feats``, ``coords``), ``scn``, ``bevpool`` and each dense module's outputs by module
    name. Copies, because a CUDA graph's outputs are overwritten by its next replay; taking
    them synchronises, so they are off (``None``) for anything that is timed.
    """

    def __init__(self, *, streams: bool = True, device: str = "cuda",
                 host_kernels: bool = False, precision: Precision = "fp32") -> None:
        on_cpu = device.split(":")[0] == "cpu"
        if on_cpu and streams:
            raise ConfigError("CUDA streams need a CUDA device; got device 'cpu'",
                              field="streams")
        if not on_cpu:
            reason = cuda_unusable_reason()
            if reason is not None:
                raise ConfigError(f"the cuda schedule needs CUDA: {reason}", field="schedule")
        import torch

        self.device = resolve_device(GpuOptions(device=device), "cuda schedule",
                                     allow_cpu=on_cpu)
        self.streams = streams
        self.host_kernels = host_kernels
        self.scn_dtype = float_dtype(precision)
        if precision == "fp32":
            ieee_fp32(self.device)
        self._camera_stream = torch.cuda.Stream(self.device) if streams else None
        self._lidar_stream = torch.cuda.Stream(self.device) if streams else None
        # only the host LiDAR branch (CPU SCN) needs a thread to overlap the camera's launches
        self._worker = (ThreadPoolExecutor(1, thread_name_prefix="lidar")
                        if streams and host_kernels else None)
        self._lidar_done: torch.cuda.Event | None = None  # set by the LiDAR branch
        self._plan_key: bytes | None = None
        self._plan: Any = None
        self._pooled: torch.Tensor | None = None
        self._scn: TorchScnExecutor | None = None
        self.taps: dict[str, Any] | None = None

    def __call__(self, pipeline: "Pipeline", frame: Frame, timer: "StageTimer") -> Detections:
        _check_runners(pipeline)
        points = pipeline.select_points(frame, timer)
        if self.host_kernels:
            camera_bev, lidar_bev = self._host_branches(pipeline, frame, points, timer)
        else:
            with timer("upload"):
                device_points, images = self._upload(points), self._upload(frame.images)
            camera_bev, lidar_bev = self._device_branches(pipeline, frame, device_points,
                                                          images, timer)
        return self._detect(pipeline, camera_bev, lidar_bev, timer)

    # ---- the two ways to run the branches -------------------------------------------------

    def _host_branches(self, pipeline: "Pipeline", frame: Frame, points: np.ndarray,
                       timer: "StageTimer") -> tuple["torch.Tensor", "torch.Tensor"]:
        """The LiDAR branch on the CPU (a worker thread with streams), the camera's kernels on
        the CPU, its dense work on the device."""
        import torch

        if not self.streams:
            lidar_bev = self._host_lidar(pipeline, points, timer)
            return self._camera(pipeline, frame, *self._host_camera_inputs(
                pipeline, frame, points, timer), timer), lidar_bev
        assert self._worker is not None and self._camera_stream is not None
        lidar_job = self._worker.submit(self._host_lidar, pipeline, points, timer)
        with torch.cuda.stream(self._camera_stream):
            camera_bev = self._camera(pipeline, frame, *self._host_camera_inputs(
                pipeline, frame, points, timer), timer)
            camera_done = torch.cuda.current_stream().record_event()
        lidar_bev = lidar_job.result()
        return self._join(camera_bev, camera_done, lidar_bev)

    def _device_branches(self, pipeline: "Pipeline", frame: Frame, points: "torch.Tensor",
                         images: "torch.Tensor", timer: "StageTimer"
                         ) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Both branches on the device: the camera's enqueued first (it never waits for the
        GPU), then the LiDAR's (which does, for its shapes)."""
        import torch

        if not self.streams:
            camera_bev = self._camera(pipeline, frame, *self._device_camera_inputs(
                pipeline, frame, points, images, timer), timer)
            return camera_bev, self._device_lidar(pipeline, points, timer)
        assert self._camera_stream is not None and self._lidar_stream is not None
        uploaded = torch.cuda.current_stream().record_event()
        with torch.cuda.stream(self._camera_stream):
            self._camera_stream.wait_event(uploaded)
            camera_bev = self._camera(pipeline, frame, *self._device_camera_inputs(
                pipeline, frame, points, images, timer), timer)
            camera_done = torch.cuda.current_stream().record_event()
        with torch.cuda.stream(self._lidar_stream):
            self._lidar_stream.wait_event(uploaded)
            lidar_bev = self._device_lidar(pipeline, points, timer)
            self._lidar_done = torch.cuda.current_stream().record_event()
        # read on the branch streams, allocated on this one
        for stream in (self._camera_stream, self._lidar_stream):
            points.record_stream(stream)
        images.record_stream(self._camera_stream)
        return self._join(camera_bev, camera_done, lidar_bev)

    def _join(self, camera_bev: "torch.Tensor", camera_done: "torch.cuda.Event",
              lidar_bev: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        """Make the current stream wait for both branches' events."""
        import torch

        current = torch.cuda.current_stream()
        current.wait_event(camera_done)
        assert self._lidar_done is not None
        current.wait_event(self._lidar_done)
        # Allocated on the branch streams, consumed on this one: keep the allocator from
        # reusing their memory before this stream is done with them.
        camera_bev.record_stream(current)
        lidar_bev.record_stream(current)
        return camera_bev, lidar_bev

    # ---- the branches ---------------------------------------------------------------------

    def _host_lidar(self, pipeline: "Pipeline", points: np.ndarray, timer: "StageTimer"
                    ) -> "torch.Tensor":
        """Voxelize + SCN executor on the CPU, the BEV map copied up on the LiDAR stream."""
        import torch

        with timer(pipeline.voxelize.name):
            voxels = pipeline.voxelize.run(points)
        with timer(pipeline.scn.name):
            bev = pipeline.scn.run(voxels.feats, voxels.coords)
        self._tap("voxelize", {"feats": voxels.feats, "coords": voxels.coords})
        self._tap("scn", bev)
        if self._lidar_stream is None:
            return self._upload(bev)
        with torch.cuda.stream(self._lidar_stream):
            device_bev = self._upload(bev)
            self._lidar_done = torch.cuda.current_stream().record_event()
        return device_bev

    def _device_lidar(self, pipeline: "Pipeline", points: "torch.Tensor",
                      timer: "StageTimer") -> "torch.Tensor":
        """Voxelize and the SCN on the device, on the current stream."""
        p = pipeline.voxelize.params
        with timer(pipeline.voxelize.name):
            feats, coords, _, count = _cuda_kernels().voxelize(
                points, p.voxel_size, p.point_cloud_range[:3], np.asarray(p.grid_size, np.int32),
                p.max_points_per_voxel, p.max_voxels)
            voxels = int(count)  # the SCN's shapes: the branch's first wait for the device
        with timer(pipeline.scn.name):
            bev = self._scn_executor(pipeline).run(feats[:voxels], coords[:voxels])
        self._tap("voxelize", {"feats": feats[:voxels], "coords": coords[:voxels]})
        return self._tap("scn", bev)

    def _host_camera_inputs(self, pipeline: "Pipeline", frame: Frame, points: np.ndarray,
                            timer: "StageTimer") -> tuple["torch.Tensor", "torch.Tensor"]:
        """Normalized images and depth from the CPU kernels, copied up."""
        with timer(pipeline.normalize.name):
            img = self._upload(pipeline.normalize.run(frame.images))
        with timer(pipeline.depth.name):
            depth = self._upload(pipeline.depth.run(points, lidar2image(frame.calib)))
        return img, depth

    def _device_camera_inputs(self, pipeline: "Pipeline", frame: Frame, points: "torch.Tensor",
                              images: "torch.Tensor", timer: "StageTimer"
                              ) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Normalized images and depth from the device kernels (the stages' parameters)."""
        cuda = _cuda_kernels()
        n = pipeline.normalize.params
        with timer(pipeline.normalize.name):
            img = cuda.normalize(images, n.resize, n.resized_size, n.crop_offset, n.image_size,
                                 np.asarray(n.mean, np.float32), np.asarray(n.std, np.float32))
        d = pipeline.depth.params
        with timer(pipeline.depth.name):
            depth = cuda.depth_map(points, lidar2image(frame.calib).astype(np.float32),
                                   d.img_aug, d.image_size)[None]
        return img, depth

    def _camera(self, pipeline: "Pipeline", frame: Frame, img: "torch.Tensor",
                depth: "torch.Tensor", timer: "StageTimer") -> "torch.Tensor":
        """Device images and depth → camera BEV on the device, on the current stream."""
        import torch

        self._tap("normalize", img)
        self._tap("depth", depth)
        with timer("camera.backbone"):
            out = self._tap("camera.backbone", pipeline.runners["camera.backbone"].run_device(
                {"img": img, "depth": depth}))
        with timer(pipeline.geometry.name):
            plan = self._device_plan(pipeline, frame)
        with timer(pipeline.bevpool.name):
            weights = out["camera_depth_weights"]
            if self._pooled is None or self._pooled.dtype != weights.dtype:
                nx, ny, nz = plan.bev_size
                channels = out["camera_feature"].shape[-1]
                self._pooled = torch.empty((1, channels * nz, nx, ny), dtype=weights.dtype,
                                           device=self.device)
            bev = self._tap("bevpool", _cuda_kernels().bev_pool(
                weights, out["camera_feature"], plan, out=self._pooled))
        with timer("camera.vtransform"):
            return self._tap("camera.vtransform", pipeline.runners["camera.vtransform"].run_device(
                {"feat_in": bev}))["feat_out"]

    def _detect(self, pipeline: "Pipeline", camera_bev: "torch.Tensor",
                lidar_bev: "torch.Tensor", timer: "StageTimer") -> Detections:
        with timer("fuser"):
            middle = self._tap("fuser", pipeline.runners["fuser"].run_device(
                {"camera": camera_bev, "lidar": lidar_bev}))["middle"]
        with timer("head.bbox"):
            outputs = pipeline.runners["head.bbox"].run_device({"middle": middle})
        with timer(pipeline.decode.name):
            if self.host_kernels:
                return pipeline.decode.run({name: tensor.float().cpu().numpy()
                                            for name, tensor in outputs.items()})
            p = pipeline.decode.params
            boxes, scores, labels = _cuda_kernels().decode(
                *(outputs[name][0].float() for name in HEAD_OUTPUTS), p.out_size_factor,
                p.voxel_size, p.pc_range_min, p.post_center_range, p.score_threshold)
            return Detections(boxes.cpu().numpy(), scores.cpu().numpy(), labels.cpu().numpy(),
                              p.class_names)

    # ---- per-pipeline state ---------------------------------------------------------------

    def _tap(self, name: str, value: Any) -> Any:
        """``value``, of which ``taps`` (when set) keeps a host copy under ``name``."""
        if self.taps is not None:
            self.taps[name] = _host_copy(value)
        return value

    def _upload(self, array: np.ndarray) -> "torch.Tensor":
        """``array`` on the device: staged in pinned memory (the one host copy), then copied
        without blocking the host. The staging copy is torch's, which runs on all the intra-op
        threads (26 MB of raw nuScenes images: 1.75 ms on 2 cores, numpy's 2.7 ms)."""
        import torch

        with warnings.catch_warnings():
            # frame arrays may be read-only (decoded images); they are only ever read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            source = torch.from_numpy(array)
        if self.device.type == "cpu":
            return source
        staged = torch.empty_like(source, pin_memory=True)
        staged.copy_(source)
        return staged.to(self.device, non_blocking=True)

    def _scn_executor(self, pipeline: "Pipeline") -> "TorchScnExecutor":
        """The package's SCN on the device, its weights converted on the first frame."""
        if self._scn is None:
            from bevdeploy.runtime.scn_torch import TorchScnExecutor

            self._scn = TorchScnExecutor(pipeline.scn.executor.graph, device=self.device,
                                         dtype=self.scn_dtype)
        return self._scn

    def _device_plan(self, pipeline: "Pipeline", frame: Frame) -> Any:
        """The geometry plan on the device, rebuilt only when the calibration changes (the same
        float32 key as the CPU ``GeometryStage``)."""
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
            pipeline.geometry.computations += 1  # what bench's "geometry computed" counts
        return self._plan


def _host_copy(value: Any) -> Any:
    """A stage result (a tensor, an array, or a dict of them) as numpy arrays on the host,
    floating point as float32."""
    if isinstance(value, dict):
        return {key: _host_copy(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return value.copy()
    if value.is_floating_point():
        value = value.float()
    return value.detach().cpu().numpy().copy()


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
