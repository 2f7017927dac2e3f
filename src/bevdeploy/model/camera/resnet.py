"""ResNet camera backbone with mmdet / torchvision parameter names
(docs/reference.md#resnet-50-backbone).

CUDA-BEVFusion's ResNet50 model is mmdet's ``ResNet`` with its defaults: ``pytorch`` style (the
stride of a bottleneck sits on the 3×3 ``conv2``), a 1×1 conv + BN shortcut on the first block
of every stage, BN eps 1e-5 and ``norm_eval`` (BN statistics frozen while training). The key
names (``conv1``, ``bn1``, ``layer{i}.{j}.conv{k}``, ``.downsample.{0,1}``) are torchvision's,
so both the BEVFusion checkpoint and an ImageNet torchvision checkpoint load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs (ResNet-18/34); the stride sits on the first."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carrying the stride: ``pytorch`` style), 1×1 expand ×4 (ResNet-50+)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


ARCHITECTURES: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
"""Block type and blocks per stage for each depth (the torchvision / mmdet table)."""


class ResNet(nn.Module):
    """Stem + four stages; returns the outputs of the stages listed in ``out_indices``.

    All four stages are always built, even when the last ones are not returned, so the state
    dict has the reference's keys; the forward stops after the last requested stage.
    """

    def __init__(self, depth: int = 50, base_channels: int = 64,
                 out_indices: Sequence[int] = (1, 2, 3), norm_eval: bool = True) -> None:
        super().__init__()
        if depth not in ARCHITECTURES:
            raise ValueError(f"ResNet depth must be one of {sorted(ARCHITECTURES)}, got {depth}")
        block, counts = ARCHITECTURES[depth]
        self.out_indices = tuple(out_indices)
        self.norm_eval = norm_eval
        self.conv1 = nn.Conv2d(3, base_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = base_channels
        for i, count in enumerate(counts):
            planes = base_channels * 2 ** i
            stride = 1 if i == 0 else 2
            stage = self._make_stage(block, inplanes, planes, count, stride)
            self.add_module(f"layer{i + 1}", stage)
            inplanes = planes * block.expansion
        self.out_channels = tuple(base_channels * 2 ** i * block.expansion
                                  for i in self.out_indices)

    @staticmethod
    def _make_stage(block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int,
                    count: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(inplanes, planes, stride, downsample)]
        layers += [block(planes * block.expansion, planes) for _ in range(count - 1)]
        return nn.Sequential(*layers)

    def train(self, mode: bool = True) -> "ResNet":
        """Keep every BN in eval mode when ``norm_eval`` (mmdet's default, used by the reference):
        fine-tuning then never updates the ImageNet statistics the checkpoint was trained with."""
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(max(self.out_indices) + 1):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
        return outs
