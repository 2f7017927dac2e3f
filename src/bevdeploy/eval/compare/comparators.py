"""The comparators: how one reference/deployed pair is judged against a ``Tolerances``.

Tensors by their element errors and cosine (``tensor_metrics``), the head's proposals paired
one to one before that (``align_proposals``), the voxel lists by their coordinates, and the
decoded boxes matched one to one within a class (``match_boxes``). Each ``*_failures`` says
why a pair fails its tolerance; an empty list is a pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import shapely
from scipy.optimize import linear_sum_assignment

from bevdeploy.data.boxes import box_corners
from bevdeploy.data.frame import Detections
from bevdeploy.eval.compare.tolerances import Tolerances

# The head's regression outputs, the per-proposal vector proposals are paired on.
_REGRESSION = ("rot", "dim", "reg", "height", "vel")

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
    reordering of near-equal or exactly equal heatmap scores and nothing else. A pairing across
    classes costs more than any within one. Non-finite values get the largest cost.
    Among pairings of equal cost (exact ties of whole proposals) each proposal keeps its place
    (``_keep_places``), so a tie is never reported as a reordering.
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
    return _keep_places(order, cost)


def _keep_places(order: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """``order`` with every proposal that can keep its own place at no extra cost kept there:
    the assignment is optimal, so swapping the partners of reference proposals ``i`` and ``j``
    (the one holding deployed column ``i``) never lowers the total, and it keeps it only when
    the costs tie exactly, as for duplicated proposals."""
    order = order.copy()
    holder = np.empty_like(order)
    holder[order] = np.arange(len(order))
    for i in range(len(order)):
        j, partner = int(holder[i]), int(order[i])
        if j != i and cost[i, i] + cost[j, partner] <= cost[i, partner] + cost[j, i]:
            order[i], order[j] = i, partner
            holder[i], holder[partner] = i, j
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


# ------------------------------------------------------------------------------ stage remarks


def voxel_failures(reference: np.ndarray, deployed: np.ndarray) -> list[str]:
    """The voxel features are compared row by row, so both sides must list the same voxels
    (coordinates) in the same order (first appearance in point order). A different voxel count
    is already a shape difference of the features."""
    if reference.shape != deployed.shape:
        return []
    differ = int(np.any(reference != deployed, axis=1).sum())
    return [f"{differ} voxel coordinates differ"] if differ else []


def judged_proposals(ranked: np.ndarray, proposals: int, tol: Tolerances) -> np.ndarray:
    """Which reference proposals the deployed head must select too: ``(proposals,)`` bool.

    ``ranked`` as in ``head_remarks``. Each deployed heatmap score is within the error budget
    (``tol.rel_max_abs`` × the best score) of the reference's, so reference proposal ``i`` stays
    in the deployed top-k when ``ranked[i] - budget > ranked[proposals] + budget``: no cell the
    reference left out can overtake it. The others may legitimately be swapped for such cells
    (an INT8 heatmap has thousands within its budget of the boundary), and their partner is then
    another proposal, so the head's tensors are judged over the sure ones only; all of them when
    none is sure.
    """
    if ranked.size <= proposals:
        return np.ones(proposals, dtype=bool)
    budget = tol.rel_max_abs * float(ranked[0])
    sure = np.asarray(ranked[:proposals]) - 2.0 * budget > float(ranked[proposals])
    return sure if sure.any() else np.ones(proposals, dtype=bool)


def head_remarks(order: np.ndarray, ranked: np.ndarray, proposals: int, tol: Tolerances
                 ) -> list[str]:
    """What explains a head difference without being one.

    ``ranked`` is the reference's sorted local-max heatmap, so reference proposal ``i`` was
    selected with score ``ranked[i]`` and a proposal found at deployed place ``order[i]`` was
    ranked there by scores that equal ``ranked[order[i]]`` up to the heatmap error: a move
    between exactly equal scores is each runtime's tie-breaking, one within the heatmap error
    budget (``tol`` relative to the best score) a legitimate near-tie, and only moves beyond it
    are reported as unexplained. Likewise the top-k boundary: inside an exact tie, or closer
    than the budget, the deployed head may legitimately select other cells.
    """
    remarks = []
    budget = tol.rel_max_abs * float(ranked[0])
    places = np.arange(len(order))
    moved = order != places
    if moved.any():
        step = np.abs(ranked[places] - ranked[order])[moved]
        tied, near = int((step == 0).sum()), int(((step > 0) & (step <= budget)).sum())
        if tied:
            remarks.append(f"{tied} proposals reordered among exactly equal heatmap scores "
                           "(tie-breaking; not an error)")
        if near:
            remarks.append(f"{near} proposals reordered among heatmap scores within the error "
                           f"budget {budget:.1e}")
        if len(step) - tied - near:
            remarks.append(f"{len(step) - tied - near} proposals paired out of order beyond "
                           f"the heatmap error budget {budget:.1e}")
    if ranked.size > proposals:
        last, first_out = float(ranked[proposals - 1]), float(ranked[proposals])
        if last == first_out:
            kept = int((ranked[:proposals] == last).sum())
            remarks.append(f"the top-k boundary falls inside an exact tie ({kept} of "
                           f"{int((ranked == last).sum())} equal cells kept, by tie-breaking): "
                           "the proposal set may legitimately differ")
        elif last - first_out <= budget:
            remarks.append(f"top-k boundary gap {last - first_out:.1e} within the heatmap error "
                           f"budget {budget:.1e}: the proposal set may legitimately differ")
    return remarks
