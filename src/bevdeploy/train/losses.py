"""The TransFusion training losses (docs/reference.md#training-settings), with the reference's
weights.

* ``loss_heatmap``: Gaussian focal loss (CenterNet; α 2, γ 4) of ``clip_sigmoid(dense_heatmap)``
  against the Gaussian targets, summed and divided by the number of peak cells (target == 1);
* ``loss_cls``: sigmoid focal loss (γ 2, α 0.25) of the proposals' class logits, background
  proposals having an all-zero target, divided by the number of matched proposals;
* ``loss_bbox``: L1 of ``[center(2), height, log dim(3), sin, cos, vel(2)]`` of matched
  proposals with code weights ``[1]·8 + [0.2, 0.2]``, weight 0.25, divided by the matches.

Each normaliser is at least 1, as the reference's ``max(…, 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bevdeploy.model.transfusion import REGRESSION_HEADS
from bevdeploy.train.targets import Targets

CLIP_EPS = 1e-4


def clip_sigmoid(x: Tensor, eps: float = CLIP_EPS) -> Tensor:
    """``sigmoid(x)`` clamped to [eps, 1 − eps], so the focal logs stay finite."""
    return x.sigmoid().clamp(min=eps, max=1 - eps)


def gaussian_focal_loss(pred: Tensor, target: Tensor, *, alpha: float = 2.0, gamma: float = 4.0,
                        avg_factor: float = 1.0) -> Tensor:
    """CenterNet's focal loss for Gaussian heatmaps, summed over all cells / ``avg_factor``.

    Peak cells (target exactly 1) are positives: ``−log p · (1−p)^α``; every other cell is a
    negative down-weighted near a peak: ``−log(1−p) · p^α · (1−target)^γ``.
    """
    eps = 1e-12
    pos = target.eq(1).to(pred.dtype)
    pos_loss = -(pred + eps).log() * (1 - pred).pow(alpha) * pos
    neg_loss = -(1 - pred + eps).log() * pred.pow(alpha) * (1 - target).pow(gamma)
    return (pos_loss + neg_loss).sum() / avg_factor


def sigmoid_focal_loss(logits: Tensor, labels: Tensor, weights: Tensor, *, gamma: float = 2.0,
                       alpha: float = 0.25, avg_factor: float = 1.0) -> Tensor:
    """mmdet's sigmoid focal loss: ``logits (N, C)``, ``labels (N,)`` in 0..C (C = background,
    an all-zero one-hot), per-sample ``weights (N,)``; summed / ``avg_factor``."""
    num_classes = logits.shape[1]
    target = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(logits.dtype)
    p = logits.sigmoid()
    pt = (1 - p) * target + p * (1 - target)
    focal = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * focal * weights[:, None]).sum() / avg_factor


def weighted_l1_loss(pred: Tensor, target: Tensor, weights: Tensor, *,
                     avg_factor: float = 1.0) -> Tensor:
    """``Σ |pred − target| · weights / avg_factor``."""
    return ((pred - target).abs() * weights).sum() / avg_factor


@dataclass(frozen=True)
class LossWeights:
    """The reference's loss weights and code weights (``train_cfg``, ``loss_*``)."""

    heatmap: float = 1.0
    cls: float = 1.0
    bbox: float = 0.25
    code_weights: tuple[float, ...] = (1.0,) * 8 + (0.2, 0.2)


def transfusion_loss(outputs: dict[str, Tensor], targets: Targets,
                     weights: LossWeights = LossWeights()) -> dict[str, Tensor]:
    """The three weighted losses of a batch and their sum (``"loss"``)."""
    heatmap = targets.heatmap
    loss_heatmap = gaussian_focal_loss(
        clip_sigmoid(outputs["dense_heatmap"]), heatmap,
        avg_factor=max(float(heatmap.eq(1).sum()), 1.0))
    num_pos = max(float(targets.num_pos), 1.0)
    logits = outputs["heatmap"].permute(0, 2, 1).reshape(-1, outputs["heatmap"].shape[1])
    loss_cls = sigmoid_focal_loss(logits, targets.labels.reshape(-1),
                                  targets.label_weights.reshape(-1), avg_factor=num_pos)
    preds = torch.cat([outputs[name] for name, _ in REGRESSION_HEADS], dim=1).permute(0, 2, 1)
    code = targets.bbox_weights.new_tensor(weights.code_weights)
    loss_bbox = weighted_l1_loss(preds, targets.bbox_targets, targets.bbox_weights * code,
                                 avg_factor=num_pos)
    losses = {"loss_heatmap": weights.heatmap * loss_heatmap,
              "loss_cls": weights.cls * loss_cls,
              "loss_bbox": weights.bbox * loss_bbox}
    losses["loss"] = sum(losses.values())
    return losses
