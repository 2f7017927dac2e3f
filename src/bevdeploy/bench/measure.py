"""Measurement helpers of ``bench``: per-frame statistics, the process's resident memory, and
the identity of the CPU an absolute time belongs to."""

from __future__ import annotations

import os
import resource
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Stat:
    """Median and 90th percentile (linear interpolation) of per-frame milliseconds."""

    median_ms: float
    p90_ms: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Stat":
        if not samples:
            raise ValueError("no samples")
        return cls(float(statistics.median(samples)), float(np.percentile(samples, 90)))


# Instruction sets that decide what INT8 and FP16/BF16 can gain on a CPU: without a VNNI
# extension ONNX Runtime's u8s8 convolutions use AVX2's vpmaddubsw, about 2× the FP32 rate at best.
ISA_FEATURES = ("avx2", "fma", "avx512f", "avx512vnni", "avxvnni", "avx512bf16", "amx-int8",
                "amx-bf16")


def cpu_identity() -> dict[str, Any]:
    """The CPU an absolute time belongs to: its model name (Linux ``/proc/cpuinfo``), LLVM's
    name for its micro-architecture and which of ``ISA_FEATURES`` it has (llvmlite, numba's
    own backend, so no extra dependency)."""
    import llvmlite.binding as llvm

    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    features = llvm.get_host_cpu_features()
    return {"model": model, "microarchitecture": llvm.get_host_cpu_name(),
            "isa": [f for f in ISA_FEATURES if features.get(f, False)]}


def current_rss_mb() -> float | None:
    """Resident set now (Linux ``/proc``), or ``None`` where that is not available."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """The process's resident-set high-water mark: Linux's ``VmHWM``, which belongs to the
    process's own address space. (``ru_maxrss`` survives ``exec``, so a child spawned by a
    large parent would report the parent's size; it is only the fallback elsewhere.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB
