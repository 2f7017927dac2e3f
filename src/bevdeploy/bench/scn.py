"""Benchmark of the CPU sparse-conv executor against spconv's CPU SparseEncoder.

The voxels are realistic: a synthetic nuScenes-format world (``bevdeploy.data.synthetic``) is
written to a temporary directory, its last key frame is read through the real loader with the
preset's sweeps, and the reference voxelizer turns it into voxels. The LiDAR's azimuth density
is raised (1, 2, 3, 4×) until the frame has ``num_voxels`` voxels; the first ``num_voxels`` in
first-appearance order are kept, as the voxelizer's ``max_voxels`` cap would.

Both sides run the same network: a SparseEncoder with seeded random weights and random batch
norm statistics (so every layer's output is non-trivial), exported in memory as the SCN graph
the executor reads. spconv runs on one thread, its only correct CPU mode (the encoder's
forward enforces it, see ``bevdeploy.model.lidar.sparse_encoder.cpu_single_thread``); the
executor runs on every numba thread. The floor is the convs' multiply-adds (rulebook pairs × C_in × C_out) over this
machine's float32 GEMM rate (a large ``np.matmul``); each conv's share of that rate (useful
multiply-adds over its time) says how near the kernel runs to GEMM speed, layer by layer.

Where OpenVINO and a CPU with native BF16 exist, the executor's ``precision="bf16"`` variant
(``bevdeploy.runtime.scn.bf16``) is timed in the same run, with its agreement to the FP32 map;
elsewhere the report says why it was not.

This module compares against the PyTorch reference, so it needs the ``export`` extra; torch,
spconv and the model are imported inside the function, so importing this module needs none of
them.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bevdeploy.errors import ConfigError
from bevdeploy.presets import Preset, get_preset
from bevdeploy.bench.kernels import measure_rates
from bevdeploy.runtime.scn import ScnExecutor

DENSITIES = (1.0, 2.0, 3.0, 4.0)  # LiDAR azimuth densities tried, up to the world's maximum
WARMUP = 2
REPEATS = 7


def _timed(fn: Callable[[], Any], warmup: int, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of ``repeats`` calls after ``warmup`` untimed ones. On a
    shared machine a single-threaded run's CPU time is what it would take alone."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def synthetic_voxels(preset: Preset, num_voxels: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, float]:
    """``(feats (M, F), coords (M, 3) int32 xyz, density)`` of a synthetic frame with
    ``M = min(num_voxels, voxels at the densest LiDAR)``."""
    import torch

    from bevdeploy.data.nuscenes import NuScenesLoader
    from bevdeploy.data.synthetic import write_world
    from bevdeploy.model.inputs import filter_points
    from bevdeploy.model.lidar import build_voxelizer

    voxelizer = build_voxelizer(preset).eval()
    with tempfile.TemporaryDirectory(prefix="bevdeploy-scn-bench-") as tmp:
        for density in DENSITIES:
            root = write_world(Path(tmp) / f"world-{density:g}", scenes=1, samples=2, seed=seed,
                               density=density)
            loader = NuScenesLoader(root, version="v1.0-mini", split="all", preset=preset,
                                    with_gt=False)
            points = filter_points(loader[len(loader) - 1].points,
                                   preset.points.point_cloud_range)
            with torch.no_grad():
                feats, coords, _ = voxelizer([torch.from_numpy(points)])
            if feats.shape[0] >= num_voxels:
                break
    keep = min(num_voxels, feats.shape[0])
    return (feats[:keep].numpy(), coords[:keep, 1:].numpy().astype(np.int32), density)


def _agreement(output: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    diff = float(np.abs(output - reference).max())
    cosine = float(np.dot(output.ravel(), reference.ravel())
                   / (np.linalg.norm(output) * np.linalg.norm(reference)))
    return {"max_abs_diff": diff, "relative_max_abs_diff": diff / float(np.abs(reference).max()),
            "cosine": cosine}


def _conv_rates(stage_s: dict[str, float], macs: dict[str, int], rate: float
                ) -> dict[str, dict[str, float]]:
    """Per conv: useful multiply-adds, median seconds and the share of the GEMM rate reached."""
    return {name: {"macs": m, "median_s": stage_s[name], "share_of_peak": m / rate / stage_s[name]}
            for name, m in macs.items()}


def _bf16_variant(fp32: ScnExecutor, feats: np.ndarray, coords: np.ndarray,
                  fp32_output: np.ndarray, macs: dict[str, int], rate: float, warmup: int,
                  repeats: int) -> dict[str, Any]:
    """The executor with ``precision="bf16"`` timed like the FP32 one, or why it cannot run."""
    try:
        executor = ScnExecutor(fp32.graph, threads=fp32.threads, precision="bf16")
    except ConfigError as exc:
        return {"unavailable": str(exc)}
    recorded: dict[str, list[float]] = {}

    def run() -> None:
        executor.run(feats, coords)
        for name, seconds in executor.last_timings.items():
            recorded.setdefault(name, []).append(seconds)

    wall, _ = _timed(run, warmup, repeats)
    stage_s = {name: statistics.median(times[-repeats:]) for name, times in recorded.items()}
    conv_s = sum(stage_s[name] for name in macs)
    return {"convs": sorted(executor.bf16_convs), "median_s": statistics.median(wall),
            "conv_median_s": conv_s, "conv_share_of_fp32_peak": sum(macs.values()) / rate / conv_s,
            "layers": _conv_rates(stage_s, macs, rate),
            "vs_fp32": _agreement(executor.run(feats, coords), fp32_output)}


def benchmark_encoder(preset: Preset, seed: int) -> Any:
    """The preset's SparseEncoder (eval mode) with seeded random weights and random batch-norm
    statistics, so that every layer's output is non-trivial."""
    import torch

    from bevdeploy.model.lidar import build_sparse_encoder

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = build_sparse_encoder(preset)
        for module in encoder.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n) * 0.2)
                module.running_var.copy_(torch.rand(n) + 0.5)
                module.weight.data.copy_(torch.rand(n) + 0.5)
                module.bias.data.copy_(torch.randn(n) * 0.2)
    return encoder.eval()


def scn_benchmark(preset_name: str, num_voxels: int, seed: int = 0, *, warmup: int = WARMUP,
                  repeats: int = REPEATS) -> dict[str, Any]:
    """Time the executor and spconv on ``num_voxels`` voxels of ``preset_name``'s grid,
    ``repeats`` timed runs each after ``warmup`` untimed ones (spconv, being slow, gets half
    the repeats, at least 3).

    Returns a JSON-ready dict: the voxel set, median and best wall times of both (seconds),
    wall and CPU medians of both on one thread (spconv's footing; the CPU-time ratio is the
    comparison a loaded machine does not distort), the speed-ups, the executor's per-stage
    medians, total multiply-adds, the measured GEMM rate and the floor it implies, the convs'
    time and share of that rate in all and per conv (``layers``), the agreement of the two
    outputs, and the BF16 variant (``bf16``: its times, convs and agreement with FP32, or
    ``unavailable``: why not).
    """
    import torch

    from bevdeploy.export.scn import encoder_to_scn

    preset = get_preset(preset_name)
    feats, coords, density = synthetic_voxels(preset, num_voxels, seed)
    encoder = benchmark_encoder(preset, seed)
    executor = ScnExecutor(encoder_to_scn(encoder, preset))

    recorded: dict[str, list[float]] = {}

    def run_ours() -> np.ndarray:
        output = executor.run(feats, coords)
        for name, seconds in executor.last_timings.items():
            recorded.setdefault(name, []).append(seconds)
        return output

    ours, _ = _timed(run_ours, warmup, repeats)
    stage_times = {name: times[-repeats:] for name, times in recorded.items()}  # timed runs
    output = executor.run(feats, coords)
    single = ScnExecutor(executor.graph, threads=1)
    ours_single, ours_single_cpu = _timed(lambda: single.run(feats, coords), 1, repeats)

    feats_t = torch.from_numpy(feats)
    coords_t = torch.from_numpy(np.concatenate([np.zeros((len(coords), 1), np.int32), coords], 1))
    with torch.no_grad():  # the encoder runs spconv on one thread itself (cpu_single_thread)
        reference = encoder(feats_t, coords_t, 1).numpy()
        theirs, theirs_cpu = _timed(lambda: encoder(feats_t, coords_t, 1), 1,
                                    max(3, repeats // 2))

    per_conv = executor.conv_macs(coords)
    macs = sum(per_conv.values())
    rate = measure_rates().gemm_macs_per_s
    stage_s = {name: statistics.median(t) for name, t in stage_times.items()}
    conv_s = sum(stage_s[name] for name in per_conv)
    agreement = _agreement(output, reference)
    return {
        "preset": preset.name,
        "num_voxels": len(coords),
        "lidar_density": density,
        "seed": seed,
        "threads": executor.threads,
        "ours_median_s": statistics.median(ours),
        "ours_min_s": min(ours),
        "spconv_1_thread_median_s": statistics.median(theirs),
        "spconv_1_thread_min_s": min(theirs),
        "spconv_1_thread_cpu_median_s": statistics.median(theirs_cpu),
        "ours_1_thread_median_s": statistics.median(ours_single),
        "ours_1_thread_cpu_median_s": statistics.median(ours_single_cpu),
        "speedup_median": statistics.median(theirs) / statistics.median(ours),
        "speedup_1_thread_cpu_median": (statistics.median(theirs_cpu)
                                        / statistics.median(ours_single_cpu)),
        "stage_median_s": stage_s,
        "conv_macs": macs,
        "gemm_macs_per_s": rate,
        "floor_s": macs / rate,
        "conv_median_s": conv_s,
        "conv_share_of_peak": macs / rate / conv_s,
        "layers": _conv_rates(stage_s, per_conv, rate),
        **agreement,
        "bf16": _bf16_variant(executor, feats, coords, output, per_conv, rate, warmup, repeats),
    }


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nuscenes-resnet50")
    parser.add_argument("--voxels", type=int, default=120_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(scn_benchmark(args.preset, args.voxels, args.seed), indent=2))
