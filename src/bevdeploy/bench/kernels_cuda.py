"""The CUDA kernels' micro-benchmark: GPU time of each next to its floor on this GPU.

The inputs are the CPU benchmark's (``bench.kernels.bench_inputs``), uploaded once; every
kernel is timed with CUDA events around its launches (host → device copies of the inputs
excluded, the kernels' own small uploads of calibration and filter taps included), median and
p90 of ``repeats`` runs after warm-up (which also pays Triton's compilation).

The floor is the CPU benchmark's: the bytes a kernel must move over the measured device copy
bandwidth (a large device-to-device ``copy_``, bytes read + written), or its multiply-adds
over the measured float32 GEMM rate, whichever is larger. ``bev_pool``'s bytes are spelled
out in ``bev_pool_bytes``: the issue's target is ``bev_pool`` within 2× of that floor, which
the ``× floor`` column of ``bevdeploy bench-kernels --device cuda`` shows directly. The SCN
on the device (``TorchScnExecutor``, float32 and float16) closes the table, on the voxels of
the same points, its floor its convs' multiply-adds at the float32 GEMM rate.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bevdeploy.presets import Preset
from bevdeploy.runtime.kernels import cuda
from bevdeploy.bench.kernels import (KernelTiming, MachineRates, _bicubic_resize_macs,
                                     bench_inputs, timing_rows)

_COPY_BYTES = 1 << 30  # 1 GiB: far past the H100's 50 MB L2
_GEMM_SIZE = 4096


def _event_times(fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    """GPU milliseconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    pairs = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in pairs]


def measure_gpu_rates(device: torch.device, repeats: int = 5) -> MachineRates:
    """Device copy bandwidth (1 GiB ``copy_``, read + written) and float32 GEMM rate (4096³
    ``matmul``, TF32 off as torch's default), best of ``repeats``."""
    def best_ms(fn: Callable[[], Any]) -> float:
        return min(_event_times(fn, 1, repeats))

    src = torch.ones(_COPY_BYTES // 4, dtype=torch.float32, device=device)
    copy_ms = best_ms(functools.partial(torch.empty_like(src).copy_, src))
    a, b = (torch.rand(_GEMM_SIZE, _GEMM_SIZE, device=device) for _ in range(2))
    gemm_ms = best_ms(functools.partial(torch.matmul, a, b))
    return MachineRates(copy_bytes_per_s=2 * _COPY_BYTES / (copy_ms / 1e3),
                        gemm_macs_per_s=_GEMM_SIZE ** 3 / (gemm_ms / 1e3))


def bev_pool_bytes(plan: cuda.DeviceBevPoolPlan, channels: int, element_size: int) -> int:
    """The bytes ``bev_pool`` cannot avoid moving: every depth weight and every feature read
    once, the plan (one int32 index per kept point, one int32 offset per cell) read once, and
    the output written once. Features are gathered once per point that uses them, but from
    cache; the floor counts them once."""
    n, d, h, w = plan.frustum_shape
    nx, ny, nz = plan.bev_size
    weights = n * d * h * w * element_size
    feats = n * h * w * channels * element_size
    plan_bytes = int(plan.num_points) * 4 + plan.cell_offsets.numel() * 4
    return weights + feats + plan_bytes + channels * nz * nx * ny * element_size


def cuda_kernel_benchmarks(preset: Preset, *, num_points: int = 350_000, warmup: int = 3,
                           repeats: int = 20, seed: int = 0,
                           device: torch.device | str = "cuda") -> list[KernelTiming]:
    """Time every CUDA kernel on ``preset``'s shapes; one ``KernelTiming`` per case, in
    pipeline order (``bev_pool`` in float32 and float16)."""
    device = torch.device(device)
    rates = measure_gpu_rates(device)
    cams, vt, head = preset.cameras, preset.model.vtransform, preset.model.head
    n, (h, w), (fh, fw) = cams.num_cameras, cams.image_size, preset.feature_size
    d, c = vt.depth_bins, vt.out_channels
    nx, ny, nz = vt.bev_size
    r = np.asarray(preset.points.point_cloud_range, dtype=np.float32)
    vs = preset.voxel.voxel_size
    host = bench_inputs(preset, num_points, seed)
    points, images = (torch.from_numpy(a).to(device) for a in (host.points, host.images))
    weights, feats = (torch.from_numpy(a).to(device) for a in (host.depth_weights, host.feats))
    weights16, feats16 = weights.half(), feats.half()
    outputs = {k: torch.from_numpy(v).to(device) for k, v in host.head.items()}

    def geometry() -> cuda.DeviceBevPoolPlan:
        return cuda.geometry(host.camera2lidar, host.intrinsics, host.img_aug, np.eye(4),
                             cams.image_size, preset.feature_size, vt.dbound, vt.xbound,
                             vt.ybound, vt.zbound, device=device)

    def voxelize() -> tuple[torch.Tensor, ...]:
        return cuda.voxelize(points, vs, r[:3], preset.grid_size, preset.voxel.max_points,
                             preset.voxel.max_voxels)

    plan = geometry()
    num_voxels = int(voxelize()[3])
    num_cells = int(np.count_nonzero(np.diff(plan.cell_offsets.cpu().numpy())))
    bev = torch.empty((1, c * nz, nx, ny), dtype=torch.float32, device=device)
    bev16 = torch.empty_like(bev, dtype=torch.float16)
    frustum_points = n * d * fh * fw
    k, p = preset.num_classes, head.num_proposals
    pool = f"{n}×{d}×{fh}×{fw} weights × C={c} into a reused {c * nz}×{nx}×{ny}"
    cases: list[tuple[str, str, Callable[[], Any], int, int]] = [
        ("normalize", f"{n}×{cams.raw_size[0]}×{cams.raw_size[1]} uint8 → {n}×3×{h}×{w}",
         lambda: cuda.normalize(images, cams.resize, cams.resized_size, cams.crop_offset,
                                cams.image_size, cams.mean, cams.std),
         host.images.nbytes + n * 3 * h * w * 4, _bicubic_resize_macs(preset)),
        ("depth_map", f"{num_points:,} points into {n}×{h}×{w}",
         lambda: cuda.depth_map(points, host.lidar2image, host.img_aug, cams.image_size),
         num_points * 12 + n * h * w * (4 + 4), num_points * n * 18),
        ("geometry", f"{frustum_points:,} frustum points → {num_cells:,} cells",
         geometry, frustum_points * (4 + 4 + 4) + (nx * ny * nz + 1) * 4, frustum_points * 27),
        ("bev_pool", f"{pool}, float32", lambda: cuda.bev_pool(weights, feats, plan, out=bev),
         bev_pool_bytes(plan, c, 4), int(plan.num_points) * c),
        ("bev_pool", f"{pool}, float16 (float32 accumulation)",
         lambda: cuda.bev_pool(weights16, feats16, plan, out=bev16),
         bev_pool_bytes(plan, c, 2), int(plan.num_points) * c),
        ("voxelize", f"{num_points:,} points → {num_voxels:,} voxels", voxelize,
         host.points.nbytes + num_voxels * (preset.points.num_features * 4 + 12 + 4), 0),
        ("decode", f"{p} queries × {k} classes",
         lambda: cuda.decode(outputs["score"], outputs["rot"], outputs["dim"], outputs["reg"],
                             outputs["height"], outputs["vel"], head.out_size_factor, vs[:2],
                             r[:2], head.post_center_range, head.score_threshold),
         (k + 10) * p * 4 + p * 11 * 4, 0),
    ]
    cases += _scn_cases(preset, *(t[:num_voxels] for t in voxelize()[:2]), seed)
    return timing_rows(cases, lambda fn: _event_times(fn, warmup, repeats), rates)


def _scn_cases(preset: Preset, feats: torch.Tensor, coords: torch.Tensor, seed: int
               ) -> list[tuple[str, str, Callable[[], Any], int, int]]:
    """The SCN on the device (``TorchScnExecutor``, float32 and float16) on the voxels of the
    benchmark's points, with seeded random weights: its floor is the convs' multiply-adds
    (rulebook pairs × C_in × C_out) at the float32 GEMM rate, or the dense BEV it writes."""
    from bevdeploy.export.scn import encoder_to_scn
    from bevdeploy.bench.scn import benchmark_encoder
    from bevdeploy.runtime.scn import ScnExecutor
    from bevdeploy.runtime.scn.torch_executor import TorchScnExecutor

    graph = encoder_to_scn(benchmark_encoder(preset, seed), preset)
    macs = sum(ScnExecutor(graph).conv_macs(coords.cpu().numpy()).values())
    cases = []
    for dtype, name in ((torch.float32, "float32"), (torch.float16, "float16")):
        executor = TorchScnExecutor(graph, device=feats.device, dtype=dtype)
        out_bytes = int(np.prod(executor.output_shape)) * dtype.itemsize
        cases.append(("scn (torch)", f"{len(coords):,} voxels, {macs / 1e9:.1f} GMAC, {name} "
                      "(waits for each strided rulebook's size)",
                      functools.partial(executor.run, feats, coords),
                      feats.numel() * 4 + coords.numel() * 4 + out_bytes, macs))
    return cases
