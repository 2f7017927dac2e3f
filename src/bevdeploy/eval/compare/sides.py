"""The two sides of a comparison, each run on one frame and recorded stage by stage.

The reference is the eager BEVFusion with the weights the package was exported from
(``model.factory.package_reference``), its forward split where the deploy path hands a tensor
from one module or kernel to the next. The deployed side is the pipeline's own schedule,
unmodified: its stages and runners are wrapped in recorders for the duration of a frame (a GPU
backend's ``CudaSchedule`` hands its stage results over through its ``taps`` instead).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.model.camera.depth_lss import absent_zeroed
from bevdeploy.model.inputs import collate
from bevdeploy.runtime import Pipeline
from bevdeploy.runtime.schedules import CudaSchedule
from bevdeploy.vocabulary import HEAD_OUTPUT_SOURCES, HEAD_OUTPUTS

# The reference head's key for each head.bbox output.
_HEAD_KEYS: dict[str, str] = dict(HEAD_OUTPUT_SOURCES)


@dataclass
class SideOutputs:
    """One side's tensors of a frame (by stage name) and its boxes."""

    tensors: dict[str, np.ndarray]
    detections: Detections


def run_reference(model: BEVFusion, frame: Frame) -> tuple[SideOutputs, np.ndarray]:
    """The reference's tensors for every stage, in the deployed layouts, its boxes, and its
    sorted local-max heatmap scores (for the top-k margin).

    The forward is ``BEVFusion.forward`` split at the points where the deploy path hands a
    tensor from one module or kernel to the next (the export graphs' boundaries).
    """
    preset = model.preset
    batch = collate([frame], preset)
    camera, lidar = model.encoders["camera"], model.encoders["lidar"]
    vt = camera["vtransform"]
    head = model.heads["object"]
    n, d = preset.cameras.num_cameras, vt.depth_bins
    h, w = preset.feature_size
    with torch.inference_mode():
        depth = vt.depth_map(batch.points, batch.lidar2image, batch.img_aug_matrix,
                             batch.lidar_aug_matrix)
        feat = camera["neck"](camera["backbone"](batch.img.flatten(0, 1)))[0]
        weights, feats = vt.depth_and_features(feat, depth.flatten(0, 1))
        geom = vt.get_geometry(batch.camera2lidar, batch.camera_intrinsics,
                               batch.img_aug_matrix, batch.lidar_aug_matrix)
        pooled = vt.bev_pool(geom, absent_zeroed(weights.view(1, n, d, h, w),
                                                 batch.camera_present),
                             feats.view(1, n, vt.out_channels, h, w))
        camera_bev = vt.downsample(pooled)
        voxel_feats, voxel_coords, _ = lidar["voxelize"](batch.points)
        lidar_bev = lidar["backbone"](voxel_feats, voxel_coords, 1)
        fused = model.fuser([camera_bev, lidar_bev])
        middle = model.decoder["neck"](model.decoder["backbone"](fused))[0]
        out = head(middle)
        detections = head.decode(out)[0]
        heatmap = head.local_max(out["dense_heatmap"].sigmoid()).flatten()
        one_hot = F.one_hot(out["query_labels"], head.num_classes).permute(0, 2, 1)
        head_out = {name: out[_HEAD_KEYS[name]] for name in HEAD_OUTPUTS}
        head_out["score"] = out["heatmap"].sigmoid() * out["query_heatmap_score"] * one_hot
        tensors = {
            "normalize": batch.img, "depth": depth, "camera.depth_weights": weights,
            "camera.feature": feats.permute(0, 2, 3, 1), "camera.bevpool": pooled,
            "camera.bev": camera_bev, "lidar.voxels": voxel_feats, "lidar.bev": lidar_bev,
            "fuser": middle, **{f"head.{k}": v for k, v in head_out.items()},
        }
        ranked = heatmap.sort(descending=True).values.numpy()
    arrays = {k: np.ascontiguousarray(v.numpy(), dtype=np.float32) for k, v in tensors.items()}
    arrays["lidar.voxel_coords"] = np.ascontiguousarray(voxel_coords[:, 1:].numpy(), np.int32)
    return SideOutputs(arrays, detections), ranked


class _Recorder:
    """Stands in for one stage or runner of a ``Pipeline``: forwards every attribute to it and
    keeps what its ``run`` returns, so the pipeline's own schedule yields the compared tensors."""

    def __init__(self, inner: Any, key: str, record: dict[str, Any]) -> None:
        self._inner = inner
        self._key = key
        self._record = record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        out = self._inner.run(*args, **kwargs)
        self._record[self._key] = out
        return out


_RECORDED_STAGES = ("normalize", "depth", "bevpool", "voxelize", "scn")


@contextmanager
def _recording(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    """Record every stage and runner output of ``pipeline`` while the block runs."""
    record: dict[str, Any] = {}
    stages = {name: getattr(pipeline, name) for name in _RECORDED_STAGES}
    runners = pipeline.runners
    try:
        for name, stage in stages.items():
            setattr(pipeline, name, _Recorder(stage, name, record))
        pipeline.runners = {name: _Recorder(r, name, record) for name, r in runners.items()}
        yield record
    finally:
        for name, stage in stages.items():
            setattr(pipeline, name, stage)
        pipeline.runners = runners


@contextmanager
def _tapping(schedule: CudaSchedule) -> Iterator[dict[str, Any]]:
    """The GPU schedule's stage results (host copies) while the block runs."""
    schedule.taps = {}
    try:
        yield schedule.taps
    finally:
        schedule.taps = None


def run_deployed(pipeline: Pipeline, frame: Frame, reference_middle: np.ndarray
                 ) -> tuple[SideOutputs, dict[str, np.ndarray]]:
    """The deployed tensors of every stage (from ``pipeline.run``, the deployed chain), its
    boxes, and the raw outputs of the deployed head run on ``reference_middle``."""
    schedule = pipeline.schedule
    with _tapping(schedule) if isinstance(schedule, CudaSchedule) else _recording(pipeline) as rec:
        detections = pipeline.run(frame)
    backbone = rec["camera.backbone"]
    voxels = rec["voxelize"]
    if not isinstance(voxels, dict):  # the CPU stage's ``Voxels``
        voxels = {"feats": voxels.feats, "coords": voxels.coords}
    tensors = {
        "normalize": rec["normalize"], "depth": rec["depth"],
        "camera.depth_weights": backbone["camera_depth_weights"],
        "camera.feature": backbone["camera_feature"], "camera.bevpool": rec["bevpool"],
        "camera.bev": rec["camera.vtransform"]["feat_out"],
        "lidar.voxels": voxels["feats"], "lidar.voxel_coords": voxels["coords"],
        "lidar.bev": rec["scn"], "fuser": rec["fuser"]["middle"],
    }
    head = pipeline.runners["head.bbox"]
    spec = head.inputs[0]
    outputs = head.run({spec.name: np.ascontiguousarray(reference_middle, dtype=spec.dtype)})
    return SideOutputs(tensors, detections), {k: np.asarray(outputs[k]) for k in HEAD_OUTPUTS}
