"""Training targets of the TransFusion head (docs/reference.md#training-settings).

Two kinds of target, as the reference's ``TransFusionHead.get_targets``:

* a **dense heatmap** per class, one Gaussian per ground-truth box drawn in the head's
  ``(class, X, Y)`` layout (dimension 1 indexes x, docs/reference.md#conventions): the radius is
  CenterNet's ``gaussian_radius`` of the box footprint in BEV cells at ``gaussian_overlap`` 0.1,
  truncated to an integer and raised to ``min_radius`` 2, the peak cell is the truncated centre;
* **per-proposal targets** from a one-to-one Hungarian matching of the proposals to the
  ground truth (``HungarianAssigner3D``): cost = 0.15 · focal classification cost + 0.25 · L1
  distance of the BEV centres normalised by the point-cloud range − 0.25 · 3D IoU. Matched
  proposals regress the encoded box (``TransFusionBBoxCoder.encode``) and classify as its
  class; every other proposal is background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from bevdeploy.data.boxes import box_corners, from_mmdet3d_legacy
from bevdeploy.model.bbox_coder import CODE_SIZE, TransFusionBBoxCoder
from bevdeploy.presets import Preset

GAUSSIAN_OVERLAP = 0.1
MIN_RADIUS = 2


# ---------------------------------------------------------------------------- dense heatmap


def gaussian_radius(length: float, width: float, min_overlap: float = GAUSSIAN_OVERLAP) -> float:
    """CenterNet's radius (in cells) for a ``length × width`` footprint, as mmdet3d computes it.

    The smallest of the three quadratic roots that bound how far a corner may move while the
    shifted box keeps ``min_overlap`` IoU with the original. mmdet3d divides every root by 2
    (not by ``2a``), so the radius is larger than CornerNet's corrected formula; the reference
    checkpoint was trained with this version, so it is kept.
    """
    h, w, o = float(length), float(width), float(min_overlap)
    b1, c1 = h + w, w * h * (1 - o) / (1 + o)
    r1 = (b1 + np.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - o) * w * h
    r2 = (b2 + np.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * o, -2 * o * (h + w), (o - 1) * w * h
    r3 = (b3 + np.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return float(min(r1, r2, r3))


def gaussian_kernel(radius: int) -> np.ndarray:
    """``(2r+1)²`` Gaussian with peak 1 and σ = diameter / 6; values below float eps · peak are
    zeroed (so the tails never count as faint positives)."""
    d = 2 * radius + 1
    sigma = d / 6.0
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma * sigma))
    g[g < np.finfo(g.dtype).eps * g.max()] = 0.0
    return g


def draw_gaussian(heatmap: np.ndarray, ix: int, iy: int, radius: int) -> None:
    """Max-blend a Gaussian of ``radius`` centred on cell ``(ix, iy)`` into an ``(X, Y)`` map
    (in place), clipped at the borders."""
    size_x, size_y = heatmap.shape
    g = gaussian_kernel(radius)
    x0, x1 = max(ix - radius, 0), min(ix + radius + 1, size_x)
    y0, y1 = max(iy - radius, 0), min(iy + radius + 1, size_y)
    if x0 >= x1 or y0 >= y1:
        return
    patch = g[x0 - ix + radius:x1 - ix + radius, y0 - iy + radius:y1 - iy + radius]
    np.maximum(heatmap[x0:x1, y0:y1], patch, out=heatmap[x0:x1, y0:y1])


def heatmap_targets(boxes: np.ndarray, labels: np.ndarray, preset: Preset, *,
                    gaussian_overlap: float = GAUSSIAN_OVERLAP,
                    min_radius: int = MIN_RADIUS) -> np.ndarray:
    """(K, 9) bevdeploy boxes with class indices → ``(num_classes, X, Y)`` float32 heatmap.

    A box's footprint and centre are measured in head cells (``out_size_factor`` voxels); the
    centre cell is ``trunc((x − x_min) / cell)`` as the reference's ``.to(int32)``. Boxes whose
    centre cell falls outside the grid draw nothing.
    """
    size_x, size_y = preset.bev_size
    heatmap = np.zeros((preset.num_classes, size_x, size_y), dtype=np.float32)
    r = preset.points.point_cloud_range
    factor = preset.model.head.out_size_factor
    cell_x = preset.voxel.voxel_size[0] * factor
    cell_y = preset.voxel.voxel_size[1] * factor
    for box, label in zip(np.asarray(boxes, np.float64), np.asarray(labels)):
        length, width = box[3] / cell_x, box[4] / cell_y
        if length <= 0 or width <= 0:
            continue
        radius = max(min_radius, int(gaussian_radius(length, width, gaussian_overlap)))
        ix = int((box[0] - r[0]) / cell_x)
        iy = int((box[1] - r[1]) / cell_y)
        if 0 <= ix < size_x and 0 <= iy < size_y:
            draw_gaussian(heatmap[int(label)], ix, iy, radius)
    return heatmap


# ---------------------------------------------------------------------------- matching


def box_iou_3d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) 3D IoU of yaw-rotated boxes in the bevdeploy convention (z = centre).

    BEV polygon intersection (shapely) times the vertical overlap, over the union of volumes.
    Pairs whose circumscribed BEV circles do not meet are 0 without a polygon test.
    """
    a = np.asarray(a, np.float64).reshape(-1, 9)
    b = np.asarray(b, np.float64).reshape(-1, 9)
    iou = np.zeros((len(a), len(b)))
    if not len(a) or not len(b):
        return iou
    ra = np.hypot(a[:, 3], a[:, 4]) / 2
    rb = np.hypot(b[:, 3], b[:, 4]) / 2
    centre_dist = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    ia, ib = np.nonzero(centre_dist < ra[:, None] + rb[None, :])
    if not len(ia):
        return iou
    polys_a = shapely.polygons(box_corners(a)[:, :4, :2])
    polys_b = shapely.polygons(box_corners(b)[:, :4, :2])
    area = shapely.area(shapely.intersection(polys_a[ia], polys_b[ib]))
    top = np.minimum(a[ia, 2] + a[ia, 5] / 2, b[ib, 2] + b[ib, 5] / 2)
    bottom = np.maximum(a[ia, 2] - a[ia, 5] / 2, b[ib, 2] - b[ib, 5] / 2)
    inter = area * np.clip(top - bottom, 0.0, None)
    vol_a = a[ia, 3] * a[ia, 4] * a[ia, 5]
    vol_b = b[ib, 3] * b[ib, 4] * b[ib, 5]
    iou[ia, ib] = inter / np.maximum(vol_a + vol_b - inter, 1e-9)
    return iou


@dataclass(frozen=True)
class MatchCosts:
    """Weights of the Hungarian cost terms (the reference's ``train_cfg.assigner``)."""

    cls_weight: float = 0.15
    reg_weight: float = 0.25
    iou_weight: float = 0.25
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def match_cost(pred_boxes: np.ndarray, cls_logits: np.ndarray, gt_boxes: np.ndarray,
               gt_labels: np.ndarray, point_cloud_range: tuple[float, ...],
               costs: MatchCosts = MatchCosts()) -> tuple[np.ndarray, np.ndarray]:
    """(P, K) matching cost of P proposals against K ground-truth boxes, and their (P, K) IoU.

    Classification: mmdet's ``FocalLossCost`` on the proposal's probability of the GT class,
    ``α(1−p)^γ·(−log p) − (1−α)p^γ·(−log(1−p))``. Regression: L1 distance of BEV centres,
    each axis divided by the range's extent. IoU: minus the 3D IoU.
    """
    prob = 1.0 / (1.0 + np.exp(-np.asarray(cls_logits, np.float64)))[:, gt_labels]
    eps = 1e-12
    a, g = costs.focal_alpha, costs.focal_gamma
    pos = -np.log(prob + eps) * a * (1 - prob) ** g
    neg = -np.log(1 - prob + eps) * (1 - a) * prob ** g
    lo = np.asarray(point_cloud_range[:2], np.float64)
    extent = np.asarray(point_cloud_range[3:5], np.float64) - lo
    pn = (np.asarray(pred_boxes, np.float64)[:, :2] - lo) / extent
    gn = (np.asarray(gt_boxes, np.float64)[:, :2] - lo) / extent
    l1 = np.abs(pn[:, None, :] - gn[None, :, :]).sum(-1)
    iou = box_iou_3d(pred_boxes, gt_boxes)
    cost = costs.cls_weight * (pos - neg) + costs.reg_weight * l1 - costs.iou_weight * iou
    return cost, iou


@dataclass
class Assignment:
    """Which ground-truth box each proposal is matched to (−1: background) and that IoU."""

    gt_index: np.ndarray  # (P,) int64
    iou: np.ndarray  # (P,) float64, 0 for background

    @property
    def positive(self) -> np.ndarray:
        return np.flatnonzero(self.gt_index >= 0)


def hungarian_assign(pred_boxes: np.ndarray, cls_logits: np.ndarray, gt_boxes: np.ndarray,
                     gt_labels: np.ndarray, point_cloud_range: tuple[float, ...],
                     costs: MatchCosts = MatchCosts()) -> Assignment:
    """Minimum-cost one-to-one matching (``scipy.optimize.linear_sum_assignment``); with more
    proposals than boxes every box gets exactly one proposal."""
    num_props = len(pred_boxes)
    gt_index = np.full(num_props, -1, dtype=np.int64)
    iou_out = np.zeros(num_props)
    if len(gt_boxes) == 0 or num_props == 0:
        return Assignment(gt_index, iou_out)
    cost, iou = match_cost(pred_boxes, cls_logits, gt_boxes, gt_labels, point_cloud_range, costs)
    rows, cols = linear_sum_assignment(cost)
    gt_index[rows] = cols
    iou_out[rows] = iou[rows, cols]
    return Assignment(gt_index, iou_out)


# ---------------------------------------------------------------------------- per sample


def decode_proposals(outputs: dict[str, Tensor], index: int,
                     coder: TransFusionBBoxCoder) -> np.ndarray:
    """(P, 9) bevdeploy boxes of **every** proposal of batch item ``index``, unfiltered (the
    assigner must see all P proposals in order; ``TransFusionBBoxCoder.decode`` drops those
    outside ``post_center_range``)."""
    sl = slice(index, index + 1)
    legacy = coder.legacy_boxes(*(outputs[k][sl].detach().double()
                                  for k in ("rot", "dim", "center", "height", "vel")))
    return from_mmdet3d_legacy(legacy[0].cpu().numpy(), z_is_bottom=False)


@dataclass
class Targets:
    """Loss targets of a batch, in the shapes the head predicts."""

    labels: Tensor  # (B, P) int64, num_classes = background
    label_weights: Tensor  # (B, P)
    bbox_targets: Tensor  # (B, P, 10) encoded boxes of matched proposals
    bbox_weights: Tensor  # (B, P, 10) 1 for matched proposals, else 0
    heatmap: Tensor  # (B, num_classes, X, Y)
    num_pos: int
    mean_iou: float  # of the matched proposals, for the log


def build_targets(outputs: dict[str, Tensor], gt_boxes: list[np.ndarray],
                  gt_labels: list[np.ndarray], preset: Preset,
                  coder: TransFusionBBoxCoder, costs: MatchCosts = MatchCosts()) -> Targets:
    """Targets for a batch from the head's forward dict and per-sample GT (bevdeploy boxes,
    class indices). Every proposal has classification weight 1 (``pos_weight −1``)."""
    batch, _, num_props = outputs["center"].shape
    num_classes = preset.num_classes
    device = outputs["center"].device
    labels = torch.full((batch, num_props), num_classes, dtype=torch.long)
    bbox_targets = torch.zeros(batch, num_props, CODE_SIZE)
    bbox_weights = torch.zeros(batch, num_props, CODE_SIZE)
    heatmaps, ious = [], []
    r = preset.points.point_cloud_range
    for b in range(batch):
        boxes, cls = np.asarray(gt_boxes[b], np.float32).reshape(-1, 9), np.asarray(gt_labels[b])
        heatmaps.append(heatmap_targets(boxes, cls, preset))
        assignment = hungarian_assign(decode_proposals(outputs, b, coder),
                                      outputs["heatmap"][b].detach().T.cpu().numpy(),
                                      boxes, cls, r, costs)
        pos = assignment.positive
        if len(pos):
            matched = assignment.gt_index[pos]
            bbox_targets[b, pos] = coder.encode(boxes[matched]).float()
            bbox_weights[b, pos] = 1.0
            labels[b, pos] = torch.from_numpy(cls[matched].astype(np.int64))
            ious.append(assignment.iou[pos])
    matched_iou = np.concatenate(ious) if ious else np.zeros(0)
    return Targets(
        labels=labels.to(device),
        label_weights=torch.ones(batch, num_props, device=device),
        bbox_targets=bbox_targets.to(device),
        bbox_weights=bbox_weights.to(device),
        heatmap=torch.from_numpy(np.stack(heatmaps)).to(device),
        num_pos=len(matched_iou),
        mean_iou=float(matched_iou.mean()) if len(matched_iou) else 0.0,
    )
