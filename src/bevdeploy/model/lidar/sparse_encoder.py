"""SparseEncoder: the LiDAR backbone on ``spconv.pytorch`` 2.x (docs/reference.md#sparse-encoder).

Module names equal the reference's state-dict keys (``conv_input.{0,1}``,
``encoder_layers.encoder_layer{i}.{j}``, ``conv_out.{0,1}``) so official checkpoints load once
their sparse-conv weights are permuted from the spconv-1.x layout (kx, ky, kz, I, O) to the
spconv-2.x layout (O, kx, ky, kz, I) that these modules hold.

``indice_key``s follow the reference table (``subm1``, ``spconv1..3``, ``spconv_down2``); the
basic blocks of stage i share ``subm{i}`` as CUDA-BEVFusion's exporter does. The keys only cache
rulebooks; they change no number.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import spconv.pytorch as spconv
import torch
from spconv.pytorch.conv import SparseConvolution
from torch import Tensor, nn

from bevdeploy.errors import ConfigError, InputError
from bevdeploy.presets import LidarEncoderConfig, Preset

BN_EPS = 1e-3
BN_MOMENTUM = 0.01


@contextmanager
def cpu_single_thread(device: torch.device) -> Iterator[None]:
    """Run spconv on one CPU thread.

    spconv 2.3.8's CPU ``scatter_add`` (``spconv/csrc/sparse/gather.py``) shares its row
    pointers between OpenMP threads (captured by reference in the parallel lambda), so with
    more than one thread rows are added to the wrong outputs and results change from run to run
    (traveller59/spconv#679 reports the symptom). ``torch.set_num_threads`` also sets the
    OpenMP thread count spconv uses; the previous count is restored afterwards. Only the
    forward pass is covered: spconv's CPU backward uses the same scatter-add, so CPU training
    must itself run with ``torch.set_num_threads(1)``.
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _bn(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _padding3(pad: Any) -> tuple[int, int, int]:
    """A preset padding entry (an int, or an (x, y, z) triple) as a triple."""
    if isinstance(pad, (tuple, list)):
        return (int(pad[0]), int(pad[1]), int(pad[2]))
    return (int(pad),) * 3


def sparse_conv_module(in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                       indice_key: str, stride: int | Sequence[int] = 1,
                       padding: int | Sequence[int] = 0,
                       subm: bool = False) -> spconv.SparseSequential:
    """conv → BN1d → ReLU on active sites, keys ``0`` (conv) and ``1`` (BN): mmdet3d's
    ``make_sparse_convmodule`` with post-activation and no bias."""
    conv_type = spconv.SubMConv3d if subm else spconv.SparseConv3d
    conv = conv_type(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                     bias=False, indice_key=indice_key)
    return spconv.SparseSequential(conv, _bn(out_channels), nn.ReLU(inplace=True))


class SparseBasicBlock(spconv.SparseModule):
    """Residual block of two 3×3×3 submanifold convs (mmdet ``BasicBlock`` on sparse features):
    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + x)``. No downsample branch, so in = out channels."""

    def __init__(self, channels: int, indice_key: str) -> None:
        super().__init__()
        self.conv1 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False,
                                       indice_key=indice_key)
        self.bn1 = _bn(channels)
        self.conv2 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False,
                                       indice_key=indice_key)
        self.bn2 = _bn(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        identity = x.features
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        return out.replace_feature(self.relu(self.bn2(out.features) + identity))


class SparseEncoder(nn.Module):
    """Voxel features → dense LiDAR BEV ``(B, C·Z, X, Y)`` with channel index ``c·Z + z``.

    Stage i (1-based) is its basic blocks followed, except in the last stage, by a strided
    3×3×3 ``SparseConv3d`` (stride 2, padding from the preset); ``conv_out`` then squeezes z
    with a (1, 1, 3) kernel and stride (1, 1, 2).
    """

    def __init__(self, in_channels: int, sparse_shape: Sequence[int],
                 cfg: LidarEncoderConfig, *, source: str = "<preset>") -> None:
        super().__init__()
        self.in_channels = in_channels
        self.sparse_shape = tuple(int(s) for s in sparse_shape)
        self.conv_input = sparse_conv_module(in_channels, cfg.base_channels, 3, "subm1",
                                             padding=1, subm=True)
        self.encoder_layers = spconv.SparseSequential()
        channels = cfg.base_channels
        last_stage = len(cfg.encoder_channels) - 1
        for i, (stage_channels, stage_pads) in enumerate(zip(cfg.encoder_channels,
                                                             cfg.encoder_paddings)):
            blocks: list[nn.Module] = []
            for j, (out_channels, pad) in enumerate(zip(stage_channels, stage_pads)):
                if j == len(stage_channels) - 1 and i != last_stage:
                    blocks.append(sparse_conv_module(channels, out_channels, 3, f"spconv{i + 1}",
                                                     stride=2, padding=_padding3(pad)))
                else:
                    if out_channels != channels:
                        raise ConfigError(
                            f"basic block {j} of stage {i + 1} has {out_channels} channels but "
                            f"receives {channels}; basic blocks cannot change the channel count",
                            path=source, field="model.lidar_encoder.encoder_channels")
                    blocks.append(SparseBasicBlock(out_channels, f"subm{i + 1}"))
                channels = out_channels
            self.encoder_layers.add_module(f"encoder_layer{i + 1}",
                                           spconv.SparseSequential(*blocks))
        self.conv_out = sparse_conv_module(channels, cfg.output_channels, (1, 1, 3),
                                           "spconv_down2", stride=(1, 1, 2), padding=0)
        self.output_channels = cfg.output_channels

    def output_shape(self) -> tuple[int, int, int]:
        """(X, Y, Z) of the last sparse tensor, derived from the layer hyperparameters."""
        shape = list(self.sparse_shape)
        for module in self.modules():
            if isinstance(module, SparseConvolution) and not module.subm:
                shape = [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, k, st, p, d in zip(
                    shape, module.kernel_size, module.stride, module.padding, module.dilation)]
        return (shape[0], shape[1], shape[2])

    def forward(self, feats: Tensor, coords: Tensor, batch_size: int) -> Tensor:
        """``feats (M, F)``, ``coords (M, 4) int32 (b, x, y, z)`` → ``(B, C·Z, X, Y)``."""
        self._check_input(feats, coords, batch_size)
        if feats.shape[0] == 0:  # an empty sweep: every site is inactive, so dense() is zero
            x, y, z = self.output_shape()
            return feats.new_zeros((batch_size, self.output_channels * z, x, y))
        tensor = spconv.SparseConvTensor(feats, coords.int(), list(self.sparse_shape), batch_size)
        with cpu_single_thread(feats.device):
            out = self.conv_out(self.encoder_layers(self.conv_input(tensor)))
        dense = out.dense()  # (B, C, X, Y, Z)
        b, c, x, y, z = dense.shape
        return dense.permute(0, 1, 4, 2, 3).reshape(b, c * z, x, y)

    def _check_input(self, feats: Tensor, coords: Tensor, batch_size: int) -> None:
        if feats.ndim != 2 or feats.shape[1] != self.in_channels:
            raise InputError(f"expected (M, {self.in_channels}) voxel features, got "
                             f"{tuple(feats.shape)}", field="feats")
        if coords.ndim != 2 or coords.shape != (feats.shape[0], 4):
            raise InputError(f"expected ({feats.shape[0]}, 4) coords (b, x, y, z), got "
                             f"{tuple(coords.shape)}", field="coords")
        if coords.shape[0] == 0:
            return
        upper = torch.tensor((batch_size, *self.sparse_shape), device=coords.device)
        if bool((coords < 0).any()) or bool((coords >= upper).any()):
            raise InputError(f"coords must lie in [0, {tuple(upper.tolist())}) per column "
                             f"(b, x, y, z)", field="coords")


def build_sparse_encoder(preset: Preset) -> SparseEncoder:
    """The preset's LiDAR backbone (input features, sparse shape and channel plan)."""
    return SparseEncoder(preset.points.num_features, preset.sparse_shape,
                         preset.model.lidar_encoder, source=preset.name)
