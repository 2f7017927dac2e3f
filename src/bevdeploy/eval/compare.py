"""``bevdeploy compare``: per-stage parity of a deploy package against the PyTorch reference.

Polygraphy-style (DESIGN §5, spec/deploy.md §7.2 and §9.5): the reference BEVFusion, built with
the weights the package was exported from, and the deployed ``Pipeline`` run side by side on the
same frames, and every intermediate tensor the two share is compared — max-abs, mean-abs,
max-abs relative to the reference's own max-abs, cosine, and the NaN/Inf count of each side —
then the boxes, matched one to one.

**What is compared with what.** The deployed side is the pipeline's own schedule, unmodified:
its stages and runners are wrapped in recorders for the duration of a frame, so the tensors are
exactly those ``bevdeploy infer`` computes, each stage fed by the deployed stage before it (a
GPU backend's ``CudaSchedule`` hands them over through its ``taps`` instead, since its device
kernels are not the pipeline's CPU stages). A
fault therefore shows at the first stage that fails, and every stage downstream of it fails
too; the table's first red row locates it. Two rows differ on purpose:

* ``head.*`` — the deployed ``head.bbox`` runs on the *reference's* fused features, the same
  input as the reference head. Its top-k proposal selection is a discontinuous function of its
  input: fed two slightly different feature maps, the two heads may legitimately pick different
  cells, and their per-proposal tensors would not be comparable. On the same input only the
  head's own arithmetic can move a proposal, and where the reference's heatmap has a near tie
  at the top-k boundary (a gap smaller than the error the head's precision allows) the report
  says so. Proposals are paired one to one (same class, closest regression outputs) before
  comparing, so a legitimate reordering of near-equal scores is not mistaken for an error.
* ``boxes`` — the end-to-end result of each chain (deployed boxes come from the deployed fused
  features), matched greedily by centre distance within the same class: centre distance,
  rotated BEV IoU, score delta, and the boxes without a partner.

**Tolerances** come per precision (``Tolerances.for_precision``). A stage's precision is the
lowest one among the modules on its path (the package manifest's per-module ``precision``):
the camera BEV inherits ``camera.backbone``'s error, the fused features everything's.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import torch
from rich.markup import escape
from rich.table import Table
from scipy.optimize import linear_sum_assignment
from torch.nn import functional as F

from bevdeploy.data.boxes import box_corners
from bevdeploy.data.frame import Detections, Frame
from bevdeploy.errors import CheckpointError, ConfigError, InputError
from bevdeploy.export.head import HEAD_OUTPUTS as HEAD_GRAPH_OUTPUTS
from bevdeploy.export.writer import RANDOM_INIT_SEED
from bevdeploy.io import atomic_write
from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.model.checkpoint import load_checkpoint
from bevdeploy.model.inputs import collate
from bevdeploy.package import MANIFEST_NAME, DeployPackage, load_package, sha256_file
from bevdeploy.runtime import Pipeline
from bevdeploy.runtime.backends import RunnerOptions
from bevdeploy.runtime.cuda_schedule import CudaSchedule
from bevdeploy.runtime.pipeline import Schedule

# ------------------------------------------------------------------------------ tolerances

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")  # strictest first


@dataclass(frozen=True)
class Tolerances:
    """Pass/fail limits for one precision.

    Tensors: ``cosine_min`` (cosine similarity of the flattened tensors) and ``rel_max_abs``
    (max |deployed − reference| / max |reference|: the worst element error on the tensor's own
    scale, so one limit serves image pixels and 1e-3-sized logits alike). Boxes: the largest
    centre distance ``centre_m`` and score difference ``score_delta`` of matched boxes, the
    smallest BEV IoU ``iou_min``, and the fraction of compared boxes allowed no partner
    ``unmatched_fraction``. Boxes scoring below ``box_min_score`` on both sides are not judged
    (they may partner others but never fail a comparison); two boxes farther apart than
    ``match_radius_m`` are never partners.
    """

    precision: str
    cosine_min: float
    rel_max_abs: float
    centre_m: float
    iou_min: float
    score_delta: float
    unmatched_fraction: float
    box_min_score: float = 0.05
    match_radius_m: float = 2.0

    @classmethod
    def for_precision(cls, precision: str) -> Tolerances:
        """The documented limits of ``"fp32"``, ``"fp16"`` or ``"int8"``.

        * fp32 — both sides compute in float32 and differ only in summation order and fused
          kernels: ~1e-6 relative per layer, ~1e-5 after the deepest chain; cosine ≥ 0.99999
          and 1e-3 of the scale leave two orders of margin. Boxes: 1 cm, IoU 0.99, scores 1e-3,
          no box without a partner.
        * fp16 — an 11-bit mantissa rounds each operation to ~5e-4 relative and the error
          grows over a chain of tens of layers: cosine ≥ 0.999, 2 % of the scale. Boxes: 5 cm,
          IoU 0.95, scores 0.01, 2 % of boxes may swap across the score or top-k boundary.
        * int8 — every quantised activation is rounded to 1/255 of its calibrated range
          (histogram + MSE, spec/deploy.md §4) and the steps compound through the quantised
          layers; NVIDIA's PTQ model stays within 0.23 mAP of FP16, so the maps keep their
          direction (cosine ≥ 0.99) while single elements move by up to 10 % of the scale.
          Boxes: 20 cm, IoU 0.8, scores 0.05, 10 % without a partner.
        """
        #            cosine_min  rel_max_abs  centre_m  iou_min  score_delta  unmatched
        limits = {"fp32": (0.99999,    1e-3,        0.01,     0.99,    1e-3,        0.0),
                  "fp16": (0.999,      2e-2,        0.05,     0.95,    1e-2,        0.02),
                  "int8": (0.99,       0.1,         0.2,      0.8,     0.05,        0.1)}
        if precision not in limits:
            raise ConfigError(f"unknown precision {precision!r}; known: {list(PRECISIONS)}",
                              field="precision")
        return cls(precision, *limits[precision])


# ------------------------------------------------------------------------------ stages


@dataclass(frozen=True)
class StageDef:
    """One compared tensor: its name, what produces it, and the package modules on its path
    (whose lowest precision picks the tolerance; none = float32 kernels only)."""

    name: str
    description: str
    modules: tuple[str, ...]


_CAMERA = ("camera.backbone",)
_CAMERA_BEV = ("camera.backbone", "camera.vtransform")
_FUSED = ("camera.backbone", "camera.vtransform", "lidar.backbone", "fuser")
# The head.bbox outputs in graph order, and the reference head's key for each.
HEAD_OUTPUTS: tuple[str, ...] = tuple(name for name, _ in HEAD_GRAPH_OUTPUTS)
_HEAD_KEYS: dict[str, str] = dict(HEAD_GRAPH_OUTPUTS)
# The head's regression outputs, the per-proposal vector proposals are paired on.
_REGRESSION = ("rot", "dim", "reg", "height", "vel")

STAGES: tuple[StageDef, ...] = (
    StageDef("normalize", "images → network input (1, N, 3, H, W)", ()),
    StageDef("depth", "points → sparse depth image (1, N, 1, H, W)", ()),
    StageDef("camera.depth_weights", "camera.backbone: depth distribution (N, D, h, w)",
             _CAMERA),
    StageDef("camera.feature", "camera.backbone: context features (N, h, w, C)", _CAMERA),
    StageDef("camera.bevpool", "bevpool: camera BEV before downsampling (1, C·nz, nx, ny)",
             _CAMERA),
    StageDef("camera.bev", "camera.vtransform: camera BEV (1, C, X, Y)", _CAMERA_BEV),
    StageDef("lidar.voxels", "voxelize: mean point features per voxel (M, F)", ()),
    StageDef("lidar.bev", "lidar.backbone (SCN): LiDAR BEV (1, C·Z, X, Y)", ("lidar.backbone",)),
    StageDef("fuser", "fuser + decoder: fused middle features (1, Cm, X, Y)", _FUSED),
    *(StageDef(f"head.{name}", f"head.bbox on the reference's fused features: {name}",
               ("head.bbox",)) for name in HEAD_OUTPUTS),
)
BOXES = StageDef("boxes", "end to end: decoded boxes of each chain", (*_FUSED, "head.bbox"))


def stage_tolerances(pkg: DeployPackage, override: Tolerances | None = None
                     ) -> dict[str, Tolerances]:
    """Tolerances of every stage (and ``"boxes"``): ``override`` for all when given, else
    those of the lowest precision among the stage's modules in the package manifest."""
    result: dict[str, Tolerances] = {}
    for stage in (*STAGES, BOXES):
        if override is not None:
            result[stage.name] = override
            continue
        rank = 0
        for module in stage.modules:
            precision = pkg.module(module).precision
            if precision not in PRECISIONS:
                raise ConfigError(f"unknown precision {precision!r}; known: {list(PRECISIONS)}",
                                  path=pkg.root / MANIFEST_NAME,
                                  field=f"modules.{module}.precision")
            rank = max(rank, PRECISIONS.index(precision))
        result[stage.name] = Tolerances.for_precision(PRECISIONS[rank])
    return result


# ------------------------------------------------------------------------------ tensor metrics


@dataclass(frozen=True)
class TensorMetrics:
    """Agreement of one tensor pair.

    Errors are over the elements finite on both sides (the NaN/Inf counts say how many are
    not). ``cosine`` is 1 when both tensors are zero and 0 when only one is; ``rel_max_abs`` is
    ``max_abs / ref_max_abs`` (infinite when only the reference is all zero). With different
    shapes nothing is comparable and the errors are NaN.
    """

    shape_reference: tuple[int, ...]
    shape_deployed: tuple[int, ...]
    max_abs: float
    mean_abs: float
    ref_max_abs: float
    rel_max_abs: float
    cosine: float
    nonfinite_reference: int
    nonfinite_deployed: int


def tensor_metrics(reference: np.ndarray, deployed: np.ndarray) -> TensorMetrics:
    """Max-abs, mean-abs, scale-relative max-abs, cosine and NaN/Inf counts, in float64."""
    ref = np.asarray(reference, dtype=np.float64)
    dep = np.asarray(deployed, dtype=np.float64)
    bad_ref = int(ref.size - np.count_nonzero(np.isfinite(ref)))
    bad_dep = int(dep.size - np.count_nonzero(np.isfinite(dep)))
    if ref.shape != dep.shape:
        nan = math.nan
        return TensorMetrics(ref.shape, dep.shape, nan, nan, nan, nan, nan, bad_ref, bad_dep)
    both = np.isfinite(ref) & np.isfinite(dep)
    r, d = ref[both], dep[both]
    diff = np.abs(d - r)
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    scale = float(np.abs(r).max()) if r.size else 0.0
    if scale > 0:
        rel = max_abs / scale
    else:
        rel = 0.0 if max_abs == 0 else math.inf
    norm_r, norm_d = float(np.linalg.norm(r)), float(np.linalg.norm(d))
    if norm_r == 0 and norm_d == 0:
        cosine = 1.0
    elif norm_r == 0 or norm_d == 0:
        cosine = 0.0
    else:
        cosine = float(np.clip(np.dot(r, d) / (norm_r * norm_d), -1.0, 1.0))
    return TensorMetrics(ref.shape, dep.shape, max_abs, mean_abs, scale, rel, cosine, bad_ref,
                         bad_dep)


def tensor_failures(m: TensorMetrics, tol: Tolerances) -> list[str]:
    """Why ``m`` fails ``tol`` (empty: it passes)."""
    if m.shape_reference != m.shape_deployed:
        shapes = f"reference {list(m.shape_reference)}, deployed {list(m.shape_deployed)}"
        return [f"shapes differ: {shapes}"]
    reasons = []
    if m.nonfinite_deployed:
        reasons.append(f"{m.nonfinite_deployed} NaN/Inf in the deployed tensor")
    if m.nonfinite_reference:
        reasons.append(f"{m.nonfinite_reference} NaN/Inf in the reference tensor")
    if m.cosine < tol.cosine_min:
        reasons.append(f"cosine {m.cosine:.6f} < {tol.cosine_min}")
    if m.rel_max_abs > tol.rel_max_abs:
        reasons.append(f"max-abs/scale {m.rel_max_abs:.2e} > {tol.rel_max_abs:.0e}")
    return reasons


# ------------------------------------------------------------------------------ head proposals


def align_proposals(reference: Mapping[str, np.ndarray], deployed: Mapping[str, np.ndarray]
                    ) -> np.ndarray:
    """For each reference proposal, the deployed proposal that is the same one: ``(P,)``
    column indices into the deployed head outputs.

    Proposals are paired one to one (``scipy.optimize.linear_sum_assignment``) within the same
    class (argmax of ``score``) at the least L1 distance of their regression outputs (rot, dim,
    reg, height, vel): a correct deployment puts each reference proposal's partner at rounding
    distance and every other proposal orders of magnitude farther, so the pairing undoes a
    reordering of near-equal heatmap scores and nothing else. A pairing across classes costs
    more than any within one. Non-finite values get the largest cost.
    """
    def columns(outputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        vec = np.concatenate([np.asarray(outputs[k], np.float64)[0] for k in _REGRESSION]).T
        return np.asarray(outputs["score"])[0].argmax(axis=0), vec

    ref_label, ref_vec = columns(reference)
    dep_label, dep_vec = columns(deployed)
    cost = np.abs(ref_vec[:, None, :] - dep_vec[None, :, :]).sum(axis=-1)
    finite = np.isfinite(cost)
    worst = float(cost[finite].max()) if finite.any() else 0.0
    cost = np.where(finite, cost, 2.0 * worst + 1.0)
    cost = cost + (ref_label[:, None] != dep_label[None, :]) * (4.0 * worst + 2.0)
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(len(rows), dtype=np.int64)
    order[rows] = cols
    return order


# ------------------------------------------------------------------------------ boxes


@dataclass(frozen=True)
class BoxMetrics:
    """Agreement of two detection sets (see ``match_boxes``). Distances and deltas are over the
    judged matched pairs; NaN when there are none."""

    judged_reference: int  # boxes with score >= box_min_score
    judged_deployed: int
    matched: int  # judged pairs: at least one of the two boxes is judged
    unmatched_reference: int  # judged boxes without a partner
    unmatched_deployed: int
    max_centre_m: float
    mean_centre_m: float
    min_iou: float
    mean_iou: float
    max_score_delta: float
    nonfinite_deployed: int  # deployed boxes with a NaN/Inf value or score
    nonfinite_reference: int

    @property
    def unmatched_fraction(self) -> float:
        judged = self.judged_reference + self.judged_deployed
        return (self.unmatched_reference + self.unmatched_deployed) / judged if judged else 0.0


def bev_iou_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(K,) BEV IoU of ``a[k]`` with ``b[k]`` (yaw-rotated rectangles, shapely polygons)."""
    if len(a) == 0:
        return np.zeros(0)
    pa = shapely.polygons(box_corners(a)[:, :4, :2])
    pb = shapely.polygons(box_corners(b)[:, :4, :2])
    inter = shapely.area(shapely.intersection(pa, pb))
    union = shapely.area(pa) + shapely.area(pb) - inter
    return inter / np.maximum(union, 1e-12)


def match_boxes(reference: Detections, deployed: Detections, tol: Tolerances
                ) -> tuple[BoxMetrics, list[tuple[int, int]]]:
    """Greedy one-to-one matching by BEV centre distance within the same class, nearest pair
    first, up to ``tol.match_radius_m``; returns the metrics and the matched (reference,
    deployed) index pairs that are judged.

    Every box may be a partner, but only boxes scoring at least ``tol.box_min_score`` are
    judged, so a box just under the threshold on one side still partners its twin just over it
    on the other. Boxes with a non-finite value never match.
    """
    ok_ref = _finite_boxes(reference)
    ok_dep = _finite_boxes(deployed)
    dist = np.linalg.norm(reference.boxes[:, None, :2].astype(np.float64)
                          - deployed.boxes[None, :, :2].astype(np.float64), axis=-1)
    allowed = ((reference.labels[:, None] == deployed.labels[None, :])
               & ok_ref[:, None] & ok_dep[None, :] & (dist <= tol.match_radius_m))
    rows, cols = np.nonzero(allowed)
    taken_ref = np.zeros(len(reference), bool)
    taken_dep = np.zeros(len(deployed), bool)
    pairs: list[tuple[int, int]] = []
    for k in np.argsort(dist[rows, cols], kind="stable"):
        i, j = int(rows[k]), int(cols[k])
        if not (taken_ref[i] or taken_dep[j]):
            taken_ref[i] = taken_dep[j] = True
            pairs.append((i, j))
    judged_ref = reference.scores >= tol.box_min_score
    judged_dep = deployed.scores >= tol.box_min_score
    pairs = [(i, j) for i, j in pairs if judged_ref[i] or judged_dep[j]]
    ri = np.array([i for i, _ in pairs], dtype=np.int64)
    di = np.array([j for _, j in pairs], dtype=np.int64)
    centre = dist[ri, di]
    iou = bev_iou_pairs(reference.boxes[ri], deployed.boxes[di])
    delta = np.abs(reference.scores[ri].astype(np.float64) - deployed.scores[di])
    nan = math.nan
    metrics = BoxMetrics(
        judged_reference=int(judged_ref.sum()), judged_deployed=int(judged_dep.sum()),
        matched=len(pairs),
        unmatched_reference=int((judged_ref & ~taken_ref).sum()),
        unmatched_deployed=int((judged_dep & ~taken_dep).sum()),
        max_centre_m=float(centre.max()) if len(pairs) else nan,
        mean_centre_m=float(centre.mean()) if len(pairs) else nan,
        min_iou=float(iou.min()) if len(pairs) else nan,
        mean_iou=float(iou.mean()) if len(pairs) else nan,
        max_score_delta=float(delta.max()) if len(pairs) else nan,
        nonfinite_deployed=int((~ok_dep).sum()), nonfinite_reference=int((~ok_ref).sum()))
    return metrics, pairs


def box_failures(m: BoxMetrics, tol: Tolerances) -> list[str]:
    """Why ``m`` fails ``tol`` (empty: it passes)."""
    reasons = []
    if m.nonfinite_deployed:
        reasons.append(f"{m.nonfinite_deployed} deployed boxes with NaN/Inf")
    if m.nonfinite_reference:
        reasons.append(f"{m.nonfinite_reference} reference boxes with NaN/Inf")
    if m.unmatched_fraction > tol.unmatched_fraction:
        reasons.append(f"{m.unmatched_reference} reference / {m.unmatched_deployed} deployed "
                       f"boxes without a partner ({m.unmatched_fraction:.1%} > "
                       f"{tol.unmatched_fraction:.0%})")
    if m.matched:
        if m.max_centre_m > tol.centre_m:
            reasons.append(f"centre distance {m.max_centre_m:.3g} m > {tol.centre_m} m")
        if m.min_iou < tol.iou_min:
            reasons.append(f"BEV IoU {m.min_iou:.4f} < {tol.iou_min}")
        if m.max_score_delta > tol.score_delta:
            reasons.append(f"score delta {m.max_score_delta:.2e} > {tol.score_delta:.0e}")
    return reasons


def _finite_boxes(d: Detections) -> np.ndarray:
    return np.isfinite(d.boxes).all(axis=1) & np.isfinite(d.scores)


# ------------------------------------------------------------------------------ report


@dataclass(frozen=True)
class StageResult:
    """One stage of one frame: its metrics against the tolerance of ``precision``."""

    stage: str
    frame: int
    token: str
    precision: str
    metrics: TensorMetrics
    passed: bool
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class BoxResult:
    """The end-to-end boxes of one frame."""

    frame: int
    token: str
    precision: str
    metrics: BoxMetrics
    passed: bool
    notes: tuple[str, ...] = ()


@dataclass
class CompareReport:
    """Every comparison of a ``compare`` run. ``passed`` is what the CLI turns into its exit
    status (0 when every stage of every frame passes)."""

    package: str
    checkpoint: str | None  # file name the reference loaded, None for random weights
    backend: str
    tolerances: dict[str, Tolerances]  # per stage name (and "boxes")
    stages: list[StageResult] = field(default_factory=list)
    boxes: list[BoxResult] = field(default_factory=list)
    saved: list[Path] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.stages) and all(r.passed for r in self.boxes)

    @property
    def failed_stages(self) -> list[str]:
        """Names of the stages (``"boxes"`` included) that failed on any frame, in order."""
        failed = {r.stage for r in self.stages if not r.passed}
        names = [s.name for s in STAGES if s.name in failed]
        return names + ([BOXES.name] if any(not r.passed for r in self.boxes) else [])

    def stage(self, name: str) -> list[StageResult]:
        """The results of one stage, one per frame."""
        return [r for r in self.stages if r.stage == name]

    def table(self) -> Table:
        """One row per stage, worst case over the frames, then the end-to-end boxes."""
        verdict = "[green]PASS[/green]" if self.passed else "[red]FAIL[/red]"
        weights = self.checkpoint or "random weights"
        t = Table(title=f"compare {escape(self.package)} ({escape(weights)}, {self.backend}): "
                        f"{verdict}")
        for col, justify in (("stage", "left"), ("precision", "left"), ("shape", "left"),
                             ("max-abs", "right"), ("mean-abs", "right"),
                             ("max-abs/scale", "right"), ("cosine", "right"),
                             ("NaN/Inf ref|dep", "right"), ("result", "left"),
                             ("notes", "left")):
            t.add_column(col, justify=justify)  # type: ignore[arg-type]
        for stage in STAGES:
            rows = self.stage(stage.name)
            if rows:
                t.add_row(*_stage_row(stage.name, rows))
        if self.boxes:
            t.add_section()
            t.add_row(*_box_row(self.boxes))
        return t

    def to_dict(self) -> dict[str, Any]:
        return {
            "package": self.package, "checkpoint": self.checkpoint, "backend": self.backend,
            "passed": self.passed, "failed_stages": self.failed_stages,
            "stage_definitions": [asdict(s) for s in (*STAGES, BOXES)],
            "tolerances": {name: asdict(t) for name, t in self.tolerances.items()},
            "stages": [_jsonable(asdict(r)) for r in self.stages],
            "boxes": [_jsonable({**asdict(r), "metrics": {
                **asdict(r.metrics), "unmatched_fraction": r.metrics.unmatched_fraction}})
                for r in self.boxes],
            "saved": [str(p) for p in self.saved],
        }

    def to_json(self) -> str:
        """Strict JSON (non-finite numbers become the strings "nan", "inf", "-inf")."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _fmt(x: float, spec: str) -> str:
    return "-" if math.isnan(x) else format(x, spec)


def _extreme(values: Iterable[float], pick: Any) -> float:
    """``pick`` (``max`` or ``min``) of the values that are not NaN; NaN when none is."""
    kept = [v for v in values if not math.isnan(v)]
    return pick(kept) if kept else math.nan


def _notes(rows: Sequence[StageResult | BoxResult]) -> str:
    """The notes of the first failing frame (else the first with notes), naming the frame when
    there are several and how many others fail; the JSON report holds every frame's."""
    annotated = [r for r in rows if r.notes]
    if not annotated:
        return ""
    shown = next((r for r in annotated if not r.passed), annotated[0])
    text = "; ".join(shown.notes)
    if len(rows) == 1:
        return text
    others = sum(not r.passed for r in rows if r is not shown)
    return f"frame {shown.frame}: {text}" + (f" (+{others} more failing)" if others else "")


def _result(rows: Sequence[StageResult | BoxResult]) -> str:
    failed = sum(not r.passed for r in rows)
    return "[green]pass[/green]" if not failed else f"[red]FAIL[/red] ({failed}/{len(rows)})"


def _stage_row(name: str, rows: list[StageResult]) -> list[str]:
    """Worst case over the frames: largest errors, smallest cosine, summed NaN/Inf counts."""
    ms = [r.metrics for r in rows]
    shapes = {(m.shape_reference, m.shape_deployed) for m in ms}
    shape = "; ".join(str(list(a)) if a == b else f"{list(a)} vs {list(b)}" for a, b in shapes)
    return [name, ",".join(sorted({r.precision for r in rows})), shape,
            _fmt(_extreme((m.max_abs for m in ms), max), ".3g"),
            _fmt(_extreme((m.mean_abs for m in ms), max), ".3g"),
            _fmt(_extreme((m.rel_max_abs for m in ms), max), ".2e"),
            _fmt(_extreme((m.cosine for m in ms), min), ".6f"),
            f"{sum(m.nonfinite_reference for m in ms)}|{sum(m.nonfinite_deployed for m in ms)}",
            _result(rows), _notes(rows)]


def _box_row(rows: list[BoxResult]) -> list[str]:
    ms = [r.metrics for r in rows]
    summary = (f"matched {sum(m.matched for m in ms)}, without partner "
               f"{sum(m.unmatched_reference for m in ms)} ref / "
               f"{sum(m.unmatched_deployed for m in ms)} dep; centre ≤ "
               f"{_fmt(_extreme((m.max_centre_m for m in ms), max), '.3g')} m, IoU ≥ "
               f"{_fmt(_extreme((m.min_iou for m in ms), min), '.4f')}, |Δscore| ≤ "
               f"{_fmt(_extreme((m.max_score_delta for m in ms), max), '.2e')}")
    notes = summary if all(r.passed for r in rows) else \
        f"matched {sum(m.matched for m in ms)}; {_notes(rows)}"
    return [BOXES.name, ",".join(sorted({r.precision for r in rows})),
            f"{sum(m.judged_reference for m in ms)} ref, {sum(m.judged_deployed for m in ms)} dep",
            "", "", "", "",
            f"{sum(m.nonfinite_reference for m in ms)}|{sum(m.nonfinite_deployed for m in ms)}",
            _result(rows), notes]


# ------------------------------------------------------------------------------ the two sides


def load_reference(pkg: DeployPackage, checkpoint: Path | None) -> BEVFusion:
    """The reference model with the weights ``pkg`` was exported from, in eval mode.

    The manifest records the checkpoint's SHA-256; any other file is refused, naming both
    hashes. A package of random weights needs no checkpoint and gets the exporter's own seeded
    initialisation (``RANDOM_INIT_SEED``), built the same way, so both sides hold equal weights.
    """
    recorded = pkg.manifest.checkpoint
    manifest = pkg.root / MANIFEST_NAME
    if recorded is None and checkpoint is not None:
        raise CheckpointError("the package holds random weights (its manifest records no "
                              "checkpoint), so no checkpoint can be its reference; compare "
                              "without one", path=checkpoint, field="checkpoint")
    if recorded is not None:
        name = recorded.get("file", "?")
        if checkpoint is None:
            raise CheckpointError(f"the package was exported from {name} (sha256 "
                                  f"{recorded['sha256']}); pass that checkpoint as the reference",
                                  path=manifest, field="checkpoint")
        if not Path(checkpoint).is_file():
            raise CheckpointError("no such checkpoint file", path=checkpoint, field="checkpoint")
        digest = sha256_file(checkpoint)
        if digest != recorded["sha256"]:
            raise CheckpointError(f"sha256 {digest} differs from the {recorded['sha256']} of "
                                  f"{name}, the checkpoint the package was exported from",
                                  path=checkpoint, field="checkpoint.sha256")
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_INIT_SEED)
        model = BEVFusion(pkg.preset)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()


@dataclass
class SideOutputs:
    """One side's tensors of a frame (by stage name) and its boxes."""

    tensors: dict[str, np.ndarray]
    detections: Detections


def run_reference(model: BEVFusion, frame: Frame) -> tuple[SideOutputs, np.ndarray]:
    """The reference's tensors for every stage, in the deployed layouts, its boxes, and its
    sorted local-max heatmap scores (for the top-k margin).

    The forward is ``BEVFusion.forward`` split at the points where the deploy path hands a
    tensor from one module or kernel to the next (the export graphs' boundaries).
    """
    preset = model.preset
    batch = collate([frame], preset)
    camera, lidar = model.encoders["camera"], model.encoders["lidar"]
    vt = camera["vtransform"]
    head = model.heads["object"]
    n, d = preset.cameras.num_cameras, vt.depth_bins
    h, w = preset.feature_size
    with torch.inference_mode():
        depth = vt.depth_map(batch.points, batch.lidar2image, batch.img_aug_matrix,
                             batch.lidar_aug_matrix)
        feat = camera["neck"](camera["backbone"](batch.img.flatten(0, 1)))[0]
        weights, feats = vt.depth_and_features(feat, depth.flatten(0, 1))
        geom = vt.get_geometry(batch.camera2lidar, batch.camera_intrinsics,
                               batch.img_aug_matrix, batch.lidar_aug_matrix)
        pooled = vt.bev_pool(geom, weights.view(1, n, d, h, w),
                             feats.view(1, n, vt.out_channels, h, w))
        camera_bev = vt.downsample(pooled)
        voxel_feats, voxel_coords, _ = lidar["voxelize"](batch.points)
        lidar_bev = lidar["backbone"](voxel_feats, voxel_coords, 1)
        fused = model.fuser([camera_bev, lidar_bev])
        middle = model.decoder["neck"](model.decoder["backbone"](fused))[0]
        out = head(middle)
        detections = head.decode(out)[0]
        heatmap = head.local_max(out["dense_heatmap"].sigmoid()).flatten()
        one_hot = F.one_hot(out["query_labels"], head.num_classes).permute(0, 2, 1)
        head_out = {name: out[_HEAD_KEYS[name]] for name in HEAD_OUTPUTS}
        head_out["score"] = out["heatmap"].sigmoid() * out["query_heatmap_score"] * one_hot
        tensors = {
            "normalize": batch.img, "depth": depth, "camera.depth_weights": weights,
            "camera.feature": feats.permute(0, 2, 3, 1), "camera.bevpool": pooled,
            "camera.bev": camera_bev, "lidar.voxels": voxel_feats, "lidar.bev": lidar_bev,
            "fuser": middle, **{f"head.{k}": v for k, v in head_out.items()},
        }
        ranked = heatmap.sort(descending=True).values.numpy()
    arrays = {k: np.ascontiguousarray(v.numpy(), dtype=np.float32) for k, v in tensors.items()}
    arrays["lidar.voxel_coords"] = np.ascontiguousarray(voxel_coords[:, 1:].numpy(), np.int32)
    return SideOutputs(arrays, detections), ranked


class _Recorder:
    """Stands in for one stage or runner of a ``Pipeline``: forwards every attribute to it and
    keeps what its ``run`` returns, so the pipeline's own schedule yields the compared tensors."""

    def __init__(self, inner: Any, key: str, record: dict[str, Any]) -> None:
        self._inner = inner
        self._key = key
        self._record = record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        out = self._inner.run(*args, **kwargs)
        self._record[self._key] = out
        return out


_RECORDED_STAGES = ("normalize", "depth", "bevpool", "voxelize", "scn")


@contextmanager
def _recording(pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    """Record every stage and runner output of ``pipeline`` while the block runs."""
    record: dict[str, Any] = {}
    stages = {name: getattr(pipeline, name) for name in _RECORDED_STAGES}
    runners = pipeline.runners
    try:
        for name, stage in stages.items():
            setattr(pipeline, name, _Recorder(stage, name, record))
        pipeline.runners = {name: _Recorder(r, name, record) for name, r in runners.items()}
        yield record
    finally:
        for name, stage in stages.items():
            setattr(pipeline, name, stage)
        pipeline.runners = runners


@contextmanager
def _tapping(schedule: CudaSchedule) -> Iterator[dict[str, Any]]:
    """The GPU schedule's stage results (host copies) while the block runs."""
    schedule.taps = {}
    try:
        yield schedule.taps
    finally:
        schedule.taps = None


def run_deployed(pipeline: Pipeline, frame: Frame, reference_middle: np.ndarray
                 ) -> tuple[SideOutputs, dict[str, np.ndarray]]:
    """The deployed tensors of every stage (from ``pipeline.run``, the deployed chain), its
    boxes, and the raw outputs of the deployed head run on ``reference_middle``."""
    schedule = pipeline.schedule
    with _tapping(schedule) if isinstance(schedule, CudaSchedule) else _recording(pipeline) as rec:
        detections = pipeline.run(frame)
    backbone = rec["camera.backbone"]
    voxels = rec["voxelize"]
    if not isinstance(voxels, dict):  # the CPU stage's ``Voxels``
        voxels = {"feats": voxels.feats, "coords": voxels.coords}
    tensors = {
        "normalize": rec["normalize"], "depth": rec["depth"],
        "camera.depth_weights": backbone["camera_depth_weights"],
        "camera.feature": backbone["camera_feature"], "camera.bevpool": rec["bevpool"],
        "camera.bev": rec["camera.vtransform"]["feat_out"],
        "lidar.voxels": voxels["feats"], "lidar.voxel_coords": voxels["coords"],
        "lidar.bev": rec["scn"], "fuser": rec["fuser"]["middle"],
    }
    head = pipeline.runners["head.bbox"]
    spec = head.inputs[0]
    outputs = head.run({spec.name: np.ascontiguousarray(reference_middle, dtype=spec.dtype)})
    return SideOutputs(tensors, detections), {k: np.asarray(outputs[k]) for k in HEAD_OUTPUTS}


# ------------------------------------------------------------------------------ compare


def compare(package: Path, checkpoint: Path | None, frames: Iterable[Frame], *,
            tolerances: Tolerances | None = None, save: Path | None = None,
            backend: str = "onnxruntime", threads: int | None = None,
            runner_options: RunnerOptions | None = None,
            schedule: Schedule | str = "sequential") -> CompareReport:
    """Run the reference and the deployed package side by side on ``frames`` and compare every
    stage and the boxes (see the module docstring).

    ``checkpoint`` must be the file the package was exported from (its SHA-256 is checked), or
    ``None`` for a package of random weights. ``tolerances`` overrides the per-precision limits
    for every stage. ``save`` is a directory that receives one ``frame_NNNN.npz`` per frame with
    every compared pair (``<stage>.reference``, ``<stage>.deployed``, the deployed head outputs
    in the paired proposal order, ``head.proposal_order``, and each side's boxes, scores and
    labels), each written atomically. ``backend``, ``threads``, ``runner_options`` and
    ``schedule`` are the ``Pipeline``'s (a GPU backend's: ``GpuConfig.options`` and
    ``GpuConfig.schedule``).
    """
    pkg = load_package(package)
    model = load_reference(pkg, checkpoint)
    limits = stage_tolerances(pkg, tolerances)
    pipeline = Pipeline(pkg, backend=backend, threads=threads, runner_options=runner_options,
                        schedule=schedule)
    report = CompareReport(package=str(pkg.root),
                           checkpoint=None if checkpoint is None else Path(checkpoint).name,
                           backend=backend, tolerances=limits)
    count = 0
    for index, frame in enumerate(frames):
        count += 1
        _compare_frame(report, index, frame, model, pipeline, limits, save)
    if not count:
        raise InputError("no frames to compare", field="frames")
    return report


def _compare_frame(report: CompareReport, index: int, frame: Frame, model: BEVFusion,
                   pipeline: Pipeline, limits: Mapping[str, Tolerances], save: Path | None
                   ) -> None:
    token = frame.token
    reference, ranked = run_reference(model, frame)
    deployed, head_raw = run_deployed(pipeline, frame, reference.tensors["fuser"])
    head_ref = {k: reference.tensors[f"head.{k}"] for k in HEAD_OUTPUTS}
    order = align_proposals(head_ref, head_raw)
    for k in HEAD_OUTPUTS:
        deployed.tensors[f"head.{k}"] = head_raw[k][..., order]

    voxel_failures = _voxel_failures(reference.tensors["lidar.voxel_coords"],
                                     deployed.tensors["lidar.voxel_coords"])
    head_remarks = _head_remarks(order, ranked, pipeline.preset.model.head.num_proposals,
                                 limits["head.score"])
    for stage in STAGES:
        tol = limits[stage.name]
        metrics = tensor_metrics(reference.tensors[stage.name], deployed.tensors[stage.name])
        failures = tensor_failures(metrics, tol)
        if stage.name == "lidar.voxels":
            failures += voxel_failures
        remarks = head_remarks if stage.name.startswith("head.") else []
        report.stages.append(StageResult(stage.name, index, token, tol.precision, metrics,
                                         passed=not failures, notes=tuple(failures + remarks)))
    tol = limits[BOXES.name]
    box_metrics, _ = match_boxes(reference.detections, deployed.detections, tol)
    failures = box_failures(box_metrics, tol)
    report.boxes.append(BoxResult(index, token, tol.precision, box_metrics,
                                  passed=not failures, notes=tuple(failures)))
    if save is not None:
        report.saved.append(_save_frame(Path(save), index, reference, deployed, order))


def _voxel_failures(reference: np.ndarray, deployed: np.ndarray) -> list[str]:
    """The voxel features are compared row by row, so both sides must list the same voxels
    (coordinates) in the same order (first appearance in point order). A different voxel count
    is already a shape difference of the features."""
    if reference.shape != deployed.shape:
        return []
    differ = int(np.any(reference != deployed, axis=1).sum())
    return [f"{differ} voxel coordinates differ"] if differ else []


def _head_remarks(order: np.ndarray, ranked: np.ndarray, proposals: int, tol: Tolerances
                  ) -> list[str]:
    """What explains a head difference without being one: proposals paired out of order, and
    a top-k boundary closer than the heatmap error ``tol`` allows (the deployed head may then
    select another cell, legitimately)."""
    remarks = []
    moved = int(np.count_nonzero(order != np.arange(len(order))))
    if moved:
        remarks.append(f"{moved} proposals paired out of order")
    if ranked.size > proposals:
        gap = float(ranked[proposals - 1] - ranked[proposals])
        budget = tol.rel_max_abs * float(ranked[0])
        if gap <= budget:
            remarks.append(f"top-k boundary gap {gap:.1e} within the heatmap error budget "
                           f"{budget:.1e}: the proposal set may legitimately differ")
    return remarks


def _save_frame(directory: Path, index: int, reference: SideOutputs, deployed: SideOutputs,
                order: np.ndarray) -> Path:
    arrays: dict[str, np.ndarray] = {"head.proposal_order": order}
    for name in (*(s.name for s in STAGES), "lidar.voxel_coords"):
        arrays[f"{name}.reference"] = reference.tensors[name]
        arrays[f"{name}.deployed"] = deployed.tensors[name]
    for side, dets in (("reference", reference.detections), ("deployed", deployed.detections)):
        arrays[f"boxes.{side}"] = dets.boxes
        arrays[f"scores.{side}"] = dets.scores
        arrays[f"labels.{side}"] = dets.labels
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write(directory / f"frame_{index:04d}.npz", buffer.getvalue())
