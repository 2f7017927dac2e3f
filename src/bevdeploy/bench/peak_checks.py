"""Warnings that a bench's shares of peak and its floors cannot be read as efficiency.

A share of peak, and a floor, are only meaningful when the peak is right. On a shared machine
it is not always: a peak measured while neighbours were busy is too low, and a module then
appears to run above 100 % of it (a user once read "289 % of peak" off such a table); an
environment override can also pin a library to older kernels (``bench.machine``). Three
symptoms are checked:

* a peak problem measured before the variants and again after them disagrees by more than
  ``PEAK_SPREAD`` (the machine's load changed during the run);
* a dense module's achieved rate exceeds the peak it is measured against: its engine's peak at
  the precision it computes in (``BenchReport.peak_of``), which no module of that engine and
  precision can beat. Where only the float32 GEMM peak is known, an INT8 module is exempt (its
  MACs are 8-bit products);
* an instruction-set override is set in the environment (``bench.machine.ISA_OVERRIDES``).
"""

from __future__ import annotations

from bevdeploy.bench.machine import override_warnings
from bevdeploy.bench.peaks import Peaks
from bevdeploy.bench.report import BenchReport

PEAK_SPREAD = 0.10  # relative disagreement of two measurements of one peak that is warned about


def peak_warnings(report: BenchReport, before: Peaks, after: Peaks) -> list[str]:
    """The warnings for ``report`` whose peaks were measured as ``before`` and ``after``
    around the variants (``report.peaks`` is the faster of each pair)."""
    warnings = []
    later = {(r.engine, r.precision, r.kernel): r for r in after.rates}
    moved = []
    for first in before.rates:
        second = later.get((first.engine, first.precision, first.kernel))
        if second is None:
            continue
        spread = abs(first.gflops - second.gflops) / max(first.gflops, second.gflops)
        if spread > PEAK_SPREAD:
            moved.append(f"{first.engine} {first.precision} {first.kernel} "
                         f"({first.gflops:.0f} before, {second.gflops:.0f} after, {spread:.0%})")
    if moved:
        warnings.append("peaks measured before and after the variants differ by more than "
                        f"{PEAK_SPREAD:.0%}: {'; '.join(moved)}: the machine's load changed "
                        "during the run; treat every time, share and floor as noisy")
    for result in report.results:
        for module, rate in report.gflops(result).items():
            peak = report.peak_of(result, module)
            precision = result.module_precisions.get(module, result.precision)
            measured_own = report.peaks is not None and result.engine is not None and \
                report.peaks.peak(result.engine, precision) is not None
            if not measured_own and "int8" in precision:
                continue
            if rate > peak:
                against = (f"the measured {result.engine} {precision} peak" if measured_own
                           else "the measured GEMM peak")
                warnings.append(f"{result.variant.label}: {precision} module {module} ran at "
                                f"{rate:.0f} GFLOP/s, above {against} {peak:.0f}: the peak was "
                                "measured while the machine was busy or is not the kernel this "
                                "module runs; its % column is not an efficiency")
    return warnings + override_warnings(report.isa_overrides)
