"""``CudaSchedule``: a ``Pipeline`` schedule for the GPU backends (``torch-cuda``, ``tensorrt``).

It only arranges: which stages the pipeline builds on the device (``device_stages``), the
uploads, the streams and their events, the pooled BEV buffer the device BEV pooling reuses and
the ``taps``. What each step computes is the stages' (their CUDA kernel set, their device
geometry cache) and the runners' (``DeviceRunner.run_device``).

CUDA-BEVFusion runs every stage one after another on one stream, with a host sync in the
middle of voxelization (docs/reference.md#runtime-pipeline). Here the frame's data goes to the
device once and stays there, and the two branches overlap:

* the points are range-filtered on the CPU (it also shrinks the upload and checks the
  package's point bound), then copied up once with the raw uint8 images;
* **camera stream**: normalize and depth (the stages on ``kernels.cuda``) → ``camera.backbone``
  → geometry plan (the device geometry stage, computed once per calibration) → BEV pooling
  into one reused buffer → ``camera.vtransform``;
* **LiDAR stream**: voxelize (``kernels.cuda``) → the SCN stage on torch (``TorchScnExecutor``);
  the branch waits for the device twice, for the voxel count (the SCN's shapes) and in
  ``torch.unique`` of each strided rulebook: it is enqueued after the camera branch, so the
  GPU works on the camera while the host waits;
* the fuser waits on an event of each stream, then fuser → head → decode (the decode stage on
  ``kernels.cuda``) on the current stream; the kept boxes come back to the host (the frame's last sync).

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
from bevdeploy.runtime.backends.base import DeviceRunner
from bevdeploy.runtime.devices import (Precision, cuda_unusable_reason, float_dtype, ieee_fp32,
                                       torch_device)
from bevdeploy.runtime.schedules.base import Composition
from bevdeploy.runtime.timing import StageTimer

if TYPE_CHECKING:
    import torch

# The stages the schedule has the pipeline build on its device: all of them, or with
# ``host_kernels`` only the geometry plan and the BEV pooling, which reads the backbone's device
# outputs.
DEVICE_STAGES: tuple[str, ...] = ("normalize", "depth", "geometry", "bevpool", "voxelize", "scn",
                                  "decode")
HOST_KERNELS_DEVICE_STAGES: tuple[str, ...] = ("geometry", "bevpool")


class CudaSchedule:
    """``schedule(pipeline, frame, timer) -> Detections`` for a pipeline on a GPU backend.

    One instance serves one pipeline (it keeps that pipeline's pooled BEV buffer and streams);
    like the pipeline, it runs one frame at a time. ``device_stages`` and ``precision`` (the
    SCN's on the device; ``scn_dtype`` as a torch dtype) tell the pipeline which of its stages
    to build on ``device`` (``DeviceSchedule``).

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

        self.device = torch_device(device, "cuda schedule", allow_cpu=on_cpu)
        self.streams = streams
        self.host_kernels = host_kernels
        self.precision = precision
        self.scn_dtype = float_dtype(precision)
        if precision == "fp32":
            ieee_fp32(self.device)
        placed = HOST_KERNELS_DEVICE_STAGES if host_kernels else DEVICE_STAGES
        self.device_stages: dict[str, str] = {name: str(self.device) for name in placed}
        self._camera_stream = torch.cuda.Stream(self.device) if streams else None
        self._lidar_stream = torch.cuda.Stream(self.device) if streams else None
        # only the host LiDAR branch (CPU SCN) needs a thread to overlap the camera's launches
        self._worker = (ThreadPoolExecutor(1, thread_name_prefix="lidar")
                        if streams and host_kernels else None)
        self._lidar_done: torch.cuda.Event | None = None  # set by the LiDAR branch
        self._pooled: torch.Tensor | None = None
        self.taps: dict[str, Any] | None = None

    def __call__(self, pipeline: Composition, frame: Frame, timer: StageTimer) -> Detections:
        self._check(pipeline)
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

    def _host_branches(self, pipeline: Composition, frame: Frame, points: np.ndarray,
                       timer: StageTimer) -> tuple["torch.Tensor", "torch.Tensor"]:
        """The LiDAR branch on the CPU (a worker thread with streams), the camera's kernels on
        the CPU, its dense work on the device."""
        import torch

        if not self.streams:
            lidar_bev = self._host_lidar(pipeline, points, timer)
            return self._camera(pipeline, frame, points, frame.images, timer), lidar_bev
        assert self._worker is not None and self._camera_stream is not None
        lidar_job = self._worker.submit(self._host_lidar, pipeline, points, timer)
        with torch.cuda.stream(self._camera_stream):
            camera_bev = self._camera(pipeline, frame, points, frame.images, timer)
            camera_done = torch.cuda.current_stream().record_event()
        lidar_bev = lidar_job.result()
        return self._join(camera_bev, camera_done, lidar_bev)

    def _device_branches(self, pipeline: Composition, frame: Frame, points: "torch.Tensor",
                         images: "torch.Tensor", timer: StageTimer
                         ) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Both branches on the device: the camera's enqueued first (it never waits for the
        GPU), then the LiDAR's (which does, for its shapes)."""
        import torch

        if not self.streams:
            camera_bev = self._camera(pipeline, frame, points, images, timer)
            return camera_bev, self._lidar(pipeline, points, timer)
        assert self._camera_stream is not None and self._lidar_stream is not None
        uploaded = torch.cuda.current_stream().record_event()
        with torch.cuda.stream(self._camera_stream):
            self._camera_stream.wait_event(uploaded)
            camera_bev = self._camera(pipeline, frame, points, images, timer)
            camera_done = torch.cuda.current_stream().record_event()
        with torch.cuda.stream(self._lidar_stream):
            self._lidar_stream.wait_event(uploaded)
            lidar_bev = self._lidar(pipeline, points, timer)
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

    # ---- the branches: the pipeline's stages and runners, on the current stream ----------

    def _lidar(self, pipeline: Composition, points: Any, timer: StageTimer) -> Any:
        """Voxelize and the SCN, where the pipeline built them (host or device)."""
        with timer(pipeline.voxelize.name):
            voxels = pipeline.voxelize.run(points)
        with timer(pipeline.scn.name):
            bev = pipeline.scn.run(voxels.feats, voxels.coords)
        self._tap("voxelize", {"feats": voxels.feats, "coords": voxels.coords})
        return self._tap("scn", bev)

    def _host_lidar(self, pipeline: Composition, points: np.ndarray, timer: StageTimer
                    ) -> "torch.Tensor":
        """The host LiDAR branch, its BEV map copied up on the LiDAR stream."""
        import torch

        bev = self._lidar(pipeline, points, timer)
        if self._lidar_stream is None:
            return self._upload(bev)
        with torch.cuda.stream(self._lidar_stream):
            device_bev = self._upload(bev)
            self._lidar_done = torch.cuda.current_stream().record_event()
        return device_bev

    def _camera(self, pipeline: Composition, frame: Frame, points: Any, images: Any,
                timer: StageTimer) -> "torch.Tensor":
        """Images and points (host or device, as the stages are) → camera BEV on the device."""
        with timer(pipeline.normalize.name):
            img = self._to_device(pipeline.normalize.run(images))
        with timer(pipeline.depth.name):
            depth = self._to_device(pipeline.depth.run(points, lidar2image(frame.calib)))
        self._tap("normalize", img)
        self._tap("depth", depth)
        with timer("camera.backbone"):
            out = self._tap("camera.backbone", pipeline.runners["camera.backbone"].run_device(
                {"img": img, "depth": depth}))
        with timer(pipeline.geometry.name):
            plan = pipeline.geometry.run(frame.calib)
        with timer(pipeline.bevpool.name):
            weights = out["camera_depth_weights"]
            bev = self._tap("bevpool", pipeline.bevpool.run(
                weights, out["camera_feature"], plan, out=self._pooled_buffer(pipeline, weights),
                present=frame.present))
        with timer("camera.vtransform"):
            return self._tap("camera.vtransform", pipeline.runners["camera.vtransform"].run_device(
                {"feat_in": bev}))["feat_out"]

    def _detect(self, pipeline: Composition, camera_bev: "torch.Tensor",
                lidar_bev: "torch.Tensor", timer: StageTimer) -> Detections:
        with timer("fuser"):
            middle = self._tap("fuser", pipeline.runners["fuser"].run_device(
                {"camera": camera_bev, "lidar": lidar_bev}))["middle"]
        with timer("head.bbox"):
            outputs = pipeline.runners["head.bbox"].run_device({"middle": middle})
        with timer(pipeline.decode.name):
            if self.host_kernels:  # the host decode stage reads float32 host arrays
                outputs = {name: tensor.float().cpu().numpy() for name, tensor in outputs.items()}
            return pipeline.decode.run(outputs)

    # ---- transfers, buffers, taps ---------------------------------------------------------

    def _check(self, pipeline: Composition) -> None:
        """Refuse a pipeline this schedule cannot drive: runners that keep their tensors on the
        host, or stages not built where this schedule wants them."""
        missing = [name for name, r in pipeline.runners.items()
                   if not isinstance(r, DeviceRunner)]
        if missing:
            raise ConfigError(f"the cuda schedule needs a GPU backend (torch-cuda or tensorrt); "
                              f"the pipeline's backend {pipeline.backend!r} keeps {missing} on "
                              "the host", field="schedule")
        stages = (pipeline.normalize, pipeline.depth, pipeline.geometry, pipeline.bevpool,
                  pipeline.voxelize, pipeline.scn, pipeline.decode)
        misplaced = [stage.name for stage in stages
                     if stage.device != self.device_stages.get(stage.name)]
        if misplaced:
            raise ConfigError(f"the pipeline's stages {misplaced} were not built where this "
                              "cuda schedule runs them; give the schedule to the Pipeline "
                              "(schedule=...) that it is to drive", field="schedule")

    def _tap(self, name: str, value: Any) -> Any:
        """``value``, of which ``taps`` (when set) keeps a host copy under ``name``."""
        if self.taps is not None:
            self.taps[name] = _host_copy(value)
        return value

    def _to_device(self, value: Any) -> Any:
        """A camera input on the device: a host stage's result uploaded, a device one as is."""
        return self._upload(value) if self.host_kernels else value

    def _pooled_buffer(self, pipeline: Composition, weights: "torch.Tensor") -> "torch.Tensor":
        """The BEV pooling's output, one buffer reused across frames (in the depth weights'
        dtype): a fresh one would be new memory every frame, and a CUDA graph reads fixed
        addresses."""
        import torch

        if self._pooled is None or self._pooled.dtype != weights.dtype:
            p = pipeline.bevpool.params
            nx, ny, nz = p.bev_pool_size
            self._pooled = torch.empty((1, p.channels * nz, nx, ny), dtype=weights.dtype,
                                       device=self.device)
        return self._pooled

    def _upload(self, array: np.ndarray) -> "torch.Tensor":
        """``array`` on the device: staged in pinned memory (the one host copy), then copied
        without blocking the host. The staging copy is torch's, which runs on all the intra-op
        threads and beats numpy's (docs/bench/notes.md#pinned-upload)."""
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
