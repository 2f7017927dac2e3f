"""``bevdeploy bench-kernels``: every CPU kernel timed next to the floor this machine allows."""

from __future__ import annotations

import pytest

from bevdeploy.bench.kernels import kernel_benchmarks
from bevdeploy.presets import Preset, get_preset


@pytest.fixture(scope="module")
def tiny() -> Preset:
    return get_preset("tiny")


def test_kernel_benchmarks_report_every_kernel_with_a_floor(tiny):
    rows = kernel_benchmarks(tiny, num_points=20_000, warmup=1, repeats=2)
    assert [r.kernel for r in rows] == ["normalize", "depth_map", "geometry", "bev_pool",
                                        "bev_pool", "voxelize", "decode"]
    for row in rows:
        assert row.median_ms > 0 and row.p90_ms >= row.median_ms
        assert row.floor_ms > 0 and row.bytes_moved > 0 and row.ratio > 0
        assert ("GB/s" in row.floor_basis) != ("GMAC/s" in row.floor_basis)
