"""LiDAR branch: hard voxelization and the spconv-2 SparseEncoder
(docs/reference.md#voxelization, #sparse-encoder, #checkpoint-layout).

The voxelizer is held to spconv's own ``PointToVoxel`` and to a plain-Python loop written from
docs/reference.md#voxelization; the encoder is held to a dense ``F.conv3d`` emulation that
masks every layer to the active set (docs/reference.md#sparse-convolution-semantics).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from spconv.pytorch import SparseSequential
from spconv.pytorch.utils import PointToVoxel

from bevdeploy.errors import ConfigError, InputError
from bevdeploy.model.decoder import build_decoder_backbone, build_decoder_neck
from bevdeploy.model.fuser import build_fuser
from bevdeploy.model.lidar import (SparseBasicBlock, SparseEncoder, build_sparse_encoder,
                                   build_voxelizer)
from bevdeploy.model.transfusion import build_head
from bevdeploy.presets import LidarEncoderConfig, get_preset


@pytest.fixture(scope="module")
def tiny():
    return get_preset("tiny")


def clustered_points(n_clusters: int, per_cluster: int, seed: int, spread: float = 0.15
                     ) -> torch.Tensor:
    """Points in tight clusters (so many voxels overflow ``max_points``), shuffled, plus
    uniform points spilling past the tiny range on every side."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(n_clusters, 3, generator=g) - 0.5) * torch.tensor([90.0, 90.0, 7.0])
    centres[:, 2] -= 1.0
    pts = centres.repeat_interleave(per_cluster, 0)
    pts = pts + (torch.rand(pts.shape, generator=g) - 0.5) * spread
    loose = (torch.rand(400, 3, generator=g) - 0.5) * torch.tensor([120.0, 120.0, 12.0])
    xyz = torch.cat([pts, loose])
    extra = torch.rand(xyz.shape[0], 2, generator=g) * torch.tensor([255.0, 0.5])
    cloud = torch.cat([xyz, extra], dim=1)
    return cloud[torch.randperm(cloud.shape[0], generator=g)]


def loop_voxelize(points: np.ndarray, preset, max_voxels: int):
    """docs/reference.md#voxelization in plain Python: first-appearance voxels, first
    max_points points each."""
    lo = np.array(preset.points.point_cloud_range[:3], dtype=np.float32)
    size = np.array(preset.voxel.voxel_size, dtype=np.float32)
    grid = preset.grid_size
    voxels: dict[tuple[int, int, int], list[np.ndarray]] = {}
    for p in points.astype(np.float32):
        if not np.isfinite(p).all():
            continue
        idx = tuple(int(v) for v in np.floor((p[:3] - lo) / size))
        if any(i < 0 or i >= g for i, g in zip(idx, grid)):
            continue
        if idx not in voxels:
            if len(voxels) == max_voxels:
                continue
            voxels[idx] = []
        if len(voxels[idx]) < preset.voxel.max_points:
            voxels[idx].append(p)
    coords = np.array(list(voxels), dtype=np.int32).reshape(-1, 3)
    feats = np.array([np.mean(v, axis=0) for v in voxels.values()], dtype=np.float32)
    counts = np.array([len(v) for v in voxels.values()], dtype=np.int32)
    return feats, coords, counts


# ---------------------------------------------------------------------------------------------
# Voxelization
# ---------------------------------------------------------------------------------------------


def test_voxelizer_matches_spconv_point_to_voxel(tiny):
    points = clustered_points(300, 25, seed=0)
    vox = build_voxelizer(tiny).eval()
    feats, coords, counts = vox([points])

    ref = PointToVoxel(vsize_xyz=list(tiny.voxel.voxel_size),
                       coors_range_xyz=list(tiny.points.point_cloud_range),
                       num_point_features=tiny.points.num_features,
                       max_num_voxels=tiny.voxel.max_voxels,
                       max_num_points_per_voxel=tiny.voxel.max_points)
    ref_voxels, ref_zyx, ref_counts = ref(points)
    ref_mean = ref_voxels.sum(dim=1) / ref_counts[:, None].float()

    assert (counts == tiny.voxel.max_points).sum() > 100  # the cap is really exercised
    # Both number voxels by first appearance, so the lists agree row for row.
    assert torch.equal(coords[:, 0], torch.zeros_like(coords[:, 0]))
    assert torch.equal(coords[:, 1:], ref_zyx.flip(1).int())
    assert torch.equal(counts, ref_counts.int())
    torch.testing.assert_close(feats, ref_mean, rtol=1e-6, atol=1e-6)


def test_voxelizer_matches_the_spec_loop_with_caps(tiny):
    preset = dataclasses.replace(tiny, voxel=dataclasses.replace(
        tiny.voxel, max_points=4, max_voxels=150, max_voxels_train=90))
    points = clustered_points(200, 8, seed=1)
    vox = build_voxelizer(preset)
    for training, cap in ((False, 150), (True, 90)):
        vox.train(training)
        feats, coords, counts = vox([points])
        ref_feats, ref_coords, ref_counts = loop_voxelize(points.numpy(), preset, cap)
        assert len(ref_counts) == cap  # more voxels exist than the cap allows
        np.testing.assert_array_equal(coords[:, 1:].numpy(), ref_coords)
        np.testing.assert_array_equal(counts.numpy(), ref_counts)
        np.testing.assert_allclose(feats.numpy(), ref_feats, rtol=1e-6, atol=1e-5)
        assert counts.max() == 4


def test_voxelizer_drops_out_of_range_and_non_finite_points(tiny):
    lo = tiny.points.point_cloud_range[:3]
    hi = tiny.points.point_cloud_range[3:]
    points = torch.tensor([
        [lo[0], lo[1], lo[2], 1.0, 0.0],             # on the lower corner: voxel (0, 0, 0)
        [hi[0], 0.0, 0.0, 2.0, 0.0],                  # x on the upper bound: outside [0, grid)
        [0.0, hi[1], 0.0, 3.0, 0.0],                  # y on the upper bound
        [0.0, 0.0, hi[2], 4.0, 0.0],                  # z on the upper bound
        [lo[0] - 1e-3, 0.0, 0.0, 5.0, 0.0],           # just below the lower bound
        [float("nan"), 0.0, 0.0, 6.0, 0.0],           # non-finite coordinate
        [1.0, 1.0, 0.0, float("inf"), 0.0],           # non-finite feature
        [1.05, 1.05, 0.05, 7.0, 0.1],                 # valid
        [1.1, 1.1, 0.1, 9.0, 0.3],                    # same voxel as the previous one
    ], dtype=torch.float32)
    feats, coords, counts = build_voxelizer(tiny)([points])
    size = np.array(tiny.voxel.voxel_size)
    expected_cell = np.floor((np.array([1.05, 1.05, 0.05]) - np.array(lo)) / size).astype(int)
    assert coords.tolist() == [[0, 0, 0, 0], [0, *expected_cell.tolist()]]
    assert counts.tolist() == [1, 2]
    torch.testing.assert_close(feats[1], torch.tensor([1.075, 1.075, 0.075, 8.0, 0.2]))


def test_voxelizer_batches_and_rejects_bad_input(tiny):
    a, b = clustered_points(20, 5, seed=2), clustered_points(30, 5, seed=3)
    vox = build_voxelizer(tiny)
    feats, coords, counts = vox([a, b])
    fa, ca, _ = vox([a])
    fb, cb, _ = vox([b])
    n = ca.shape[0]
    assert coords.dtype == torch.int32 and counts.dtype == torch.int32
    assert torch.equal(coords[:n], ca) and torch.equal(coords[n:, 1:], cb[:, 1:])
    assert torch.equal(coords[n:, 0], torch.ones(cb.shape[0], dtype=torch.int32))
    assert torch.equal(feats, torch.cat([fa, fb]))

    empty_f, empty_c, empty_n = vox([torch.zeros((0, 5))])
    assert empty_f.shape == (0, 5) and empty_c.shape == (0, 4) and empty_n.shape == (0,)
    with pytest.raises(InputError, match=r"points\[1\]"):
        vox([a, a[:, :4]])


# ---------------------------------------------------------------------------------------------
# SparseEncoder against a dense emulation
# ---------------------------------------------------------------------------------------------


def _randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=g) + 0.5
            m.bias.data = torch.randn(c, generator=g) * 0.2
            m.running_mean = torch.randn(c, generator=g) * 0.2
            m.running_var = torch.rand(c, generator=g) + 0.5
        elif hasattr(m, "weight") and m.weight is not None and m.weight.ndim == 5:
            fan_in = m.weight[0].numel()
            m.weight.data = torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5


def _dense_conv(conv, x, mask):
    """Sparse conv on a dense grid: spconv-2 weight (O, kx, ky, kz, I) → conv3d (O, I, k…)."""
    weight = conv.weight.permute(0, 4, 1, 2, 3)
    y = F.conv3d(x, weight, stride=tuple(conv.stride), padding=tuple(conv.padding))
    if not conv.subm:  # every output site with an active input in its receptive field
        ones = torch.ones((1, 1, *conv.kernel_size))
        mask = (F.conv3d(mask, ones, stride=tuple(conv.stride),
                         padding=tuple(conv.padding)) > 0).float()
    return y * mask, mask


def _dense_bn(bn, x, mask):
    y = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return y * mask


def _dense_stage(module, x, mask):
    if isinstance(module, SparseBasicBlock):
        identity = x
        y, _ = _dense_conv(module.conv1, x, mask)
        y = torch.relu(_dense_bn(module.bn1, y, mask))
        y, _ = _dense_conv(module.conv2, y, mask)
        return torch.relu(_dense_bn(module.bn2, y, mask) + identity), mask
    conv, bn = module[0], module[1]  # conv → BN → ReLU
    y, mask = _dense_conv(conv, x, mask)
    return torch.relu(_dense_bn(bn, y, mask)), mask


def dense_encoder(enc: SparseEncoder, feats, coords, batch_size):
    x = torch.zeros((batch_size, feats.shape[1], *enc.sparse_shape))
    mask = torch.zeros((batch_size, 1, *enc.sparse_shape))
    b, i, j, k = coords.long().unbind(1)
    x[b, :, i, j, k] = feats
    mask[b, :, i, j, k] = 1.0
    x, mask = _dense_stage(enc.conv_input, x, mask)
    for stage in enc.encoder_layers:
        for block in stage:
            x, mask = _dense_stage(block, x, mask)
    return _dense_stage(enc.conv_out, x, mask)[0]  # (B, C, X, Y, Z)


@pytest.fixture
def two_threads():
    """spconv's CPU scatter-add races between OpenMP threads; make sure the test would see it."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_sparse_encoder_equals_masked_dense_conv3d(two_threads):
    cfg = LidarEncoderConfig(base_channels=4, output_channels=10,
                             encoder_channels=((4, 4, 6), (6, 6, 8), (8, 8, 10), (10, 10)),
                             encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, (1, 1, 0)), (0, 0)))
    enc = SparseEncoder(5, (16, 12, 41), cfg).eval()
    _randomize(enc, seed=0)
    g = torch.Generator().manual_seed(1)
    batch_size, per_sample = 2, 160
    cells = torch.stack([torch.randperm(16 * 12 * 40, generator=g)[:per_sample]
                         for _ in range(batch_size)])
    coords = torch.stack([torch.arange(batch_size).repeat_interleave(per_sample),
                          cells.flatten() // (12 * 40), cells.flatten() // 40 % 12,
                          cells.flatten() % 40], dim=1).int()
    feats = torch.randn(coords.shape[0], 5, generator=g)

    with torch.no_grad():
        bev = enc(feats, coords, batch_size)
        dense = dense_encoder(enc, feats, coords, batch_size)
    assert enc.output_shape() == (2, 2, 2) and dense.shape == (2, 10, 2, 2, 2)
    assert bev.shape == (2, 20, 2, 2)
    assert (dense.abs() > 1e-3).float().mean() > 0.3  # a live signal, not ReLU-dead zeros
    for c in range(10):
        for z in range(2):  # BEV channel index c·Z + z (docs/reference.md#sparse-encoder)
            torch.testing.assert_close(bev[:, c * 2 + z], dense[:, c, :, :, z],
                                       rtol=1e-4, atol=1e-4)


def test_sparse_encoder_tiny_shapes_empty_input_and_errors(tiny):
    enc = build_sparse_encoder(tiny).eval()
    x, y, z = tiny.lidar_encoder_shapes[-1]
    assert enc.output_shape() == (x, y, z)
    out = enc(torch.zeros((0, 5)), torch.zeros((0, 4), dtype=torch.int32), 2)
    assert out.shape == (2, tiny.lidar_bev_channels, x, y) and not out.any()
    with pytest.raises(InputError, match="coords"):
        enc(torch.ones((1, 5)), torch.tensor([[0, 0, 0, tiny.sparse_shape[2]]]).int(), 1)
    with pytest.raises(InputError, match="feats"):
        enc(torch.ones((1, 4)), torch.zeros((1, 4)).int(), 1)
    bad = dataclasses.replace(tiny.model.lidar_encoder,
                              encoder_channels=((8, 8, 16), (32, 32, 32), (32, 32, 32), (32, 32)))
    with pytest.raises(ConfigError, match="basic block 0 of stage 2"):
        SparseEncoder(5, tiny.sparse_shape, bad)


# ---------------------------------------------------------------------------------------------
# State-dict layout of the full-size model (docs/reference.md#checkpoint-layout,
# #sparse-conv-weight-layouts)
# ---------------------------------------------------------------------------------------------


def _elements(module: torch.nn.Module) -> float:
    return sum(v.numel() for v in module.state_dict().values()) / 1e6


def test_full_size_key_names_shapes_and_counts():
    preset = get_preset("nuscenes-resnet50")
    enc = build_sparse_encoder(preset)
    sd = enc.state_dict()
    assert len(sd) == 126 and _elements(enc) == pytest.approx(2.70, abs=0.005)
    # docs/reference.md#checkpoint-layout shapes (spconv-1.x: kx, ky, kz, I, O) in the spconv-2.x
    # layout (O, kx, ky, kz, I)
    expected = {
        "conv_input.0.weight": (16, 3, 3, 3, 5),
        "encoder_layers.encoder_layer1.0.conv1.weight": (16, 3, 3, 3, 16),
        "encoder_layers.encoder_layer1.1.bn2.running_var": (16,),
        "encoder_layers.encoder_layer1.2.0.weight": (32, 3, 3, 3, 16),
        "encoder_layers.encoder_layer2.2.0.weight": (64, 3, 3, 3, 32),
        "encoder_layers.encoder_layer3.1.conv2.weight": (64, 3, 3, 3, 64),
        "encoder_layers.encoder_layer3.2.0.weight": (128, 3, 3, 3, 64),
        "encoder_layers.encoder_layer3.2.1.weight": (128,),
        "encoder_layers.encoder_layer4.1.conv2.weight": (128, 3, 3, 3, 128),
        "conv_out.0.weight": (128, 1, 1, 3, 128),
        "conv_out.1.num_batches_tracked": (),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    strided = enc.encoder_layers.encoder_layer3[2][0]
    assert (list(strided.padding), list(strided.stride)) == ([1, 1, 0], [2, 2, 2])
    assert enc.encoder_layers.encoder_layer1[0].bn1.eps == 1e-3
    assert isinstance(enc.encoder_layers.encoder_layer1, SparseSequential)
    assert enc.output_shape() == (180, 180, 2)

    counts = {name: (len(m.state_dict()), _elements(m)) for name, m in (
        ("fuser", build_fuser(preset)), ("backbone", build_decoder_backbone(preset)),
        ("neck", build_decoder_neck(preset)), ("head", build_head(preset)))}
    assert {k: v[0] for k, v in counts.items()} == {"fuser": 6, "backbone": 72, "neck": 12,
                                                    "head": 96}
    for name, millions in (("fuser", 0.775), ("backbone", 4.29), ("neck", 0.297),
                           ("head", 1.04)):
        assert counts[name][1] == pytest.approx(millions, rel=0.01), name

    fuser_sd = build_fuser(preset).state_dict()
    assert tuple(fuser_sd["0.weight"].shape) == (256, 336, 3, 3)
    neck_sd = build_decoder_neck(preset).state_dict()
    assert tuple(neck_sd["deblocks.0.0.weight"].shape) == (256, 128, 1, 1)
    assert tuple(neck_sd["deblocks.1.0.weight"].shape) == (256, 256, 2, 2)
    assert build_fuser(preset)[1].eps == 1e-5  # quirk 12: BN eps differ by module
    assert build_decoder_backbone(preset).blocks[1][16].eps == 1e-3
    assert build_decoder_neck(preset).deblocks[1][1].eps == 1e-3
    second_sd = build_decoder_backbone(preset).state_dict()
    assert tuple(second_sd["blocks.1.0.weight"].shape) == (256, 128, 3, 3)
    assert tuple(second_sd["blocks.1.15.weight"].shape) == (256, 256, 3, 3)
    assert "blocks.0.16.running_mean" in second_sd
