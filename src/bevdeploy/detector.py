"""One factory for "a detector": a ``Frame`` in, ``Detections`` out, whatever runs it.

``open`` builds either side of every comparison this project makes, from one call:

* a **deploy package** on a backend — ONNX Runtime on the CPU (the default), OpenVINO on the
  CPU (``openvino``; ``auto`` picks one of the two for the package on this CPU, see
  ``runtime.backends.auto``), ``torch-cuda`` or ``tensorrt`` on a GPU — through the runtime's
  ``Pipeline`` (torch-free on the CPU);
* the **PyTorch reference** of a preset (``backend="torch"``), with the weights chosen by the
  one policy of ``model.factory``: the given checkpoint, else the preset's own, else (where the
  caller allows it) the exporter's seeded random initialisation.

``infer``, ``eval``, ``demo`` and the frame loop's other users ask for a detector here and never
build a pipeline or a model themselves. The options that can be wrong without loading anything
(backend, schedule, GPU switches) are checked by ``check_options`` first, so a command refuses a
bad flag in milliseconds rather than after its dataset and model have loaded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.errors import ConfigError
from bevdeploy.package import DeployPackage, load_package
from bevdeploy.presets import Preset
from bevdeploy.vocabulary import RANDOM_INIT_SEED

if TYPE_CHECKING:
    from bevdeploy.runtime.backends.gpu import GpuConfig

REFERENCE_BACKEND = "torch"
AUTO_BACKEND = "auto"
CPU_SCHEDULES: tuple[str, ...] = ("sequential", "branches")

__all__ = ["Detector", "DetectorOptions", "check_options", "open"]


class Detector(Protocol):
    """``detector(frame) → Detections``; ``last_timings`` then holds that frame's stage times
    (milliseconds, with ``total``)."""

    preset: Preset
    backend: str
    last_timings: dict[str, float]

    def __call__(self, frame: Frame) -> Detections: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class DetectorOptions:
    """How a detector runs, checked (``check_options``): the backend, the GPU switches of a GPU
    backend, the CPU schedule of the CPU backends and their inference precision. ``backend``
    may be ``auto`` until ``for_package`` resolves it; ``choice`` is then auto's reason."""

    backend: str
    gpu_config: GpuConfig | None = None
    schedule: str = "sequential"
    inference_precision: str = "fp32"
    choice: str | None = None

    def for_package(self, package: DeployPackage) -> "DetectorOptions":
        """These options with ``auto`` resolved for ``package`` on this CPU (the backend and
        the reason; ``runtime.backends.auto``); any other backend unchanged."""
        if self.backend != AUTO_BACKEND:
            return self
        from bevdeploy.runtime.backends.auto import choose_for_package

        choice = choose_for_package(package, self.inference_precision)
        return replace(self, backend=choice.backend, choice=choice.reason)

    def record(self) -> dict[str, str | None]:
        """What the outputs record about the backend (the run record's ``backend``)."""
        return {"name": self.backend, "inference_precision": self.inference_precision,
                "auto_choice": self.choice}

    def line(self) -> str:
        """The backend in one line for the console: ``auto → openvino (why)``, or its name."""
        name = f"{self.backend}" + (f", {self.inference_precision} inference precision"
                                    if self.inference_precision != "fp32" else "")
        return f"backend auto → {name}: {self.choice}" if self.choice else f"backend {name}"


def check_options(*, package: bool, backend: str | None = None, schedule: str = "sequential",
                  gpu_config: str | GpuConfig | None = None,
                  inference_precision: str = "fp32") -> DetectorOptions:
    """The options of a detector of a package (``package=True``) or of the reference, checked
    before anything loads. The backend defaults to ``onnxruntime`` for a package and ``torch``
    for the reference; ``auto`` stays unresolved until the package is read
    (``DetectorOptions.for_package``); ``schedule`` is the CPU pipeline's (sequential or
    branches: a per-frame error policy needs frames one at a time, so the ``frames`` schedule
    is ``bench``'s); ``gpu_config`` (``GpuConfig`` or its ``+``-joined text) applies to GPU
    backends only; ``inference_precision`` ``bf16`` to ``openvino`` (or ``auto``) only, on a
    CPU whose OpenVINO reports BF16."""
    from bevdeploy.runtime.backends import BACKENDS
    from bevdeploy.runtime.backends.gpu import GPU_BACKENDS, GpuConfig

    backend = backend or ("onnxruntime" if package else REFERENCE_BACKEND)
    known = (*BACKENDS, AUTO_BACKEND, REFERENCE_BACKEND)
    if backend not in known:
        raise ConfigError(f"unknown backend {backend!r}; available: {list(known)}",
                          field="--backend")
    _check_cpu_backend(backend, inference_precision)
    config = GpuConfig.parse(gpu_config) if isinstance(gpu_config, str) else gpu_config
    if config is not None:
        config.check_backend(backend)
    if schedule not in CPU_SCHEDULES:
        reason = ("overlaps consecutive frames, so one failing frame would end the stream; "
                  "measure it with `bevdeploy bench --schedule frames`" if schedule == "frames"
                  else "is not a schedule")
        raise ConfigError(f"{schedule!r} {reason}; choose sequential or branches",
                          field="--schedule")
    if schedule != "sequential" and (backend in GPU_BACKENDS or backend == REFERENCE_BACKEND):
        raise ConfigError(f"--schedule is the CPU pipeline's; the {backend} backend "
                          + ("runs the CUDA schedule (--gpu-config streams)"
                             if backend in GPU_BACKENDS else "is the eager reference"),
                          field="--schedule")
    if package and backend == REFERENCE_BACKEND:
        raise ConfigError("--package runs the deploy runtime; drop it to use the torch backend",
                          field="--backend")
    if not package and backend != REFERENCE_BACKEND:
        raise ConfigError(f"backend {backend!r} runs a deploy package: give --package (export "
                          "one with `bevdeploy export`)", field="--backend")
    return DetectorOptions(backend, config, schedule, inference_precision)


def _check_cpu_backend(backend: str, inference_precision: str) -> None:
    """Refuse an inference precision the backend lacks, or ``openvino`` where it is not
    installed or (for BF16) the CPU has no native BF16, before anything loads."""
    from bevdeploy.runtime.backends.base import INFERENCE_PRECISIONS

    if inference_precision not in INFERENCE_PRECISIONS:
        raise ConfigError(f"unknown inference precision {inference_precision!r}; known: "
                          f"{list(INFERENCE_PRECISIONS)}", field="--inference-precision")
    if inference_precision != "fp32" and backend not in ("openvino", AUTO_BACKEND):
        raise ConfigError(f"--inference-precision {inference_precision} is the CPU backends' "
                          f"(OpenVINO's BF16); the {backend} backend "
                          + ("takes its precision from --gpu-config"
                             if backend in ("torch-cuda", "tensorrt") else "has none"),
                          field="--inference-precision")
    if backend == "openvino":
        from bevdeploy.runtime.backends.openvino import bf16_unavailable_reason, import_openvino

        import_openvino()  # a ConfigError saying how to install it
        if inference_precision == "bf16":
            reason = bf16_unavailable_reason()
            if reason is not None:
                raise ConfigError(reason, field="--inference-precision")


class _Closing:
    """``with detector.open(...) as d:`` closes the detector at the end of the block."""

    def close(self) -> None:
        """Release what the detector holds (threads, sessions)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PackageDetector(_Closing):
    """A deploy package on a backend: the runtime's ``Pipeline`` under the options' schedule."""

    def __init__(self, package: DeployPackage, options: DetectorOptions, *,
                 threads: int | None) -> None:
        from bevdeploy.runtime import Pipeline
        from bevdeploy.runtime.backends import RunnerOptions
        from bevdeploy.runtime.backends.gpu import GPU_BACKENDS, GpuConfig

        options = options.for_package(package)
        if options.backend in GPU_BACKENDS:
            config = options.gpu_config or GpuConfig()
            self.pipeline = Pipeline(package, backend=options.backend, threads=threads,
                                     runner_options=config.options(threads),
                                     schedule=config.schedule())
        else:
            runner_options = RunnerOptions(threads=threads,
                                           inference_precision=options.inference_precision)
            self.pipeline = Pipeline(package, backend=options.backend, threads=threads,
                                     schedule=options.schedule, runner_options=runner_options)
        self.package = package
        self.preset = self.pipeline.preset
        self.options = options
        self.backend = options.backend

    @property
    def last_timings(self) -> dict[str, float]:
        return self.pipeline.last_timings

    def __call__(self, frame: Frame) -> Detections:
        return self.pipeline.run(frame)

    def close(self) -> None:
        self.pipeline.close()


class ReferenceDetector(_Closing):
    """The PyTorch reference of a preset (eager, on the CPU), timed as one stage."""

    backend = REFERENCE_BACKEND

    def __init__(self, preset: Preset, checkpoint: str | Path | None, *, seed: int,
                 threads: int | None, fp16_points: bool) -> None:
        import torch

        from bevdeploy.model.factory import create_model

        if threads is not None:
            torch.set_num_threads(threads)
        self.model, self.weights = create_model(preset, checkpoint, seed=seed)
        self.preset = preset
        self.fp16_points = fp16_points
        self.last_timings: dict[str, float] = {}

    def __call__(self, frame: Frame) -> Detections:
        t0 = time.perf_counter()
        detections = self.model.predict(frame, fp16_points=self.fp16_points)
        self.last_timings = {"total": (time.perf_counter() - t0) * 1e3}
        return detections


def open(model: str | Path | DeployPackage | Preset, *,  # noqa: A001 (bevdeploy.detector.open)
         backend: str | None = None, checkpoint: str | Path | None = None,
         threads: int | None = None, gpu_config: str | GpuConfig | None = None,
         schedule: str = "sequential", seed: int = RANDOM_INIT_SEED, random_ok: bool = True,
         fp16_points: bool = False,
         inference_precision: str = "fp32") -> PackageDetector | ReferenceDetector:
    """A detector for ``model``: a deploy package (a ``DeployPackage`` or its directory) on
    ``backend``, or a preset (a ``Preset``, a registered name or a YAML path) as the PyTorch
    reference.

    The reference's weights are ``checkpoint``, else the preset's default checkpoint, else —
    when ``random_ok`` — a random initialisation seeded with ``seed`` (``weights.random`` then
    says so; the caller warns), else a ``ConfigError`` asking for ``--checkpoint``.
    ``fp16_points`` rounds the reference's points through float16 first, as the published
    numbers did. ``checkpoint`` with a package is refused: a package carries its weights.
    ``inference_precision`` is the CPU backends' (``bf16``: OpenVINO's, where the CPU has it);
    ``backend="auto"`` picks ONNX Runtime or OpenVINO for the package on this CPU (the
    detector's ``options`` then hold the choice and its reason).
    """
    target: Any = model
    if isinstance(target, (str, Path)) and Path(target).is_dir():
        target = load_package(target)
    if isinstance(target, (str, Path)):
        from bevdeploy.presets import get_preset

        target = get_preset(str(target))
    is_package = isinstance(target, DeployPackage)
    options = check_options(package=is_package, backend=backend, schedule=schedule,
                            gpu_config=gpu_config, inference_precision=inference_precision)
    if is_package:
        if checkpoint is not None:
            raise ConfigError("a deploy package carries its own weights; --checkpoint is the "
                              "torch backend's", field="--checkpoint")
        return PackageDetector(target, options, threads=threads)
    weights = checkpoint or target.checkpoint_path
    if weights is None and not random_ok:
        raise ConfigError(f"preset {target.name} has no default checkpoint: give --checkpoint",
                          field="--checkpoint")
    return ReferenceDetector(target, weights, seed=seed, threads=threads,
                             fp16_points=fp16_points)

