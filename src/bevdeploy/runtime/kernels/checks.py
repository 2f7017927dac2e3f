"""Argument checks shared by the CPU kernels (``kernels.cpu``) and the CUDA kernels
(``kernels.cuda``), so that both sets refuse a bad argument with the same ``InputError``.

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

# The kernels whose host-side arguments both sets check here.
_DEPTH = "depth_map"
_GEOMETRY = "geometry"
_NORMALIZE = "normalize"


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


def check_normalize_params(raw_h: int, raw_w: int, resize: float, resized_size: tuple[int, int],
                           crop_offset: tuple[int, int], image_size: tuple[int, int],
                           mean: ArrayLike, std: ArrayLike
                           ) -> tuple[int, int, int, int, int, int, np.ndarray, np.ndarray]:
    """The resize/crop/statistics checks both normalize kernels (CPU and CUDA) make, in one
    place: returns ``rh, rw, h, w, top, left, mean32, std32``."""
    rh, rw = positive_ints(resized_size, 2, _NORMALIZE, "resized_size")
    if (int(raw_h * resize), int(raw_w * resize)) != (rh, rw):
        raise InputError(f"images are {(raw_h, raw_w)} (H, W); resizing by {resize} gives "
                         f"{(int(raw_h * resize), int(raw_w * resize))}, not the expected "
                         f"{(rh, rw)}: the camera images do not have the package's raw size",
                         path=source(_NORMALIZE), field="images")
    h, w = positive_ints(image_size, 2, _NORMALIZE, "image_size")
    top, left = (int(v) for v in crop_offset)
    if top < 0 or left < 0 or top + h > rh or left + w > rw:
        raise InputError(f"crop {image_size} at {crop_offset} does not fit in the resized "
                         f"{(rh, rw)} image", path=source(_NORMALIZE), field="crop_offset")
    mean32 = finite(as_array(mean, _NORMALIZE, "mean", np.float32, (3,)), _NORMALIZE, "mean")
    std32 = finite(as_array(std, _NORMALIZE, "std", np.float32, (3,)), _NORMALIZE, "std")
    if np.any(std32 <= 0):
        raise InputError(f"std must be positive, got {std32.tolist()}", path=source(_NORMALIZE),
                         field="std")
    return rh, rw, h, w, top, left, mean32, std32


def check_projection(lidar2image: ArrayLike, img_aug: ArrayLike, image_size: tuple[int, int]
                     ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """``lidar2image`` and ``img_aug`` as finite float64 (N, 4, 4) arrays and the image size as
    two positive ints, or an ``InputError`` naming the bad one; shared with the CUDA kernel,
    which takes the same host-side matrices."""
    l2i = finite(as_array(lidar2image, _DEPTH, "lidar2image", np.float64, (None, 4, 4)),
                 _DEPTH, "lidar2image")
    aug = finite(as_array(img_aug, _DEPTH, "img_aug", np.float64, (l2i.shape[0], 4, 4)),
                 _DEPTH, "img_aug")
    height, width = positive_ints(image_size, 2, _DEPTH, "image_size")
    return l2i, aug, (height, width)


def check_calibration(camera2lidar: ArrayLike, intrinsics: ArrayLike, img_aug: ArrayLike,
                      lidar_aug: ArrayLike
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The geometry's matrices as finite float64 arrays of consistent shapes ((N, 4, 4),
    (N, 3, 3), (N, 4, 4), (4, 4)), or an ``InputError`` naming the bad one; shared with the
    CUDA kernel, which checks its host-side calibration the same way."""
    c2l = finite(as_array(camera2lidar, _GEOMETRY, "camera2lidar", np.float64, (None, 4, 4)),
                 _GEOMETRY, "camera2lidar")
    n = c2l.shape[0]
    k = finite(as_array(intrinsics, _GEOMETRY, "intrinsics", np.float64, (n, 3, 3)), _GEOMETRY,
               "intrinsics")
    aug = finite(as_array(img_aug, _GEOMETRY, "img_aug", np.float64, (n, 4, 4)), _GEOMETRY,
                 "img_aug")
    laug = finite(as_array(lidar_aug, _GEOMETRY, "lidar_aug", np.float64, (4, 4)), _GEOMETRY,
                  "lidar_aug")
    return c2l, k, aug, laug
