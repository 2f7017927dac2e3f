"""The PyTorch eager reference on a CUDA device, for ``bench --reference-device cuda``.

The GPU targets are ratios to the eager FP32 reference *on the same GPU*. Every module of the
reference is plain PyTorch and moves with ``model.to(device)`` except its sparse encoder,
which is ``spconv``: a CPU build of spconv (what ``pip install spconv`` gives, and what the GPU
machines here lack entirely) cannot take CUDA tensors. Where spconv's CUDA build runs, the
reference keeps it; otherwise its sparse encoder is replaced by the same sparse convolutions
(its SCN graph, ``export.scn.encoder_to_scn``) run by ``TorchScnExecutor``, still eager PyTorch,
and the column's weights note says which of the two ran.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bevdeploy.errors import InputError
from bevdeploy.export.scn import encoder_to_scn
from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.presets import Preset
from bevdeploy.runtime.backends.gpu import ieee_fp32
from bevdeploy.runtime.scn.torch_executor import TorchScnExecutor


class TorchScnEncoder(nn.Module):
    """A ``SparseEncoder``'s forward (``feats (M, F)``, ``coords (M, 4) (b, x, y, z)``,
    ``batch_size`` → ``(B, C·Z, X, Y)``) through ``TorchScnExecutor``, one sample at a time."""

    def __init__(self, encoder: nn.Module, preset: Preset, device: torch.device) -> None:
        super().__init__()
        self.executor = TorchScnExecutor(encoder_to_scn(encoder, preset), device=device)

    def forward(self, feats: Tensor, coords: Tensor, batch_size: int) -> Tensor:
        if coords.ndim != 2 or coords.shape[1] != 4:
            raise InputError(f"expected (M, 4) coords (b, x, y, z), got {tuple(coords.shape)}",
                             field="coords")
        maps = []
        for sample in range(batch_size):
            rows = coords[:, 0] == sample
            maps.append(self.executor.run(feats[rows], coords[rows, 1:]))
        return torch.cat(maps)


def reference_on(model: BEVFusion, preset: Preset, device: torch.device) -> str:
    """Move ``model`` to ``device`` (in place) and say how its sparse encoder runs there."""
    encoder = model.encoders["lidar"]["backbone"]
    ieee_fp32(device)  # the FP32 reference, not TF32
    model.to(device)
    if device.type == "cpu":
        return "spconv"
    reason = _spconv_unusable(encoder, device)
    if reason is None:
        return "spconv (CUDA)"
    model.encoders["lidar"]["backbone"] = TorchScnEncoder(encoder.cpu(), preset, device)
    return f"SCN on bevdeploy's torch executor (spconv: {reason})"


def _spconv_unusable(encoder: nn.Module, device: torch.device) -> str | None:
    """Why spconv cannot run ``encoder`` on ``device`` (one voxel tried), or None."""
    feats = torch.ones((1, encoder.in_channels), device=device)
    coords = torch.zeros((1, 4), dtype=torch.int32, device=device)
    try:
        with torch.inference_mode():
            encoder(feats, coords, 1)
    except Exception as exc:  # spconv's CPU build raises from its C++ core, type varies
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    return None
