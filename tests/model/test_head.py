"""TransFusion head and box coder (docs/reference.md#transfusion-head; items 8–11
of #reference-quirks)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from bevdeploy.data.boxes import wrap_angle
from bevdeploy.errors import InputError
from bevdeploy.model.bbox_coder import TransFusionBBoxCoder
from bevdeploy.model.decoder import build_decoder_backbone, build_decoder_neck
from bevdeploy.model.fuser import build_fuser
from bevdeploy.model.lidar import build_sparse_encoder, build_voxelizer
from bevdeploy.model.transfusion import TransformerDecoderLayer, build_head
from bevdeploy.presets import get_preset


@pytest.fixture(scope="module")
def tiny():
    return get_preset("tiny")


def random_boxes(n: int, seed: int) -> np.ndarray:
    """bevdeploy boxes [x, y, z, l, w, h, yaw, vx, vy] well inside the tiny range."""
    rng = np.random.default_rng(seed)
    return np.column_stack([
        rng.uniform(-45, 45, n), rng.uniform(-45, 45, n), rng.uniform(-3, 2, n),
        rng.uniform(0.3, 12, n), rng.uniform(0.3, 3, n), rng.uniform(0.5, 4, n),
        rng.uniform(-np.pi, np.pi, n), rng.uniform(-10, 10, n), rng.uniform(-10, 10, n),
    ]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Box coder
# ---------------------------------------------------------------------------------------------


def test_encode_targets_have_the_reference_meaning(tiny):
    boxes = random_boxes(50, seed=0)
    t = TransFusionBBoxCoder(tiny).encode(torch.from_numpy(boxes)).double().numpy()
    b = boxes.astype(np.float64)
    cell = 8 * 0.2  # out_size_factor · voxel size of the tiny preset
    yaw = b[:, 6]
    expected = np.column_stack([
        (b[:, 0] + 51.2) / cell, (b[:, 1] + 51.2) / cell,
        b[:, 2] + b[:, 5] / 2,                          # z quirk: centre z + h/2
        np.log(b[:, 4]), np.log(b[:, 3]), np.log(b[:, 5]),  # legacy (w, l, h)
        -np.cos(yaw), -np.sin(yaw),                     # sin, cos of θ_mm = −yaw − π/2
        b[:, 7], b[:, 8],
    ])
    assert t.shape == (50, 10)
    np.testing.assert_allclose(t, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="gt_boxes"):
        TransFusionBBoxCoder(tiny).encode(np.ones((3, 7)))


def fake_outputs(targets: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 seed: int) -> dict[str, torch.Tensor]:
    """Head outputs (B = 1) whose regression channels are exactly ``targets``."""
    g = torch.Generator().manual_seed(seed)
    p = targets.shape[0]
    tt = targets.T[None]
    return {"center": tt[:, 0:2], "height": tt[:, 2:3], "dim": tt[:, 3:6], "rot": tt[:, 6:8],
            "vel": tt[:, 8:10], "heatmap": torch.randn(1, num_classes, p, generator=g),
            "query_heatmap_score": torch.rand(1, num_classes, p, generator=g),
            "query_labels": labels[None]}


def test_decode_inverts_encode(tiny):
    head = build_head(tiny).eval()
    boxes = random_boxes(40, seed=1)
    labels = torch.randint(0, tiny.num_classes, (40,), generator=torch.Generator().manual_seed(2))
    outputs = fake_outputs(TransFusionBBoxCoder(tiny).encode(boxes), labels, tiny.num_classes, 3)
    (dets,) = head.decode(outputs)

    assert len(dets) == 40 and dets.class_names == tiny.classes
    np.testing.assert_array_equal(dets.labels, labels.numpy())
    own = torch.arange(40)
    expected_scores = (outputs["heatmap"][0, labels, own].sigmoid()
                       * outputs["query_heatmap_score"][0, labels, own])
    np.testing.assert_allclose(dets.scores, expected_scores.numpy(), rtol=1e-6)
    np.testing.assert_allclose(dets.boxes[:, [0, 1, 2, 3, 4, 5, 7, 8]],
                               boxes[:, [0, 1, 2, 3, 4, 5, 7, 8]], atol=1e-4, rtol=0)
    assert np.abs(wrap_angle(dets.boxes[:, 6] - boxes[:, 6])).max() < 1e-4


def test_decode_post_center_range_is_inclusive_and_threshold_strict(tiny):
    def coder(threshold: float) -> TransFusionBBoxCoder:
        head = dataclasses.replace(tiny.model.head, score_threshold=threshold,
                                   post_center_range=(-40.0, -40.0, -10.0, 40.0, 40.0, 10.0))
        return TransFusionBBoxCoder(dataclasses.replace(
            tiny, model=dataclasses.replace(tiny.model, head=head)))

    # five proposals: z exactly on the bound, z just past it, x past it, two ordinary ones
    center = torch.tensor([[[32.0, 32.0, 100.0, 32.0, 32.0], [32.0] * 5]])  # x, y = 0 m but #2
    height = torch.tensor([[[10.5, 10.501, 0.0, 0.0, 0.0]]])  # h = exp(0) = 1 → z = height − 0.5
    dim = torch.zeros(1, 3, 5)
    rot = torch.tensor([[[0.0] * 5, [1.0] * 5]])
    vel = torch.zeros(1, 2, 5)
    scores = torch.zeros(1, tiny.num_classes, 5)
    scores[0, 2] = torch.tensor([0.5, 0.9, 0.9, 0.31, 0.3])

    (kept,) = coder(0.3).decode(scores, rot, dim, center, height, vel)
    assert kept.scores.tolist() == pytest.approx([0.5, 0.31])
    assert kept.boxes[0, 2] == 10.0 and kept.labels.tolist() == [2, 2]
    (no_threshold,) = coder(0.0).decode(scores, rot, dim, center, height, vel)
    assert no_threshold.scores.tolist() == pytest.approx([0.5, 0.31, 0.3])


# ---------------------------------------------------------------------------------------------
# Heatmap proposals
# ---------------------------------------------------------------------------------------------


def test_local_max_keeps_peaks_and_zeroes_the_border_of_suppressed_classes(tiny):
    head = build_head(tiny)
    car, ped = tiny.classes.index("car"), tiny.classes.index("pedestrian")
    heat = torch.full((1, tiny.num_classes, 8, 8), 0.05)
    for c in (car, ped):
        heat[0, c, 3, 3] = 0.9    # a peak
        heat[0, c, 3, 4] = 0.5    # its weaker neighbour
        heat[0, c, 6, 1] = 0.7    # a plateau of two equal maxima
        heat[0, c, 6, 2] = 0.7
        heat[0, c, 0, 5] = 0.95   # a peak on the border
    out = head.local_max(heat)

    c_map, p_map = out[0, car], out[0, ped]
    assert c_map[3, 3] == pytest.approx(0.9) and c_map[3, 4] == 0.0
    assert c_map[6, 1] == pytest.approx(0.7) and c_map[6, 2] == pytest.approx(0.7)
    border = torch.ones(8, 8, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert not c_map[border].any()                       # border always zero (classes 0–7)
    assert torch.equal(p_map, heat[0, ped])              # pedestrian: no suppression at all
    # an interior background cell away from peaks is its own 3×3 maximum only if no neighbour
    # is larger: (2, 2) touches the 0.9 peak, so it goes; the flat patch survives.
    assert c_map[2, 2] == 0.0 and c_map[4, 6] == pytest.approx(0.05)


def _wire_heatmap_to_input(head, num_classes: int, bias: float) -> None:
    """Make ``dense_heatmap[k] = x[k] / sqrt(1 + eps) + bias`` by centre-tap identity convs, and
    the predicted centre offset zero, so the proposal stage can be read off its input."""
    with torch.no_grad():
        for conv in (head.shared_conv, head.heatmap_head[0].conv, head.heatmap_head[1]):
            conv.weight.zero_()
            for k in range(num_classes):
                conv.weight[k, k, 1, 1] = 1.0
        head.shared_conv.bias.zero_()
        head.heatmap_head[1].bias.fill_(bias)
        for heads in head.prediction_heads:
            heads["center"][1].weight.zero_()
            heads["center"][1].bias.zero_()


def test_forward_proposals_pick_the_known_peaks(tiny):
    head = build_head(tiny).eval()
    _wire_heatmap_to_input(head, tiny.num_classes, bias=-5.0)
    cls = {name: i for i, name in enumerate(tiny.classes)}
    x = torch.rand((1, tiny.model.decoder.middle_channels, *tiny.bev_size),
                   generator=torch.Generator().manual_seed(0)) * 0.1
    x[:, tiny.num_classes:] = 0.0
    peaks = [  # (class, ix, iy, input value)
        (cls["car"], 0, 30, 3.0),              # border of a suppressed class: never proposed
        (cls["traffic_cone"], 63, 10, 2.5),    # border of an unsuppressed class: proposed
        (cls["truck"], 10, 10, 2.0),
        (cls["truck"], 10, 11, 1.2),           # beside a stronger truck cell: suppressed
        (cls["bus"], 40, 20, 1.6),
        (cls["pedestrian"], 20, 50, 1.4),
        (cls["pedestrian"], 20, 51, 1.3),      # pedestrians are not suppressed
        (cls["barrier"], 30, 30, 1.0),
    ]
    for c, i, j, v in peaks:
        x[0, c, i, j] = v
    with torch.no_grad():
        out = head(x)

    expected = [peaks[k] for k in (1, 2, 4, 5, 6, 7)]
    n = len(expected)
    assert out["query_labels"][0, :n].tolist() == [p[0] for p in expected]
    centres = out["center"][0, :, :n].T
    assert centres.tolist() == [[i + 0.5, j + 0.5] for _, i, j, _ in expected]
    own = out["query_heatmap_score"][0, out["query_labels"][0, :n], torch.arange(n)]
    logits = torch.tensor([v for *_, v in expected]) / math.sqrt(1 + 1e-5) - 5.0
    torch.testing.assert_close(own, logits.sigmoid(), rtol=1e-5, atol=1e-7)
    labels = out["query_labels"][0]
    rest = out["query_heatmap_score"][0, labels[n:], torch.arange(n, labels.numel())]
    assert (rest < torch.sigmoid(torch.tensor(-4.85))).all()  # only background after the peaks


# ---------------------------------------------------------------------------------------------
# Decoder layer and shapes
# ---------------------------------------------------------------------------------------------


def _posembed(module, pos):  # (B, N, 2) → (N, B, C), float64
    head = module.position_embedding_head
    bn = head[1]
    h = pos.double() @ head[0].weight[:, :, 0].double().T + head[0].bias.double()
    h = (h - bn.running_mean.double()) / torch.sqrt(bn.running_var.double() + bn.eps)
    h = torch.relu(h * bn.weight.double() + bn.bias.double())
    return (h @ head[3].weight[:, :, 0].double().T + head[3].bias.double()).transpose(0, 1)


def _attention(attn, q, k, v, num_heads):  # sequence-first (L, B, C), float64
    c = q.shape[-1]
    w, b = attn.in_proj_weight.double(), attn.in_proj_bias.double()
    q, k, v = (t @ w[i * c:(i + 1) * c].T + b[i * c:(i + 1) * c]
               for i, t in enumerate((q, k, v)))
    d = c // num_heads
    split = [t.reshape(t.shape[0], t.shape[1], num_heads, d) for t in (q, k, v)]
    weights = torch.softmax(torch.einsum("lbhd,sbhd->bhls", split[0], split[1]) / math.sqrt(d), -1)
    out = torch.einsum("bhls,sbhd->lbhd", weights, split[2]).reshape(q.shape)
    return out @ attn.out_proj.weight.double().T + attn.out_proj.bias.double()


def _layer_norm(norm, x):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), norm.weight.double(),
                                          norm.bias.double(), norm.eps)


def test_decoder_layer_adds_the_position_embedding_to_the_values():
    torch.manual_seed(0)
    layer = TransformerDecoderLayer(16, 4, 32).eval()
    for m in layer.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.LayerNorm)):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.normal_(m.bias, std=0.2)
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_(std=0.3)
            m.running_var.uniform_(0.5, 1.5)
        if isinstance(m, torch.nn.MultiheadAttention):
            torch.nn.init.normal_(m.in_proj_bias, std=0.2)
    query, key = torch.randn(2, 16, 7), torch.randn(2, 16, 30)
    query_pos, key_pos = torch.rand(2, 7, 2) * 8, torch.rand(2, 30, 2) * 8
    with torch.no_grad():
        got = layer(query, key, query_pos, key_pos).double()

        def reference(values_with_pos: bool) -> torch.Tensor:
            qpe, kpe = _posembed(layer.self_posembed, query_pos), _posembed(layer.cross_posembed,
                                                                             key_pos)
            q, k = query.double().permute(2, 0, 1), key.double().permute(2, 0, 1)
            qp = q + qpe
            q = _layer_norm(layer.norm1, q + _attention(layer.self_attn, qp, qp,
                                                        qp if values_with_pos else q, 4))
            kv = k + kpe
            q = _layer_norm(layer.norm2, q + _attention(layer.multihead_attn, q + qpe, kv,
                                                        kv if values_with_pos else k, 4))
            ffn = torch.relu(q @ layer.linear1.weight.double().T + layer.linear1.bias.double())
            ffn = ffn @ layer.linear2.weight.double().T + layer.linear2.bias.double()
            return _layer_norm(layer.norm3, q + ffn).permute(1, 2, 0)

        torch.testing.assert_close(got, reference(True), rtol=1e-5, atol=1e-5)
        assert (got - reference(False)).abs().max() > 1e-2  # the quirk is observable


def test_forward_shapes_and_state_dict_for_tiny(tiny):
    head = build_head(tiny).eval()
    k, p = tiny.num_classes, tiny.model.head.num_proposals
    x, y = tiny.bev_size
    with torch.no_grad():
        out = head(torch.randn(2, tiny.model.decoder.middle_channels, x, y))
    shapes = {name: tuple(t.shape) for name, t in out.items()}
    assert shapes == {"center": (2, 2, p), "height": (2, 1, p), "dim": (2, 3, p),
                      "rot": (2, 2, p), "vel": (2, 2, p), "heatmap": (2, k, p),
                      "query_heatmap_score": (2, k, p), "query_labels": (2, p),
                      "dense_heatmap": (2, k, x, y)}
    assert out["query_labels"].dtype == torch.int64
    assert int(out["query_labels"].min()) >= 0 and int(out["query_labels"].max()) < k
    dets = head.decode(out)
    assert len(dets) == 2 and all(len(d) <= p for d in dets)

    sd = head.state_dict()
    assert len(sd) == 96 and "bev_pos" not in sd
    assert head.bev_pos.shape == (1, x * y, 2)
    assert head.bev_pos[0, y + 2].tolist() == [1.5, 2.5]  # flat index ix·Y + iy
    assert tuple(sd["shared_conv.bias"].shape) == (tiny.model.head.hidden_channel,)
    assert head.heatmap_head[0].bn.eps == 1e-5
    with pytest.raises(InputError, match=r"head\.inputs"):
        head(torch.randn(1, tiny.model.decoder.middle_channels, x, y + 1))


def test_lidar_to_detections_chain_for_tiny(tiny):
    """voxelize → sparse encoder → fuser → SECOND → SECONDFPN → head → decode, shapes only."""
    g = torch.Generator().manual_seed(4)
    lo = torch.tensor(tiny.points.point_cloud_range[:3])
    hi = torch.tensor(tiny.points.point_cloud_range[3:])
    xyz = lo + torch.rand(3000, 3, generator=g) * (hi - lo)
    points = torch.cat([xyz, torch.rand(3000, 2, generator=g)], dim=1)
    x, y = tiny.bev_size
    with torch.no_grad():
        feats, coords, _ = build_voxelizer(tiny).eval()([points])
        lidar = build_sparse_encoder(tiny).eval()(feats, coords, 1)
        camera = torch.randn(1, tiny.model.vtransform.out_channels, x, y, generator=g)
        fuser = build_fuser(tiny).eval()
        fused = fuser([camera, lidar])
        levels = build_decoder_backbone(tiny).eval()(fused)
        (middle,) = build_decoder_neck(tiny).eval()(levels)
        head = build_head(tiny).eval()
        dets = head.decode(head(middle))
    assert lidar.shape == (1, tiny.lidar_bev_channels, x, y) and lidar.abs().sum() > 0
    assert fused.shape == (1, tiny.model.fuser.out_channels, x, y)
    assert [tuple(t.shape[1:]) for t in levels] == [(64, x, y), (128, x // 2, y // 2)]
    assert middle.shape == (1, tiny.model.decoder.middle_channels, x, y)
    assert len(dets) == 1 and dets[0].boxes.shape[1] == 9
    with pytest.raises(InputError, match="camera, lidar"):
        fuser([lidar, camera])
