"""ConvFuser (docs/reference.md#convfuser): concatenate [camera BEV, LiDAR BEV] and mix with one
conv.

The concatenation order is camera first, as the reference (its eval path runs LiDAR first and
then reverses the list); the checkpoint's input channels are laid out that way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bevdeploy.errors import InputError
from bevdeploy.presets import Preset


class ConvFuser(nn.Sequential):
    """``0`` Conv2d 3×3 (no bias), ``1`` BN2d (eps 1e-5), ``2`` ReLU over the channel concat."""

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(sum(in_channels), out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.in_channels = tuple(in_channels)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:  # type: ignore[override]
        """``[camera (B, Cc, X, Y), lidar (B, Cl, X, Y)]`` → ``(B, Cf, X, Y)``."""
        got = tuple(int(x.shape[1]) for x in inputs)
        if got != self.in_channels:
            raise InputError(f"expected BEV maps with channels {list(self.in_channels)} "
                             f"(camera, lidar), got {list(got)}", field="fuser.inputs")
        return super().forward(torch.cat(list(inputs), dim=1))


def build_fuser(preset: Preset) -> ConvFuser:
    """Camera BEV channels (vtransform) + LiDAR BEV channels (encoder C·Z) → fuser channels."""
    return ConvFuser([preset.model.vtransform.out_channels, preset.lidar_bev_channels],
                     preset.model.fuser.out_channels)
