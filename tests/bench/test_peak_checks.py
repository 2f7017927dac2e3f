"""bench warns when its shares of peak and floors cannot be read as efficiency
(bench.peak_checks): a peak measured before and after the variants disagrees by more than
10 %, a module runs above the peak of its engine and precision (or, where only the float32
GEMM peak is known, a float module above that), or an ISA override is set."""

from __future__ import annotations

from bevdeploy.bench import BenchReport, FrameSource, Variant, VariantResult
from bevdeploy.bench.peak_checks import peak_warnings
from bevdeploy.bench.peaks import PeakRate, Peaks

MATMUL = 10**9  # MACs of the constructed peak problem


def _peaks(**gflops: float) -> Peaks:
    """Peaks whose ``engine_precision`` problem runs at the given GFLOP/s."""
    rates = []
    for key, rate in gflops.items():
        engine, precision = key.rsplit("_", 1)
        ms = 2 * MATMUL / (rate * 1e9) * 1e3
        rates.append(PeakRate(engine, precision, "matmul", "MatMul", MATMUL, ms, ms, 3))
    return Peaks(rates=rates)


def _report(precision: str, fuser_ms: float, peak: float, peaks: Peaks | None = None,
            overrides: dict[str, str] | None = None) -> BenchReport:
    variant = Variant("tiny · onnxruntime · sequential", "tiny", "p", "onnxruntime",
                      "sequential", 2)
    result = VariantResult(variant=variant, precision=precision, weights="w",
                           samples={"fuser": [fuser_ms] * 3, "total": [4 * fuser_ms] * 3},
                           wall_s=0.3, frames=3, distinct_frames=3, peak_rss_mb=900.0,
                           baseline_rss_mb=300.0, geometry_computed=1,
                           engine=None if peaks is None else "onnxruntime",
                           module_precisions={"fuser": precision})
    return BenchReport(results=[result], source=FrameSource("/d"), frames=3, warmup=1,
                       threads=2, gemm_gflops=peak, dense_macs={"tiny": {"fuser": 10**9}},
                       peaks=peaks, isa_overrides=overrides or {})


def test_a_steady_peak_and_float_modules_below_it_give_no_warning() -> None:
    peaks = _peaks(numpy_fp32=100.0, onnxruntime_fp32=100.0)
    report = _report("fp32", fuser_ms=40.0, peak=100.0, peaks=peaks)  # 50 GFLOP/s
    assert peak_warnings(report, before=_peaks(numpy_fp32=95.0), after=peaks) == []


def test_a_peak_that_moved_more_than_ten_percent_is_warned_about() -> None:
    report = _report("fp32", fuser_ms=40.0, peak=100.0)
    [warning] = peak_warnings(report, before=_peaks(numpy_fp32=80.0),
                              after=_peaks(numpy_fp32=100.0))
    assert "numpy fp32 MatMul (80 before, 100 after, 20%)" in warning
    assert "load changed" in warning


def test_a_module_above_its_own_peak_is_warned_about_int8_included() -> None:
    steady = _peaks(numpy_fp32=100.0)
    # no per-engine peak: the float32 GEMM peak; INT8 is exempt from it
    [warning] = peak_warnings(_report("fp32", fuser_ms=10.0, peak=100.0), steady, steady)
    assert "fp32 module fuser ran at 200 GFLOP/s, above the measured GEMM peak 100" in warning
    assert peak_warnings(_report("int8", fuser_ms=10.0, peak=100.0), steady, steady) == []
    # with per-engine peaks an INT8 module is held to its engine's INT8 peak
    peaks = _peaks(numpy_fp32=100.0, onnxruntime_fp32=100.0, onnxruntime_int8=150.0)
    [warning] = peak_warnings(_report("int8", fuser_ms=10.0, peak=100.0, peaks=peaks),
                              peaks, peaks)
    assert "int8 module fuser ran at 200 GFLOP/s, above the measured onnxruntime int8 peak " \
           "150" in warning
    fast = _peaks(numpy_fp32=100.0, onnxruntime_fp32=100.0, onnxruntime_int8=400.0)
    assert peak_warnings(_report("int8", fuser_ms=10.0, peak=100.0, peaks=fast), fast,
                         fast) == []


def test_an_isa_override_in_the_environment_is_warned_about() -> None:
    steady = _peaks(numpy_fp32=100.0)
    report = _report("fp32", fuser_ms=40.0, peak=100.0,
                     overrides={"OPENBLAS_CORETYPE": "Haswell"})
    [warning] = peak_warnings(report, steady, steady)
    assert warning.startswith("OPENBLAS_CORETYPE=Haswell is set: it overrides OpenBLAS's")
