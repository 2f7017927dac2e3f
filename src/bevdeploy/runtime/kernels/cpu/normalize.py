"""Camera image preprocessing on the CPU: resize, bottom-centre crop, mean/std.

The resize is PIL's ``Image.resize`` with BICUBIC, the reference's own filter (antialiased
convolution when shrinking, uint8 result; docs/reference.md#camera-input) — CUDA-BEVFusion
substitutes a fixed-point bilinear, which is one reason its inputs differ from the model's. PIL
releases the GIL while resampling, so the cameras resize on a thread pool as wide as numba's thread
setting; the crop, the float32 ``(x − mean) / std`` and the HWC → CHW transpose are one fused
compiled pass that writes the network tensor directly.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

from bevdeploy.errors import InputError
from bevdeploy.runtime.kernels.checks import as_array, check_normalize_params, source

_KERNEL = "normalize"


@numba.njit(parallel=True, cache=True, nogil=True)
def _normalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray, out: np.ndarray) -> None:
    num_cameras, height, width, _ = images.shape
    for t in numba.prange(num_cameras * height):
        n = t // height
        y = t - n * height
        for c in range(3):
            for x in range(width):
                out[0, n, c, y, x] = (np.float32(images[n, y, x, c]) - mean[c]) / std[c]


def _resize_crop(image: np.ndarray, resized_size: tuple[int, int], crop_offset: tuple[int, int],
                 image_size: tuple[int, int]) -> np.ndarray:
    (rh, rw), (top, left), (h, w) = resized_size, crop_offset, image_size
    resized = Image.fromarray(image).resize((rw, rh), Image.BICUBIC)
    return np.asarray(resized.crop((left, top, left + w, top + h)))


def normalize(images: ArrayLike, resize: float, resized_size: tuple[int, int],
              crop_offset: tuple[int, int], image_size: tuple[int, int], mean: ArrayLike,
              std: ArrayLike) -> np.ndarray:
    """(N, H0, W0, 3) uint8 RGB camera images → (1, N, 3, H, W) float32 network input.

    Args:
        images: raw images, one per camera.
        resize: the scale factor; ``resized_size`` must be ``(int(H0·resize), int(W0·resize))``,
            which catches images of another raw size than the package was exported for.
        resized_size: (h, w) after the resize.
        crop_offset: (top, left) of the crop in the resized image.
        image_size: (H, W) of the crop.
        mean, std: (3,) per RGB channel on the 0..255 scale.
    """
    raw_images = np.asarray(images)
    if raw_images.dtype != np.uint8:
        raise InputError(f"expected uint8 images, got {raw_images.dtype}", path=source(_KERNEL),
                         field="images")
    imgs = as_array(raw_images, _KERNEL, "images", np.uint8, (None, None, None, 3))
    raw = imgs.shape[1:3]
    rh, rw, h, w, top, left, mean32, std32 = check_normalize_params(
        raw[0], raw[1], resize, resized_size, crop_offset, image_size, mean, std)

    n = imgs.shape[0]
    with ThreadPoolExecutor(max_workers=max(1, min(n, numba.get_num_threads()))) as pool:
        crops = list(pool.map(lambda img: _resize_crop(img, (rh, rw), (top, left), (h, w)),
                              imgs))
    out = np.empty((1, n, 3, h, w), dtype=np.float32)
    if n:
        _normalize(np.stack(crops), mean32, std32, out)
    return out
