"""Whether the CPU kernels are compiled already (numba's on-disk cache), so that a command can
say so before a first frame that would otherwise sit silent for tens of seconds.

Every kernel is ``numba.njit(cache=True)``: the first run on a machine compiles them (the
README's first command measured 46 s for the first demo frame on two cores) and later runs load
them from numba's cache. ``uncached_kernels`` asks each kernel's own cache for its index file,
the file numba reads before compiling, so the answer follows numba's cache location rules
(beside the sources, or the user-wide directory when those are read-only, or
``NUMBA_CACHE_DIR``). It touches numba's private cache objects; where they are not what this
version of numba has, it reports nothing rather than guess.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from numba.core.registry import CPUDispatcher

KERNEL_MODULES = ("bevpool", "decode", "depth", "geometry", "normalize", "sparse_conv",
                  "voxelize")


def _dispatchers(module: ModuleType) -> list[CPUDispatcher]:
    return [v for v in vars(module).values() if isinstance(v, CPUDispatcher)]


def uncached_kernels() -> list[str]:
    """The names of the cached kernels whose compiled code is not in numba's cache yet
    (empty when everything is cached, or when numba's cache cannot be inspected)."""
    missing = []
    for name in KERNEL_MODULES:
        module = importlib.import_module(f"bevdeploy.runtime.kernels.cpu.{name}")
        for dispatcher in _dispatchers(module):
            cache = getattr(dispatcher, "_cache", None)
            index = getattr(getattr(cache, "_cache_file", None), "_index_path", None)
            if index is not None and not os.path.exists(index):
                missing.append(f"{name}.{dispatcher.py_func.__name__}")
    return missing
