"""The peak rates of ``bench`` (bench.peaks) on small problems: every engine and precision
that exists here gives a finite positive rate computed from its own timings (their values
are not asserted), OpenVINO absent is a recorded reason and no rows, and the QDQ problems
compute what their float twins do, within 8-bit error (so they time real work). Plus the
machine's BLAS and the ISA overrides (bench.machine)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from bevdeploy.bench.machine import blas_libraries, isa_overrides, override_warnings
from bevdeploy.bench.peak_graphs import problem_graphs
from bevdeploy.bench.peaks import MIN_RUNS, PeakRate, Peaks, Sizes, best_of, measure_peaks

SMALL = Sizes(n=64, channels=8, hw=12, layers=2)


def test_every_engine_gives_finite_positive_rates_on_small_problems() -> None:
    peaks = measure_peaks(2, seconds=0.0, sizes=SMALL)
    keys = peaks.keys()
    assert {("numpy", "fp32"), ("scipy", "fp32"), ("onnxruntime", "fp32"),
            ("onnxruntime", "int8")} <= set(keys)
    if "openvino" not in peaks.skipped:
        assert {("openvino", "fp32"), ("openvino", "int8")} <= set(keys)
        assert (("openvino", "bf16") in keys) != ("openvino bf16" in peaks.skipped)
    for rate in peaks.rates:
        assert rate.runs >= MIN_RUNS and 0 < rate.best_ms <= rate.median_ms
        assert rate.macs in (SMALL.n ** 3, SMALL.matmul_macs, SMALL.conv_macs)
        assert rate.kind in ("matmul", "conv")
        assert math.isfinite(rate.gflops) and rate.gflops == pytest.approx(
            2 * rate.macs / (rate.median_ms * 1e-3) / 1e9)
    for engine, precision in keys:
        assert peaks.peak(engine, precision) == max(
            r.gflops for r in peaks.rates if (r.engine, r.precision) == (engine, precision))
    assert peaks.peak("onnxruntime", "bf16") is None


def test_without_openvino_its_rows_are_skipped_with_the_reason(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    peaks = measure_peaks(1, seconds=0.0, sizes=SMALL, engines=("onnxruntime", "openvino"))
    assert {r.engine for r in peaks.rates} == {"onnxruntime"}
    assert "pip install 'bevdeploy[openvino]'" in peaks.skipped["openvino"]


def test_the_qdq_problems_compute_what_the_float_ones_do() -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(3)
    inputs = {"matmul": rng.uniform(-1, 1, (SMALL.n, SMALL.n)).astype(np.float32),
              "conv": rng.uniform(-1, 1, (1, SMALL.channels, SMALL.hw, SMALL.hw)).astype(
                  np.float32)}
    outputs = {}
    for problem in problem_graphs(SMALL):
        session = ort.InferenceSession(problem.model, providers=["CPUExecutionProvider"])
        outputs[problem.kind, problem.precision] = session.run(None, {
            "x": inputs[problem.kind]})[0]
    for kind in ("matmul", "conv"):
        ref, q = outputs[kind, "fp32"].ravel(), outputs[kind, "int8"].ravel()
        assert np.abs(ref).max() > 0.5  # not a vanishing output
        cosine = float(ref @ q / np.linalg.norm(ref) / np.linalg.norm(q))
        assert cosine > 0.995, (kind, cosine)
        # two layers of 8-bit activations (steps of 4/255) and 7-bit weights
        assert np.abs(ref - q).max() < 0.25, kind


def test_best_of_keeps_the_faster_measurement_of_each_problem() -> None:
    def rate(kernel: str, ms: float) -> PeakRate:
        return PeakRate("numpy", "fp32", "matmul", kernel, 10**6, ms, ms, 3)

    first = Peaks([rate("a", 2.0), rate("b", 1.0)], {"openvino": "absent"})
    second = Peaks([rate("a", 1.0), rate("b", 3.0)])
    both = best_of(first, second)
    assert {r.kernel: r.median_ms for r in both.rates} == {"a": 1.0, "b": 1.0}
    assert both.skipped == {"openvino": "absent"}


def test_the_blas_libraries_say_which_kernels_they_run() -> None:
    libraries = blas_libraries()
    assert libraries and all(lib["internal_api"] and lib["filepath"] for lib in libraries)
    assert any("scipy" in lib["filepath"] for lib in libraries)  # the SCN executor's BLAS
    assert all(lib["architecture"] for lib in libraries if lib["internal_api"] == "openblas")


def test_isa_overrides_are_found_and_warned_about() -> None:
    env = {"OPENBLAS_CORETYPE": "Haswell", "ONEDNN_MAX_CPU_ISA": "AVX2", "HOME": "/root",
           "MKL_ENABLE_INSTRUCTIONS": ""}
    overrides = isa_overrides(env)
    assert overrides == {"OPENBLAS_CORETYPE": "Haswell", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    first, second = override_warnings(overrides)
    assert first.startswith("OPENBLAS_CORETYPE=Haswell is set: it overrides OpenBLAS's kernels")
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in second and "OpenVINO" in second
    assert isa_overrides({}) == {}
