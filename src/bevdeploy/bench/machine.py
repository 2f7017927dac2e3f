"""What a rate measured on this machine depends on besides the CPU: the BLAS libraries loaded
and the kernels they picked, and the environment variables that override an engine's choice of
instruction set.

The trap this guards against (docs/bench/notes.md#roofline): with ``OPENBLAS_CORETYPE=Haswell``
left in the environment of an AVX-512 machine, numpy's OpenBLAS ran its AVX2 kernels (SGEMM
225 GFLOP/s instead of 420), so a "GEMM peak" measured through it was half the machine's, ONNX
Runtime's FP32 modules showed 142–173 % of it, and the SCN executor, whose GEMMs go through the
same kind of library, ran 440 ms instead of 286. A bench therefore prints each BLAS with the
core type it runs (threadpoolctl's ``architecture``) and warns about every override it finds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Variables that make a library run other kernels than the CPU's best, and what they steer.
ISA_OVERRIDES: dict[str, str] = {
    "OPENBLAS_CORETYPE": "OpenBLAS's kernels (numpy's and SciPy's BLAS; the SCN executor's GEMMs)",
    "MKL_ENABLE_INSTRUCTIONS": "MKL's instruction set",
    "MKL_DEBUG_CPU_TYPE": "MKL's code path",
    "ONEDNN_MAX_CPU_ISA": "oneDNN's instruction set (OpenVINO's and PyTorch's CPU kernels)",
    "DNNL_MAX_CPU_ISA": "oneDNN's instruction set (OpenVINO's and PyTorch's CPU kernels)",
    "ATEN_CPU_CAPABILITY": "PyTorch's vectorised kernels (the eager reference)",
    "NPY_DISABLE_CPU_FEATURES": "numpy's SIMD loops",
    "NUMBA_CPU_NAME": "the CPU numba compiles the kernels for",
    "NUMBA_CPU_FEATURES": "the instruction set numba compiles the kernels for",
}

_BLAS_FIELDS = ("internal_api", "version", "architecture", "num_threads", "prefix", "filepath")


def blas_libraries() -> list[dict[str, Any]]:
    """Every BLAS loaded in this process after numpy's and SciPy's (the one numba's ``np.dot``
    binds, hence the SCN executor's) are: threadpoolctl's ``internal_api``, ``version``,
    ``architecture`` (the core type whose kernels it runs), ``num_threads``, ``prefix`` and
    ``filepath``."""
    import numpy  # noqa: F401  (its BLAS loaded)
    import scipy.linalg.cython_blas  # noqa: F401  (numba's BLAS loaded)
    from threadpoolctl import threadpool_info

    return [{k: info.get(k) for k in _BLAS_FIELDS} for info in threadpool_info()
            if info.get("user_api") == "blas"]


def isa_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``ISA_OVERRIDES`` variables set (non-empty) in ``environ`` (default: this
    process's environment), with their values."""
    env = os.environ if environ is None else environ
    return {name: env[name] for name in ISA_OVERRIDES if env.get(name)}


def override_warnings(overrides: Mapping[str, str]) -> list[str]:
    """One warning per override: what it steers, and that the peaks and times it touches are
    not this CPU's best."""
    return [f"{name}={value} is set: it overrides {ISA_OVERRIDES[name]}; the peaks and times "
            "measured through it may not be this CPU's (unset it to measure the machine)"
            for name, value in overrides.items()]


def describe_blas(library: Mapping[str, Any]) -> str:
    """``openblas 0.3.30, SkylakeX kernels, 2 threads (scipy.libs)``: the folder names whose
    copy it is (numpy's, SciPy's, or one another package brought along)."""
    version = library.get("version") or "(version unknown)"
    folder = Path(library["filepath"]).parent.name if library.get("filepath") else "?"
    return (f"{library.get('internal_api')} {version}, "
            f"{library.get('architecture') or 'unknown'} kernels, "
            f"{library.get('num_threads')} threads ({folder})")
