"""``bevdeploy bench``: per-stage and end-to-end latency, throughput and peak memory of deploy
packages and of the PyTorch eager reference, measured in one run on the same frames.

**Variants.** Every ``--package`` × CPU ``--backend`` × ``--schedule`` is one variant, and
every ``--package`` × GPU backend (torch-cuda, tensorrt) × ``--gpu-config`` (``GpuConfig``:
precision, channels-last, CUDA graphs, two streams; ``--gpu-ladder`` adds one switch per step)
is one: a GPU backend runs under ``CudaSchedule``, so the CPU schedules do not multiply it.
Unless ``--no-reference``, the PyTorch eager reference of each distinct preset is one more (the
package's preset, its checkpoint when known, else the exporter's seeded random initialisation —
latency does not depend on the weights' values). Every variant uses the same thread budget:
the pipeline's ``threads`` for a package, ``torch.set_num_threads`` for the reference. GPU
variants are refused before anything is measured where CUDA is unusable.

**How it is measured.** Each variant runs in its own fresh process (``spawn``), one after the
other: load the frames, note the resident memory, load the variant, run ``warmup`` frames, then
time ``frames`` frames as one stream. Per-frame stage times come from the pipeline's own timers
(and, for the reference, from forward hooks on the modules that do the same work); frames/s is
the frame count over the stream's wall time. Peak memory is the process's resident-set
high-water mark kept by the kernel (``VmHWM``; exact, not sampled), reported whole and as the
growth over the resident set measured after the frames were loaded and before the variant's
libraries were imported: one process per variant is what makes this per-variant and honest
(PyTorch's own footprint counts against the reference, nothing of one variant against another).

**Frames.** A nuScenes-format dataset (``--data``), or by default a small synthetic world
generated once into the user cache directory; frames cycle when fewer exist than asked for,
and the timed frames start after the warm-up ones, so consecutive frames always differ (the
geometry cache cannot hit by accident). Reading and decoding the files is not timed.

**Dense modules.** Each ONNX module's MACs are counted on the reference model
(``bevdeploy.model.macs.count_dense_macs``, the modules each graph holds) and turned into
achieved GFLOP/s (2 FLOPs per MAC) next to this machine's measured float32 GEMM rate
(``runtime.kernels.bench.measure_rates``: ``np.matmul`` at 1024³ and 2048³ with the same thread
budget, best of all sizes and repeats, measured before and after the variants).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import resource
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.markup import escape
from rich.table import Table

from bevdeploy import __version__
from bevdeploy.errors import BevDeployError, ConfigError
from bevdeploy.io import atomic_write

if TYPE_CHECKING:
    from bevdeploy.runtime.backends.gpu import GpuConfig

REFERENCE_BACKEND = "torch"
REFERENCE_SCHEDULE = "eager"
REFERENCE_CUDA_SCHEDULE = "eager-cuda"  # ``--reference-device cuda``: the same, on the GPU
CUDA_SCHEDULE = "cuda"  # the schedule of every GPU variant (``CudaSchedule``)
DENSE_MODULES = ("camera.backbone", "camera.vtransform", "fuser", "head.bbox")

# The reference model's modules each ONNX graph holds (export/camera.py, export/fuser.py,
# export/head.py); their MACs are the graph's.
DENSE_MODULE_PARTS: dict[str, tuple[str, ...]] = {
    "camera.backbone": ("encoders.camera.backbone", "encoders.camera.neck",
                        "encoders.camera.vtransform.dtransform",
                        "encoders.camera.vtransform.depthnet"),
    "camera.vtransform": ("encoders.camera.vtransform.downsample",),
    "fuser": ("fuser", "decoder.backbone", "decoder.neck"),
    "head.bbox": ("heads.object",),
}

# Stage rows in pipeline order; a variant without a stage shows "—".
STAGE_ORDER = ("points", "upload", "voxelize", "scn", "normalize", "depth", "geometry", "camera.backbone",
               "bevpool", "camera.vtransform", "fuser", "head.bbox", "decode")

TOTAL_INCLUDES = {
    "deploy": (
        "deploy total: a Frame in memory (decoded uint8 images, float32 points, calibration) → "
        "Detections: frame checks, point range filter (points), voxelize, SCN, image resize + "
        "crop + normalize, depth map, camera.backbone, geometry (a plan is computed whenever the "
        "float32 calibration differs from the previous frame's: on real nuScenes every frame, "
        "whose camera2lidar carries the ego motion; row 'geometry computed' says how often it "
        "was here), bevpool, camera.vtransform, fuser, head.bbox, decode. Not included: "
        "reading and decoding the files; there is no host↔device copy on the CPU (on a GPU, row "
        "'upload' is the copy of the points and raw images to the device). Under the "
        "frames schedule a frame's total is its latency from the start of its preparation "
        "(queue waits included) and stages of different threads overlap."),
    "reference": (
        "reference total: BEVFusion.predict's work — collate (frame checks, range filter, PIL "
        "resize + crop + normalize, matrices; its row 'normalize'), the forward (depth map, "
        "backbone + neck + depth net as 'camera.backbone', geometry, bev_pool, downsample as "
        "'camera.vtransform', voxelize, spconv encoder as 'scn', fuser + decoder as 'fuser', "
        "head) and decode; FP32 eager under torch.inference_mode. On a GPU (eager-cuda) "
        "'normalize' includes the copy to the device, and every stage boundary waits for the "
        "device so that a stage's time is its work."),
}


# ------------------------------------------------------------------------------ data types


@dataclass(frozen=True)
class Variant:
    """One column: a package on a backend under a schedule (a GPU backend: with a GPU
    configuration), or the reference of its preset."""

    label: str
    preset: str  # the preset's name
    package: str  # the reference: the package whose preset (and weights, if known) it mirrors
    backend: str  # REFERENCE_BACKEND for the reference
    schedule: str  # REFERENCE_(CUDA_)SCHEDULE for the reference, CUDA_SCHEDULE for a GPU backend
    threads: int
    checkpoint: str | None = None  # reference only: weights to load
    gpu_config: str | None = None  # GPU backends only: ``GpuConfig.label``

    @property
    def is_reference(self) -> bool:
        return self.backend == REFERENCE_BACKEND


@dataclass(frozen=True)
class FrameSource:
    """Where the frames come from: a nuScenes-format dataset root, version and split."""

    root: str
    version: str = "v1.0-mini"
    split: str = "mini_val"
    synthetic: bool = False  # generated by bench itself

    def describe(self) -> str:
        kind = "synthetic world" if self.synthetic else "dataset"
        return f"{kind} {self.root} ({self.version}, {self.split})"


@dataclass(frozen=True)
class Stat:
    """Median and 90th percentile (linear interpolation) of per-frame milliseconds."""

    median_ms: float
    p90_ms: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Stat":
        if not samples:
            raise ValueError("no samples")
        return cls(float(statistics.median(samples)), float(np.percentile(samples, 90)))


@dataclass
class VariantResult:
    """What one variant's process measured."""

    variant: Variant
    precision: str  # the dense modules' precisions in words ("fp32", "int8 (head.bbox fp32)")
    weights: str  # what the weights are, in words
    samples: dict[str, list[float]]  # stage → per-frame milliseconds ("total" included)
    wall_s: float  # the timed stream, first frame in to last detections out
    frames: int
    distinct_frames: int
    peak_rss_mb: float
    baseline_rss_mb: float | None  # resident set before the variant was loaded
    geometry_computed: int | None  # timed frames whose geometry plan was computed (deploy)

    @property
    def total(self) -> Stat:
        return Stat.of(self.samples["total"])

    @property
    def stages(self) -> dict[str, Stat]:
        return {name: Stat.of(v) for name, v in self.samples.items() if name != "total"}

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_s

    @property
    def variant_rss_mb(self) -> float | None:
        """Peak resident memory the variant added over the baseline."""
        return None if self.baseline_rss_mb is None else self.peak_rss_mb - self.baseline_rss_mb


@dataclass
class BenchReport:
    """All variants of one run, the machine's GEMM rate and the dense modules' MACs."""

    results: list[VariantResult]
    source: FrameSource
    frames: int
    warmup: int
    threads: int
    gemm_gflops: float  # measured float32 GEMM rate, FLOPs (2 per MAC)
    dense_macs: dict[str, dict[str, int]] = field(default_factory=dict)  # preset → module → MACs
    notes: list[str] = field(default_factory=list)
    created_utc: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(
        timespec="seconds"))

    def reference_of(self, result: VariantResult) -> VariantResult | None:
        """The reference measured for ``result``'s preset, if any."""
        preset = _preset_name(result)
        for r in self.results:
            if r.variant.is_reference and _preset_name(r) == preset:
                return r
        return None

    def speedups(self, result: VariantResult) -> dict[str, Any] | None:
        """``result`` against its preset's reference: end-to-end latency (reference median
        total / this median total), throughput (this frames/s / reference frames/s), and the
        same latency ratio per stage both have. ``None`` without a reference."""
        ref = self.reference_of(result)
        if ref is None:
            return None
        mine, theirs = result.stages, ref.stages
        return {
            "latency": ref.total.median_ms / result.total.median_ms,
            "throughput": result.frames_per_s / ref.frames_per_s,
            "stages": {k: theirs[k].median_ms / mine[k].median_ms for k in mine
                       if k in theirs and mine[k].median_ms > 0},
        }

    def gflops(self, result: VariantResult) -> dict[str, float]:
        """Achieved GFLOP/s of each dense module of ``result`` (median time, 2 FLOPs/MAC)."""
        macs = self.dense_macs.get(_preset_name(result), {})
        stages = result.stages
        return {m: 2 * macs[m] / (stages[m].median_ms * 1e-3) / 1e9 for m in DENSE_MODULES
                if m in macs and m in stages and stages[m].median_ms > 0}

    def to_dict(self) -> dict[str, Any]:
        variants = []
        for r in self.results:
            variants.append({
                **asdict(r.variant), "reference": r.variant.is_reference,
                "preset": _preset_name(r), "precision": r.precision, "weights": r.weights,
                "frames": r.frames, "distinct_frames": r.distinct_frames, "wall_s": r.wall_s,
                "frames_per_s": r.frames_per_s,
                "total": asdict(r.total), "stages": {k: asdict(v) for k, v in r.stages.items()},
                "peak_rss_mb": r.peak_rss_mb, "baseline_rss_mb": r.baseline_rss_mb,
                "variant_rss_mb": r.variant_rss_mb,
                "geometry_computed_frames": r.frames if r.variant.is_reference
                else r.geometry_computed,
                "speedup_vs_reference": None if r.variant.is_reference else self.speedups(r),
                "dense_gflops": self.gflops(r),
                "samples_ms": r.samples,
            })
        return {
            "bevdeploy": __version__, "created_utc": self.created_utc,
            "machine": {"cpu_count": os.cpu_count(), "threads": self.threads,
                        "gemm_gflops": self.gemm_gflops, "platform": sys.platform,
                        "cpu": cpu_identity()},
            "frames": {"source": self.source.describe(), "timed": self.frames,
                       "warmup": self.warmup},
            "total_includes": TOTAL_INCLUDES,
            "peak_memory": ("VmHWM of the variant's own process; variant_rss_mb is it "
                            "minus the resident set after the frames were loaded and before "
                            "the variant's libraries and model"),
            "dense_macs": self.dense_macs, "notes": self.notes, "variants": variants,
        }

    def write_json(self, path: str | Path) -> Path:
        """The report as JSON, written atomically."""
        return atomic_write(path, json.dumps(self.to_dict(), indent=1).encode())

    def table(self) -> Table:
        """Stages × variants (median / p90 ms, speed-up over the reference), then totals,
        frames/s, memory; the caption says what the totals include."""
        rs = self.results
        cpu = cpu_identity()
        table = Table(title=f"bevdeploy bench: {self.frames} frames after {self.warmup} warm-up, "
                            f"{self.threads} threads of {escape(cpu['model'] or 'a CPU')} "
                            f"({cpu['microarchitecture']}: {' '.join(cpu['isa']) or 'no AVX2'}); "
                            f"frames from "
                            f"{escape(self.source.describe())}",
                      caption=escape("\n".join([TOTAL_INCLUDES["deploy"],
                                                TOTAL_INCLUDES["reference"],
                                                "cells: median / p90 ms (× = reference median "
                                                "over this median). Variants ran one after "
                                                "another, each in its own process.",
                                                *self.notes])),
                      caption_justify="left")
        table.add_column("stage", no_wrap=True)
        for r in rs:
            table.add_column(_header(r), justify="right")
        speedups = [None if r.variant.is_reference else self.speedups(r) for r in rs]
        present = {k for r in rs for k in r.samples if k != "total"}
        for stage in [s for s in STAGE_ORDER if s in present] + sorted(present - set(STAGE_ORDER)):
            cells = []
            for r, s in zip(rs, speedups):
                stat = r.stages.get(stage)
                ratio = s["stages"].get(stage) if s else None
                cells.append("—" if stat is None else _cell(stat, ratio))
            table.add_row(stage, *cells)
        table.add_section()
        table.add_row("total", *[_cell(r.total, s["latency"] if s else None)
                                 for r, s in zip(rs, speedups)])
        table.add_row("frames/s", *[f"{r.frames_per_s:.2f}" + (
            f" ({s['throughput']:.2f}×)" if s else "") for r, s in zip(rs, speedups)])
        table.add_row("peak RSS MB (+variant)", *[
            f"{r.peak_rss_mb:.0f}" + ("" if r.variant_rss_mb is None
                                      else f" (+{r.variant_rss_mb:.0f})") for r in rs])
        table.add_row("geometry computed", *[
            "every frame" if r.variant.is_reference else f"{r.geometry_computed}/{r.frames} frames"
            for r in rs])
        table.add_row("weights", *[r.weights for r in rs])
        return table

    def dense_table(self) -> Table:
        """Each dense module's MACs and achieved GFLOP/s per variant, with the share of this
        machine's measured float32 GEMM rate."""
        table = Table(title=f"dense modules: achieved GFLOP/s (float32 GEMM peak measured "
                            f"{self.gemm_gflops:.0f} GFLOP/s on {self.threads} threads)",
                      caption="GFLOP/s = 2 × the module's MACs / its median time. An INT8 "
                              "module does the same MACs as 8-bit products, so its share of "
                              "the float32 peak can pass 100 %.", caption_justify="left")
        table.add_column("module", no_wrap=True)
        table.add_column("GMAC", justify="right")
        for r in self.results:
            table.add_column(_header(r), justify="right")
        presets = list(dict.fromkeys(_preset_name(r) for r in self.results))
        for preset in presets:
            macs = self.dense_macs.get(preset)
            if not macs:
                continue
            rs = [r for r in self.results if _preset_name(r) == preset]
            rates = {id(r): self.gflops(r) for r in rs}
            for module in DENSE_MODULES:
                cells = []
                for r in self.results:
                    rate = rates.get(id(r), {}).get(module)
                    cells.append("" if rate is None else
                                 f"{rate:.0f} ({rate / self.gemm_gflops:.0%})")
                table.add_row(f"{preset} {module}", f"{macs[module] / 1e9:.2f}", *cells)
        return table


# Instruction sets that decide what INT8 and FP16/BF16 can gain on a CPU: without a VNNI
# extension ONNX Runtime's u8s8 convolutions use AVX2's vpmaddubsw, about 2× the FP32 rate at best.
ISA_FEATURES = ("avx2", "fma", "avx512f", "avx512vnni", "avxvnni", "avx512bf16", "amx-int8")


def cpu_identity() -> dict[str, Any]:
    """The CPU an absolute time belongs to: its model name (Linux ``/proc/cpuinfo``), LLVM's
    name for its micro-architecture and which of ``ISA_FEATURES`` it has (llvmlite, numba's
    own backend, so no extra dependency)."""
    import llvmlite.binding as llvm

    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    features = llvm.get_host_cpu_features()
    return {"model": model, "microarchitecture": llvm.get_host_cpu_name(),
            "isa": [f for f in ISA_FEATURES if features.get(f, False)]}


def _header(result: VariantResult) -> str:
    """A variant's column title: its label one part per line, then its precision (escaped: a
    label's ``[package dir]`` is not rich markup)."""
    return escape(f"{result.variant.label.replace(' · ', chr(10))}\n{result.precision}")


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _cell(stat: Stat, ratio: float | None) -> str:
    text = f"{_ms(stat.median_ms)} / {_ms(stat.p90_ms)}"
    return text if ratio is None else f"{text} ({ratio:.2f}×)"


def _preset_name(result: VariantResult) -> str:
    return result.variant.preset


# ------------------------------------------------------------------------------ frames


def default_world(cache: Path | None = None) -> FrameSource:
    """The synthetic world bench uses when given no dataset: 2 scenes × 4 key frames at full
    LiDAR density (seed 0), written once into ``cache`` (default: the user cache directory)."""
    from bevdeploy.data.synthetic import write_world

    base = cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bevdeploy"
    root = base / "bench-world-s2x4-seed0"
    if not (root / "v1.0-mini").is_dir():
        try:
            write_world(root, scenes=2, samples=4, seed=0, density=1.0)
        except BevDeployError:
            if not (root / "v1.0-mini").is_dir():  # not merely another bench's concurrent write
                raise
    return FrameSource(str(root), "v1.0-mini", "mini_val", synthetic=True)


def load_frames(source: FrameSource, preset: Any, count: int) -> tuple[list[Any], int]:
    """``count`` frames of ``source`` for ``preset`` (its sweeps and cameras), cycling through
    the split's samples when it has fewer; also the number of distinct frames."""
    from bevdeploy.data.nuscenes import NuScenesLoader

    loader = NuScenesLoader(source.root, version=source.version, split=source.split,
                            preset=preset)
    distinct = [loader[i] for i in range(min(len(loader), count))]
    return [distinct[i % len(distinct)] for i in range(count)], len(distinct)


# ------------------------------------------------------------------------------ one variant


def _current_rss_mb() -> float | None:
    """Resident set now (Linux ``/proc``), or ``None`` where that is not available."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """The process's resident-set high-water mark: Linux's ``VmHWM``, which belongs to the
    process's own address space. (``ru_maxrss`` survives ``exec``, so a child spawned by a
    large parent would report the parent's size; it is only the fallback elsewhere.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB


def package_precision(pkg: Any) -> str:
    """The dense modules' precisions in words: the lowest one, with the exceptions named
    (``"int8 (camera.vtransform fp32, head.bbox fp32)"``)."""
    rank = {"int8": 0, "fp16": 1, "bf16": 1, "fp32": 2}
    precisions = {m: pkg.module(m).precision for m in DENSE_MODULES}
    headline = min(precisions.values(), key=lambda p: rank.get(p, 3))
    others = [f"{m} {p}" for m, p in precisions.items() if p != headline]
    return headline + (f" ({', '.join(others)})" if others else "")


def reference_model(pkg: Any, checkpoint: str | Path | None) -> tuple[Any, str]:
    """The eager reference for ``pkg`` and a description of its weights: ``checkpoint`` if
    given; else the package's own checkpoint when the preset's default file is it (same
    SHA-256); else the exporter's seeded random initialisation."""
    import torch

    from bevdeploy.export.writer import RANDOM_INIT_SEED
    from bevdeploy.model.bevfusion import BEVFusion
    from bevdeploy.model.checkpoint import load_checkpoint
    from bevdeploy.package import sha256_file

    recorded = pkg.manifest.checkpoint
    weights = Path(checkpoint) if checkpoint is not None else None
    default = pkg.preset.checkpoint_path
    if weights is None and recorded is not None and default is not None \
            and Path(default).is_file() and sha256_file(default) == recorded["sha256"]:
        weights = Path(default)
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_INIT_SEED)
        model = BEVFusion(pkg.preset)
    if weights is None:
        note = f"random init (seed {RANDOM_INIT_SEED})"
        if recorded is not None:
            note += f"; {recorded.get('file', 'its checkpoint')} not given"
        return model.eval(), note
    load_checkpoint(model, weights)
    own = recorded is not None and sha256_file(weights) == recorded["sha256"]
    return model.eval(), weights.name + ("" if own else " (not the package's weights)")


class _ReferenceProfile:
    """Milliseconds of the reference's stages in one forward, by the deploy stage each
    corresponds to: forward hooks on modules, wrappers on the view transform's methods."""

    MODULES = {"encoders.camera.backbone": "camera.backbone",
               "encoders.camera.neck": "camera.backbone",
               "encoders.camera.vtransform.downsample": "camera.vtransform",
               "encoders.lidar.voxelize": "voxelize", "encoders.lidar.backbone": "scn",
               "fuser": "fuser", "decoder.backbone": "fuser", "decoder.neck": "fuser",
               "heads.object": "head.bbox"}
    METHODS = {"depth_map": "depth", "depth_and_features": "camera.backbone",
               "get_geometry": "geometry", "bev_pool": "bevpool"}

    def __init__(self, model: Any, device: Any) -> None:
        import torch

        # On a GPU a stage's time is its work, not its launches: wait at each boundary.
        self._sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
        self.ms: dict[str, float] = {}
        self._start: dict[int, float] = {}
        for path, stage in self.MODULES.items():
            module = model.get_submodule(path)
            module.register_forward_pre_hook(self._pre)
            module.register_forward_hook(lambda mod, args, out, stage=stage: self._post(mod,
                                                                                       stage))
        vtransform = model.get_submodule("encoders.camera.vtransform")
        for method, stage in self.METHODS.items():
            setattr(vtransform, method, self._timed(getattr(vtransform, method), stage))

    def _pre(self, module: Any, args: Any) -> None:
        self._sync()
        self._start[id(module)] = time.perf_counter()

    def _post(self, module: Any, stage: str) -> None:
        self._sync()
        self.add(stage, time.perf_counter() - self._start.pop(id(module)))

    def add(self, stage: str, seconds: float) -> None:
        self.ms[stage] = self.ms.get(stage, 0.0) + seconds * 1e3

    def _timed(self, fn: Callable[..., Any], stage: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._sync()
                self.add(stage, time.perf_counter() - t0)
        return timed


Stream = Callable[[Sequence[Any]], Iterator[dict[str, float]]]
Counter = Callable[[], int | None]  # geometry plans computed so far (None: not tracked)


def _reference_stream(variant: Variant, pkg: Any) -> tuple[Stream, str, Counter]:
    import torch

    from bevdeploy.model.inputs import collate

    # The CLI silences these two library warnings in its own process; this one is spawned.
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional "
                            "indexing is deprecated", category=UserWarning)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    torch.set_num_threads(variant.threads)
    model, weights = reference_model(pkg, variant.checkpoint)
    device = torch.device("cuda" if variant.schedule == REFERENCE_CUDA_SCHEDULE else "cpu")
    if device.type == "cuda":
        from bevdeploy.eval.reference_device import reference_on

        weights += f"; on {torch.cuda.get_device_name(device)}, " \
            f"{reference_on(model, pkg.preset, device)}"
    profile = _ReferenceProfile(model, device)
    head = model.get_submodule("heads.object")

    def stream(frames: Sequence[Any]) -> Iterator[dict[str, float]]:
        for frame in frames:
            profile.ms = {}
            t0 = time.perf_counter()
            batch = collate([frame], pkg.preset).to(device)
            profile.add("normalize", time.perf_counter() - t0)
            with torch.inference_mode():
                outputs = model(batch)
                t1 = time.perf_counter()
                head.decode(outputs)
                profile.add("decode", time.perf_counter() - t1)
            profile.ms["total"] = (time.perf_counter() - t0) * 1e3
            yield profile.ms
    return stream, weights, lambda: None


def _deploy_stream(variant: Variant, pkg: Any) -> tuple[Stream, str, Counter]:
    from bevdeploy.runtime.backends.gpu import GpuConfig
    from bevdeploy.runtime.pipeline import Pipeline

    if variant.gpu_config is None:
        pipeline = Pipeline(pkg, backend=variant.backend, threads=variant.threads,
                            schedule=variant.schedule)
    else:
        config = GpuConfig.parse(variant.gpu_config)
        pipeline = Pipeline(pkg, backend=variant.backend, threads=variant.threads,
                            runner_options=config.options(variant.threads),
                            schedule=config.schedule())

    def stream(frames: Sequence[Any]) -> Iterator[dict[str, float]]:
        for _ in pipeline.run_stream(frames):
            yield dict(pipeline.last_timings)
    recorded = pkg.manifest.checkpoint
    weights = "random init (exporter's seed)" if recorded is None else \
        recorded.get("file", "checkpoint")
    return stream, weights, lambda: pipeline.geometry.computations


def measure_variant(variant: Variant, source: FrameSource, frames: int,
                    warmup: int) -> VariantResult:
    """Load ``variant`` in this process, run ``warmup`` frames, time ``frames`` frames."""
    from bevdeploy.package import load_package

    pkg = load_package(variant.package)
    sequence, distinct = load_frames(source, pkg.preset, warmup + frames)
    baseline = _current_rss_mb()
    stream, weights, plans = (_reference_stream if variant.is_reference
                              else _deploy_stream)(variant, pkg)
    for _ in stream(sequence[:warmup]):
        pass
    plans_before = plans()
    start = time.perf_counter()
    per_frame = list(stream(sequence[warmup:]))
    wall = time.perf_counter() - start
    plans_after = plans()
    samples: dict[str, list[float]] = {k: [t[k] for t in per_frame] for k in per_frame[0]}
    return VariantResult(variant=variant, precision=_variant_precision(variant, pkg),
                         weights=weights, samples=samples, wall_s=wall, frames=frames,
                         distinct_frames=distinct, peak_rss_mb=_peak_rss_mb(),
                         baseline_rss_mb=baseline,
                         geometry_computed=None if plans_after is None or plans_before is None
                         else plans_after - plans_before)


def _variant_precision(variant: Variant, pkg: Any) -> str:
    """What the column computes in: the package's precision, except where torch-cuda casts the
    converted modules to the configuration's (``GpuConfig.precision``)."""
    if variant.is_reference:
        return "fp32"
    stored = package_precision(pkg)
    if variant.backend == "torch-cuda" and variant.gpu_config is not None:
        from bevdeploy.runtime.backends.gpu import GpuConfig

        computed = GpuConfig.parse(variant.gpu_config).precision
        if computed != stored:
            return f"{computed} (from {stored} ONNX)"
    return stored


def _child(variant: Variant, source: FrameSource, frames: int, warmup: int, conn: Any) -> None:
    try:
        conn.send(("ok", measure_variant(variant, source, frames, warmup)))
    except BaseException as exc:  # reported to the parent, which raises it
        try:
            conn.send(("error", exc, traceback.format_exc()))
        except Exception:  # the exception does not pickle: send its text
            conn.send(("error", RuntimeError(repr(exc)), traceback.format_exc()))
    finally:
        conn.close()


def measure_in_subprocess(variant: Variant, source: FrameSource, frames: int,
                          warmup: int) -> VariantResult:
    """``measure_variant`` in a fresh ``spawn`` process; its error is re-raised here."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(variant, source, frames, warmup, send),
                          name=f"bench {variant.label}")
    process.start()
    send.close()
    try:
        message = receive.recv()
    except EOFError:
        message = None
    process.join()
    if message is None:
        raise RuntimeError(f"the benchmark process of {variant.label!r} died "
                           f"(exit code {process.exitcode}) without a result")
    if message[0] == "error":
        error, text = message[1], message[2]
        if isinstance(error, BevDeployError):
            raise error
        raise RuntimeError(f"{variant.label}: {error!r}\n{text}")
    return message[1]


# ------------------------------------------------------------------------------ a run


def _label(pkg: Any, backend: str, setting: str, many_packages: bool, root: Path) -> str:
    """``preset [package dir] · backend · schedule`` (a GPU backend: its configuration)."""
    name = pkg.preset.name + (f" [{root.name}]" if many_packages else "")
    return f"{name} · {backend} · {setting}"


def dense_macs(preset: Any, frame: Any) -> dict[str, int]:
    """MACs of each dense ONNX module of ``preset`` on ``frame`` (needs PyTorch)."""
    import torch

    from bevdeploy.model.bevfusion import BEVFusion
    from bevdeploy.model.inputs import collate
    from bevdeploy.model.macs import count_dense_macs

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BEVFusion(preset)
    return count_dense_macs(model, collate([frame], preset), DENSE_MODULE_PARTS)


def plan_variants(packages: Sequence[Path], *, backends: Sequence[str],
                  schedules: Sequence[str], threads: int, reference: bool,
                  checkpoint: Path | None, precision: str | None,
                  gpu_configs: Sequence[str] = (), gpu_ladder: bool = False,
                  reference_device: str = "cpu") -> list[Variant]:
    """The variants of a run, references first (one per distinct preset, on
    ``reference_device``: cpu or cuda), packages checked (loadable, of the asked ``precision``)
    before anything is measured. A CPU backend runs under each of ``schedules``, a GPU backend
    with each of ``gpu_configs`` (default ``fp32``), or with its ladder (``GPU_LADDER``,
    ``TENSORRT_LADDER``) when ``gpu_ladder``."""
    from bevdeploy.package import load_package
    from bevdeploy.runtime.backends import BACKENDS
    from bevdeploy.runtime.backends.gpu import GPU_BACKENDS
    from bevdeploy.runtime.pipeline import SCHEDULES

    if not packages:
        raise ConfigError("give at least one --package", field="--package")
    if reference_device not in ("cpu", "cuda"):
        raise ConfigError(f"expected cpu or cuda, got {reference_device!r}",
                          field="--reference-device")
    reference_schedule = REFERENCE_SCHEDULE if reference_device == "cpu" \
        else REFERENCE_CUDA_SCHEDULE
    for name in backends:
        if name not in BACKENDS:
            raise ConfigError(f"unknown backend {name!r}; available: {list(BACKENDS)}",
                              field="--backend")
    for name in schedules:
        if name not in SCHEDULES:
            raise ConfigError(f"unknown schedule {name!r}; available: {list(SCHEDULES)}",
                              field="--schedule")
    gpu = {b: _gpu_configs(b, gpu_configs, gpu_ladder) for b in backends if b in GPU_BACKENDS}
    if (gpu_configs or gpu_ladder) and not gpu:
        raise ConfigError(f"--gpu-config and --gpu-ladder apply to the GPU backends "
                          f"{list(GPU_BACKENDS)}; --backend names none", field="--gpu-config")
    if gpu and len(gpu) == len(backends) and list(schedules) != ["sequential"]:
        raise ConfigError(f"the schedules {list(schedules)} are the CPU pipeline's; a GPU "
                          "backend runs under the CUDA schedule (add 'streams' to --gpu-config "
                          "for two CUDA streams)", field="--schedule")
    names = [Path(p).resolve() for p in packages]
    if len(set(names)) < len(names) or len({n.name for n in names}) < len(names):
        raise ConfigError(f"packages must be distinct directories with distinct names (they "
                          f"label the columns): {[str(p) for p in packages]}", field="--package")
    loaded = [(Path(p), load_package(p)) for p in packages]
    if precision is not None:
        for root, pkg in loaded:
            got = package_precision(pkg)
            if got.split(" ")[0] != precision:
                raise ConfigError(f"the package's dense modules are {got}, not {precision}: "
                                  f"make a {precision} package with `bevdeploy optimize`",
                                  path=root, field="--precision")
    many = len({pkg.preset.name for _, pkg in loaded}) < len(loaded)
    variants: list[Variant] = []
    if reference:
        seen: set[str] = set()
        for root, pkg in loaded:
            if pkg.preset.name not in seen:
                seen.add(pkg.preset.name)
                variants.append(Variant(
                    f"{pkg.preset.name} · {REFERENCE_BACKEND} · {reference_schedule}",
                    pkg.preset.name, str(root), REFERENCE_BACKEND, reference_schedule, threads,
                    None if checkpoint is None else str(checkpoint)))
    for root, pkg in loaded:
        for backend in backends:
            if backend in gpu:
                for config in gpu[backend]:
                    variants.append(Variant(_label(pkg, backend, config.describe(backend), many,
                                                   root), pkg.preset.name, str(root), backend,
                                            CUDA_SCHEDULE, threads, gpu_config=config.label))
                continue
            for schedule in schedules:
                variants.append(Variant(_label(pkg, backend, schedule, many, root),
                                        pkg.preset.name, str(root), backend, schedule, threads))
    return variants


def _gpu_configs(backend: str, texts: Sequence[str], ladder: bool) -> list[GpuConfig]:
    """The parsed ``GpuConfig``s a GPU backend runs with, each checked against it and given
    once (they label the columns)."""
    from bevdeploy.runtime.backends.gpu import GPU_LADDER, TENSORRT_LADDER, GpuConfig

    if texts and ladder:
        raise ConfigError("give --gpu-config or --gpu-ladder, not both", field="--gpu-ladder")
    if ladder:
        texts = TENSORRT_LADDER if backend == "tensorrt" else GPU_LADDER
    configs = [GpuConfig.parse(text) for text in texts or ("fp32",)]
    labels = [config.label for config in configs]
    if len(set(labels)) < len(labels):
        raise ConfigError(f"the GPU configurations {list(texts)} repeat one ({labels})",
                          field="--gpu-config")
    for config in configs:
        config.check_backend(backend)
    return configs


def check_devices(variants: Sequence[Variant]) -> None:
    """Refuse GPU variants where CUDA is unusable, before anything is measured (their own
    process would find out only after the GEMM rate and the MACs had been)."""
    from bevdeploy.runtime.backends.gpu import cuda_unusable_reason

    gpu = [v for v in variants
           if v.gpu_config is not None or v.schedule == REFERENCE_CUDA_SCHEDULE]
    reason = cuda_unusable_reason() if gpu else None
    if reason is not None:
        raise ConfigError(f"{gpu[0].label} needs CUDA: {reason}", field="--backend")


# GEMM timings per size in each of the two peak measurements (before and after the variants).
# On the 2-core development VM single measurements of the same 2048³ product ranged 147–180
# GFLOP/s between runs; the peak is the best of all of them.
GEMM_REPEATS = 10


def run_bench(variants: Sequence[Variant], source: FrameSource, *, frames: int, warmup: int,
              threads: int, macs: bool = True,
              progress: Callable[[str], None] = lambda message: None) -> BenchReport:
    """Measure every variant (each in its own process, one after the other), the GEMM rate
    (before and after the variants, the better of the two) and, with ``macs`` and PyTorch
    available, the dense modules' MACs."""
    from threadpoolctl import threadpool_limits

    from bevdeploy.package import load_package
    from bevdeploy.runtime.kernels.bench import measure_rates

    if frames < 1 or warmup < 0:
        raise ConfigError(f"need frames ≥ 1 and warmup ≥ 0, got {frames} and {warmup}",
                          field="--frames")
    check_devices(variants)
    notes: list[str] = []

    def gemm_gflops() -> float:
        with threadpool_limits(threads):
            return 2 * measure_rates(repeats=GEMM_REPEATS).gemm_macs_per_s / 1e9

    gemm = gemm_gflops()
    counted: dict[str, dict[str, int]] = {}
    if macs:
        try:
            import torch  # noqa: F401  (only to learn whether MACs can be counted)
        except ImportError:
            notes.append("GFLOP/s not computed: counting MACs needs PyTorch")
        else:
            for v in variants:
                if v.preset not in counted:
                    progress(f"counting the dense MACs of {v.preset}")
                    preset = load_package(v.package).preset
                    first, _ = load_frames(source, preset, 1)
                    counted[v.preset] = dense_macs(preset, first[0])
    results = []
    for v in variants:
        progress(f"measuring {v.label}")
        results.append(measure_in_subprocess(v, source, frames, warmup))
    gemm = max(gemm, gemm_gflops())  # again after the variants: a shared VM's neighbours
    distinct = min(r.distinct_frames for r in results)  # can depress either measurement
    if distinct < frames + warmup:
        notes.append(f"the split has {distinct} frame(s): they are cycled")
    return BenchReport(results=list(results), source=source, frames=frames, warmup=warmup,
                       threads=threads, gemm_gflops=gemm, dense_macs=counted, notes=notes)

