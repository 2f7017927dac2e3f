"""``bench-kernels --scn``: the CPU sparse-conv executor timed against spconv's SparseEncoder,
with their agreement on the benchmark's voxels.

Tolerances are the executor's parity limits (tests/runtime/test_scn_executor.py): both sides
accumulate in float32 in different orders, so they agree to rounding, ≤ 1e-4 of the output's
largest magnitude, cosine ≥ 0.99999. The BF16 variant rounds inputs and weights to an 8-bit
mantissa: its map holds cosine ≥ 0.9999 against FP32.
"""

from __future__ import annotations

import pytest

from bevdeploy.bench.scn import scn_benchmark

RELATIVE_TOLERANCE = 1e-4
MIN_COSINE = 0.99999
BF16_MIN_COSINE = 0.9999  # the SCN's map with its wide convs in BF16, against FP32


def test_benchmark_reports_times_floor_and_agreement():
    report = scn_benchmark("tiny", 3000, seed=1, warmup=1, repeats=2)
    assert report["num_voxels"] == 3000 and report["lidar_density"] == 1.0
    assert report["relative_max_abs_diff"] <= RELATIVE_TOLERANCE
    assert report["cosine"] >= MIN_COSINE
    assert 0 < report["ours_min_s"] <= report["ours_median_s"]
    assert report["spconv_1_thread_median_s"] > 0
    assert report["floor_s"] == pytest.approx(report["conv_macs"] / report["gemm_macs_per_s"])
    assert report["conv_macs"] > 0 and "rulebook:subm1" in report["stage_median_s"]
    layers = report["layers"]
    assert sum(layer["macs"] for layer in layers.values()) == report["conv_macs"]
    assert report["conv_median_s"] == pytest.approx(sum(layer["median_s"]
                                                        for layer in layers.values()))
    assert report["conv_share_of_peak"] == pytest.approx(
        report["floor_s"] / report["conv_median_s"])
    bf16 = report["bf16"]
    if "unavailable" in bf16:  # no openvino, or no native BF16 on this CPU: the reason is said
        assert "BF16" in bf16["unavailable"] or "openvino" in bf16["unavailable"].lower()
    else:  # the tiny SCN is at most 32 channels wide: every conv stays FP32, the map equal
        assert bf16["convs"] == [] and set(bf16["layers"]) == set(layers)
        assert bf16["vs_fp32"]["cosine"] >= MIN_COSINE and bf16["median_s"] > 0


@pytest.mark.slow
def test_benchmark_at_nuscenes_size_beats_spconv_per_core():
    """~120k voxels of a dense synthetic frame on the CUDA-BEVFusion grid (1440×1440×41)."""
    report = scn_benchmark("nuscenes-resnet50", 120_000, seed=0)
    assert report["num_voxels"] > 110_000
    assert report["relative_max_abs_diff"] <= RELATIVE_TOLERANCE
    assert report["cosine"] >= MIN_COSINE
    # CPU time on one thread each: the same footing as spconv, and not decided by machine load.
    assert report["speedup_1_thread_cpu_median"] > 1.5
    bf16 = report["bf16"]
    if "unavailable" not in bf16:  # the 64- and 128-channel convs in BF16 on real voxels
        assert len(bf16["convs"]) == 10
        assert bf16["vs_fp32"]["cosine"] >= BF16_MIN_COSINE
