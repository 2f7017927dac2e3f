"""Kernel micro-benchmarks: each kernel's median time next to the floor this machine allows.

A time alone says little on an unknown machine, so every row also carries a floor: the bytes
the kernel must move over the measured copy bandwidth (a large ``np.copyto``), or the
multiply-adds it must do over the measured float32 GEMM rate (a large ``np.matmul``),
whichever is larger. A kernel near its floor is done; one far above it has headroom.

Inputs are synthetic but shaped by the preset: a ring of cameras looking outward over the
grid, points uniform over the point-cloud range (every point in range, most in a voxel of
their own — a harder case for the voxel cap than a real sweep), random depth distributions,
features, images and head outputs. Timings depend on values only through the plan and the
voxel count, which these inputs make realistic or worse.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bevdeploy.data import preprocess
from bevdeploy.data.frame import Calibration
from bevdeploy.presets import Preset
from bevdeploy.runtime import kernels

_COPY_BYTES = 1 << 27  # 128 MiB per buffer: far past every cache level
_GEMM_SIZES = (1024, 2048)  # the best of both: BLAS blocking favours one or the other per CPU


@dataclass(frozen=True)
class KernelTiming:
    """One benchmark row; ``floor_ms`` is the larger of ``bytes_moved``/bandwidth and
    ``macs``/GEMM rate, and ``floor_basis`` says which one and at what rate."""

    kernel: str
    work: str  # the shapes, in words
    median_ms: float
    p90_ms: float
    floor_ms: float
    floor_basis: str
    bytes_moved: int
    macs: int

    @property
    def ratio(self) -> float:
        """How many times slower than the floor."""
        return self.median_ms / self.floor_ms if self.floor_ms > 0 else float("inf")


@dataclass(frozen=True)
class MachineRates:
    """Measured memory bandwidth and float32 GEMM throughput of this process's threads."""

    copy_bytes_per_s: float  # bytes read + written per second by np.copyto
    gemm_macs_per_s: float  # multiply-adds per second by np.matmul (float32)

    def floor(self, bytes_moved: int, macs: int) -> tuple[float, str]:
        """(milliseconds, basis) of the binding floor."""
        by_bytes = 1e3 * bytes_moved / self.copy_bytes_per_s
        by_macs = 1e3 * macs / self.gemm_macs_per_s
        if by_bytes >= by_macs:
            return by_bytes, (f"{bytes_moved / 1e6:.1f} MB at "
                              f"{self.copy_bytes_per_s / 1e9:.1f} GB/s copy")
        return by_macs, f"{macs / 1e6:.1f} M MACs at {self.gemm_macs_per_s / 1e9:.1f} GMAC/s GEMM"


def _times(fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    """Wall times in milliseconds of ``repeats`` calls after ``warmup`` untimed ones (which
    also pay numba's compile or cache load)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(1e3 * (time.perf_counter() - start))
    return out


def measure_rates(repeats: int = 5) -> MachineRates:
    """Copy bandwidth (a 128 MiB ``np.copyto``) and float32 GEMM rate (``np.matmul`` at 1024³
    and 2048³), best of ``repeats`` and sizes: the floor should be what the machine can reach,
    not its average: a single 1024³ product reads low where thread start-up is a visible share
    of it, and ONNX Runtime's convs then appear to beat the "peak"
    (docs/bench/notes.md#gemm-peak)."""
    src = np.ones(_COPY_BYTES // 4, dtype=np.float32)
    dst = np.empty_like(src)
    copy_ms = min(_times(lambda: np.copyto(dst, src), 1, repeats))
    rng = np.random.default_rng(0)
    gemm_macs_per_s = 0.0
    for size in _GEMM_SIZES:
        a = rng.random((size, size), dtype=np.float32)
        b = rng.random((size, size), dtype=np.float32)
        gemm_ms = min(_times(lambda: np.matmul(a, b), 1, repeats))
        gemm_macs_per_s = max(gemm_macs_per_s, size ** 3 / (gemm_ms / 1e3))
    return MachineRates(copy_bytes_per_s=2 * src.nbytes / (copy_ms / 1e3),
                        gemm_macs_per_s=gemm_macs_per_s)


def ring_calibration(preset: Preset) -> tuple[np.ndarray, np.ndarray]:
    """(camera2lidar (N, 4, 4), intrinsics (N, 3, 3)) float32: N level cameras 1.5 m up,
    evenly spaced in yaw and looking outward, with a 70° horizontal field of view."""
    n = preset.cameras.num_cameras
    h, w = preset.cameras.raw_size
    focal = 0.5 * w / np.tan(np.deg2rad(35.0))
    intrinsics = np.tile(np.array([[focal, 0.0, w / 2], [0.0, focal, h / 2], [0.0, 0.0, 1.0]]),
                         (n, 1, 1))
    camera2lidar = np.tile(np.eye(4), (n, 1, 1))
    for i, yaw in enumerate(2 * np.pi * np.arange(n) / n):
        c, s = np.cos(yaw), np.sin(yaw)
        # columns: the camera's x (right), y (down) and z (optical axis) in the LiDAR frame
        camera2lidar[i, :3, :3] = [[s, 0.0, c], [-c, 0.0, s], [0.0, -1.0, 0.0]]
        camera2lidar[i, :3, 3] = (0.0, 0.0, 1.5)
    return camera2lidar.astype(np.float32), intrinsics.astype(np.float32)


def _bicubic_resize_macs(preset: Preset) -> int:
    """Multiply-adds of PIL's separable bicubic resize of all cameras: a horizontal pass over
    every input row, then a vertical pass, each with ``2·ceil(2·scale) + 1`` taps (PIL widens
    the cubic's support of 2 by the downscale factor to antialias)."""
    cams = preset.cameras
    (h0, w0), (rh, rw) = cams.raw_size, cams.resized_size
    taps_x = 2 * math.ceil(2 * max(w0 / rw, 1.0)) + 1
    taps_y = 2 * math.ceil(2 * max(h0 / rh, 1.0)) + 1
    return cams.num_cameras * 3 * (h0 * rw * taps_x + rh * rw * taps_y)


@dataclass(frozen=True)
class BenchInputs:
    """Synthetic inputs of every kernel at a preset's shapes (see the module docstring)."""

    points: np.ndarray  # (P, F) float32
    images: np.ndarray  # (N, H0, W0, 3) uint8
    camera2lidar: np.ndarray  # (N, 4, 4) float32, ``ring_calibration``
    intrinsics: np.ndarray  # (N, 3, 3) float32
    img_aug: np.ndarray  # (N, 4, 4)
    lidar2image: np.ndarray  # (N, 4, 4)
    depth_weights: np.ndarray  # (N, D, h, w) float32
    feats: np.ndarray  # (N, h, w, C) float32
    head: dict[str, np.ndarray]  # score (K, P), rot, dim, reg, height, vel: float32


def bench_inputs(preset: Preset, num_points: int, seed: int = 0) -> BenchInputs:
    """The inputs ``kernel_benchmarks`` times (shared with the CUDA kernels' benchmark)."""
    rng = np.random.default_rng(seed)
    cams, vt, head = preset.cameras, preset.model.vtransform, preset.model.head
    n, (fh, fw) = cams.num_cameras, preset.feature_size
    f = preset.points.num_features
    r = np.asarray(preset.points.point_cloud_range, dtype=np.float32)
    points = np.empty((num_points, f), dtype=np.float32)
    points[:, :3] = rng.uniform(r[:3], r[3:], size=(num_points, 3))
    points[:, 3:] = rng.uniform(0, 1, size=(num_points, f - 3))
    images = rng.integers(0, 256, size=(n, *cams.raw_size, 3), dtype=np.uint8)
    camera2lidar, intrinsics = ring_calibration(preset)
    depth_weights = rng.random((n, vt.depth_bins, fh, fw), dtype=np.float32)
    feats = rng.standard_normal((n, fh, fw, vt.out_channels), dtype=np.float32)
    k, p = preset.num_classes, head.num_proposals
    outputs = {name: rng.standard_normal((rows, p), dtype=np.float32)
               for name, rows in (("rot", 2), ("dim", 3), ("reg", 2), ("height", 1), ("vel", 2))}
    outputs["reg"] = rng.uniform(0, preset.bev_size[0], size=(2, p)).astype(np.float32)
    outputs["score"] = rng.random((k, p), dtype=np.float32)
    return BenchInputs(
        points=points, images=images, camera2lidar=camera2lidar, intrinsics=intrinsics,
        img_aug=preprocess.img_aug_matrices(cams),
        lidar2image=preprocess.lidar2image(Calibration(cams.names, intrinsics, camera2lidar)),
        depth_weights=depth_weights, feats=feats, head=outputs)


def kernel_benchmarks(preset: Preset, *, num_points: int = 350_000, warmup: int = 2,
                      repeats: int = 10, seed: int = 0) -> list[KernelTiming]:
    """Time every kernel on ``preset``'s shapes (``num_points`` LiDAR points) in this
    process's numba thread setting; one ``KernelTiming`` per kernel, in pipeline order."""
    rates = measure_rates()
    cams, vt, head = preset.cameras, preset.model.vtransform, preset.model.head
    n, (h, w), (fh, fw) = cams.num_cameras, cams.image_size, preset.feature_size
    d, c = vt.depth_bins, vt.out_channels
    nx, ny, nz = vt.bev_size
    f = preset.points.num_features
    r = np.asarray(preset.points.point_cloud_range, dtype=np.float32)
    inputs = bench_inputs(preset, num_points, seed)
    points, images, img_aug = inputs.points, inputs.images, inputs.img_aug
    camera2lidar, intrinsics, lidar2image = (inputs.camera2lidar, inputs.intrinsics,
                                             inputs.lidar2image)
    depth_weights, feats, outputs = inputs.depth_weights, inputs.feats, inputs.head
    k, p = preset.num_classes, head.num_proposals
    score = outputs["score"]

    def geometry() -> kernels.BevPoolPlan:
        return kernels.geometry(camera2lidar, intrinsics, img_aug, np.eye(4, dtype=np.float32),
                                cams.image_size, preset.feature_size, vt.dbound, vt.xbound,
                                vt.ybound, vt.zbound)

    plan = geometry()
    voxels = kernels.voxelize(points, preset.voxel.voxel_size, r[:3], preset.grid_size,
                              preset.voxel.max_points, preset.voxel.max_voxels)
    num_voxels = voxels[1].shape[0]
    bev = np.empty((1, c * nz, nx, ny), dtype=np.float32)
    pool_bytes = depth_weights.nbytes + feats.nbytes + plan.num_points * 4 + bev.nbytes
    frustum_points = n * d * fh * fw
    vs = preset.voxel.voxel_size
    cases: list[tuple[str, str, Callable[[], Any], int, int]] = [
        ("normalize", f"{n}×{cams.raw_size[0]}×{cams.raw_size[1]} uint8 → {n}×3×{h}×{w}",
         lambda: kernels.normalize(images, cams.resize, cams.resized_size, cams.crop_offset,
                                   cams.image_size, cams.mean, cams.std),
         images.nbytes + n * 3 * h * w * 4, _bicubic_resize_macs(preset)),
        ("depth_map", f"{num_points:,} points into {n}×{h}×{w}",
         lambda: kernels.depth_map(points, lidar2image, img_aug, cams.image_size),
         num_points * 12 + n * h * w * 4, num_points * n * 18),
        ("geometry", f"{frustum_points:,} frustum points → {plan.num_intervals:,} cells",
         geometry, frustum_points * 12 + plan.num_points * 4 + plan.num_intervals * 16,
         frustum_points * 27),
        ("bev_pool", f"{n}×{d}×{fh}×{fw} weights × C={c} into a reused {c * nz}×{nx}×{ny}",
         lambda: kernels.bev_pool(depth_weights, feats, plan, out=bev), pool_bytes,
         plan.num_points * c),
        ("bev_pool", f"the same into a freshly allocated {c * nz}×{nx}×{ny}",
         lambda: kernels.bev_pool(depth_weights, feats, plan), pool_bytes, plan.num_points * c),
        ("voxelize", f"{num_points:,} points → {num_voxels:,} voxels",
         lambda: kernels.voxelize(points, vs, r[:3], preset.grid_size, preset.voxel.max_points,
                                  preset.voxel.max_voxels),
         points.nbytes + num_voxels * (f * 4 + 12 + 4), 0),
        ("decode", f"{p} queries × {k} classes",
         lambda: kernels.decode(score, outputs["rot"], outputs["dim"], outputs["reg"],
                                outputs["height"], outputs["vel"], head.out_size_factor, vs[:2],
                                r[:2], head.post_center_range, head.score_threshold),
         (k + 10) * p * 4 + p * 11 * 4, 0),
    ]
    return timing_rows(cases, lambda fn: _times(fn, warmup, repeats), rates)


# One benchmark case: kernel name, what it works on, the call, bytes it must move, its MACs.
Case = tuple[str, str, Callable[[], Any], int, int]


def timing_rows(cases: list[Case], time_ms: Callable[[Callable[[], Any]], list[float]],
                rates: MachineRates) -> list[KernelTiming]:
    """Each case timed with ``time_ms`` (host clock on the CPU, CUDA events on a GPU) and set
    beside its floor on ``rates``: one row per case, in order."""
    rows = []
    for name, work, fn, bytes_moved, macs in cases:
        times = time_ms(fn)
        floor_ms, basis = rates.floor(bytes_moved, macs)
        rows.append(KernelTiming(kernel=name, work=work, median_ms=statistics.median(times),
                                 p90_ms=float(np.percentile(times, 90)), floor_ms=floor_ms,
                                 floor_basis=basis, bytes_moved=bytes_moved, macs=macs))
    return rows


def kernel_table(rows: list[KernelTiming], scn: dict[str, Any] | None, *, title: str,
                 digits: int = 1, wide: bool = False) -> Any:
    """The ``bench-kernels`` table: each kernel's median and p90 next to its floor, then the
    SCN rows (``bench.scn.scn_benchmark``'s dict) when timed. Narrow by default (the work and
    the floor basis numbered below the table), every column in it with ``wide``."""
    from rich.table import Table

    from bevdeploy.tables import Footnotes, compact_table, with_notes

    notes = Footnotes()
    table = Table(title=title) if wide else compact_table(title)
    columns = ("kernel", "work", "median ms", "p90 ms", "floor ms", "× floor", "floor basis") \
        if wide else ("kernel", "median", "p90", "floor", "×floor", "note")
    for col in columns:
        right = col not in ("kernel", "work", "floor basis", "note")
        table.add_column(col, justify="right" if right else "left",
                         no_wrap=not wide and col != "note")

    def add(kernel: str, work: str, median: str, p90: str, floor: str, ratio: str,
            basis: str) -> None:
        if wide:
            table.add_row(kernel, work, median, p90, floor, ratio, basis)
        else:
            table.add_row(kernel, median, p90, floor, ratio,
                          notes.ref("; ".join(t for t in (work, basis) if t)))

    for r in rows:
        add(r.kernel, r.work, f"{r.median_ms:.{digits}f}", f"{r.p90_ms:.{digits}f}",
            f"{r.floor_ms:.{digits}f}", f"{r.ratio:.1f}", r.floor_basis)
    if scn is not None:
        s = scn
        add("scn (ours)", f"{s['num_voxels']:,} voxels, {s['conv_macs'] / 1e9:.1f} GMAC",
            f"{s['ours_median_s'] * 1e3:.0f}", "", f"{s['floor_s'] * 1e3:.0f}",
            f"{s['ours_median_s'] / s['floor_s']:.1f}",
            f"MACs at {s['gemm_macs_per_s'] / 1e9:.0f} GMAC/s")
        add("scn (spconv, 1 thread)", "same voxels",
            f"{s['spconv_1_thread_median_s'] * 1e3:.0f}", "", "", "",
            f"ours is {s['speedup_median']:.2f}× faster (wall), "
            f"{s['speedup_1_thread_cpu_median']:.2f}× per core; cosine {s['cosine']:.6f}")
    return with_notes(table, notes)
