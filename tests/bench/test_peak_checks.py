"""bench warns when its GFLOP/s shares cannot be read as efficiency (bench.peak_checks): the
GEMM peak measured before and after the variants disagrees by more than 10 %, or a float
module runs above the peak; an INT8 module above it is expected."""

from __future__ import annotations

from bevdeploy.bench import BenchReport, FrameSource, Variant, VariantResult
from bevdeploy.bench.peak_checks import peak_warnings


def _report(precision: str, fuser_ms: float, peak: float) -> BenchReport:
    variant = Variant("tiny · onnxruntime · sequential", "tiny", "p", "onnxruntime",
                      "sequential", 2)
    result = VariantResult(variant=variant, precision=precision, weights="w",
                           samples={"fuser": [fuser_ms] * 3, "total": [4 * fuser_ms] * 3},
                           wall_s=0.3, frames=3, distinct_frames=3, peak_rss_mb=900.0,
                           baseline_rss_mb=300.0, geometry_computed=1)
    return BenchReport(results=[result], source=FrameSource("/d"), frames=3, warmup=1,
                       threads=2, gemm_gflops=peak, dense_macs={"tiny": {"fuser": 10**9}})


def test_a_steady_peak_and_float_modules_below_it_give_no_warning() -> None:
    report = _report("fp32", fuser_ms=40.0, peak=100.0)  # 2 GFLOP in 40 ms = 50 GFLOP/s
    assert peak_warnings(report, before=95.0, after=100.0) == []


def test_a_peak_that_moved_more_than_ten_percent_is_warned_about() -> None:
    report = _report("fp32", fuser_ms=40.0, peak=100.0)
    [warning] = peak_warnings(report, before=80.0, after=100.0)
    assert "(80 GFLOP/s)" in warning and "(100)" in warning and "differ by 20%" in warning


def test_a_float_module_above_the_peak_is_warned_about_but_int8_is_not() -> None:
    [warning] = peak_warnings(_report("fp32", fuser_ms=10.0, peak=100.0), 100.0, 100.0)
    assert "float module fuser ran at 200 GFLOP/s, above the measured GEMM peak 100" in warning
    assert peak_warnings(_report("int8", fuser_ms=10.0, peak=100.0), 100.0, 100.0) == []
