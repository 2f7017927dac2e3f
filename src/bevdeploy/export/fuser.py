"""The ``fuser.onnx`` graph: ConvFuser + SECOND + SECONDFPN (docs/reference.md#onnx-modules).

The fuser, decoder backbone and decoder neck run back to back on the same (X, Y) grid with no
data-dependent step between them, so one engine holds all three (as CUDA-BEVFusion's).
"""

from __future__ import annotations

from torch import Tensor, nn

from bevdeploy.export.onnx_utils import DenseGraph, float_spec
from bevdeploy.presets import Preset


class FuserGraph(nn.Module):
    """``camera (1,Cc,X,Y)``, ``lidar (1,Cl,X,Y)`` → ``middle (1,Cm,X,Y)`` (SECONDFPN output 0)."""

    def __init__(self, fuser: nn.Module, decoder: nn.ModuleDict) -> None:
        super().__init__()
        self.fuser = fuser
        self.backbone = decoder["backbone"]
        self.neck = decoder["neck"]

    def forward(self, camera: Tensor, lidar: Tensor) -> Tensor:
        return self.neck(self.backbone(self.fuser([camera, lidar])))[0]


def fuser_graph(model: nn.Module, preset: Preset) -> DenseGraph:
    """The ``fuser`` graph of ``model`` (a ``BEVFusion``), shapes from ``preset``."""
    x, y = preset.bev_size
    return DenseGraph(
        name="fuser",
        module=FuserGraph(model.fuser, model.decoder),
        inputs=(float_spec("camera", (1, preset.model.vtransform.out_channels, x, y)),
                float_spec("lidar", (1, preset.lidar_bev_channels, x, y))),
        outputs=(float_spec("middle", (1, preset.model.decoder.middle_channels, x, y)),),
    )
