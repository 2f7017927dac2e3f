"""Argument checks shared by the CPU kernels.

The compiled loops index raw memory without bounds checks, so every kernel validates shapes
and dtypes before it calls one: a misshaped input must become an ``InputError`` naming the
kernel and the argument, never an out-of-bounds read or a segmentation fault.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from bevdeploy import vocabulary
from bevdeploy.errors import InputError


def source(kernel: str) -> str:
    """The ``path`` of a kernel's errors: kernels see arrays, not files."""
    return f"<kernel {kernel}>"


def as_array(value: ArrayLike, kernel: str, field: str, dtype: DTypeLike,
             shape: Sequence[int | None]) -> np.ndarray:
    """``value`` as a C-contiguous array of ``dtype`` whose shape matches ``shape`` (``None``
    matches any size on that axis); copies only when the dtype or layout differs."""
    try:
        array = np.ascontiguousarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise InputError(f"cannot be read as {np.dtype(dtype).name}: {exc}",
                         path=source(kernel), field=field) from None
    ok = array.ndim == len(shape) and all(s is None or s == a
                                          for s, a in zip(shape, array.shape, strict=True))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise InputError(f"expected shape {want}, got {array.shape}", path=source(kernel),
                         field=field)
    return array


def finite(array: np.ndarray, kernel: str, field: str) -> np.ndarray:
    """``array`` unchanged; raises unless every element is finite."""
    if not np.all(np.isfinite(array)):
        raise InputError("contains NaN or Inf", path=source(kernel), field=field)
    return array


def positive_ints(value: Sequence[int] | np.ndarray, length: int, kernel: str, field: str
                  ) -> tuple[int, ...]:
    """``length`` positive integers (a tuple or an integer array)."""
    items = np.asarray(value).reshape(-1)
    if items.size != length or not np.issubdtype(items.dtype, np.integer) or np.any(items <= 0):
        raise InputError(f"expected {length} positive integers, got {np.asarray(value).tolist()}",
                         path=source(kernel), field=field)
    return tuple(int(v) for v in items)


def cell_count(bound: Sequence[float], kernel: str, field: str) -> int:
    """Cells of ``[lo, hi, step]`` by the one rule of every grid (``vocabulary.cell_count``), as
    an ``InputError`` naming the kernel's argument when it is not a positive whole number."""
    lo, hi, step = (float(v) for v in bound)
    try:
        return vocabulary.cell_count(lo, hi, step)
    except ValueError:
        raise InputError(f"[lo, hi, step] = {[lo, hi, step]} is not a whole number of cells",
                         path=source(kernel), field=field) from None
