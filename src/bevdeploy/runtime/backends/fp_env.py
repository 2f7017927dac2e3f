"""The caller's floating-point environment, kept across the CPU backends' calls.

Both CPU runners flush subnormal floats to zero while they compute (``set_denormal_as_zero``,
``CPU_DENORMALS_OPTIMIZATION``; why: docs/bench/notes.md#openvino-vs-onnx-runtime-on-the-cpu),
and both set that mode (x86's MXCSR FTZ/DAZ bits) on the thread that loads or runs a model, not
only on their own worker threads. Left there, it would change every later float operation of the
caller's thread: numpy, numba kernels and the user's own code would silently read subnormals as
zero after a ``Pipeline`` was built (hypothesis's float strategies refuse to run in such a
process). ``callers_fp_env`` saves the thread's environment with C's ``fegetenv`` and restores
it with ``fesetenv`` when the backend call returns; the runtimes set their mode again at the
start of each run, so their own computation still flushes.

Where the C library offers no ``fegetenv`` (not a glibc/musl/BSD libm), the environment is left
as the runtimes leave it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

_ENV_BYTES = 64  # ≥ sizeof(fenv_t) on every libc here (x86-64 glibc: 32, aarch64: 8)


@lru_cache(maxsize=1)
def _libm() -> Any | None:
    """The C math library with ``fegetenv``/``fesetenv``, or None."""
    name = ctypes.util.find_library("m")
    if name is None:
        return None
    try:
        libm = ctypes.CDLL(name)
        libm.fegetenv.argtypes = libm.fesetenv.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return libm


@contextmanager
def callers_fp_env() -> Iterator[None]:
    """Run the block, then give the calling thread back the floating-point environment
    (rounding, exception masks, flush-to-zero / denormals-are-zero) it had before."""
    libm = _libm()
    if libm is None:
        yield
        return
    saved = ctypes.create_string_buffer(_ENV_BYTES)
    libm.fegetenv(saved)
    try:
        yield
    finally:
        libm.fesetenv(saved)
