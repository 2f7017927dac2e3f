"""Stage ``decode``: the head's per-query outputs → ``Detections`` in the bevdeploy convention.

``head.bbox`` already ends with the per-class scores (sigmoid × heatmap score × one-hot), so
decoding is arithmetic (docs/reference.md#box-decoding, #post-processing): label = argmax, centre
from the BEV cell, sizes ``exp(dim)``, ``z = height − h/2``, yaw from (sin, cos), the post-centre
range filter and the score threshold; the box convention the head was trained in (the manifest's
``box_convention``, docs/reference.md#box-convention) is converted once. There is no NMS, as in
the reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bevdeploy.data.frame import Detections
from bevdeploy.package import DeployPackage, runtime_parameters
from bevdeploy.runtime.kernels import kernels_for
from bevdeploy.vocabulary import HEAD_OUTPUTS


@dataclass(frozen=True, eq=False)
class DecodeParams:
    """The manifest's ``decode`` block, its ``box_convention`` and the class names."""

    class_names: tuple[str, ...]
    out_size_factor: int
    voxel_size: np.ndarray  # (2,) float32
    pc_range_min: np.ndarray  # (2,) float32
    post_center_range: np.ndarray  # (6,) float32
    score_threshold: float
    box_convention: str

    @classmethod
    def from_package(cls, pkg: DeployPackage) -> "DecodeParams":
        d = runtime_parameters(pkg.preset)["decode"]
        return cls(class_names=tuple(pkg.preset.classes), out_size_factor=d["out_size_factor"],
                   voxel_size=np.asarray(d["voxel_size"], dtype=np.float32),
                   pc_range_min=np.asarray(d["pc_range"], dtype=np.float32),
                   post_center_range=np.asarray(d["post_center_range"], dtype=np.float32),
                   score_threshold=float(d["score_threshold"]),
                   box_convention=pkg.manifest.box_convention)


class DecodeStage:
    """``run(head outputs {score (1,K,P), rot, dim, reg, height, vel}) → Detections``.

    The outputs are numpy arrays on the host (``device=None``) or tensors on a torch device, of
    any float dtype there (the CUDA kernel decodes in float32); the detections always come back
    to the host (the frame's last sync on a device).
    """

    name = "decode"

    def __init__(self, params: DecodeParams, *, device: str | None = None) -> None:
        self.params = params
        self.device = device
        self._kernels = kernels_for(device)

    def run(self, outputs: Mapping[str, Any]) -> Detections:
        p = self.params
        heads = [outputs[k][0] for k in HEAD_OUTPUTS]
        if self.device is not None:
            heads = [head.float() for head in heads]
        boxes, scores, labels = self._kernels.decode(*heads, p.out_size_factor, p.voxel_size,
                                                     p.pc_range_min, p.post_center_range,
                                                     p.score_threshold,
                                                     box_convention=p.box_convention)
        if self.device is not None:
            boxes, scores, labels = (t.cpu().numpy() for t in (boxes, scores, labels))
        return Detections(boxes, scores, labels, p.class_names)
