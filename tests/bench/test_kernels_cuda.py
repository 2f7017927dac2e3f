"""``bevdeploy bench-kernels --device cuda``: every CUDA kernel timed next to its floor on the
GPU, and the SCN rows built on the CPU executor's rulebook MACs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bevdeploy.bench.scn import benchmark_encoder
from bevdeploy.export.scn import encoder_to_scn
from bevdeploy.presets import get_preset
from bevdeploy.runtime import kernels
from bevdeploy.runtime.scn import ScnExecutor

pytest.importorskip("triton", reason="triton is not installed (the gpu extra)")
from bevdeploy.bench.kernels_cuda import (  # noqa: E402  (needs triton)
    _scn_cases,
    cuda_kernel_benchmarks,
)


@pytest.mark.gpu
def test_cuda_kernel_benchmark_reports_every_kernel_with_a_floor():
    rows = cuda_kernel_benchmarks(get_preset("tiny"), num_points=20_000, warmup=1, repeats=3)
    assert [r.kernel for r in rows] == ["normalize", "depth_map", "geometry", "bev_pool",
                                        "bev_pool", "voxelize", "decode", "scn (torch)",
                                        "scn (torch)"]
    for row in rows:
        assert row.median_ms > 0 and row.floor_ms > 0 and row.bytes_moved > 0


def test_the_benchmarks_scn_cases_run_the_torch_scn_on_the_cpu_executors_macs():
    """``bench-kernels --device cuda``'s SCN rows, built and run once on CPU tensors: each
    case computes the executor's map, and its work is the CPU executor's rulebook MACs."""
    tiny = get_preset("tiny")
    rng = np.random.default_rng(3)
    points = rng.uniform(-50, 50, size=(4000, 5)).astype(np.float32)
    points[:, 2] = rng.uniform(-4, 2, size=4000)
    feats, coords, _ = kernels.voxelize(points, tiny.voxel.voxel_size,
                                        tiny.points.point_cloud_range[:3],
                                        np.asarray(tiny.grid_size, np.int32),
                                        tiny.voxel.max_points, tiny.voxel.max_voxels)
    cases = _scn_cases(tiny, torch.from_numpy(feats), torch.from_numpy(coords), seed=0)
    executor = ScnExecutor(encoder_to_scn(benchmark_encoder(tiny, 0), tiny))
    want = executor.run(feats, coords)
    assert float(np.abs(want).max()) > 0
    macs = sum(executor.conv_macs(coords).values())
    assert [c[0] for c in cases] == ["scn (torch)"] * 2
    for (_, work, run, bytes_moved, case_macs), rel in zip(cases, (1e-5, 2e-2)):
        got = run().float().numpy()
        assert case_macs == macs > 0 and bytes_moved > feats.nbytes
        assert float(np.abs(got - want).max()) <= rel * float(np.abs(want).max()), work
