"""Warnings that a bench's GFLOP/s column cannot be read as efficiency.

The dense modules' share of the machine's float32 GEMM peak is only meaningful when the peak is
right. On a shared machine it is not always: a peak measured while neighbours were busy is too
low, and a float module then appears to run above 100 % of it (a user once read "289 % of
peak" off such a table). Two symptoms are checked: the peak measured before the variants and
the one measured after them disagree by more than ``PEAK_SPREAD`` (the machine's load changed
during the run), and a float (FP32/FP16) module's achieved rate exceeds the peak, which a float
module cannot do. INT8 modules are exempt: they do their MACs as 8-bit products.
"""

from __future__ import annotations

from bevdeploy.bench.report import BenchReport

PEAK_SPREAD = 0.10  # relative disagreement of the two GEMM measurements that is warned about


def peak_warnings(report: BenchReport, before: float, after: float) -> list[str]:
    """The warnings for ``report`` whose GEMM peak was measured as ``before`` and ``after``
    GFLOP/s around the variants (``report.gemm_gflops`` is the better of the two)."""
    warnings = []
    spread = abs(after - before) / max(before, after)
    if spread > PEAK_SPREAD:
        warnings.append(f"the GEMM peak measured before the variants ({before:.0f} GFLOP/s) "
                        f"and after them ({after:.0f}) differ by {spread:.0%}: the machine's "
                        "load changed during the run; treat every time and share as noisy")
    for result in report.results:
        if "int8" in result.precision:
            continue
        for module, rate in report.gflops(result).items():
            if rate > report.gemm_gflops:
                warnings.append(f"{result.variant.label}: float module {module} ran at "
                                f"{rate:.0f} GFLOP/s, above the measured GEMM peak "
                                f"{report.gemm_gflops:.0f}: the peak was measured while the "
                                "machine was busy; its % column is not an efficiency")
    return warnings
