"""What a ``bench`` run measures: its variants (the columns), planned and checked before
anything is measured — packages loadable and of the asked precision, backends and schedules
known, GPU configurations valid for their backend, CUDA usable where a variant needs it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bevdeploy.errors import ConfigError
from bevdeploy.vocabulary import DENSE_MODULES

if TYPE_CHECKING:
    from bevdeploy.runtime.backends.gpu import GpuConfig

REFERENCE_BACKEND = "torch"
AUTO_BACKEND = "auto"  # resolved per package by runtime.backends.auto
REFERENCE_SCHEDULE = "eager"
REFERENCE_CUDA_SCHEDULE = "eager-cuda"  # ``--reference-device cuda``: the same, on the GPU
CUDA_SCHEDULE = "cuda"  # the schedule of every GPU variant (``CudaSchedule``)


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
    inference_precision: str = "fp32"  # CPU backends: what the float parts compute in
    choice: str | None = None  # ``--backend auto``: why it picked ``backend``

    @property
    def is_reference(self) -> bool:
        return self.backend == REFERENCE_BACKEND


def package_precision(pkg: Any) -> str:
    """The dense modules' precisions in words: the lowest one, with the exceptions named
    (``"int8 (camera.vtransform fp32, head.bbox fp32)"``)."""
    rank = {"int8": 0, "fp16": 1, "bf16": 1, "fp32": 2}
    precisions = {m: pkg.module(m).precision for m in DENSE_MODULES}
    headline = min(precisions.values(), key=lambda p: rank.get(p, 3))
    others = [f"{m} {p}" for m, p in precisions.items() if p != headline]
    return headline + (f" ({', '.join(others)})" if others else "")


def _label(pkg: Any, backend: str, setting: str, many_packages: bool, root: Path) -> str:
    """``preset [package dir] · backend · schedule`` (a GPU backend: its configuration)."""
    name = pkg.preset.name + (f" [{root.name}]" if many_packages else "")
    return f"{name} · {backend} · {setting}"


def _cpu_backends(pkg: Any, root: Path, backend: str,
                  inference_precisions: Sequence[str]) -> list[tuple[str, str, str, str | None]]:
    """(backend, its text in the label, inference precision, auto's reason) of each CPU
    variant of ``pkg`` on ``backend``: ``bf16`` only where the backend has it (openvino, or auto
    resolving to it; ``runtime.backends.auto``), ``auto`` resolved for the package on this CPU."""
    out = []
    for precision in inference_precisions:
        if precision != "fp32" and backend not in ("openvino", AUTO_BACKEND):
            continue  # onnxruntime computes as the package is; it runs once, at fp32
        suffix = "" if precision == "fp32" else f" {precision}"
        if backend == AUTO_BACKEND:
            from bevdeploy.runtime.backends.auto import choose_for_package

            choice = choose_for_package(pkg, precision)
            out.append((choice.backend, f"auto→{choice.backend}{suffix}", precision,
                        choice.reason))
            continue
        if backend == "openvino":  # missing: refused before anything is measured
            from bevdeploy.runtime.backends.openvino import bf16_unavailable_reason, \
                import_openvino

            import_openvino()
            reason = None if precision == "fp32" else bf16_unavailable_reason()
            if reason is not None:
                raise ConfigError(reason, path=root, field="--inference-precision")
        out.append((backend, backend + suffix, precision, None))
    if not out:
        raise ConfigError(f"{backend} computes at fp32 only; --inference-precision "
                          f"{list(inference_precisions)} gives it nothing to run",
                          field="--inference-precision")
    return out


def plan_variants(packages: Sequence[Path], *, backends: Sequence[str],
                  schedules: Sequence[str], threads: int, reference: bool,
                  checkpoint: Path | None, precision: str | None,
                  gpu_configs: Sequence[str] = (), gpu_ladder: bool = False,
                  reference_device: str = "cpu",
                  inference_precisions: Sequence[str] = ("fp32",)) -> list[Variant]:
    """The variants of a run, references first (one per distinct preset, on
    ``reference_device``: cpu or cuda), packages checked (loadable, of the asked ``precision``)
    before anything is measured. A CPU backend runs under each of ``schedules``, a GPU backend
    with each of ``gpu_configs`` (default ``fp32``), or with its ladder (``GPU_LADDER``,
    ``TENSORRT_LADDER``) when ``gpu_ladder``. ``openvino`` also runs at each of
    ``inference_precisions`` (``bf16`` where its CPU plugin has it; ONNX Runtime only at fp32),
    and ``auto`` is resolved per package on this CPU, its reason kept in ``Variant.choice``."""
    from bevdeploy.package import load_package
    from bevdeploy.runtime.backends import BACKENDS
    from bevdeploy.runtime.backends.base import INFERENCE_PRECISIONS
    from bevdeploy.runtime.backends.gpu import GPU_BACKENDS
    from bevdeploy.runtime.schedules import SCHEDULES

    if not packages:
        raise ConfigError("give at least one --package", field="--package")
    if reference_device not in ("cpu", "cuda"):
        raise ConfigError(f"expected cpu or cuda, got {reference_device!r}",
                          field="--reference-device")
    reference_schedule = REFERENCE_SCHEDULE if reference_device == "cpu" \
        else REFERENCE_CUDA_SCHEDULE
    for name in backends:
        if name not in (*BACKENDS, AUTO_BACKEND):
            raise ConfigError(f"unknown backend {name!r}; available: "
                              f"{[*BACKENDS, AUTO_BACKEND]}", field="--backend")
    for name in inference_precisions:
        if name not in INFERENCE_PRECISIONS:
            raise ConfigError(f"unknown inference precision {name!r}; known: "
                              f"{list(INFERENCE_PRECISIONS)}", field="--inference-precision")
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
            for name, text, precision, reason in _cpu_backends(pkg, root, backend,
                                                               inference_precisions):
                for schedule in schedules:
                    variants.append(Variant(_label(pkg, text, schedule, many, root),
                                            pkg.preset.name, str(root), name, schedule, threads,
                                            inference_precision=precision, choice=reason))
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
