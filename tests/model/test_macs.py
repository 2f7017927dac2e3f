"""MAC counter: sparse site pairs against a dense occupancy convolution and spconv's own
arithmetic, dense layers against closed-form counts, and the per-module model table."""

from __future__ import annotations

import io

import pytest
import spconv.pytorch as spconv
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.model.inputs import collate
from bevdeploy.model.macs import (
    count_macs, count_sparse_pairs, model_info, model_info_table, probe_frame, top_level_modules)
from bevdeploy.presets import get_preset

torch.set_num_threads(2)

SHAPE = (12, 10, 9)


def _random_sites(seed: int, count: int = 120, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coords = torch.stack([torch.randint(0, batch, (count,), generator=gen)]
                         + [torch.randint(0, s, (count,), generator=gen) for s in SHAPE], 1)
    return torch.unique(coords, dim=0).int()


def _dense_pairs(sites: torch.Tensor, out_sites: torch.Tensor | None, kernel, stride, padding
                 ) -> int:
    """Pairs from a dense conv of the occupancy grid with an all-ones kernel: at every output
    site it counts the active inputs under the kernel (independent of the sparse bookkeeping)."""
    occupancy = torch.zeros(int(sites[:, 0].max()) + 1, 1, *SHAPE)
    occupancy[sites[:, 0].long(), 0, sites[:, 1].long(), sites[:, 2].long(),
              sites[:, 3].long()] = 1
    counts = F.conv3d(occupancy, torch.ones(1, 1, *kernel), stride=stride, padding=padding)
    if out_sites is None:  # strided conv: every output with a non-zero count is active
        return int(counts.sum())
    o = out_sites.long()
    return int(counts[o[:, 0], 0, o[:, 1], o[:, 2], o[:, 3]].sum())


@pytest.mark.parametrize("kernel, stride, padding, subm", [
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), True),
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), False),
    ((3, 3, 3), (2, 2, 2), (1, 1, 0), False),
    ((1, 1, 3), (1, 1, 2), (0, 0, 0), False),
])
def test_sparse_pairs_match_dense_occupancy_and_spconv(kernel, stride, padding, subm):
    sites = _random_sites(seed=sum(kernel) + sum(padding))
    feats = torch.randn(len(sites), 4)
    cls = spconv.SubMConv3d if subm else spconv.SparseConv3d
    conv = cls(4, 8, kernel, stride=stride, padding=padding, bias=False)
    x = spconv.SparseConvTensor(feats, sites, list(SHAPE), int(sites[:, 0].max()) + 1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = conv(x)
    pairs = count_sparse_pairs(sites, out.indices, SHAPE, kernel, stride, padding, (1, 1, 1))
    assert pairs == _dense_pairs(sites, sites if subm else None, kernel, stride, padding)
    # spconv's CPU path multiplies exactly these pairs (one (C_in × C_out) GEMM row each).
    assert pairs * 4 * 8 == counter.get_total_flops() // 2


def test_empty_sparse_input_has_no_pairs():
    empty = torch.zeros(0, 4, dtype=torch.int32)
    assert count_sparse_pairs(empty, empty, SHAPE, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)) == 0


class _Toy(nn.Module):
    """Two top-level modules (one inside a ModuleDict) with closed-form MAC counts."""

    def __init__(self) -> None:
        super().__init__()
        self.parts = nn.ModuleDict({"attn": nn.MultiheadAttention(16, 4)})
        self.proj = nn.Linear(16, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = x[:5]
        attended = self.parts["attn"](query, x, x, need_weights=False)[0]
        return self.proj(attended)


def test_dense_macs_per_top_level_module():
    toy = _Toy()
    keys, e = 40, 16
    rows = {r.name: r for r in count_macs(toy, torch.randn(keys, 1, e))}
    assert list(rows) == ["parts.attn", "proj"]
    # q projection (5 rows), k and v projections (40 rows each), QKᵀ and AV, output projection
    attention = 5 * e * e + 2 * keys * e * e + 2 * 5 * keys * e + 5 * e * e
    assert rows["parts.attn"].macs == attention
    assert rows["proj"].macs == 5 * 16 * 24
    assert rows["proj"].params == 16 * 24 + 24 and rows["proj"].state_keys == 2


@pytest.fixture(scope="module")
def tiny_rows():
    preset = get_preset("tiny")
    torch.manual_seed(0)
    model = BEVFusion(preset)
    rows = count_macs(model, collate([probe_frame(preset, seed=0)], preset))
    return preset, model, {r.name: r for r in rows}


def test_tiny_rows_cover_the_model(tiny_rows):
    preset, model, rows = tiny_rows
    assert list(rows) == [name for name, _ in top_level_modules(model)] == [
        "encoders.camera.backbone", "encoders.camera.neck", "encoders.camera.vtransform",
        "encoders.lidar.voxelize", "encoders.lidar.backbone", "fuser", "decoder.backbone",
        "decoder.neck", "heads.object"]
    assert sum(r.params for r in rows.values()) == sum(
        p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(r.state_keys for r in rows.values()) == len(model.state_dict())
    assert rows["encoders.lidar.voxelize"].macs == 0
    assert all(r.macs > 0 for name, r in rows.items() if name != "encoders.lidar.voxelize")
    assert "sparse convs" in rows["encoders.lidar.backbone"].detail
    assert "bev_pool" in rows["encoders.camera.vtransform"].detail


def test_tiny_closed_form_rows(tiny_rows):
    preset, _, rows = tiny_rows
    x, y = preset.bev_size
    fused_in = preset.model.vtransform.out_channels + preset.lidar_bev_channels
    fuser_out = preset.model.fuser.out_channels
    assert rows["fuser"].macs == x * y * fused_in * fuser_out * 9
    dec = preset.model.decoder
    (c0, c1), (f0, f1) = dec.out_channels, dec.fpn_out_channels
    # deblock 0: 1×1 conv at full size; deblock 1: 2×2 stride-2 transposed conv from half size
    assert rows["decoder.neck"].macs == x * y * c0 * f0 + (x // 2) * (y // 2) * c1 * f1 * 4


def test_table_renders_every_row_and_the_total(tiny_rows):
    preset, _, rows = tiny_rows
    buffer = io.StringIO()
    Console(file=buffer, width=160).print(model_info_table(list(rows.values()), preset.name))
    text = buffer.getvalue()
    assert all(name in text for name in rows) and "total" in text
    total = sum(r.macs for r in rows.values()) / 1e9
    assert f"{total:.3f}" in text


@pytest.mark.slow
def test_full_size_resnet50_model_info():
    rows = {r.name: r for r in model_info(get_preset("nuscenes-resnet50"))}
    assert rows["fuser"].macs == 180 * 180 * 336 * 256 * 9
    # the ResNet50 total of docs/reference.md#checkpoint-layout
    assert abs(sum(r.params for r in rows.values()) / 1e6 - 36.36) < 0.01
