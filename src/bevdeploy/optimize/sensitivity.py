"""Per-layer INT8 sensitivity: quantize one layer (or block) at a time, measure the damage.

A whole-model INT8 error is the sum of many small ones and does not say where to look. Here
each group of weighted layers (a single Conv/Gemm/MatMul, or a *block*: the node names minus
their last two path components, e.g. ``/backbone/layer2/layer2.0`` for a ResNet basic block,
``/backbone/blocks.1`` for a SECOND stage) is quantized alone under the same calibrated ranges
as the full quantization, and the module's outputs are compared with the FP32 module on the
calibration feeds. Groups are ranked by their worst output cosine; the ``exclude`` column is the
pattern that keeps a group in float (``bevdeploy optimize --exclude``).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import TensorsData
from rich.table import Table

from bevdeploy.optimize.calibrate import Feeds
from bevdeploy.optimize.graph import weighted_nodes
from bevdeploy.optimize.int8 import Int8Options, quantize

Granularity = Literal["layer", "block"]


@dataclass(frozen=True)
class GroupSensitivity:
    """One group quantized alone: its worst output cosine and scale-relative max error."""

    module: str
    group: str
    nodes: tuple[str, ...]
    cosine: float
    rel_max_abs: float
    exclude: tuple[str, ...]  # the ``--exclude`` patterns that keep exactly this group in float


@dataclass(frozen=True)
class SensitivityReport:
    granularity: Granularity
    frames: int
    full: Mapping[str, float]  # module → worst output cosine with all of its layers quantized
    groups: tuple[GroupSensitivity, ...]  # worst first

    def worst(self, k: int) -> list[str]:
        """Exclusion patterns of the ``k`` groups that hurt most."""
        return [p for g in self.groups[:k] for p in g.exclude]

    def to_dict(self) -> dict[str, Any]:
        return {"granularity": self.granularity, "frames": self.frames, "full": dict(self.full),
                "groups": [asdict(g) for g in self.groups]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def table(self, top: int | None = None) -> Table:
        full = ", ".join(f"{m} {c:.5f}" for m, c in self.full.items())
        table = Table(title=f"INT8 sensitivity ({self.granularity}s quantized one at a time, "
                            f"{self.frames} calibration frames; all quantized: {full})")
        for col, justify in (("rank", "right"), ("module", "left"), ("group", "left"),
                             ("layers", "right"), ("cosine", "right"), ("max-abs/scale", "right"),
                             ("exclude with", "left")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for rank, g in enumerate(self.groups[:top], start=1):
            table.add_row(str(rank), g.module, g.group, str(len(g.nodes)), f"{g.cosine:.6f}",
                          f"{g.rel_max_abs:.2e}", " ".join(g.exclude))
        return table


def layer_groups(model: onnx.ModelProto, granularity: Granularity,
                 skip: Sequence[str] = ()) -> dict[str, list[str]]:
    """Group name → weighted node names, in graph order (``skip``: nodes kept in float)."""
    groups: dict[str, list[str]] = {}
    for node in weighted_nodes(model):
        if node.name in skip:
            continue
        key = node.name if granularity == "layer" else (node.name.rsplit("/", 2)[0] or node.name)
        groups.setdefault(key, []).append(node.name)
    return groups


def output_agreement(reference: Sequence[Sequence[np.ndarray]],
                     candidate: Sequence[Sequence[np.ndarray]]) -> tuple[float, float]:
    """Worst cosine and worst max-abs/scale over all frames and outputs (float64 maths)."""
    worst_cos, worst_rel = 1.0, 0.0
    for ref_frame, cand_frame in zip(reference, candidate):
        for ref, cand in zip(ref_frame, cand_frame):
            r = np.asarray(ref, np.float64).ravel()
            c = np.asarray(cand, np.float64).ravel()
            norm = np.linalg.norm(r) * np.linalg.norm(c)
            cosine = float(r @ c / norm) if norm > 0 else float(np.array_equal(r, c))
            scale = float(np.abs(r).max()) if r.size else 0.0
            rel = float(np.abs(c - r).max() / scale) if scale > 0 else 0.0
            if not np.all(np.isfinite(c)):
                cosine, rel = float("nan"), float("inf")
            worst_cos = cosine if np.isnan(cosine) else min(worst_cos, cosine)
            worst_rel = max(worst_rel, rel)
    return worst_cos, worst_rel


def run_all(model: onnx.ModelProto, feeds: Sequence[Feeds]) -> list[list[np.ndarray]]:
    """The model's outputs on every feed (ONNX Runtime CPU, default optimizations)."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [session.run(None, f) for f in feeds]


def module_sensitivity(module: str, model: onnx.ModelProto, ranges: TensorsData,
                       feeds: Sequence[Feeds], options: Int8Options, *,
                       granularity: Granularity, exclude: Sequence[str] = ()
                       ) -> tuple[float, list[GroupSensitivity]]:
    """(worst cosine fully quantized, per-group results) for one module."""
    reference = run_all(model, feeds)
    full = quantize(model, ranges, options, exclude=exclude)
    full_cos, _ = output_agreement(reference, run_all(full, feeds))
    weighted = [n.name for n in weighted_nodes(model)]
    results = []
    for group, nodes in layer_groups(model, granularity, skip=exclude).items():
        probe = quantize(model, ranges, options, only=nodes)
        cosine, rel = output_agreement(reference, run_all(probe, feeds))
        results.append(GroupSensitivity(module, group, tuple(nodes), cosine, rel,
                                        _patterns(module, group, nodes, weighted)))
    return full_cos, results


def _patterns(module: str, group: str, nodes: Sequence[str], weighted: Sequence[str]
              ) -> tuple[str, ...]:
    """``MODULE:GROUP/*`` when that glob selects exactly the group's weighted layers (the
    block's activations and adds then stay float with them), else one exact name per layer."""
    if len(nodes) > 1 or group != nodes[0]:
        glob = f"{group}/*"
        if [n for n in weighted if fnmatch.fnmatchcase(n, glob)] == list(nodes):
            return (f"{module}:{glob}",)
    return tuple(f"{module}:{n}" for n in nodes)


def rank(granularity: Granularity, frames: int, full: Mapping[str, float],
         groups: Sequence[GroupSensitivity]) -> SensitivityReport:
    """Order the groups worst first (NaN, i.e. overflow, before any finite cosine)."""
    ordered = sorted(groups, key=lambda g: (not np.isnan(g.cosine), g.cosine, -g.rel_max_abs))
    return SensitivityReport(granularity, frames, dict(full), tuple(ordered))
