"""Swin Transformer camera backbone, mmdet's variant (docs/reference.md#swin-t-backbone).

The official BEVFusion checkpoint was trained with mmdet's ``SwinTransformer``, which differs
from the original Swin in ways the weights depend on, so they are reproduced exactly:

* windows are zero-padded on the bottom/right to a multiple of the window size, and the padded
  tokens are *not* masked in unshifted windows (they take part in the attention as keys);
* shifted windows roll by (−s, −s) and mask cross-region pairs with −100, with the regions laid
  out on the *padded* map;
* patch merging gathers each 2×2 neighbourhood with ``nn.Unfold``, so the 4C vector is ordered
  channel-major (index ``c·4 + 2·i + j``), not the original ``cat(x0, x1, x2, x3)``;
* parameter names follow mmdet/mmcv (``attn.w_msa.*``, ``ffn.layers.0.0`` / ``ffn.layers.1``,
  ``patch_embed.projection``, ``stages.{i}.downsample.reduction``, output norms ``norm{i}``).

Stochastic depth and dropout are training-time regularisers that are identities at test; they
are left out, so training this module runs without them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _pad_bottom_right(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad an NCHW map on the bottom and right to a multiple of ``multiple`` (mmdet's
    "corner" adaptive padding)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple))


def relative_position_index(window: int) -> torch.Tensor:
    """(w², w²) index into the (2w−1)² bias table for every (query, key) pair of a window.

    Entry [p, q] encodes the offset (row_p − row_q, col_p − col_q), shifted to be non-negative,
    as ``(Δrow + w − 1)·(2w − 1) + (Δcol + w − 1)``.
    """
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    d_row = rows[:, None] - rows[None, :] + window - 1
    d_col = cols[:, None] - cols[None, :] + window - 1
    return d_row * (2 * window - 1) + d_col


def partition_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of ``window`` → (B·nW, w², C), windows row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def merge_windows(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`partition_windows`: (B·nW, w², C) → (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shifted_window_mask(h: int, w: int, window: int, shift: int,
                        device: torch.device | None = None) -> torch.Tensor:
    """(nW, w², w²) additive mask for shifted windows on a padded (h, w) map: 0 within a region,
    −100 across regions.

    After the roll by −shift, each axis falls into three regions, ``[0, n−window)``,
    ``[n−window, n−shift)`` and ``[n−shift, n)``; tokens of the last windows that came from the
    other side of the map must not attend to each other.
    """
    def regions(n: int) -> torch.Tensor:
        idx = torch.arange(n, device=device)
        return (idx >= n - window).long() + (idx >= n - shift).long()

    label = regions(h)[:, None] * 3 + regions(w)[None, :]
    label = partition_windows(label[None, :, :, None].float(), window).squeeze(-1)
    differs = label[:, :, None] != label[:, None, :]
    return torch.zeros(differs.shape, device=device).masked_fill(differs, -100.0)


class WindowMSA(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias."""

    def __init__(self, embed_dims: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.scale = (embed_dims // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(embed_dims, embed_dims * 3)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B·nW, w², C) windows; mask: (nW, w², w²) additive or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.num_heads, n, n)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class ShiftWindowMSA(nn.Module):
    """Pad to whole windows, optionally roll by −shift, attend per window, undo both."""

    def __init__(self, embed_dims: int, num_heads: int, window: int, shift: int) -> None:
        super().__init__()
        if not 0 <= shift < window:
            raise ValueError(f"shift must be in [0, {window}), got {shift}")
        self.window = window
        self.shift = shift
        self.w_msa = WindowMSA(embed_dims, num_heads, window)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """x: (B, H·W, C) tokens of an (H, W) map → same shape."""
        b, _, c = x.shape
        h, w = hw
        grid = _pad_bottom_right(x.view(b, h, w, c).permute(0, 3, 1, 2), self.window)
        grid = grid.permute(0, 2, 3, 1)
        hp, wp = grid.shape[1:3]
        mask = None
        if self.shift:
            grid = torch.roll(grid, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask = shifted_window_mask(hp, wp, self.window, self.shift, x.device).to(x.dtype)
        out = self.w_msa(partition_windows(grid, self.window), mask)
        out = merge_windows(out, self.window, hp, wp)
        if self.shift:
            out = torch.roll(out, shifts=(self.shift, self.shift), dims=(1, 2))
        return out[:, :h, :w].reshape(b, h * w, c)


class FFN(nn.Module):
    """Linear → GELU (exact) → Linear, keyed ``layers.0.0`` / ``layers.1`` as mmcv's FFN."""

    def __init__(self, embed_dims: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(embed_dims, hidden), nn.GELU()),
                                    nn.Linear(hidden, embed_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SwinBlock(nn.Module):
    """Pre-norm residual block: ``x + attn(norm1(x))`` then ``x + ffn(norm2(x))``."""

    def __init__(self, embed_dims: int, num_heads: int, window: int, shift: int,
                 mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = ShiftWindowMSA(embed_dims, num_heads, window, shift)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, mlp_ratio * embed_dims)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), hw)
        return x + self.ffn(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch``×``patch`` conv (with bias) + LayerNorm; pads bottom/right."""

    def __init__(self, embed_dims: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.projection = nn.Conv2d(3, embed_dims, patch, stride=patch)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.projection(_pad_bottom_right(x, self.patch))
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class PatchMerging(nn.Module):
    """2×2 neighbourhoods → 4C in ``nn.Unfold`` order (``c·4 + 2·i + j``) → LayerNorm → 2C
    (no bias)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * in_channels)
        self.reduction = nn.Linear(4 * in_channels, 2 * in_channels, bias=False)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        b, _, c = x.shape
        grid = _pad_bottom_right(x.transpose(1, 2).reshape(b, c, *hw), 2)
        out_hw = (grid.shape[2] // 2, grid.shape[3] // 2)
        merged = F.unfold(grid, kernel_size=2, stride=2).transpose(1, 2)
        return self.reduction(self.norm(merged)), out_hw


class SwinStage(nn.Module):
    """``depth`` blocks alternating unshifted / shifted windows, then optional patch merging."""

    def __init__(self, embed_dims: int, num_heads: int, depth: int, window: int, mlp_ratio: int,
                 downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(embed_dims, num_heads, window, window // 2 if i % 2 else 0, mlp_ratio)
            for i in range(depth))
        self.downsample = PatchMerging(embed_dims) if downsample else None

    def forward(self, x: torch.Tensor, hw: tuple[int, int]
                ) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor]:
        """Returns (input of the next stage, its (H, W), this stage's output before merging)."""
        for block in self.blocks:
            x = block(x, hw)
        if self.downsample is None:
            return x, hw, x
        merged, merged_hw = self.downsample(x, hw)
        return merged, merged_hw, x


class SwinTransformer(nn.Module):
    """Patch embedding + stages; returns ``norm{i}``-normalised NCHW maps for ``out_indices``.

    Stage i's output (before its patch merging) has ``embed_dims·2^i`` channels and stride
    ``patch·2^i``.
    """

    def __init__(self, embed_dims: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7,
                 mlp_ratio: int = 4, patch_size: int = 4,
                 out_indices: Sequence[int] = (1, 2, 3)) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError("depths and num_heads need one entry per stage")
        self.out_indices = tuple(out_indices)
        self.patch_embed = PatchEmbed(embed_dims, patch_size)
        channels = [embed_dims * 2 ** i for i in range(len(depths))]
        self.stages = nn.ModuleList(
            SwinStage(channels[i], num_heads[i], depths[i], window_size, mlp_ratio,
                      downsample=i < len(depths) - 1)
            for i in range(len(depths)))
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(channels[i]))
        self.out_channels = tuple(channels[i] for i in self.out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, hw = self.patch_embed(x)
        outs = []
        for i in range(max(self.out_indices) + 1):
            x, next_hw, out = self.stages[i](x, hw)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(out)
                outs.append(out.transpose(1, 2).reshape(out.shape[0], -1, *hw))
            hw = next_hw
        return outs
