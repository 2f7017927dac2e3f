"""CPU implementations of the runtime kernels: numba for the per-point and per-cell loops,
numpy for the small array maths, PIL for the reference's image resize.

Every kernel validates its arguments before compiled code touches them and raises
``bevdeploy.errors.InputError`` naming the kernel and the argument.
"""

from bevdeploy.runtime.kernels.cpu.bevpool import bev_pool
from bevdeploy.runtime.kernels.cpu.decode import decode
from bevdeploy.runtime.kernels.cpu.depth import depth_map
from bevdeploy.runtime.kernels.cpu.geometry import BevPoolPlan, frustum, geometry
from bevdeploy.runtime.kernels.cpu.normalize import normalize
from bevdeploy.runtime.kernels.cpu.voxelize import in_range, voxelize

__all__ = ["BevPoolPlan", "bev_pool", "decode", "depth_map", "frustum", "geometry", "in_range",
           "normalize", "voxelize"]
