"""CPU implementations of the runtime kernels: numba for the per-point and per-cell loops,
numpy for the small array maths, PIL for the reference's image resize.

Every kernel validates its arguments before compiled code touches them and raises
``bevdeploy.errors.InputError`` naming the kernel and the argument.

**OpenMP wait policy.** numba's parallel kernels run on its OpenMP threading layer (GNU
libgomp), whose threads by default spin at every barrier before sleeping. The SCN executor
alone crosses hundreds of barriers per frame, and whenever another thread of the pipeline or
another process holds one of the cores, a spinning thread burns the time its partner needs
(measured: docs/bench/notes.md#openmp-wait-policy). So ``OMP_WAIT_POLICY=PASSIVE`` is the
default here (set before numba loads libgomp, at the first parallel
kernel; a value the user exported wins, and a libgomp another library loaded earlier keeps its
own).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bevdeploy.runtime.kernels.cpu.bevpool import bev_pool  # noqa: E402
from bevdeploy.runtime.kernels.cpu.decode import decode  # noqa: E402
from bevdeploy.runtime.kernels.cpu.depth import depth_map  # noqa: E402
from bevdeploy.runtime.kernels.cpu.geometry import BevPoolPlan, frustum, geometry  # noqa: E402
from bevdeploy.runtime.kernels.cpu.normalize import normalize  # noqa: E402
from bevdeploy.runtime.kernels.cpu.voxelize import in_range, voxelize  # noqa: E402

__all__ = ["BevPoolPlan", "bev_pool", "decode", "depth_map", "frustum", "geometry", "in_range",
           "normalize", "voxelize"]
