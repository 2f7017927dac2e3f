"""Running a ``bench``: each variant measured in its own fresh process (the PyTorch reference
with its stages timed by hooks, a package through the pipeline's own timers), the machine's
GEMM rate and the dense modules' MACs, gathered into a ``BenchReport``."""

from __future__ import annotations

import logging
import multiprocessing
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bevdeploy.bench.frames import FrameSource, load_frames
from bevdeploy.bench.measure import current_rss_mb, peak_rss_mb
from bevdeploy.bench.report import BenchReport, VariantResult
from bevdeploy.bench.variants import (REFERENCE_CUDA_SCHEDULE, Variant, check_devices,
                                      package_precision)
from bevdeploy.errors import BevDeployError, ConfigError
from bevdeploy.vocabulary import DENSE_MODULES

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


def reference_model(pkg: Any, checkpoint: str | Path | None) -> tuple[Any, str]:
    """The eager reference for ``pkg`` and a description of its weights: ``checkpoint`` if
    given; else the package's own checkpoint when the preset's default file is it (same
    SHA-256); else the exporter's seeded random initialisation
    (``model.factory.package_reference`` without ``require_match``: only the speed counts)."""
    from bevdeploy.model.factory import package_reference
    from bevdeploy.package import sha256_file

    model, weights = package_reference(pkg, checkpoint, require_match=False)
    recorded = pkg.manifest.checkpoint
    note = weights.describe()
    if weights.checkpoint is None:
        if recorded is not None:
            note += f"; {recorded.get('file', 'its checkpoint')} not given"
        return model, note
    own = recorded is not None and sha256_file(weights.checkpoint) == recorded["sha256"]
    return model, note + ("" if own else " (not the package's weights)")


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
    # The deploy runtime computes with subnormals flushed (runtime.fp_env); the reference does
    # too, or its ratio would hold a random-weight package's subnormal penalty (this process is
    # the variant's own, so the setting ends with it).
    torch.set_flush_denormal(True)
    model, weights = reference_model(pkg, variant.checkpoint)
    device = torch.device("cuda" if variant.schedule == REFERENCE_CUDA_SCHEDULE else "cpu")
    if device.type == "cuda":
        from bevdeploy.bench.reference_device import reference_on

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
    from bevdeploy.runtime.backends.base import RunnerOptions
    from bevdeploy.runtime.backends.gpu import GpuConfig
    from bevdeploy.runtime.pipeline import Pipeline

    if variant.gpu_config is None:
        pipeline = Pipeline(pkg, backend=variant.backend, threads=variant.threads,
                            schedule=variant.schedule, runner_options=RunnerOptions(
                                threads=variant.threads,
                                inference_precision=variant.inference_precision))
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
    baseline = current_rss_mb()
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
                         distinct_frames=distinct, peak_rss_mb=peak_rss_mb(),
                         baseline_rss_mb=baseline,
                         geometry_computed=None if plans_after is None or plans_before is None
                         else plans_after - plans_before,
                         engine=variant.backend,
                         module_precisions=_computed_precisions(variant, pkg))


def _computed_precisions(variant: Variant, pkg: Any) -> dict[str, str]:
    """What each dense module computes in: the package's precision, except that a float
    module compiled at a BF16 inference precision computes in bf16 (an INT8 module stays int8:
    its convolutions are its MACs)."""
    if variant.is_reference:
        return dict.fromkeys(DENSE_MODULES, "fp32")
    stored = {m: pkg.module(m).precision for m in DENSE_MODULES}
    if variant.inference_precision == "fp32":
        return stored
    return {m: p if p == "int8" else variant.inference_precision for m, p in stored.items()}


def _variant_precision(variant: Variant, pkg: Any) -> str:
    """What the column computes in: the package's precision, except where torch-cuda casts the
    converted modules to the configuration's (``GpuConfig.precision``)."""
    if variant.is_reference:
        return "fp32"
    stored = package_precision(pkg)
    if variant.inference_precision != "fp32":
        return f"{stored}, {variant.inference_precision} inference"
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


def dense_macs(preset: Any, frame: Any) -> dict[str, int]:
    """MACs of each dense ONNX module of ``preset`` on ``frame`` (needs PyTorch)."""
    from bevdeploy.model.factory import create_model
    from bevdeploy.model.inputs import collate
    from bevdeploy.model.macs import count_dense_macs

    model, _ = create_model(preset)
    return count_dense_macs(model, collate([frame], preset), DENSE_MODULE_PARTS)


def scn_macs(pkg: Any, frames: Sequence[Any]) -> tuple[int, int]:
    """The median over ``frames`` of the SCN's convolution MACs (``ScnExecutor.conv_macs``,
    summed over its layers) on each frame's voxels: the sparse work the roofline floors; and
    the median of the part in the convs that BF16 inference precision moves to OpenVINO
    (``scn.bf16.MIN_CHANNELS`` input channels and more)."""
    import statistics

    from bevdeploy.runtime.scn import ScnExecutor
    from bevdeploy.runtime.scn.bf16 import MIN_CHANNELS
    from bevdeploy.runtime.stages.voxelize import VoxelizeParams, VoxelizeStage
    from bevdeploy.scn_format import SparseConv, read_scn
    from bevdeploy.vocabulary import SCN_MODULE

    graph = read_scn(pkg.path(SCN_MODULE))
    wide = {layer.name for layer in graph.layers
            if isinstance(layer, SparseConv) and layer.in_channels >= MIN_CHANNELS}
    voxelize = VoxelizeStage(VoxelizeParams.from_package(pkg))
    executor = ScnExecutor(graph)
    per_frame: dict[int, tuple[int, int]] = {}
    for frame in frames:
        if id(frame) not in per_frame:  # load_frames cycles the same objects
            voxels = voxelize.run(voxelize.select(frame.points))
            layers = executor.conv_macs(voxels.coords)
            per_frame[id(frame)] = (sum(layers.values()),
                                    sum(m for name, m in layers.items() if name in wide))
    return (int(statistics.median(per_frame[id(f)][0] for f in frames)),
            int(statistics.median(per_frame[id(f)][1] for f in frames)))


def mac_mixes(variants: Sequence[Variant]) -> dict[str, dict[str, dict[str, float] | None]]:
    """Per package of ``variants`` (not the references: they run no graph), each dense
    module's MAC shares by layer kind and INT8 or float (``bench.graph_macs.mac_mix``), read
    from its graph once."""
    from bevdeploy.bench.graph_macs import mac_mix
    from bevdeploy.package import load_package

    mixes: dict[str, dict[str, dict[str, float] | None]] = {}
    for v in variants:
        if v.is_reference or v.package in mixes:
            continue
        pkg = load_package(v.package)
        mixes[v.package] = {m: mac_mix(pkg.path(m)) for m in DENSE_MODULES}
    return mixes


def run_bench(variants: Sequence[Variant], source: FrameSource, *, frames: int, warmup: int,
              threads: int, macs: bool = True, peak_seconds: float = 1.0,
              progress: Callable[[str], None] = lambda message: None) -> BenchReport:
    """Measure every variant (each in its own process, one after the other), the peak rates
    of every engine and precision (``bench.peaks``, ``peak_seconds`` per problem, before and
    after the variants, the faster of each pair), the SCN's MACs on the timed frames and,
    with ``macs`` and PyTorch available, the dense modules' MACs; the report's floors follow."""
    from bevdeploy.bench.machine import blas_libraries, isa_overrides
    from bevdeploy.bench.peak_checks import peak_warnings
    from bevdeploy.bench.peaks import best_of, measure_peaks
    from bevdeploy.package import load_package

    if frames < 1 or warmup < 0:
        raise ConfigError(f"need frames ≥ 1 and warmup ≥ 0, got {frames} and {warmup}",
                          field="--frames")
    if peak_seconds < 0:
        raise ConfigError(f"must be ≥ 0, got {peak_seconds}", field="--peak-seconds")
    check_devices(variants)
    notes: list[str] = []
    progress("measuring the peak rates")
    before = measure_peaks(threads, seconds=peak_seconds)
    counted: dict[str, dict[str, int]] = {}
    sparse: dict[str, int] = {}
    sparse_wide: dict[str, int] = {}
    mixes = mac_mixes(variants)
    for v in variants:
        if v.preset not in sparse:
            progress(f"counting the SCN MACs of {v.preset} on the timed frames")
            pkg = load_package(v.package)
            sequence, _ = load_frames(source, pkg.preset, warmup + frames)
            sparse[v.preset], sparse_wide[v.preset] = scn_macs(pkg, sequence[warmup:])
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
    progress("measuring the peak rates again")
    after = measure_peaks(threads, seconds=peak_seconds)  # a shared VM's neighbours can
    peaks = best_of(before, after)  # depress either measurement
    distinct = min(r.distinct_frames for r in results)
    if distinct < frames + warmup:
        notes.append(f"the split has {distinct} frame(s): they are cycled")
    report = BenchReport(results=list(results), source=source, frames=frames, warmup=warmup,
                         threads=threads, gemm_gflops=peaks.peak("numpy", "fp32") or 0.0,
                         dense_macs=counted, scn_macs=sparse, scn_bf16_macs=sparse_wide,
                         peaks=peaks, mac_mixes=mixes,
                         blas=blas_libraries(), isa_overrides=isa_overrides(), notes=notes)
    report.warnings = peak_warnings(report, before, after)
    report.notes += report.warnings
    return report
