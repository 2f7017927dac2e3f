"""The results of a ``bench`` run: what each variant's process measured (``VariantResult``)
and the ``BenchReport`` of all of them — ratios to the reference, achieved GFLOP/s of the dense
modules, the stage table, the dense-module table and the JSON report."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bevdeploy import __version__
from bevdeploy.bench.frames import FrameSource
from bevdeploy.bench.machine import describe_blas, override_warnings
from bevdeploy.bench.measure import Stat, cpu_identity
from bevdeploy.bench.peaks import Peaks
from bevdeploy.bench.roofline import ROOFLINE_NOTE, Floor, variant_floor
from bevdeploy.bench.variants import Variant
from bevdeploy.io import atomic_write
from bevdeploy.tables import compact_table
from bevdeploy.vocabulary import DENSE_MODULES

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
        "head) and decode; FP32 eager under torch.inference_mode, subnormals flushed as the "
        "deploy runtime flushes them. On a GPU (eager-cuda) "
        "'normalize' includes the copy to the device, and every stage boundary waits for the "
        "device so that a stage's time is its work."),
}


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
    engine: str | None = None  # what ran the dense modules ("onnxruntime", "openvino", "torch")
    # dense module → the precision it computed in (fp32, int8, bf16: a float module at
    # OpenVINO's BF16 inference precision computes in bf16); the roofline's peaks follow it
    module_precisions: dict[str, str] = field(default_factory=dict)

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
    scn_macs: dict[str, int] = field(default_factory=dict)  # preset → SCN MACs, median frame
    # preset → the part of those in the convs BF16 inference precision runs through OpenVINO
    scn_bf16_macs: dict[str, int] = field(default_factory=dict)
    peaks: Peaks | None = None  # bench.peaks: per engine and precision; None: not measured
    blas: list[dict[str, Any]] = field(default_factory=list)  # bench.machine.blas_libraries
    isa_overrides: dict[str, str] = field(default_factory=dict)  # bench.machine.isa_overrides
    # package path → dense module → its MACs' shares by layer kind and INT8 or float
    # (bench.graph_macs.mac_mix; None where the graph's shapes could not be inferred)
    mac_mixes: dict[str, dict[str, dict[str, float] | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # bench.peak_checks: why the GFLOP/s shares of this run cannot be read as efficiency
    warnings: list[str] = field(default_factory=list)
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

    def peak_of(self, result: VariantResult, module: str) -> float:
        """The peak ``module``'s rate in ``result`` is measured against: its engine's at the
        precision it computes in (``bench.peaks``), else the float32 GEMM rate (the PyTorch
        reference, a GPU backend, or a run without per-engine peaks)."""
        if self.peaks is not None and result.engine is not None:
            peak = self.peaks.peak(result.engine, result.module_precisions.get(module, "fp32"))
            if peak is not None:
                return peak
        return self.gemm_gflops

    def floor(self, result: VariantResult) -> Floor | str:
        """``result``'s floor (``bench.roofline``), or why it has none."""
        if self.peaks is None:
            return "the peaks were not measured"
        if result.engine is None or not self.peaks.keys() or \
                result.engine not in {engine for engine, _ in self.peaks.keys()}:
            return f"no peak of {result.engine or 'its engine'} was measured"
        preset = _preset_name(result)
        return variant_floor({k: v.median_ms for k, v in result.stages.items()},
                             result.total.median_ms, result.engine, result.module_precisions,
                             self.dense_macs.get(preset, {}), self.scn_macs.get(preset),
                             self.peaks, float_precision=result.variant.inference_precision,
                             scn_bf16_macs=self.scn_bf16_macs.get(preset),
                             mac_mixes=self.mac_mixes.get(result.variant.package))

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
                "engine": r.engine, "module_precisions": r.module_precisions,
                "floor": _floor_dict(self.floor(r)),
                "samples_ms": r.samples,
            })
        return {
            "bevdeploy": __version__, "created_utc": self.created_utc,
            "machine": {"cpu_count": os.cpu_count(), "threads": self.threads,
                        "gemm_gflops": self.gemm_gflops, "platform": sys.platform,
                        "cpu": cpu_identity(), "blas": self.blas,
                        "isa_overrides": self.isa_overrides,
                        "peaks": None if self.peaks is None else self.peaks.to_dict()},
            "frames": {"source": self.source.describe(), "timed": self.frames,
                       "warmup": self.warmup},
            "total_includes": TOTAL_INCLUDES,
            "peak_memory": ("VmHWM of the variant's own process; variant_rss_mb is it "
                            "minus the resident set after the frames were loaded and before "
                            "the variant's libraries and model"),
            "dense_macs": self.dense_macs, "scn_macs": self.scn_macs,
            "scn_bf16_macs": self.scn_bf16_macs,
            "mac_mixes": self.mac_mixes,
            "floor": ROOFLINE_NOTE, "notes": self.notes, "variants": variants,
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
        table.add_row("floor (total / floor)", *self._floor_cells())
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

    def narrow_tables(self) -> list[RenderableType]:
        """``table()`` and ``dense_table()`` for an 80-column terminal: medians only (p90 is in
        ``--wide`` and the JSON), speed-ups to one decimal, the share of the GEMM peak alone."""
        wide, dense = self.table(), self.dense_table()
        rs = self.results
        speedups = [None if r.variant.is_reference else self.speedups(r) for r in rs]
        table = compact_table("")  # title and caption as text around it: a narrow table
        caption = str(wide.caption).replace("cells: median / p90 ms",  # would fold them
                                            "cells: median ms (p90: --wide or --json)")
        table.add_column("stage", no_wrap=True)
        for r in rs:
            table.add_column(_header(r), justify="right")
        present = {k for r in rs for k in r.samples if k != "total"}
        for stage in [s for s in STAGE_ORDER if s in present] + sorted(present - set(STAGE_ORDER)):
            table.add_row(stage, *["—" if r.stages.get(stage) is None else _narrow_cell(
                r.stages[stage], s["stages"].get(stage) if s else None)
                for r, s in zip(rs, speedups)])
        table.add_section()
        table.add_row("total", *[_narrow_cell(r.total, s["latency"] if s else None)
                                 for r, s in zip(rs, speedups)])
        table.add_row("floor", *self._floor_cells())
        table.add_row("frames/s", *[f"{r.frames_per_s:.2f}" for r in rs])
        table.add_row("peak RSS MB", *[f"{r.peak_rss_mb:.0f}" for r in rs])
        shares = compact_table("")
        shares.add_column("module", no_wrap=True)
        for r in rs:
            shares.add_column(_header(r), justify="right")
        for preset in dict.fromkeys(_preset_name(r) for r in rs):
            if not self.dense_macs.get(preset):
                continue
            rates = {id(r): self.gflops(r) for r in rs if _preset_name(r) == preset}
            for module in DENSE_MODULES:
                shares.add_row(f"{preset} {module}" if len(self.dense_macs) > 1 else module, *[
                    "" if rates.get(id(r), {}).get(module) is None
                    else f"{rates[id(r)][module]:.0f} "
                         f"({rates[id(r)][module] / self.peak_of(r, module):.0%})"
                    for r in rs])
        tables: list[RenderableType] = [
            Group(Text.from_markup(str(wide.title)), table, Text.from_markup(caption)),
            Group(Text.from_markup(str(dense.title)), shares,
                  Text.from_markup(str(dense.caption)))]
        roofline = self.roofline_table()
        if roofline is not None:
            tables.append(roofline)
        if self.peaks is not None:
            tables.append(self.peaks_table())
        return tables

    def _floor_cells(self) -> list[str]:
        """Each variant's floor and its median total over it, or "—" without one."""
        cells = []
        for r in self.results:
            floor = self.floor(r)
            cells.append("—" if isinstance(floor, str)
                         else f"{_ms(floor.total_ms)} ({floor.ratio:.2f}×)")
        return cells

    def roofline_table(self) -> RenderableType | None:
        """Per part (each dense module, the SCN, the kernels), each variant's floor and its
        measured median over it; ``None`` when no variant has a floor."""
        floors = {id(r): self.floor(r) for r in self.results}
        rs = [r for r in self.results if isinstance(floors[id(r)], Floor)]
        if not rs:
            return None
        table = compact_table("")
        table.add_column("part", no_wrap=True)
        for r in rs:
            table.add_column(_header(r), justify="right")
        parts = list(dict.fromkeys(t.part for r in rs for t in floors[id(r)].terms))
        for part in parts:
            cells = []
            for r in rs:
                term = next((t for t in floors[id(r)].terms if t.part == part), None)
                cells.append("—" if term is None else
                             f"{_ms(term.floor_ms)} ({term.ratio:.1f}×)" if term.macs is not None
                             else f"{_ms(term.floor_ms)} (kept)")
            table.add_row(part, *cells)
        table.add_section()
        table.add_row("floor", *[f"{_ms(floors[id(r)].total_ms)} ({floors[id(r)].ratio:.2f}×)"
                                 for r in rs])
        title = ("roofline: floor ms per part (measured median / floor) at this machine's "
                 "peaks")
        return Group(Text(title), table, Text(ROOFLINE_NOTE))

    def peaks_table(self) -> RenderableType:
        """The measured peaks (engine, precision, problem, median call, rate), then the CPU's
        instruction sets, the BLAS libraries with their kernels, what was skipped and why, and
        the ISA overrides found in the environment."""
        assert self.peaks is not None
        cpu = cpu_identity()
        table = compact_table("")
        for name in ("engine", "prec", "problem", "ms", "GFLOP/s"):
            table.add_column(name, justify="right" if name in ("ms", "GFLOP/s") else "left",
                             no_wrap=True)
        for rate in self.peaks.rates:
            table.add_row(rate.engine, rate.precision, rate.kernel, _ms(rate.median_ms),
                          f"{rate.gflops:.0f}")
        lines = [f"CPU: {cpu['model'] or 'unknown'} ({cpu['microarchitecture']}), ISA: "
                 f"{' '.join(cpu['isa']) or 'no AVX2'}; {self.threads} threads",
                 *[f"BLAS: {describe_blas(b)}" for b in self.blas],
                 *[f"skipped {what}: {why}" for what, why in self.peaks.skipped.items()],
                 *[f"WARNING {w}" for w in override_warnings(self.isa_overrides)],
                 "GFLOP/s: 2 operations per MAC over the median call (INT8: 8-bit "
                 "operations); a peak is its engine's better problem at that precision."]
        return Group(Text("peak rates measured with each engine's own kernels"), table,
                     *[Text(line, overflow="fold") for line in lines])

    def wide_tables(self) -> list[RenderableType]:
        """``--wide``: the stage table, the dense-module table, the roofline and the peaks."""
        roofline = self.roofline_table()
        return [self.table(), self.dense_table(), *([] if roofline is None else [roofline]),
                *([] if self.peaks is None else [self.peaks_table()])]

    def dense_table(self) -> Table:
        """Each dense module's MACs and achieved GFLOP/s per variant, with the share of the
        peak it is measured against (``peak_of``)."""
        share = ("(%) = share of the peak of its engine at the precision it computes in "
                 "(bench.peaks)" if self.peaks is not None else
                 "(%) = share of the float32 GEMM peak; an INT8 module does the same MACs as "
                 "8-bit products, so its share can pass 100 %")
        table = Table(title=f"dense modules: achieved GFLOP/s (float32 GEMM peak measured "
                            f"{self.gemm_gflops:.0f} GFLOP/s on {self.threads} threads)",
                      caption=f"GFLOP/s = 2 × the module's MACs / its median time. {share}.",
                      caption_justify="left")
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
                                 f"{rate:.0f} ({rate / self.peak_of(r, module):.0%})")
                table.add_row(f"{preset} {module}", f"{macs[module] / 1e9:.2f}", *cells)
        return table


def _floor_dict(floor: Floor | str) -> dict[str, Any]:
    return {"reason": floor} if isinstance(floor, str) else floor.to_dict()


def _narrow_cell(stat: Stat, ratio: float | None) -> str:
    """The median alone (p90 in ``--wide`` and the JSON), with the speed-up."""
    text = _ms(stat.median_ms)
    return text if ratio is None else f"{text} ({ratio:.1f}×)"


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
