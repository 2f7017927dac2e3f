"""Losses against hand-computed values, spconv's CPU backward against a dense convolution, and
a few real training steps that lower the loss."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import spconv.pytorch as spconv
import spconv.pytorch.ops as spconv_ops
import torch
import torch.nn.functional as F

from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.presets import get_preset
from bevdeploy.train.data import make_batch, prepare_sample
from bevdeploy.train.losses import (
    LossWeights,
    clip_sigmoid,
    gaussian_focal_loss,
    sigmoid_focal_loss,
    transfusion_loss,
    weighted_l1_loss,
)
from bevdeploy.train.sparse_cpu import cpu_sparse_training
from bevdeploy.train.targets import Targets, build_targets
from bevdeploy.train.trainer import (
    TrainConfig,
    _optimizer,
    build_training_model,
    lr_factor,
)


def test_gaussian_focal_loss_by_hand() -> None:
    pred = torch.tensor([[0.9, 0.2], [0.3, 0.5]], dtype=torch.float64)
    target = torch.tensor([[1.0, 0.5], [0.0, 0.8]], dtype=torch.float64)
    expected = (-math.log(0.9) * 0.1 ** 2  # the peak
                - math.log(0.8) * 0.2 ** 2 * 0.5 ** 4
                - math.log(0.7) * 0.3 ** 2 * 1.0 ** 4
                - math.log(0.5) * 0.5 ** 2 * 0.2 ** 4) / 3.0
    got = gaussian_focal_loss(pred, target, avg_factor=3.0)
    assert float(got) == pytest.approx(expected, rel=1e-9)


def test_clip_sigmoid_bounds() -> None:
    x = torch.tensor([-50.0, 0.0, 50.0])
    torch.testing.assert_close(clip_sigmoid(x), torch.tensor([1e-4, 0.5, 1 - 1e-4]))


def test_sigmoid_focal_loss_by_hand() -> None:
    """Two proposals, three classes: one of class 2, one background (label 3 = C)."""
    logits = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -2.0]], dtype=torch.float64)
    labels = torch.tensor([2, 3])
    weights = torch.tensor([1.0, 0.5], dtype=torch.float64)

    def term(x: float, positive: bool) -> float:
        p = 1 / (1 + math.exp(-x))
        if positive:
            return -math.log(p) * 0.25 * (1 - p) ** 2
        return -math.log(1 - p) * 0.75 * p ** 2

    expected = (term(0.5, False) + term(-1.0, False) + term(2.0, True)
                + 0.5 * (term(1.5, False) + term(0.0, False) + term(-2.0, False))) / 2.0
    got = sigmoid_focal_loss(logits, labels, weights, avg_factor=2.0)
    assert float(got) == pytest.approx(expected, rel=1e-9)


def test_weighted_l1() -> None:
    pred = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    target = torch.tensor([[0.5, 2.5], [3.0, -1.0]])
    weights = torch.tensor([[1.0, 0.2], [0.0, 1.0]])
    assert float(weighted_l1_loss(pred, target, weights, avg_factor=2.0)) == pytest.approx(
        (0.5 + 0.2 * 0.5) / 2.0)


def test_transfusion_loss_weights() -> None:
    """Only a velocity error on the single match: loss_bbox = 0.25 · 0.2 · |Δv| / 1."""
    preset = get_preset("tiny")
    k, p = preset.num_classes, 4
    target_box = torch.tensor([10.0, 12.0, 1.0, 0.5, 1.5, 0.3, 0.0, 1.0, 2.0, -1.0])
    pred = torch.zeros(1, 10, p)
    pred[0, :, 0] = target_box
    pred[0, 8, 0] += 0.4
    outputs = {"center": pred[:, 0:2], "height": pred[:, 2:3], "dim": pred[:, 3:6],
               "rot": pred[:, 6:8], "vel": pred[:, 8:10],
               "heatmap": torch.full((1, k, p), -30.0),
               "dense_heatmap": torch.full((1, k, *preset.bev_size), -30.0)}
    bbox_targets = torch.zeros(1, p, 10)
    bbox_targets[0, 0] = target_box
    bbox_weights = torch.zeros(1, p, 10)
    bbox_weights[0, 0] = 1.0
    labels = torch.full((1, p), k)
    outputs["heatmap"][0, 3, 0] = 30.0
    labels[0, 0] = 3
    targets = Targets(labels=labels, label_weights=torch.ones(1, p), bbox_targets=bbox_targets,
                      bbox_weights=bbox_weights,
                      heatmap=torch.zeros(1, k, *preset.bev_size), num_pos=1, mean_iou=1.0)
    losses = transfusion_loss(outputs, targets, LossWeights())
    assert float(losses["loss_bbox"]) == pytest.approx(0.25 * 0.2 * 0.4, rel=1e-5)
    assert float(losses["loss_cls"]) < 1e-12 and float(losses["loss_heatmap"]) < 1e-6
    assert float(losses["loss"]) == pytest.approx(sum(float(losses[n]) for n in
                                                      ("loss_heatmap", "loss_cls", "loss_bbox")))


def test_lr_schedule() -> None:
    cfg = TrainConfig(epochs=1, warmup_iters=10, warmup_ratio=1 / 3, min_lr_ratio=1e-3)
    assert lr_factor(0, 0.0, cfg) == pytest.approx(1 / 3)
    assert lr_factor(10, 0.0, cfg) == pytest.approx(1.0)
    assert lr_factor(500, 0.5, cfg) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)
    assert lr_factor(1000, 1.0, cfg) == pytest.approx(1e-3)


@pytest.mark.parametrize("subm", [True, False])
def test_spconv_cpu_backward_matches_dense_conv(subm: bool) -> None:
    """spconv's CPU gradients (features and weights) equal those of ``F.conv3d`` on the dense
    grid, read at the active sites; float64, so the tolerance is round-off."""
    shape = (9, 8, 7)
    rng = np.random.default_rng(0)
    sites = np.unique(np.stack([rng.integers(0, s, 200) for s in shape], 1), axis=0)[:60]
    coords = torch.from_numpy(np.concatenate([np.zeros((len(sites), 1)), sites], 1)).int()
    torch.manual_seed(0)
    feats = torch.randn(len(sites), 4, dtype=torch.float64, requires_grad=True)
    conv = (spconv.SubMConv3d(4, 5, 3, padding=1, bias=False) if subm
            else spconv.SparseConv3d(4, 5, 3, stride=2, padding=1, bias=False)).double()
    threads = torch.get_num_threads()
    with cpu_sparse_training():
        assert torch.get_num_threads() == 1
        out = conv(spconv.SparseConvTensor(feats, coords, list(shape), 1))
        upstream = torch.randn_like(out.features)
        (out.features * upstream).sum().backward()
    assert torch.get_num_threads() == threads
    assert spconv_ops.get_current_stream is spconv.cppcore.get_current_stream

    dense_feats = feats.detach().clone().requires_grad_()
    weight = conv.weight.detach().clone().requires_grad_()  # (O, kx, ky, kz, I)
    idx = coords.long()
    grid = torch.zeros(1, *shape, 4, dtype=torch.float64).index_put(
        (idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3]), dense_feats)
    y = F.conv3d(grid.permute(0, 4, 1, 2, 3), weight.permute(0, 4, 1, 2, 3),
                 stride=conv.stride, padding=conv.padding)
    o = out.indices.long()
    y_sites = y.permute(0, 2, 3, 4, 1)[o[:, 0], o[:, 1], o[:, 2], o[:, 3]]
    torch.testing.assert_close(y_sites, out.features.detach(), rtol=0, atol=1e-12)
    (y_sites * upstream).sum().backward()
    torch.testing.assert_close(feats.grad, dense_feats.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(conv.weight.grad, weight.grad, rtol=0, atol=1e-11)


def test_training_steps_reduce_the_loss(synthetic_world: Path) -> None:
    """Six AdamW steps on one batch of two real frames: the loss falls by a quarter or more.
    (Not timed; about 10 s on 2 cores.)"""
    preset = get_preset("tiny")
    frames = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_train",
                            preset=preset)
    samples = [prepare_sample(frames[i], preset) for i in range(2)]
    assert sum(len(s.boxes) for s in samples) > 0
    batch = make_batch(samples, preset)
    torch.manual_seed(0)
    model = build_training_model(preset).train()
    optimizer = _optimizer(model, TrainConfig(epochs=1, lr=2e-3))
    coder = model.heads["object"].bbox_coder
    losses = []
    with cpu_sparse_training():
        for _ in range(6):
            outputs = model(batch.inputs)
            loss = transfusion_loss(outputs, build_targets(outputs, batch.gt_boxes,
                                                           batch.gt_labels, preset, coder))["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-2:]) < 0.75 * losses[0], losses
