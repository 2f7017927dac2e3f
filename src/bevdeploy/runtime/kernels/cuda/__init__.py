"""CUDA implementations of the runtime kernels (Triton), beside ``kernels.cpu``.

Same names, arguments and semantics as the CPU kernels; the data arguments are torch tensors
on the device and the results stay there. Host-side values (calibration matrices, grid
bounds, preset constants) are passed as on the CPU, as numpy arrays or Python values: they
are a few hundred bytes per frame, uploaded through pinned memory without blocking.

==============  ==================================  =============================================
kernel          device tensors in                   device tensors out; how it is built
==============  ==================================  =============================================
``normalize``   images (N, H0, W0, 3) uint8          (1, N, 3, H, W) float32, bit-equal to the
                                                     CPU's (PIL's fixed-point bicubic); Triton
``depth_map``   points (P, F) float32                (N, 1, H, W) float32, bit-equal (latest
                                                     point wins via ``atomic_max``); Triton
``geometry``    — (calibration on the host,          ``DeviceBevPoolPlan``: the CPU plan in CSR
                ``device=`` says where)              form over all cells, sizes fixed by the
                                                     shapes; Triton + torch's stable sort
``bev_pool``    depth (N, D, h, w), feats            (1, C·nz, nx, ny) in ``out``'s or the
                (N, h, w, C): float16/bfloat16/      inputs' dtype; float32 accumulation by
                float32; a ``DeviceBevPoolPlan``     default (``accumulate=``); Triton
``in_range``    points (P, F) float32                the points inside the range, in order
                                                     (its length syncs); plain torch
``voxelize``    points (P, F) float32                feats, coords, counts at the fixed
                                                     capacity min(P, max_voxels), and the voxel
                                                     count as a 0-d tensor; bit-equal rows in
                                                     the CPU's order; Triton + torch's sort
``decode``      the head's outputs, float32          boxes, scores, labels (filtered, so it
                                                     syncs: the frame's end); plain torch
==============  ==================================  =============================================

Nothing but ``in_range`` and ``decode`` waits for the GPU: no count or size goes back to the host, so a frame
up to the head can be queued asynchronously. For CUDA-graph capture: ``normalize``,
``bev_pool`` and ``voxelize`` upload nothing per call (their constants are cached on the
device), while ``geometry`` and ``depth_map`` upload the frame's calibration, which a graph
would replay from a stale host buffer: build the plan outside the graph (it is per rig, or per
frame with ego motion) and give ``depth_map`` a rig that does not change. On CPU tensors the
same Triton kernels run in Triton's interpreter (see ``_launch``), which is how their parity
with the CPU kernels is tested on machines without a GPU. Importing this package needs torch
and triton (the ``gpu`` extra); ``bevdeploy.runtime.kernels`` itself stays torch-free.
"""

from bevdeploy.runtime.kernels.cuda.bevpool import bev_pool
from bevdeploy.runtime.kernels.cuda.decode import decode
from bevdeploy.runtime.kernels.cuda.depth import depth_map
from bevdeploy.runtime.kernels.cuda.geometry import DeviceBevPoolPlan, geometry
from bevdeploy.runtime.kernels.cuda.normalize import normalize
from bevdeploy.runtime.kernels.cuda.voxelize import in_range, voxelize

__all__ = ["DeviceBevPoolPlan", "bev_pool", "decode", "depth_map", "geometry", "in_range",
           "normalize", "voxelize"]
