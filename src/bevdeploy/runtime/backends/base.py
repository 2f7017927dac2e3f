"""The one interface every inference backend implements, and the input check they share.

A ``Runner`` executes one dense module of a deploy package (``camera.backbone``,
``camera.vtransform``, ``fuser``, ``head.bbox``) from named numpy inputs to named numpy
outputs. ONNX Runtime (the CPU backend), TensorRT and PyTorch-CUDA implement the same
protocol, so the pipeline never knows which one it drives; the GPU runners also implement
``DeviceRunner`` (device tensors in and out) for the CUDA schedule.

Inputs are checked against the *manifest's* specs before the backend sees them: a wrong shape
is then an ``InputError`` naming the module and the input, instead of a backend-specific
message about an anonymous node deep inside the graph.

A GPU backend's runner is also a ``DeviceRunner``: its ``run_device`` takes and returns tensors
on its device, so that a device schedule chains the modules without host round-trips.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from bevdeploy.errors import InputError
from bevdeploy.package import ModuleEntry, TensorSpec

OptimizationLevel = Literal["disable", "basic", "extended", "all"]
InferencePrecision = Literal["fp32", "bf16"]
INFERENCE_PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


@dataclass(frozen=True)
class RunnerOptions:
    """Backend-independent session settings.

    ``threads`` is the intra-op thread count (``None``: the backend's default, usually every
    core); ``optimization`` the graph optimisation level, from none to all fusions.
    ``spinning`` lets a backend's idle worker threads busy-wait for the next job instead of
    sleeping: it saves microseconds per job when one session owns the CPU, and costs whole
    milliseconds when a pipeline's several sessions and kernels share a few cores (each
    session's spinning workers steal the cores the next stage runs on), so it is off unless
    asked for. ``inference_precision`` is what a CPU backend computes the package's float
    parts in: ``fp32`` (the package as it is: an INT8 package's quantized layers stay INT8),
    or ``bf16`` where the backend and the CPU have native BF16 (OpenVINO on AVX-512 BF16 or
    AMX; other backends refuse it). The GPU backends' precision is ``GpuOptions.precision``.
    """

    threads: int | None = None
    optimization: OptimizationLevel = "all"
    spinning: bool = False
    inference_precision: InferencePrecision = "fp32"


class Runner(Protocol):
    """One loaded module: named inputs in, named outputs out, timed."""

    name: str  # the module's manifest name, e.g. "camera.backbone"

    @classmethod
    def load(cls, path: Path, entry: ModuleEntry, options: RunnerOptions) -> "Runner":
        """Load the module file ``path`` described by the manifest ``entry``."""
        ...

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The manifest's input specs, in graph order."""
        ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The manifest's output specs, in graph order."""
        ...

    @property
    def last_time_s(self) -> float:
        """Wall time of the last ``run`` inside the backend (input checks excluded), seconds."""
        ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute the module; ``feeds`` must match ``inputs`` exactly (``check_feeds``)."""
        ...


@runtime_checkable
class DeviceRunner(Runner, Protocol):
    """A ``Runner`` whose module lives on a torch device (``torch-cuda``, ``tensorrt``)."""

    def run_device(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Device tensors in (any float dtype: cast to the module's), device tensors out,
        nothing synchronised; shapes are not re-checked (the caller is a schedule that made
        them from the same manifest). Outputs may be static buffers (CUDA graphs), valid until
        the runner's next call."""
        ...


class ModuleRunner:
    """The state every concrete ``Runner`` shares: the module's name, its file, the manifest's
    I/O specs and the time of the last call (kept here so the three backends report alike)."""

    def __init__(self, name: str, path: Path, inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...]) -> None:
        self.name = name
        self.path = path
        self._inputs = inputs
        self._outputs = outputs
        self._last_time_s = 0.0

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def last_time_s(self) -> float:
        """Seconds of the last ``run`` inside the backend (input checks excluded; a GPU
        runner's ``run`` includes its copies and synchronises); after a GPU runner's
        ``run_device``, only the time to enqueue the work."""
        return self._last_time_s


def check_feeds(module: str, specs: tuple[TensorSpec, ...], feeds: Mapping[str, np.ndarray],
                *, source: str | Path) -> dict[str, np.ndarray]:
    """Check ``feeds`` against ``specs`` and return them C-contiguous, in spec order.

    Every input must be present, no other may be, each must have the spec's dtype (no silent
    casts: a float64 tensor usually means an upstream bug) and shape. A symbolic dimension
    (``"voxels"``) matches any size, but the same symbol must have one size across inputs.
    Errors are ``InputError`` with ``path=source`` and ``field="<module>.<input>"``.
    """
    unexpected = sorted(set(feeds) - {s.name for s in specs})
    if unexpected:
        raise InputError(f"unexpected input(s) {unexpected}; {module} takes "
                         f"{[s.name for s in specs]}", path=source, field=f"{module}.inputs")
    symbols: dict[str, tuple[int, str]] = {}
    checked: dict[str, np.ndarray] = {}
    for spec in specs:
        fld = f"{module}.{spec.name}"
        if spec.name not in feeds:
            raise InputError("missing input", path=source, field=fld)
        array = np.asarray(feeds[spec.name])
        if array.dtype != np.dtype(spec.dtype):
            raise InputError(f"expected dtype {spec.dtype}, got {array.dtype}", path=source,
                             field=fld)
        fixed_differ = any(isinstance(want, int) and want != got
                           for want, got in zip(spec.shape, array.shape))
        if array.ndim != len(spec.shape) or fixed_differ:
            raise InputError(f"expected shape {_shape_text(spec.shape)}, got {array.shape}",
                             path=source, field=fld)
        for want, got in zip(spec.shape, array.shape):
            if isinstance(want, str):
                first = symbols.setdefault(want, (got, spec.name))
                if first[0] != got:
                    raise InputError(f"dimension {want!r} is {got} here but {first[0]} in input "
                                     f"{first[1]!r}", path=source, field=fld)
        checked[spec.name] = np.ascontiguousarray(array)
    return checked


def _shape_text(shape: tuple[int | str, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
