"""GeneralizedLSSFPN: the camera neck (docs/reference.md#generalizedlssfpn-neck).

A top-down FPN that *concatenates* instead of adding: for each level from the second-coarsest
down to the finest, the coarser result is bilinearly upsampled (``align_corners=False``) to the
finer level's size, concatenated after it (``[finer, upsampled coarser]``), reduced by a 1×1
conv and refined by a 3×3 conv (each conv → BN → ReLU, mmcv ``ConvModule`` names ``conv`` /
``bn``). With L input levels it returns L − 1 maps; BEVFusion uses only the finest.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bevdeploy.errors import ConfigError
from bevdeploy.presets import Preset


class ConvModule(nn.Module):
    """Conv (no bias: the BN absorbs it) → BN (eps 1e-5) → ReLU, with mmcv's key names."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class GeneralizedLSSFPN(nn.Module):
    """Concatenating top-down FPN over ``len(in_channels)`` backbone levels."""

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"the neck needs at least two backbone levels, "
                             f"got {list(in_channels)}")
        self.in_channels = tuple(in_channels)
        last = len(in_channels) - 2
        self.lateral_convs = nn.ModuleList(
            ConvModule(in_channels[i] + (in_channels[i + 1] if i == last else out_channels),
                       out_channels, 1)
            for i in range(last + 1))
        self.fpn_convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3) for _ in range(last + 1))

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Backbone levels, finest first → ``len(inputs) − 1`` maps, finest first."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} levels, got {len(inputs)}")
        levels = list(inputs)
        for i in range(len(levels) - 2, -1, -1):
            coarser = F.interpolate(levels[i + 1], size=levels[i].shape[2:], mode="bilinear",
                                    align_corners=False)
            merged = self.lateral_convs[i](torch.cat([levels[i], coarser], dim=1))
            levels[i] = self.fpn_convs[i](merged)
        return levels[:-1]


def build_camera_neck(preset: Preset) -> GeneralizedLSSFPN:
    """The neck over the backbone levels the preset selects, ``neck.out_channels`` wide."""
    levels = preset.model.backbone.out_channels
    if len(levels) < 2:
        raise ConfigError(f"GeneralizedLSSFPN needs at least two backbone levels, got "
                          f"out_indices {list(preset.model.backbone.out_indices)}",
                          path=preset.name, field="model.backbone.out_indices")
    return GeneralizedLSSFPN(levels, preset.model.neck.out_channels)
