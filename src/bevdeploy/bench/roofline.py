"""The floor of a variant's precision mix, and how far its measured time sits above it.

A variant's **floor** is the time its work would take if every part ran at the peak this
machine measured for it (``bench.peaks``), one part after another on the whole thread budget:

* each dense module: its MACs (counted on the reference model, ``BenchReport.dense_macs``) at
  the peak of the precision it computes in, on the engine that runs it (ONNX Runtime's INT8
  peak for an INT8 module on ONNX Runtime, OpenVINO's BF16 peak for a float module compiled at
  BF16 inference precision, ...). Its MACs are split as its graph's weighted layers split them
  (``bench.graph_macs``): convolutions at the engine's Conv peak, MatMul/Gemm at its MatMul
  peak, and in an INT8 module the layers kept float (by the recipe or ``--exclude``, a head's
  float decoder) at the float peak of its inference precision;
* the SCN: its convolutions' MACs on the timed frames (``ScnExecutor.conv_macs``: rulebook
  pairs × C_in × C_out, median over the frames) at the SGEMM peak of the BLAS its executor
  calls (SciPy's); at BF16 inference precision, the wide convs' share (those
  ``runtime.scn.bf16`` runs as implicit GEMMs) at OpenVINO's BF16 MatMul peak instead;
* the kernels (points, voxelize, normalize, depth, geometry, bevpool, decode, ...): their own
  measured median times: they move bytes rather than multiply, and have their own floors in
  ``bevdeploy bench-kernels``.

``ratio`` = the variant's median total / its floor. A ratio of 1.0 would mean every module at
its engine's best GEMM rate and nothing else costing time; under the ``frames`` or ``branches``
schedule stages overlap, so a ratio can fall below 1. Variants whose engine has no measured peak
(the PyTorch reference, GPU backends) have no floor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from bevdeploy.bench.peaks import Peaks
from bevdeploy.vocabulary import DENSE_MODULES

ROOFLINE_NOTE = ("floor = Σ dense MACs / the peak of the precision each computes in on its "
                 "engine + the SCN's MACs (median frame) / its BLAS's SGEMM peak + the "
                 "kernels' measured medians (kept as measured); the ratio is the median over "
                 "the floor (below 1 only where a schedule overlaps stages).")
SCN_STAGE = "scn"
SCN_ENGINE = ("scipy", "fp32")  # the SCN executor's GEMMs: numba's np.dot → SciPy's sgemm
SCN_BF16_ENGINE = ("openvino", "bf16", "matmul")  # its wide convs at BF16 (runtime.scn.bf16)
NOT_KERNELS = frozenset({*DENSE_MODULES, SCN_STAGE, "total"})


@dataclass(frozen=True)
class FloorTerm:
    """One part of a floor: a dense module, the SCN, or the kernels together."""

    part: str
    macs: int | None  # None for the kernels
    engine: str | None
    precision: str | None
    peak_gflops: float | None
    floor_ms: float
    measured_ms: float

    @property
    def ratio(self) -> float:
        return self.measured_ms / self.floor_ms if self.floor_ms > 0 else float("inf")


@dataclass(frozen=True)
class Floor:
    """A variant's floor, its terms, and its median total over it."""

    terms: tuple[FloorTerm, ...]
    total_ms: float
    measured_ms: float

    @property
    def ratio(self) -> float:
        return self.measured_ms / self.total_ms

    def to_dict(self) -> dict[str, Any]:
        return {"floor_ms": self.total_ms, "measured_ms": self.measured_ms,
                "ratio": self.ratio,
                "terms": [{**asdict(t), "ratio": t.ratio} for t in self.terms]}


def variant_floor(stage_ms: Mapping[str, float], total_ms: float, engine: str,
                  precisions: Mapping[str, str], dense_macs: Mapping[str, int],
                  scn_macs: int | None, peaks: Peaks, *, float_precision: str = "fp32",
                  mac_mixes: Mapping[str, Mapping[str, float] | None] | None = None,
                  scn_bf16_macs: int | None = None) -> Floor | str:
    """The floor of a variant whose stages took ``stage_ms`` (medians) and whose total took
    ``total_ms``, its dense modules run by ``engine`` at ``precisions`` (module → fp32, int8,
    bf16, ...). A module's ``mac_mixes`` (``bench.graph_macs.mac_mix``) put each share of its
    MACs at the peak of its layer kind and precision (an INT8 module's float layers at
    ``float_precision``); without one, all its MACs at its precision's better problem. At
    ``float_precision`` ``bf16`` the SCN's ``scn_bf16_macs`` are priced at OpenVINO's BF16
    MatMul peak, the rest of its MACs at SciPy's SGEMM peak. Or,
    where a part has no MACs or no measured peak, the reason it has none."""
    terms = []
    for module in DENSE_MODULES:
        if module not in stage_ms:
            continue
        if module not in dense_macs:
            return f"{module}'s MACs were not counted"
        precision = precisions.get(module, "fp32")
        floating = float_precision if precision == "int8" else precision
        mix = (mac_mixes or {}).get(module)
        parts = [(None, precision, 1.0)] if not mix else [
            (key.split()[0], "int8" if key.endswith("int8") else floating, share)
            for key, share in mix.items()]
        seconds_per_mac = 0.0
        by_precision: dict[str, float] = {}
        for kind, part, share in parts:
            peak = peaks.peak(engine, part, kind) or peaks.peak(engine, part)
            if peak is None:
                return f"no {engine} {part} peak was measured ({module})"
            seconds_per_mac += share * 2 / (peak * 1e9)
            by_precision[part] = by_precision.get(part, 0.0) + share
        label = " + ".join(name if len(by_precision) == 1 else f"{name} {share:.0%}"
                           for name, share in sorted(by_precision.items(),
                                                     key=lambda item: -item[1]))
        macs = dense_macs[module]
        terms.append(FloorTerm(module, macs, engine, label, 2 / seconds_per_mac / 1e9,
                               1e3 * macs * seconds_per_mac, stage_ms[module]))
    if SCN_STAGE in stage_ms:
        peak = peaks.peak(*SCN_ENGINE)
        if scn_macs is None or peak is None:
            return "the SCN's MACs or its BLAS's SGEMM peak were not measured"
        seconds = 2 * scn_macs / (peak * 1e9)
        engine_name, precision_name = SCN_ENGINE
        if float_precision == "bf16" and scn_bf16_macs:
            bf16_peak = peaks.peak(*SCN_BF16_ENGINE)
            if bf16_peak is None:
                return "no openvino bf16 MatMul peak was measured (the SCN's BF16 convs)"
            seconds += 2 * scn_bf16_macs * (1 / (bf16_peak * 1e9) - 1 / (peak * 1e9))
            engine_name = f"{SCN_ENGINE[0]} + {SCN_BF16_ENGINE[0]}"
            precision_name = f"bf16 {scn_bf16_macs / scn_macs:.0%} + fp32"
        terms.append(FloorTerm(SCN_STAGE, scn_macs, engine_name, precision_name,
                               2 * scn_macs / seconds / 1e9, 1e3 * seconds, stage_ms[SCN_STAGE]))
    kernels = sum(ms for stage, ms in stage_ms.items() if stage not in NOT_KERNELS)
    terms.append(FloorTerm("kernels", None, None, None, None, kernels, kernels))
    return Floor(tuple(terms), sum(t.floor_ms for t in terms), total_ms)
