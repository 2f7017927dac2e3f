"""Camera image preprocessing on the GPU: PIL's bicubic resize, the crop and mean/std, from
uint8, bit for bit the CPU kernel's result.

The CPU kernel resizes with PIL (the reference's filter), so this one reproduces PIL's
algorithm exactly (``libImaging/Resample.c``): per output column (row) the taps of the cubic
``a = −0.5`` widened by the downscale factor, normalised in float64 and rounded to 22-bit
fixed point; a horizontal pass over the input rows to uint8 (``(Σ pixel·tap + 2²¹) >> 22``,
clamped to 0..255), then the same vertically over that intermediate. The taps depend only on
the sizes and are computed on the host with PIL's float64 arithmetic, once per size.

Two kernels, each computing only what the crop keeps:

1. ``_resample_rows``: the horizontal pass, for the crop's columns, over just the input rows
   the crop's vertical taps reach, into a small uint8 intermediate (PIL's own intermediate
   is uint8 too, so nothing is lost by storing it).
2. ``_resample_columns``: the vertical pass for the crop's rows, then ``(v − mean) / std`` in
   float32 (IEEE division, as numba's), written as (1, N, 3, H, W).

Two kernels rather than one fused: a fused kernel would recompute every intermediate value
once per vertical tap that reads it (11 times at nuScenes' 0.48 scale, 27 at ``tiny``'s 0.16);
the intermediate costs one small uint8 round trip through the cache instead.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import triton
import triton.language as tl
from numpy.typing import ArrayLike

from bevdeploy.runtime.kernels.checks import check_normalize_params
from bevdeploy.runtime.kernels.cuda._launch import (device_tensor, kernel, lanes, sum_combine,
                                                    upload)

_KERNEL = "normalize"
_BLOCK = 256
_PRECISION_BITS = 22  # PIL's 32 − 8 − 2
_CUBIC_A = -0.5


def _bicubic(x: np.ndarray) -> np.ndarray:
    """PIL's ``bicubic_filter``, term by term in its order (float64)."""
    x = np.abs(x)
    near = ((_CUBIC_A + 2.0) * x - (_CUBIC_A + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * _CUBIC_A
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=16)
def pil_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PIL's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for a bicubic resize of
    ``in_size`` → ``out_size`` pixels: per output pixel the first input pixel (int32), the
    number of taps (int32) and the (out_size, ksize) int32 fixed-point taps (0 past the
    count)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    count = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - first
    x = np.arange(ksize)
    used = x[None, :] < count[:, None]
    weights = np.where(used, _bicubic(((x[None, :] + first[:, None]) - center[:, None] + 0.5)
                                      * (1.0 / filterscale)), 0.0)
    total = np.zeros(out_size)
    for k in range(ksize):  # PIL sums the taps one by one; a pairwise sum rounds otherwise
        total += weights[:, k]
    weights = np.where(total[:, None] != 0.0, weights / np.where(total == 0.0, 1.0, total)[:, None],
                       weights)
    scaled = weights * (1 << _PRECISION_BITS)
    taps = np.trunc(np.where(weights < 0, scaled - 0.5, scaled + 0.5)).astype(np.int32)
    return first.astype(np.int32), count.astype(np.int32), taps


@lru_cache(maxsize=16)
def _crop_taps(raw_size: tuple[int, int], resized_size: tuple[int, int],
               crop_offset: tuple[int, int], image_size: tuple[int, int],
               mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
               ) -> tuple[int, int, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...],
                          torch.Tensor]:
    """On ``device``, once per configuration: the intermediate's row count and first input
    row, the (first, count, taps) of the crop's columns and of its rows (rows relative to the
    first one), and mean then std. Nothing is uploaded per frame, so a CUDA graph can capture
    ``normalize``."""
    (raw_h, raw_w), (rh, rw), (top, left), (h, w) = (raw_size, resized_size, crop_offset,
                                                     image_size)
    x_first, x_count, x_taps = (a[left:left + w] for a in pil_taps(raw_w, rw))
    y_first, y_count, y_taps = (a[top:top + h] for a in pil_taps(raw_h, rh))
    row0 = int(y_first.min())
    rows = int((y_first + y_count).max()) - row0
    columns = tuple(upload(a, device, torch.int32) for a in (x_first, x_count, x_taps))
    lines = tuple(upload(a, device, torch.int32) for a in (y_first - row0, y_count, y_taps))
    return rows, row0, columns, lines, upload(mean + std, device, torch.float32)


@kernel(exact=True)
def _resample_rows(images, tmp, first, count, taps, raw_height, raw_width, row0, rows, width,
                   total, KSIZE: tl.constexpr, KBLOCK: tl.constexpr, BLOCK: tl.constexpr):
    q = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # (camera, row, column), flat
    live = q < total
    x = q % width
    nr = q // width  # camera · rows + row
    n = nr // rows
    start = tl.load(first + x, mask=live, other=0)
    t = tl.arange(0, KBLOCK)
    used = live[:, None] & (t[None, :] < tl.load(count + x, mask=live, other=0)[:, None])
    k = tl.load(taps + x[:, None] * KSIZE + t[None, :], mask=used, other=0)
    source_row = n * raw_height + row0 + (nr - n * rows)
    src = images + (source_row.to(tl.int64)[:, None] * raw_width + start[:, None]
                    + t[None, :]) * 3
    for c in tl.static_range(3):
        pixel = tl.load(src + c, mask=used, other=0).to(tl.int32)
        acc = tl.reduce(pixel * k, 1, sum_combine) + (1 << 21)
        value = tl.minimum(tl.maximum(acc >> 22, 0), 255)
        tl.store(tmp + q.to(tl.int64) * 3 + c, value.to(tl.uint8), mask=live)


@kernel(exact=True)
def _resample_columns(tmp, out, first, count, taps, stats, rows, height, width, total,
                      KSIZE: tl.constexpr, KBLOCK: tl.constexpr, BLOCK: tl.constexpr):
    q = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # (camera, row, column), flat
    live = q < total
    x = q % width
    ny = q // width  # camera · height + row
    n = ny // height
    y = ny - n * height
    t = tl.arange(0, KBLOCK)
    used = live[:, None] & (t[None, :] < tl.load(count + y, mask=live, other=0)[:, None])
    k = tl.load(taps + y[:, None] * KSIZE + t[None, :], mask=used, other=0)
    tmp_row = n * rows + tl.load(first + y, mask=live, other=0)
    src = tmp + ((tmp_row[:, None] + t[None, :]).to(tl.int64) * width + x[:, None]) * 3
    for c in tl.static_range(3):
        pixel = tl.load(src + c, mask=used, other=0).to(tl.int32)
        acc = tl.reduce(pixel * k, 1, sum_combine) + (1 << 21)
        value = tl.minimum(tl.maximum(acc >> 22, 0), 255).to(tl.float32)
        value = tl.math.div_rn(value - tl.load(stats + c), tl.load(stats + 3 + c))
        tl.store(out + ((n * 3 + c) * height + y).to(tl.int64) * width + x, value, mask=live)


def normalize(images: torch.Tensor, resize: float, resized_size: tuple[int, int],
              crop_offset: tuple[int, int], image_size: tuple[int, int], mean: ArrayLike,
              std: ArrayLike) -> torch.Tensor:
    """(N, H0, W0, 3) uint8 RGB tensor on the device → (1, N, 3, H, W) float32 network input
    on the same device, equal to ``kernels.cpu.normalize``'s.

    Args: as ``kernels.cpu.normalize``; only ``images`` is a (device) tensor.
    """
    imgs = device_tensor(images, _KERNEL, "images", (torch.uint8,), (None, None, None, 3))
    n, raw_h, raw_w, _ = imgs.shape
    rh, rw, h, w, top, left, mean32, std32 = check_normalize_params(
        raw_h, raw_w, resize, resized_size, crop_offset, image_size, mean, std)

    device = imgs.device
    out = torch.empty((1, n, 3, h, w), dtype=torch.float32, device=device)
    if n == 0:
        return out
    rows, row0, x_taps, y_taps, stats = _crop_taps(
        (raw_h, raw_w), (rh, rw), (top, left), (h, w), tuple(mean32.tolist()),
        tuple(std32.tolist()), device)
    tmp = torch.empty((n, rows, w, 3), dtype=torch.uint8, device=device)
    block = lanes(device, _BLOCK)
    kx, ky = x_taps[2].shape[1], y_taps[2].shape[1]
    _resample_rows[(triton.cdiv(n * rows * w, block),)](
        imgs, tmp, *x_taps, raw_h, raw_w, row0, rows, w, n * rows * w, KSIZE=kx,
        KBLOCK=triton.next_power_of_2(kx), BLOCK=block)
    _resample_columns[(triton.cdiv(n * h * w, block),)](
        tmp, out, *y_taps, stats, rows, h, w, n * h * w, KSIZE=ky,
        KBLOCK=triton.next_power_of_2(ky), BLOCK=block)
    return out
