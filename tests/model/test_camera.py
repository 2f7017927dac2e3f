"""Camera branch: checkpoint layout (docs/reference.md#checkpoint-layout), Swin/ResNet/FPN
mechanics, and the DepthLSSTransform steps against independent numpy maths."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bevdeploy.data.frame import Calibration
from bevdeploy.data.preprocess import img_aug_matrices, lidar2image
from bevdeploy.errors import ConfigError, InputError
from bevdeploy.model.camera import (
    GeneralizedLSSFPN, ResNet, SwinTransformer, build_camera_backbone, build_camera_neck,
    build_vtransform)
from bevdeploy.model.camera.swin import PatchMerging, ShiftWindowMSA, relative_position_index
from bevdeploy.presets import get_preset


def _meta_state_dicts(preset_name: str) -> dict[str, dict[str, torch.Tensor]]:
    """State dicts of the full-size camera modules, built on the meta device (no memory)."""
    p = get_preset(preset_name)
    with torch.device("meta"):
        mods = {"backbone": build_camera_backbone(p), "neck": build_camera_neck(p),
                "vtransform": build_vtransform(p)}
    return {k: m.state_dict() for k, m in mods.items()}


def _elements(sd: dict[str, torch.Tensor]) -> float:
    return sum(v.numel() for v in sd.values()) / 1e6


def _randomize_bn(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BN statistics and affine terms, so an eval-mode BN is not the identity."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


# --------------------------------------------------------------------------------------------
# State-dict layout (docs/reference.md#checkpoint-layout: the table and the representative keys)
# --------------------------------------------------------------------------------------------

def test_resnet50_state_dict_matches_spec():
    sd = _meta_state_dicts("nuscenes-resnet50")
    assert {k: len(v) for k, v in sd.items()} == {"backbone": 318, "neck": 24, "vtransform": 59}
    assert _elements(sd["backbone"]) == pytest.approx(23.56, abs=0.005)
    assert _elements(sd["neck"]) == pytest.approx(2.17, abs=0.005)
    bb = sd["backbone"]
    expected = {
        "conv1.weight": (64, 3, 7, 7), "bn1.running_var": (64,),
        "layer1.0.conv1.weight": (64, 64, 1, 1), "layer1.0.conv2.weight": (64, 64, 3, 3),
        "layer1.0.conv3.weight": (256, 64, 1, 1), "layer1.0.bn3.weight": (256,),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer1.0.downsample.1.bias": (256,),
        "layer3.5.conv2.weight": (256, 256, 3, 3), "layer4.2.conv3.weight": (2048, 512, 1, 1),
    }
    assert {k: tuple(bb[k].shape) for k in expected} == expected
    assert not any(k.startswith("fc.") for k in bb)
    neck = sd["neck"]
    assert tuple(neck["lateral_convs.0.conv.weight"].shape) == (256, 768, 1, 1)
    assert tuple(neck["lateral_convs.1.conv.weight"].shape) == (256, 3072, 1, 1)
    assert tuple(neck["fpn_convs.1.conv.weight"].shape) == (256, 256, 3, 3)
    assert tuple(neck["fpn_convs.0.bn.running_mean"].shape) == (256,)


def test_swint_state_dict_matches_spec():
    sd = _meta_state_dicts("nuscenes-swint")
    assert {k: len(v) for k, v in sd.items()} == {"backbone": 187, "neck": 24, "vtransform": 59}
    assert _elements(sd["backbone"]) == pytest.approx(27.55, abs=0.005)
    assert _elements(sd["neck"]) == pytest.approx(1.59, abs=0.005)
    bb = sd["backbone"]
    expected = {
        "patch_embed.projection.weight": (96, 3, 4, 4), "patch_embed.projection.bias": (96,),
        "patch_embed.norm.weight": (96,),
        "stages.0.blocks.0.norm1.bias": (96,),
        "stages.0.blocks.0.attn.w_msa.relative_position_bias_table": (169, 3),
        "stages.0.blocks.0.attn.w_msa.relative_position_index": (49, 49),
        "stages.0.blocks.0.attn.w_msa.qkv.weight": (288, 96),
        "stages.0.blocks.0.attn.w_msa.proj.bias": (96,),
        "stages.0.blocks.1.ffn.layers.0.0.weight": (384, 96),
        "stages.0.blocks.1.ffn.layers.1.weight": (96, 384),
        "stages.0.downsample.norm.weight": (384,),
        "stages.0.downsample.reduction.weight": (192, 384),
        "stages.1.blocks.1.attn.w_msa.relative_position_bias_table": (169, 6),
        "stages.1.downsample.reduction.weight": (384, 768),
        "stages.2.blocks.5.norm2.weight": (384,),
        "stages.2.downsample.reduction.weight": (768, 1536),
        "stages.3.blocks.1.attn.w_msa.relative_position_bias_table": (169, 24),
        "norm1.weight": (192,), "norm2.bias": (384,), "norm3.weight": (768,),
    }
    assert {k: tuple(bb[k].shape) for k in expected} == expected
    assert bb["stages.0.blocks.0.attn.w_msa.relative_position_index"].dtype == torch.int64
    assert "norm0.weight" not in bb and "stages.3.downsample.norm.weight" not in bb
    assert not any(k.startswith("stages.0.downsample.reduction.bias") for k in bb)
    neck = sd["neck"]
    assert tuple(neck["lateral_convs.0.conv.weight"].shape) == (256, 448, 1, 1)
    assert tuple(neck["lateral_convs.1.conv.weight"].shape) == (256, 1152, 1, 1)


def test_vtransform_state_dict_and_constants_match_spec():
    vt = build_vtransform(get_preset("nuscenes-resnet50"))
    sd = vt.state_dict()
    assert len(sd) == 59
    assert _elements(sd) == pytest.approx(2.61, abs=0.005)
    learnable = sum(p.numel() for p in vt.parameters() if p.requires_grad) / 1e6
    assert learnable == pytest.approx(1.61, abs=0.005)
    expected = {
        "frustum": (118, 32, 88, 3), "dx": (3,), "bx": (3,), "nx": (3,),
        "dtransform.0.weight": (8, 1, 1, 1), "dtransform.0.bias": (8,),
        "dtransform.3.weight": (32, 8, 5, 5), "dtransform.4.running_var": (32,),
        "dtransform.6.weight": (64, 32, 5, 5), "dtransform.6.bias": (64,),
        "depthnet.0.weight": (256, 320, 3, 3), "depthnet.0.bias": (256,),
        "depthnet.3.weight": (256, 256, 3, 3), "depthnet.6.weight": (198, 256, 1, 1),
        "depthnet.6.bias": (198,), "downsample.0.weight": (80, 80, 3, 3),
        "downsample.3.weight": (80, 80, 3, 3), "downsample.7.num_batches_tracked": (),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    assert not any(k in sd for k in ("downsample.0.bias", "downsample.3.bias", "downsample.6.bias"))
    assert vt.dtransform[3].stride == (4, 4) and vt.dtransform[6].stride == (2, 2)
    assert vt.downsample[3].stride == (2, 2)
    for name in ("frustum", "dx", "bx", "nx"):
        assert isinstance(getattr(vt, name), torch.nn.Parameter)
        assert not getattr(vt, name).requires_grad
    assert vt.nx.dtype == torch.int64 and vt.nx.tolist() == [360, 360, 1]
    np.testing.assert_allclose(vt.dx.numpy(), [0.3, 0.3, 20.0], rtol=1e-6)
    np.testing.assert_allclose(vt.bx.numpy(), [-53.85, -53.85, 0.0], atol=1e-5)
    fr = vt.frustum.numpy()
    np.testing.assert_allclose(fr[0, 0, :, 0], np.linspace(0, 703, 88), atol=1e-4)  # step 8.08
    np.testing.assert_allclose(fr[0, :, 0, 1], np.linspace(0, 255, 32), atol=1e-4)
    np.testing.assert_allclose(fr[:, 0, 0, 2], 1.0 + 0.5 * np.arange(118), atol=1e-6)


@pytest.mark.parametrize("preset_name, levels", [
    ("nuscenes-resnet50", [(512, 32, 88), (1024, 16, 44), (2048, 8, 22)]),
    ("nuscenes-swint", [(192, 32, 88), (384, 16, 44), (768, 8, 22)]),
])
def test_full_size_shapes_on_meta(preset_name, levels):
    """docs/reference.md#tensor-walk-through walk-through shapes, traced on meta tensors (no
    compute)."""
    p = get_preset(preset_name)
    with torch.device("meta"):
        backbone, neck, vt = build_camera_backbone(p), build_camera_neck(p), build_vtransform(p)
        feats = backbone(torch.empty(6, 3, 256, 704))
        assert [tuple(f.shape[1:]) for f in feats] == levels
        outs = neck(feats)
        assert [tuple(o.shape) for o in outs] == [(6, 256, 32, 88), (6, 256, 16, 44)]
        assert tuple(vt.downsample(torch.empty(1, 80, 360, 360)).shape) == (1, 80, 180, 180)


# --------------------------------------------------------------------------------------------
# ResNet
# --------------------------------------------------------------------------------------------

def _conv_bn(x, conv, bn, stride, padding):
    y = F.conv2d(x, conv.weight, stride=stride, padding=padding)
    return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, 1e-5)


def test_resnet_bottleneck_is_pytorch_style():
    """The first block of a strided stage, recomputed with the stride on the 3×3 conv
    (docs/reference.md#resnet-50-backbone, 'pytorch' style) and a 1×1-stride-2 conv + BN shortcut,
    matches the module."""
    gen = torch.Generator().manual_seed(0)
    net = ResNet(depth=50, base_channels=8, out_indices=(1,)).eval()
    _randomize_bn(net, gen)
    blk = net.layer2[0]
    x = torch.randn(2, 32, 12, 10, generator=gen)
    y = F.relu(_conv_bn(x, blk.conv1, blk.bn1, 1, 0))
    y = F.relu(_conv_bn(y, blk.conv2, blk.bn2, 2, 1))
    y = _conv_bn(y, blk.conv3, blk.bn3, 1, 0)
    expected = F.relu(y + _conv_bn(x, blk.downsample[0], blk.downsample[1], 2, 0))
    with torch.no_grad():
        torch.testing.assert_close(blk(x), expected, rtol=1e-5, atol=1e-5)


def test_resnet18_tiny_uses_basic_blocks_and_strides():
    net = build_camera_backbone(get_preset("tiny")).eval()
    assert isinstance(net, ResNet)
    assert not hasattr(net.layer1[0], "conv3") and net.layer1[0].downsample is None
    assert net.layer2[0].conv1.stride == (2, 2)  # BasicBlock: stride on the first 3×3
    with torch.no_grad():
        outs = net(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 8, 12), (2, 64, 4, 6), (2, 128, 2, 3)]


def test_resnet_norm_eval_keeps_bn_statistics():
    net = ResNet(depth=18, base_channels=8, out_indices=(1, 2, 3)).train()
    before = net.bn1.running_mean.clone()
    net(torch.randn(2, 3, 32, 32) * 3 + 1)
    assert not net.bn1.training
    torch.testing.assert_close(net.bn1.running_mean, before, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Swin
# --------------------------------------------------------------------------------------------

def test_relative_position_index_encodes_offsets():
    w = 4
    idx = relative_position_index(w)
    for p in range(w * w):
        for q in range(w * w):
            dr, dc = p // w - q // w, p % w - q % w
            assert idx[p, q] == (dr + w - 1) * (2 * w - 1) + (dc + w - 1)


def _naive_window_attention(msa: ShiftWindowMSA, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Token-by-token attention over explicit groups, without roll or mask.

    In the original (unrolled) coordinates of the zero-padded map, shifted windows split each
    axis into the intervals [0, s), [s, s+w), …, [n−w+s, n); unshifted ones into [0, w), ….
    Every token attends to all tokens (padding included) of its group, with the bias of their
    coordinate difference.
    """
    win, s, m = msa.window, msa.shift, msa.w_msa
    b, _, c = x.shape
    hp, wp = math.ceil(h / win) * win, math.ceil(w / win) * win
    grid = torch.zeros(b, hp, wp, c)
    grid[:, :h, :w] = x.view(b, h, w, c)
    heads = m.num_heads
    q, k, v = m.qkv(grid).view(b, hp, wp, 3, heads, c // heads).unbind(3)
    table = m.relative_position_bias_table

    def intervals(n: int) -> list[tuple[int, int]]:
        cuts = sorted({0, n, *range(s, n, win)})
        return list(zip(cuts[:-1], cuts[1:]))

    out = torch.zeros(b, hp, wp, c)
    for r0, r1 in intervals(hp):
        for c0, c1 in intervals(wp):
            coords = [(r, cc) for r in range(r0, r1) for cc in range(c0, c1)]
            rows = torch.tensor([r for r, _ in coords])
            cols = torch.tensor([cc for _, cc in coords])
            bias_idx = ((rows[:, None] - rows[None, :] + win - 1) * (2 * win - 1)
                        + cols[:, None] - cols[None, :] + win - 1)
            qg, kg, vg = (t[:, rows, cols] for t in (q, k, v))  # (B, G, heads, hd)
            logits = torch.einsum("bphd,bqhd->bhpq", qg * m.scale, kg)
            logits = logits + table[bias_idx].permute(2, 0, 1)
            attn = logits.softmax(-1)
            out[:, rows, cols] = torch.einsum("bhpq,bqhd->bphd", attn, vg).reshape(b, -1, c)
    return m.proj(out[:, :h, :w].reshape(b, h * w, c))


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("hw", [(9, 10), (8, 12)])
def test_window_attention_equals_naive_grouping(shift, hw):
    torch.manual_seed(1)
    msa = ShiftWindowMSA(embed_dims=8, num_heads=2, window=4, shift=shift)
    with torch.no_grad():
        msa.w_msa.relative_position_bias_table.normal_()
        x = torch.randn(2, hw[0] * hw[1], 8)
        torch.testing.assert_close(msa(x, hw), _naive_window_attention(msa, x, *hw),
                                   rtol=1e-4, atol=1e-5)


def test_shifted_attention_differs_from_unshifted():
    """Guards the naive test against a shift that silently does nothing."""
    torch.manual_seed(2)
    a = ShiftWindowMSA(embed_dims=8, num_heads=2, window=4, shift=0)
    b = ShiftWindowMSA(embed_dims=8, num_heads=2, window=4, shift=2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 64, 8)
    with torch.no_grad():
        assert (a(x, (8, 8)) - b(x, (8, 8))).abs().max() > 1e-2


@pytest.mark.parametrize("hw", [(4, 6), (5, 3)])
def test_patch_merging_uses_unfold_order(hw):
    """4C vector index c·4 + 2·i + j holds pixel (2h+i, 2w+j) of channel c (zero-padded)."""
    torch.manual_seed(3)
    c = 3
    pm = PatchMerging(c)
    with torch.no_grad():
        pm.norm.weight.uniform_(0.5, 1.5)
        pm.norm.bias.normal_()
        h, w = hw
        x = torch.randn(2, h * w, c)
        out, out_hw = pm(x, hw)
        grid = x.view(2, h, w, c).numpy()
        oh, ow = math.ceil(h / 2), math.ceil(w / 2)
        assert out_hw == (oh, ow)
        vec = np.zeros((2, oh, ow, 4 * c), dtype=np.float32)
        for y in range(oh):
            for xx in range(ow):
                for ch in range(c):
                    for i in range(2):
                        for j in range(2):
                            if 2 * y + i < h and 2 * xx + j < w:
                                vec[:, y, xx, ch * 4 + 2 * i + j] = \
                                    grid[:, 2 * y + i, 2 * xx + j, ch]
        normed = F.layer_norm(torch.from_numpy(vec), (4 * c,), pm.norm.weight, pm.norm.bias, 1e-5)
        expected = (normed @ pm.reduction.weight.T).reshape(2, oh * ow, 2 * c)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_swin_outputs_and_strides():
    torch.manual_seed(4)
    net = SwinTransformer(embed_dims=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
                          window_size=3, mlp_ratio=2, out_indices=(1, 2, 3)).eval()
    with torch.no_grad():
        outs = net(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 8, 12), (2, 32, 4, 6), (2, 64, 2, 3)]
    assert net.stages[0].blocks[0].attn.shift == 0 and net.stages[0].blocks[1].attn.shift == 1
    # every output went through its norm{i} (freshly initialised: weight 1, bias 0), so each
    # position has zero mean and unit variance over channels
    for out in outs:
        per_pos = out.permute(0, 2, 3, 1)
        torch.testing.assert_close(per_pos.mean(-1), torch.zeros(per_pos.shape[:-1]), rtol=0,
                                   atol=1e-5)
        torch.testing.assert_close(per_pos.var(-1, unbiased=False), torch.ones(per_pos.shape[:-1]),
                                   rtol=0, atol=1e-2)


# --------------------------------------------------------------------------------------------
# GeneralizedLSSFPN
# --------------------------------------------------------------------------------------------

def test_lss_fpn_concatenates_finer_then_upsampled_coarser():
    gen = torch.Generator().manual_seed(5)
    neck = GeneralizedLSSFPN([4, 6, 8], 5).eval()
    _randomize_bn(neck, gen)
    x = [torch.randn(2, 4, 8, 12, generator=gen), torch.randn(2, 6, 4, 6, generator=gen),
         torch.randn(2, 8, 2, 3, generator=gen)]

    def conv_module(mod, t, pad):
        return F.relu(_conv_bn(t, mod.conv, mod.bn, 1, pad))

    def up(t, like):
        return F.interpolate(t, size=like.shape[2:], mode="bilinear", align_corners=False)

    l1 = conv_module(neck.fpn_convs[1],
                     conv_module(neck.lateral_convs[1], torch.cat([x[1], up(x[2], x[1])], 1), 0), 1)
    l0 = conv_module(neck.fpn_convs[0],
                     conv_module(neck.lateral_convs[0], torch.cat([x[0], up(l1, x[0])], 1), 0), 1)
    with torch.no_grad():
        out = neck(x)
    assert len(out) == 2
    torch.testing.assert_close(out[0], l0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], l1, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# DepthLSSTransform
# --------------------------------------------------------------------------------------------

def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _random_calibration(rng: np.random.Generator, n: int) -> Calibration:
    """Cameras at random positions and orientations, nuScenes-like intrinsics (1600×900)."""
    c2l = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        c2l[i, :3, :3] = _random_rotation(rng)
        c2l[i, :3, 3] = rng.uniform(-2, 2, size=3)
    k = np.tile(np.eye(3), (n, 1, 1))
    k[:, 0, 0] = rng.uniform(1000, 1300, n)
    k[:, 1, 1] = k[:, 0, 0] * rng.uniform(0.98, 1.02, n)
    k[:, 0, 2] = rng.uniform(780, 820, n)
    k[:, 1, 2] = rng.uniform(430, 470, n)
    return Calibration(tuple(f"cam{i}" for i in range(n)), k, c2l)


def _random_lidar_aug(rng: np.random.Generator) -> np.ndarray:
    """Training-style LiDAR augmentation: z rotation · scale, both flips, a translation (not a
    symmetric matrix, so a transposed use of it shows)."""
    a, s = rng.uniform(0.2, 0.8), rng.uniform(0.9, 1.1)
    m = np.eye(4)
    m[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ (s * np.array(
        [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]))
    m[:3, 3] = rng.uniform(-1, 1, size=3)
    return m


def _random_img_aug(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """The preset's resize/crop composed with a small training-style rotation about the crop."""
    a = rng.uniform(-0.1, 0.1)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    rot[:2, 3] = rng.uniform(-5, 5, size=2)
    return rot @ base


def _t(a: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def test_geometry_projects_back_to_its_frustum_pixel_and_depth():
    """LiDAR-frame frustum points, projected with ``preprocess.lidar2image`` and ``img_aug``
    after undoing the LiDAR augmentation, land on the pixel and depth they came from."""
    p = get_preset("tiny")
    rng = np.random.default_rng(6)
    n = p.cameras.num_cameras
    calib = _random_calibration(rng, n)
    base = img_aug_matrices(p.cameras).astype(np.float64)
    img_aug = np.stack([_random_img_aug(rng, base[i]) for i in range(n)])
    lidar_aug = _random_lidar_aug(rng)
    intr4 = np.tile(np.eye(4), (n, 1, 1))
    intr4[:, :3, :3] = calib.intrinsics
    vt = build_vtransform(p).double()
    with torch.no_grad():
        geom = vt.get_geometry(_t(calib.camera2lidar, torch.float64)[None],
                               _t(intr4, torch.float64)[None], _t(img_aug, torch.float64)[None],
                               _t(lidar_aug, torch.float64)[None])[0].numpy()
    d, fh, fw = vt.frustum.shape[:3]
    assert geom.shape == (n, d, fh, fw, 3)

    pts = geom.reshape(n, -1, 3)
    unaug = (pts - lidar_aug[:3, 3]) @ np.linalg.inv(lidar_aug[:3, :3]).T
    l2i = lidar2image(calib).astype(np.float64)
    cam = np.einsum("nij,npj->npi", l2i[:, :3, :3], unaug) + l2i[:, None, :3, 3]
    z = cam[..., 2]
    uvz = np.concatenate([cam[..., :2] / z[..., None], z[..., None]], axis=-1)
    pix = np.einsum("nij,npj->npi", img_aug[:, :2, :3], uvz) + img_aug[:, None, :2, 3]
    frustum = vt.frustum.numpy().reshape(-1, 3)
    # lidar2image is float32 (the model's input dtype): ~1e-4 px of rounding at these depths
    np.testing.assert_allclose(pix, np.broadcast_to(frustum[:, :2], pix.shape), atol=2e-3)
    np.testing.assert_allclose(z, np.broadcast_to(frustum[:, 2], z.shape), rtol=1e-5)


def test_geometry_float32_is_close_to_float64():
    p = get_preset("tiny")
    rng = np.random.default_rng(7)
    n = p.cameras.num_cameras
    calib = _random_calibration(rng, n)
    intr4 = np.tile(np.eye(4), (n, 1, 1))
    intr4[:, :3, :3] = calib.intrinsics
    args = (calib.camera2lidar[None], intr4[None], img_aug_matrices(p.cameras)[None],
            _random_lidar_aug(rng)[None])
    vt = build_vtransform(p)
    with torch.no_grad():
        g32 = vt.get_geometry(*(_t(a) for a in args))
        g64 = vt.double().get_geometry(*(_t(a, torch.float64) for a in args))
    torch.testing.assert_close(g32.double(), g64, rtol=0, atol=1e-3)  # metres, up to ~60 m out


def _two_z_cell_vtransform():
    p = get_preset("tiny")
    vt_cfg = dataclasses.replace(p.model.vtransform, zbound=(-10.0, 10.0, 10.0))
    p = dataclasses.replace(p, model=dataclasses.replace(p.model, vtransform=vt_cfg)).validate()
    return build_vtransform(p)


def test_bev_pool_equals_numpy_scatter_add():
    """Against ``np.add.at`` on cells chosen explicitly: a coordinate in (−1 cell, 0) goes to
    cell 0 (truncation), one in (−2, −1) cells or at/after the upper bound is dropped."""
    vt = _two_z_cell_vtransform()
    nx, ny, nz = vt.nx.tolist()
    assert nz == 2
    rng = np.random.default_rng(8)
    b, n, d, h, w, c = 2, 2, 3, 4, 5, 3
    shape = (b, n, d, h, w)
    cells = np.stack([rng.integers(-2, m + 1, size=shape) for m in (nx, ny, nz)], axis=-1)
    frac = rng.uniform(0.1, 0.9, size=shape + (3,))
    lo = (vt.bx - vt.dx / 2).double().numpy()
    geom = lo + (cells + frac) * vt.dx.double().numpy()
    weights = rng.uniform(0.1, 1.0, size=shape)
    feats = rng.normal(size=(b, n, c, h, w))

    kept = np.all((cells >= -1) & (cells < np.array([nx, ny, nz])), axis=-1)
    target = np.where(cells == -1, 0, cells)
    assert kept.mean() > 0.3 and (cells[kept] == -1).any()  # the edge cases are exercised
    expected = np.zeros((b, nz, nx, ny, c))
    bi, ni, di, hi, wi = np.nonzero(kept)
    ix, iy, iz = target[kept].T
    np.add.at(expected, (bi, iz, ix, iy), weights[kept][:, None] * feats[bi, ni, :, hi, wi])
    expected = expected.transpose(0, 1, 4, 2, 3).reshape(b, nz * c, nx, ny)

    with torch.no_grad():
        out = vt.bev_pool(_t(geom), _t(weights), _t(feats))
    assert out.shape == (b, nz * c, nx, ny)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


def _numpy_depth(points, l2i, img_aug, lidar_aug, size):
    """Straight per-point loop: last point in order wins a pixel."""
    h, w = size
    n = l2i.shape[0]
    depth = np.zeros((n, h, w))
    p = (points[:, :3] - lidar_aug[:3, 3]) @ np.linalg.inv(lidar_aug[:3, :3]).T
    for cam in range(n):
        for pt in p:
            x, y, z = l2i[cam, :3, :3] @ pt + l2i[cam, :3, 3]
            z = min(max(z, 1e-5), 1e5)
            u, v = img_aug[cam, :2, :3] @ np.array([x / z, y / z, z]) + img_aug[cam, :2, 3]
            if 0 <= u < w and 0 <= v < h:
                depth[cam, int(v), int(u)] = z
    return depth


def test_depth_map_matches_numpy_projection():
    p = get_preset("tiny")
    rng = np.random.default_rng(9)
    n = p.cameras.num_cameras
    calib = _random_calibration(rng, n)
    l2i = lidar2image(calib).astype(np.float64)
    img_aug = img_aug_matrices(p.cameras).astype(np.float64)
    lidar_aug = _random_lidar_aug(rng)
    pts = np.concatenate([rng.uniform(-40, 40, size=(3000, 3)), rng.uniform(0, 255, (3000, 2))], 1)

    # drop points within 1e-3 px of a pixel edge in any camera, where float32 and float64 may
    # truncate differently
    p_un = (pts[:, :3] - lidar_aug[:3, 3]) @ np.linalg.inv(lidar_aug[:3, :3]).T
    cam = np.einsum("nij,pj->npi", l2i[:, :3, :3], p_un) + l2i[:, None, :3, 3]
    z = np.clip(cam[..., 2], 1e-5, 1e5)
    uv = np.einsum("nij,npj->npi", img_aug[:, :2, :3],
                   np.concatenate([cam[..., :2] / z[..., None], z[..., None]], -1))
    uv += img_aug[:, None, :2, 3]
    frac = np.abs(uv - np.round(uv))
    pts = pts[~np.any((frac < 1e-3) & (np.abs(uv) < 1e4), axis=(0, 2))]

    expected = _numpy_depth(pts, l2i, img_aug, lidar_aug, p.cameras.image_size)
    vt = build_vtransform(p)
    with torch.no_grad():
        depth = vt.depth_map([_t(pts)], _t(l2i)[None], _t(img_aug)[None], _t(lidar_aug)[None])
    assert depth.shape == (1, n, 1, *p.cameras.image_size)
    got = depth[0, :, 0].numpy()
    assert (expected > 0).sum() > 200  # plenty of points landed on the images
    np.testing.assert_array_equal(got > 0, expected > 0)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_depth_map_last_point_wins_and_depth_is_clamped_z():
    p = get_preset("tiny")
    n = p.cameras.num_cameras
    k = np.array([[1200.0, 0, 800], [0, 1200, 450], [0, 0, 1]])
    calib = Calibration(tuple(f"c{i}" for i in range(n)), np.tile(k, (n, 1, 1)),
                        np.tile(np.eye(4), (n, 1, 1)))
    l2i = _t(lidar2image(calib))[None]
    img_aug = _t(img_aug_matrices(p.cameras))[None]
    ray = np.linalg.inv(k) @ np.array([900.3, 600.7, 1.0])  # camera frame = LiDAR frame here
    near, far = 5.0 * ray, 20.0 * ray
    vt = build_vtransform(p)
    eye = torch.eye(4)[None]
    for order, want in (((near, far), 20.0), ((far, near), 5.0)):
        pts = _t(np.stack(order))
        depth = vt.depth_map([pts], l2i, img_aug, eye)[0, 0, 0]
        aug = img_aug[0, 0].double().numpy()
        u, v = aug[:2, :2] @ [900.3, 600.7] + aug[:2, 3]
        row, col = int(v), int(u)
        assert depth[row, col].item() == pytest.approx(want, rel=1e-5)
        assert (depth > 0).sum() == 1


def test_depth_and_features_concatenates_depth_first():
    """Zeroing the depthnet input weights of the image-feature channels (the *last* Cin of the
    concatenation) must make the output independent of the image features."""
    p = get_preset("tiny")
    vt = build_vtransform(p).eval()
    gen = torch.Generator().manual_seed(10)
    _randomize_bn(vt, gen)
    cin, (fh, fw), (h, w) = vt.in_channels, vt.feature_size, vt.image_size
    with torch.no_grad():
        vt.depthnet[0].weight[:, -cin:] = 0
        depth = torch.rand(2, 1, h, w, generator=gen) * 40
        a = vt.depth_and_features(torch.randn(2, cin, fh, fw, generator=gen), depth)
        b = vt.depth_and_features(torch.randn(2, cin, fh, fw, generator=gen), depth)
        c = vt.depth_and_features(torch.randn(2, cin, fh, fw, generator=gen), depth * 0.5)
    weights, feats = a
    assert weights.shape == (2, vt.depth_bins, fh, fw)
    assert feats.shape == (2, vt.out_channels, fh, fw)
    torch.testing.assert_close(weights.sum(1), torch.ones(2, fh, fw), rtol=0, atol=1e-5)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    assert (a[1] - c[1]).abs().max() > 1e-4  # while the depth input still matters


def test_tiny_camera_branch_shapes():
    p = get_preset("tiny")
    backbone, neck, vt = (m.eval() for m in (build_camera_backbone(p), build_camera_neck(p),
                                              build_vtransform(p)))
    n, (h, w) = p.cameras.num_cameras, p.cameras.image_size
    rng = np.random.default_rng(11)
    calib = _random_calibration(rng, n)
    intr4 = np.tile(np.eye(4), (n, 1, 1))
    intr4[:, :3, :3] = calib.intrinsics
    pts = _t(np.concatenate([rng.uniform(-40, 40, (2000, 3)), rng.uniform(0, 1, (2000, 2))], 1))
    with torch.no_grad():
        levels = backbone(torch.randn(n, 3, h, w))
        assert [o.shape[1] for o in levels] == list(p.model.backbone.out_channels)
        feat = neck(levels)[0]
        assert tuple(feat.shape) == (n, p.model.neck.out_channels, *p.feature_size)
        bev = vt(feat[None], [pts], _t(calib.camera2lidar)[None], _t(intr4)[None],
                 _t(img_aug_matrices(p.cameras))[None], torch.eye(4)[None],
                 _t(lidar2image(calib))[None])
    assert tuple(bev.shape) == (1, p.model.vtransform.out_channels, *p.bev_size)
    assert torch.isfinite(bev).all() and bev.abs().max() > 0


def test_vtransform_rejects_misshaped_inputs():
    p = get_preset("tiny")
    vt = build_vtransform(p)
    n = p.cameras.num_cameras
    eye = torch.eye(4).expand(1, n, 4, 4)
    feat = torch.randn(1, n, p.model.neck.out_channels, *p.feature_size)
    pts = [torch.randn(10, 5)]
    with pytest.raises(InputError, match=r"\[intrinsics\].*\(1, 6, 4, 4\)"):
        vt(feat, pts, eye, torch.eye(3).expand(1, n, 3, 3), eye, torch.eye(4)[None], eye)
    with pytest.raises(InputError, match=r"\[points\[0\]\]"):
        vt(feat, [torch.randn(10, 2)], eye, eye, eye, torch.eye(4)[None], eye)
    with pytest.raises(InputError, match=r"\[img_feat\]"):
        vt(feat[:, :, :3], pts, eye, eye, eye, torch.eye(4)[None], eye)


def test_finer_backbone_levels_keep_depth_and_features_aligned():
    """With out_indices (0, 1, 2) the features have stride 4; dtransform must follow."""
    p = get_preset("tiny")
    bb = dataclasses.replace(p.model.backbone, out_indices=(0, 1, 2))
    p = dataclasses.replace(p, model=dataclasses.replace(p.model, backbone=bb)).validate()
    vt = build_vtransform(p).eval()
    (h, w), (fh, fw) = p.cameras.image_size, p.feature_size
    assert (fh, fw) == (h // 4, w // 4)
    with torch.no_grad():
        weights, feats = vt.depth_and_features(torch.randn(1, vt.in_channels, fh, fw),
                                               torch.rand(1, 1, h, w) * 30)
    assert weights.shape[2:] == (fh, fw) and feats.shape[2:] == (fh, fw)


def test_neck_needs_two_levels():
    p = get_preset("tiny")
    bb = dataclasses.replace(p.model.backbone, out_indices=(1,))
    p = dataclasses.replace(p, model=dataclasses.replace(p.model, backbone=bb)).validate()
    with pytest.raises(ConfigError, match=r"tiny \[model.backbone.out_indices\]"):
        build_camera_neck(p)
