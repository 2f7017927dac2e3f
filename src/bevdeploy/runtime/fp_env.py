"""The floating-point mode the runtime computes in, and the caller's, kept apart.

**Subnormals are flushed while the runtime computes.** Activations of a random-weight package
hold subnormal floats (below 1.2e-38: the r50 package's vtransform and fuser inputs are 2–4 %
subnormal), and every x86 FPU operation on one takes a microcode assist: FP32 convolutions over
them ran 3–7× slower (docs/bench/notes.md#openvino-vs-onnx-runtime-on-the-cpu). Both CPU
runtimes are told to flush them (``session.set_denormal_as_zero``,
``CPU_DENORMALS_OPTIMIZATION``) on their own threads; ``flush_subnormals`` does the same for the
threads that run the pipeline's stages (the caller's, the branch worker's), where the numba
kernels and the SCN executor's GEMMs run: x86's MXCSR flush-to-zero and denormals-are-zero bits,
set for the block and restored after. Flushing changes only values below 1.2e-38.

**The caller's mode is theirs.** Both runtimes also set their flush mode on the thread that loads
or runs a model. Left there, it would change every later float operation of the caller's thread:
numpy, numba kernels and the user's own code would silently read subnormals as zero after a
``Pipeline`` was built (hypothesis's float strategies refuse to run in such a process).
``callers_fp_env`` saves the thread's environment with C's ``fegetenv`` and gives it back with
``fesetenv`` when a runtime call returns.

Both need C's ``fegetenv``/``fesetenv``; setting the flush bits also needs x86-64, whose
``fenv_t`` (glibc and musl alike) ends with the MXCSR word, checked against its power-on value
before it is ever written. Elsewhere the mode is left as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

_ENV_BYTES = 64  # ≥ sizeof(fenv_t) on every libc here (x86-64: 32, aarch64: 8)
_MXCSR_OFFSET = 28  # x86-64 fenv_t: the x87 environment (28 bytes), then MXCSR
_MXCSR_EXCEPTION_MASKS = 0x1F80  # set in MXCSR unless a program unmasked FP exceptions
_FTZ_DAZ = (1 << 15) | (1 << 6)  # MXCSR flush-to-zero | denormals-are-zero


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


@lru_cache(maxsize=1)
def _mxcsr_in_fenv() -> bool:
    """Whether this thread's ``fenv_t`` holds MXCSR where x86-64's layout puts it: the word at
    that offset carries the exception masks every x86-64 thread starts with."""
    libm = _libm()
    if libm is None or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    env = ctypes.create_string_buffer(_ENV_BYTES)
    libm.fegetenv(env)
    (word,) = struct.unpack_from("<I", env, _MXCSR_OFFSET)
    return word & _MXCSR_EXCEPTION_MASKS == _MXCSR_EXCEPTION_MASKS


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


@contextmanager
def flush_subnormals() -> Iterator[None]:
    """Run the block with subnormal inputs and results read as zero on this thread (x86-64),
    then restore the thread's previous mode."""
    if not _mxcsr_in_fenv():
        yield
        return
    libm = _libm()
    saved = ctypes.create_string_buffer(_ENV_BYTES)
    libm.fegetenv(saved)
    flushing = ctypes.create_string_buffer(saved.raw, _ENV_BYTES)
    (word,) = struct.unpack_from("<I", flushing, _MXCSR_OFFSET)
    struct.pack_into("<I", flushing, _MXCSR_OFFSET, word | _FTZ_DAZ)
    libm.fesetenv(flushing)
    try:
        yield
    finally:
        libm.fesetenv(saved)
