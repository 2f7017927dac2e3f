"""The machine's peak rates per engine and precision, measured with the engines' own kernels.

A floor is only as honest as the peak it divides by. One float32 ``np.matmul`` rate is the
wrong yardstick for most of a deploy package: ONNX Runtime runs its convolutions through MLAS,
its INT8 QDQ graphs through u8s8 kernels (VNNI where the CPU has it), OpenVINO through oneDNN
(AMX tiles for INT8 and BF16 on CPUs that have them), and the SCN executor's GEMMs through the
BLAS numba binds (SciPy's). Each of those reaches a different rate on the same cores, so each
is measured here on the work it is a floor for:

* **numpy / scipy SGEMM** (``np.matmul``, ``scipy.linalg.blas.sgemm``): a square float32
  product; scipy's is the SCN executor's BLAS, numpy's is what the kernel floors used so far.
* **ONNX Runtime and OpenVINO**: a chain of large ``MatMul``s and one of large 3×3 ``Conv``s
  (``bench.peak_graphs``), each in float32 and as a QDQ graph in the form ``bevdeploy optimize --int8`` writes (QUInt8 activations,
  QInt8 symmetric weights, per output channel for the Conv), which both engines fuse into their
  integer kernels; OpenVINO also in BF16 inference precision where it reports BF16 in its
  ``OPTIMIZATION_CAPABILITIES``. Sessions use the runtime's own settings (ONNX Runtime: the
  ``session_options`` of a ``RunnerOptions`` with the thread budget; OpenVINO: the runner's
  ``compile_config``, with the inference precision stated explicitly, since its CPU plugin
  would otherwise pick BF16 by itself on such CPUs).

Each problem is called once untimed (compilation, caches), then repeatedly for ``seconds``
(at least ``MIN_RUNS`` calls); its rate is 2 FLOPs per MAC over the median call. An engine's
peak at a precision is kept per layer kind: its Conv problem floors the MACs of convolutions,
its MatMul problem those of MatMul/Gemm layers (ONNX Runtime's u8s8 GEMM, for one, runs about
twice its QLinearConv's rate on the same machine); the BLAS SGEMMs are MatMuls. A rate is in
GFLOP/s for float and "GOP/s" for INT8 (the same 2 operations per MAC, as 8-bit products).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bevdeploy.bench.peak_graphs import Sizes, problem_graphs

__all__ = ["MIN_RUNS", "ENGINES", "PeakRate", "Peaks", "Sizes", "best_of", "measure_peaks"]

MIN_RUNS = 3  # timed calls per problem at least, whatever the time budget

ENGINES = ("numpy", "scipy", "onnxruntime", "openvino")


@dataclass(frozen=True)
class PeakRate:
    """One measured problem: ``engine`` running ``kernel`` at ``precision``."""

    engine: str
    precision: str  # fp32, int8 or bf16: what the engine computes in
    kind: str  # "matmul" or "conv": the layer type whose MACs this rate floors
    kernel: str  # the problem, in words
    macs: int  # of one call
    median_ms: float
    best_ms: float
    runs: int

    @property
    def gflops(self) -> float:
        """2 operations per MAC over the median call (GOP/s for INT8)."""
        return 2 * self.macs / (self.median_ms * 1e-3) / 1e9


@dataclass
class Peaks:
    """Every measured problem, and why an engine or precision has no row (``skipped``)."""

    rates: list[PeakRate] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # "engine precision" → reason

    def peak(self, engine: str, precision: str, kind: str | None = None) -> float | None:
        """The rate of ``engine`` at ``precision`` on its ``kind`` problem (``None``: its
        better problem), or ``None`` if unmeasured."""
        rates = [r.gflops for r in self.rates if r.engine == engine and r.precision == precision
                 and kind in (None, r.kind)]
        return max(rates) if rates else None

    def keys(self) -> list[tuple[str, str]]:
        """(engine, precision) pairs measured, in measurement order."""
        return list(dict.fromkeys((r.engine, r.precision) for r in self.rates))

    def to_dict(self) -> dict[str, Any]:
        return {"rates": [{**asdict(r), "gflops": r.gflops} for r in self.rates],
                "peak_gflops": {f"{e} {p}": self.peak(e, p) for e, p in self.keys()},
                "skipped": dict(self.skipped)}


def best_of(first: Peaks, second: Peaks) -> Peaks:
    """Per problem, the faster of two measurements (before and after the variants: a shared
    machine's neighbours depress one of them at times)."""
    faster = {(r.engine, r.precision, r.kernel): r for r in first.rates}
    for r in second.rates:
        key = (r.engine, r.precision, r.kernel)
        if key not in faster or r.median_ms < faster[key].median_ms:
            faster[key] = r
    return Peaks(rates=list(faster.values()), skipped={**second.skipped, **first.skipped})


def time_calls(fn: Callable[[], Any], seconds: float) -> list[float]:
    """Milliseconds of each timed call: one untimed call, then calls until ``seconds`` have
    passed and at least ``MIN_RUNS`` were made."""
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < MIN_RUNS or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return times


def _rate(engine: str, precision: str, kind: str, kernel: str, macs: int,
          fn: Callable[[], Any], seconds: float) -> PeakRate:
    times = time_calls(fn, seconds)
    return PeakRate(engine, precision, kind, kernel, macs, float(statistics.median(times)),
                    min(times), len(times))


def _inputs(sizes: Sizes) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"matmul": rng.standard_normal((sizes.n, sizes.n), dtype=np.float32),
            "conv": rng.standard_normal((1, sizes.channels, sizes.hw, sizes.hw),
                                        dtype=np.float32)}


def blas_rates(sizes: Sizes, threads: int, seconds: float) -> list[PeakRate]:
    """float32 GEMM through numpy's and SciPy's BLAS (the SCN executor's), ``threads`` each."""
    import scipy.linalg.blas as scipy_blas
    from threadpoolctl import threadpool_limits

    a = _inputs(sizes)["matmul"]
    b = np.asfortranarray(a)
    kernel = f"SGEMM {sizes.n}³"
    with threadpool_limits(threads, user_api="blas"):
        return [_rate("numpy", "fp32", "matmul", f"np.matmul {sizes.n}³", sizes.n ** 3,
                      lambda: np.matmul(a, a), seconds),
                _rate("scipy", "fp32", "matmul", kernel, sizes.n ** 3,
                      lambda: scipy_blas.sgemm(1.0, b, b), seconds)]


def onnxruntime_rates(sizes: Sizes, threads: int, seconds: float) -> list[PeakRate]:
    """MatMul and Conv through ONNX Runtime in float32 and as QDQ u8s8 graphs."""
    import onnxruntime as ort

    from bevdeploy.runtime.backends.base import RunnerOptions
    from bevdeploy.runtime.backends.onnxruntime import PROVIDERS, session_options

    inputs = _inputs(sizes)
    rates = []
    for problem in problem_graphs(sizes):
        session = ort.InferenceSession(problem.model, sess_options=session_options(
            RunnerOptions(threads=threads)), providers=list(PROVIDERS))
        feed = {"x": inputs[problem.kind]}
        rates.append(_rate("onnxruntime", problem.precision, problem.kind, problem.kernel,
                           problem.macs, lambda: session.run(None, feed), seconds))
    return rates


def openvino_precisions() -> tuple[list[str], dict[str, str]]:
    """The precisions OpenVINO's CPU plugin computes in here (fp32 and int8 always, bf16 where
    the runtime's OpenVINO runner would run it), and the reasons for those it does not;
    ``openvino`` not importable is a reason for all of them."""
    from bevdeploy.errors import ConfigError
    from bevdeploy.runtime.backends.openvino import bf16_unavailable_reason, import_openvino

    try:
        import_openvino()
    except ConfigError as exc:
        return [], {"openvino": str(exc)}
    reason = bf16_unavailable_reason()
    if reason is None:
        return ["fp32", "int8", "bf16"], {}
    return ["fp32", "int8"], {"openvino bf16": reason}


def openvino_rates(sizes: Sizes, threads: int, seconds: float,
                   precisions: Sequence[str]) -> list[PeakRate]:
    """MatMul and Conv through OpenVINO's CPU plugin with the runtime runner's settings
    (``backends.openvino.compile_config``): float32 graphs at f32 and (where listed) bf16
    inference precision, QDQ graphs as INT8 (the float parts between them at f32)."""
    from bevdeploy.runtime.backends.base import RunnerOptions
    from bevdeploy.runtime.backends.openvino import compile_config, core

    inputs = _inputs(sizes)
    rates = []
    for problem in problem_graphs(sizes):
        wanted = ["int8"] if problem.precision == "int8" else \
            [p for p in precisions if p != "int8"]
        for precision in wanted:
            options = RunnerOptions(threads=threads, inference_precision="fp32"
                                    if precision == "int8" else precision)
            compiled = core().compile_model(core().read_model(model=problem.model, weights=b""),
                                            "CPU", compile_config(options))
            request = compiled.create_infer_request()
            x = inputs[problem.kind]
            rates.append(_rate("openvino", precision, problem.kind, problem.kernel,
                               problem.macs, lambda: request.infer({0: x}), seconds))
    return rates


def measure_peaks(threads: int, *, seconds: float = 1.0, sizes: Sizes = Sizes(),
                  engines: Sequence[str] = ENGINES) -> Peaks:
    """Every ``engines`` problem on ``threads`` threads (see the module docstring); OpenVINO's
    rows are skipped, with the reason recorded, where it is not importable. The engines' flush
    mode stays off this thread (``runtime.fp_env``)."""
    from bevdeploy.runtime.fp_env import callers_fp_env

    with callers_fp_env():
        return _measure_peaks(threads, seconds, sizes, engines)


def _measure_peaks(threads: int, seconds: float, sizes: Sizes, engines: Sequence[str]) -> Peaks:
    peaks = Peaks()
    if "numpy" in engines or "scipy" in engines:
        peaks.rates += [r for r in blas_rates(sizes, threads, seconds) if r.engine in engines]
    if "onnxruntime" in engines:
        peaks.rates += onnxruntime_rates(sizes, threads, seconds)
    if "openvino" in engines:
        precisions, reasons = openvino_precisions()
        peaks.skipped.update(reasons)
        if precisions:
            peaks.rates += openvino_rates(sizes, threads, seconds, precisions)
    return peaks
