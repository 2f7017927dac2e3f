"""The runtime's kernel API: the stages outside ONNX, one function each.

=============  ===========================================================================
``normalize``  raw uint8 images → (1, N, 3, H, W) resized, cropped, mean/std-normalized
``depth_map``  points → (N, 1, H, W) sparse camera depth (latest point in order wins a pixel)
``geometry``   calibration → ``BevPoolPlan`` (frustum points sorted by BEV cell, intervals)
``bev_pool``   depth weights × NHWC features pooled per plan interval → (1, C·nz, nx, ny)
``in_range``   points → the points strictly inside the point-cloud range, in order
``voxelize``   points → voxel means, (x, y, z) coordinates, counts (first-appearance order)
``decode``     head outputs → boxes in the bevdeploy convention, scores, labels
=============  ===========================================================================

All arrays are numpy. These are the CPU implementations (``kernels.cpu``); the CUDA implementations
(``kernels.cuda``, Triton on torch tensors) sit beside them with the same names and arguments, and
parity tests hold both to each other and to the PyTorch reference. ``kernels_for`` is the one place
that picks a set for a device; a stage calls it once, when it is built. ``bev_pool`` takes an
optional ``out=`` buffer, which a pipeline should reuse: at nuScenes shapes a fresh output is 41 MB
of new pages per frame. ``frustum`` exposes the frustum the geometry places, so that parity tools
can compare it with the reference's. Every compiled kernel releases the GIL (numba ``nogil``), so
the pipeline's concurrent schedules overlap them with Python threads.
"""

from __future__ import annotations

from types import ModuleType

from bevdeploy.runtime.kernels import cpu
from bevdeploy.runtime.kernels.cpu import (BevPoolPlan, bev_pool, decode, depth_map, frustum,
                                           geometry, in_range, normalize, voxelize)

__all__ = ["BevPoolPlan", "bev_pool", "decode", "depth_map", "frustum", "geometry", "in_range",
           "kernels_for", "normalize", "voxelize"]


def kernels_for(device: str | None) -> ModuleType:
    """The kernel set that works on ``device``: ``None`` is the host (``kernels.cpu``: numpy
    arrays, numba); a torch device string is ``kernels.cuda`` (Triton on torch tensors of that
    device; ``"cpu"`` runs the same kernels in Triton's interpreter, how they are tested without
    a GPU). ``kernels.cuda`` is imported only when asked for: it needs torch and triton."""
    if device is None:
        return cpu
    from bevdeploy.runtime.kernels import cuda

    return cuda
