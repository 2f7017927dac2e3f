"""Training targets: Gaussian heatmaps (radius rule, X-first layout, min radius), 3D IoU and
the Hungarian matching, each against independent maths."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bevdeploy.data.boxes import points_in_boxes
from bevdeploy.model.bbox_coder import TransFusionBBoxCoder
from bevdeploy.presets import get_preset
from bevdeploy.train.targets import (
    MatchCosts,
    box_iou_3d,
    build_targets,
    gaussian_kernel,
    gaussian_radius,
    heatmap_targets,
    hungarian_assign,
    match_cost,
)

TINY = get_preset("tiny")
CELL = TINY.voxel.voxel_size[0] * TINY.model.head.out_size_factor  # 1.6 m
PC_MIN = TINY.points.point_cloud_range[0]


def _box(x: float, y: float, l: float, w: float, yaw: float = 0.0, z: float = 0.0,
         h: float = 1.5) -> list[float]:
    return [x, y, z, l, w, h, yaw, 0.0, 0.0]


# ------------------------------------------------------------------ radius and Gaussian


@pytest.mark.parametrize("length,width", [(1.0, 1.0), (2.875, 1.1875), (6.9, 1.84), (0.3, 0.3)])
def test_radius_is_mmdet3d_rule(length: float, width: float) -> None:
    """Each of CenterNet's three cases is ``a · (larger root of a r² − b r + c)``, mmdet3d's
    ``(b + √Δ) / 2``; the radius is their minimum. Roots here come from numpy.roots."""
    o = 0.1
    cases = [(1.0, length + width, width * length * (1 - o) / (1 + o)),
             (4.0, 2 * (length + width), (1 - o) * width * length),
             (4 * o, -2 * o * (length + width), (o - 1) * width * length)]
    expected = min(a * np.roots([a, -b, c]).real.max() for a, b, c in cases)
    assert gaussian_radius(length, width, o) == pytest.approx(expected, rel=1e-9)


def test_radius_hand_value() -> None:
    # 1 × 1 cell at overlap 0.1: case 3 wins, a = 0.4, b = −0.4, c = −0.9:
    # (−0.4 + √(0.16 + 1.44)) / 2.
    assert gaussian_radius(1.0, 1.0, 0.1) == pytest.approx((-0.4 + np.sqrt(1.6)) / 2, abs=1e-12)


def test_gaussian_kernel_shape_and_sigma() -> None:
    g = gaussian_kernel(3)
    assert g.shape == (7, 7) and g[3, 3] == 1.0
    sigma = 7 / 6
    assert g[3, 5] == pytest.approx(np.exp(-4 / (2 * sigma ** 2)), rel=1e-12)
    assert g[0, 0] == pytest.approx(np.exp(-18 / (2 * sigma ** 2)), rel=1e-12)
    np.testing.assert_allclose(g, g.T)


# ------------------------------------------------------------------ heatmap


def test_heatmap_peak_in_x_first_layout() -> None:
    """A car at x = −20.1 m, y = 30.5 m peaks at (class 0, ix, iy) with ix = trunc((x+51.2)/1.6)
    in dimension 1; nothing is drawn for other classes or at the transposed cell."""
    x, y = -20.1, 30.5
    hm = heatmap_targets(np.array([_box(x, y, 4.6, 1.9)]), np.array([0]), TINY)
    ix, iy = int((x - PC_MIN) / CELL), int((y - PC_MIN) / CELL)
    assert hm.shape == (TINY.num_classes, *TINY.bev_size)
    assert hm[0, ix, iy] == 1.0
    assert np.argwhere(hm == 1.0).tolist() == [[0, ix, iy]]
    assert hm[1:].max() == 0.0
    assert hm[0, iy, ix] == 0.0  # the transposed cell is far away


def test_min_radius_and_footprint() -> None:
    """A 0.4 m cone is a quarter cell: its rule radius truncates to 0, so min radius 2 gives a
    5 × 5 blob; a bus (6.9 × 1.8 cells) gets its rule radius."""
    cone = heatmap_targets(np.array([_box(0.5, 0.5, 0.4, 0.4)]), np.array([9]), TINY)
    assert int(gaussian_radius(0.4 / CELL, 0.4 / CELL)) == 0
    nz = np.argwhere(cone[9] > 0)
    assert np.ptp(nz[:, 0]) + 1 == 5 and np.ptp(nz[:, 1]) + 1 == 5

    bus = heatmap_targets(np.array([_box(10.0, 10.0, 11.0, 2.95)]), np.array([3]), TINY)
    r = max(2, int(gaussian_radius(11.0 / CELL, 2.95 / CELL)))
    nz = np.argwhere(bus[3] > 0)
    assert np.ptp(nz[:, 0]) + 1 == 2 * r + 1


def test_heatmap_clips_at_border_and_skips_outside() -> None:
    hm = heatmap_targets(np.array([_box(51.0, -51.0, 4.0, 2.0), _box(60.0, 0.0, 4.0, 2.0)]),
                         np.array([0, 1]), TINY)
    nx = TINY.bev_size[0]
    assert hm[0, nx - 1, 0] == 1.0
    assert hm[1].max() == 0.0


def test_overlapping_gaussians_take_the_max() -> None:
    one = heatmap_targets(np.array([_box(0.0, 0.0, 4.0, 2.0)]), np.array([0]), TINY)
    two = heatmap_targets(np.array([_box(0.0, 0.0, 4.0, 2.0), _box(3.2, 0.0, 4.0, 2.0)]),
                          np.array([0, 0]), TINY)
    assert np.all(two >= one) and two.max() == 1.0 and (two == 1.0).sum() == 2


# ------------------------------------------------------------------ IoU


def test_iou_axis_aligned_by_hand() -> None:
    a = np.array([_box(0, 0, 4, 2, h=2, z=1)])
    b = np.array([_box(1, 0.5, 4, 2, h=1, z=1.5)])
    inter = 3 * 1.5 * 1  # x overlap 3, y overlap 1.5, z overlap [1, 2]
    expected = inter / (16 + 8 - inter)
    assert box_iou_3d(a, b)[0, 0] == pytest.approx(expected, rel=1e-9)
    # A quarter turn with length and width swapped is the same solid.
    b_rot = np.array([_box(1, 0.5, 2, 4, yaw=np.pi / 2, h=1, z=1.5)])
    assert box_iou_3d(a, b_rot)[0, 0] == pytest.approx(expected, rel=1e-9)
    assert box_iou_3d(a, np.array([_box(30, 0, 4, 2)]))[0, 0] == 0.0


def test_iou_rotated_against_monte_carlo() -> None:
    """Rotated pair: IoU from uniform samples counted with ``points_in_boxes`` (σ ≈ 0.004)."""
    a = np.array([_box(0.0, 0.0, 4.0, 2.0, yaw=0.3, h=1.6)])
    b = np.array([_box(0.8, 0.4, 3.5, 1.8, yaw=-0.5, z=0.2, h=1.4)])
    rng = np.random.default_rng(0)
    pts = rng.uniform([-3, -3, -1], [4, 4, 1.2], size=(200_000, 3))
    inside = points_in_boxes(pts, np.concatenate([a, b]))
    mc = (inside[:, 0] & inside[:, 1]).sum() / (inside[:, 0] | inside[:, 1]).sum()
    assert box_iou_3d(a, b)[0, 0] == pytest.approx(mc, abs=0.01)


# ------------------------------------------------------------------ matching


def test_focal_cost_entry_by_hand() -> None:
    logits = np.array([[0.4, -1.0]])
    gt = np.array([_box(40.0, 40.0, 1.0, 1.0)])
    costs = MatchCosts(reg_weight=0.0, iou_weight=0.0)
    cost, _ = match_cost(np.array([_box(-40, -40, 1, 1)]), logits, gt, np.array([1]),
                         TINY.points.point_cloud_range, costs)
    p = 1 / (1 + np.exp(1.0))
    expected = 0.15 * (0.25 * (1 - p) ** 2 * -np.log(p) - 0.75 * p ** 2 * -np.log(1 - p))
    assert cost[0, 0] == pytest.approx(expected, rel=1e-9)


def test_hungarian_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        preds = np.array([_box(*rng.uniform(-20, 20, 2), *rng.uniform(1, 5, 2),
                               yaw=rng.uniform(-3, 3)) for _ in range(5)])
        gts = np.array([_box(*rng.uniform(-20, 20, 2), *rng.uniform(1, 5, 2)) for _ in range(3)])
        gts[0, :2] = preds[2, :2] + 0.3  # make IoU matter for one pair
        logits = rng.normal(size=(5, TINY.num_classes))
        labels = rng.integers(0, TINY.num_classes, 3)
        r = TINY.points.point_cloud_range
        cost, _ = match_cost(preds, logits, gts, labels, r)
        best = min(sum(cost[p, k] for k, p in enumerate(perm))
                   for perm in itertools.permutations(range(5), 3))
        result = hungarian_assign(preds, logits, gts, labels, r)
        assert sorted(result.gt_index[result.positive].tolist()) == [0, 1, 2]
        got = sum(cost[p, result.gt_index[p]] for p in result.positive)
        assert got == pytest.approx(best, rel=1e-12)


def test_no_ground_truth_is_all_background() -> None:
    result = hungarian_assign(np.array([_box(0, 0, 1, 1)]), np.zeros((1, 10)),
                              np.zeros((0, 9)), np.zeros(0, int), TINY.points.point_cloud_range)
    assert result.gt_index.tolist() == [-1] and len(result.positive) == 0


def test_build_targets_encodes_matched_proposals() -> None:
    """Proposals 1 and 3 are placed on the two GT boxes: they get the GT's class and encoded
    box, every other proposal is background with zero box weight."""
    coder = TransFusionBBoxCoder(TINY)
    gt = np.array([[5.0, -8.0, 0.9, 4.5, 1.9, 1.7, 0.4, 1.0, -0.5],
                   [-12.0, 20.0, 0.5, 0.7, 0.7, 1.8, -1.2, 0.3, 0.1]], dtype=np.float32)
    labels = np.array([0, 8])
    num_props = 6
    enc = coder.encode(gt)
    rng = torch.Generator().manual_seed(0)
    raw = torch.randn(1, 10, num_props, generator=rng) * 0.1
    raw[0, 0:2] += 30.0  # far from both boxes in cell units
    raw[0, :, 1], raw[0, :, 3] = enc[0], enc[1]
    outputs = {"center": raw[:, 0:2], "height": raw[:, 2:3], "dim": raw[:, 3:6],
               "rot": raw[:, 6:8], "vel": raw[:, 8:10],
               "heatmap": torch.zeros(1, TINY.num_classes, num_props)}
    t = build_targets(outputs, [gt], [labels], TINY, coder)
    assert t.num_pos == 2 and t.mean_iou == pytest.approx(1.0, abs=1e-4)  # float32 round trip
    assert t.labels[0].tolist() == [10, 0, 10, 8, 10, 10]
    torch.testing.assert_close(t.bbox_targets[0, [1, 3]], enc.float())
    assert t.bbox_weights[0, [0, 2, 4, 5]].abs().sum() == 0
    assert t.heatmap.shape == (1, TINY.num_classes, *TINY.bev_size)
    assert t.heatmap[0, 0].max() == 1.0 and t.heatmap[0, 8].max() == 1.0
