"""BEV decoder: SECOND backbone + SECONDFPN neck (docs/reference.md#second-and-secondfpn).

Both use BatchNorm eps 1e-3 / momentum 0.01 (not the PyTorch default; the checkpoint's running
statistics were trained with it) and convolutions without bias.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bevdeploy.presets import Preset

BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class SECOND(nn.Module):
    """``blocks.i`` = (Conv3×3 stride s_i, BN, ReLU) followed by ``layer_nums[i]`` × (Conv3×3,
    BN, ReLU); block i feeds block i+1 and every block's output is returned."""

    def __init__(self, in_channels: int, out_channels: Sequence[int], layer_nums: Sequence[int],
                 layer_strides: Sequence[int]) -> None:
        super().__init__()
        inputs = [in_channels, *out_channels[:-1]]
        blocks = []
        for c_in, c_out, num, stride in zip(inputs, out_channels, layer_nums, layer_strides):
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1,
                                                 bias=False), _bn(c_out), nn.ReLU(inplace=True)]
            for _ in range(num):
                layers += [nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), _bn(c_out),
                           nn.ReLU(inplace=True)]
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs


class SECONDFPN(nn.Module):
    """Bring every SECOND level back to the finest resolution and concatenate.

    ``deblocks.i.0`` is a ConvTranspose2d (kernel = stride) for stride > 1 and a 1×1 Conv2d for
    stride 1 (``use_conv_for_no_stride``), then BN and ReLU.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int],
                 upsample_strides: Sequence[int]) -> None:
        super().__init__()
        deblocks = []
        for c_in, c_out, stride in zip(in_channels, out_channels, upsample_strides):
            if stride > 1:
                up: nn.Module = nn.ConvTranspose2d(c_in, c_out, stride, stride=stride, bias=False)
            else:
                up = nn.Conv2d(c_in, c_out, 1, stride=1, bias=False)
            deblocks.append(nn.Sequential(up, _bn(c_out), nn.ReLU(inplace=True)))
        self.deblocks = nn.ModuleList(deblocks)

    def forward(self, x: Sequence[Tensor]) -> list[Tensor]:
        """Level outputs → ``[Tensor (B, Σ out_channels, X, Y)]`` (a one-element list)."""
        ups = [deblock(level) for deblock, level in zip(self.deblocks, x)]
        return [torch.cat(ups, dim=1) if len(ups) > 1 else ups[0]]


def build_decoder_backbone(preset: Preset) -> SECOND:
    cfg = preset.model.decoder
    return SECOND(preset.model.fuser.out_channels, cfg.out_channels, cfg.layer_nums,
                  cfg.layer_strides)


def build_decoder_neck(preset: Preset) -> SECONDFPN:
    cfg = preset.model.decoder
    return SECONDFPN(cfg.out_channels, cfg.fpn_out_channels, cfg.upsample_strides)
