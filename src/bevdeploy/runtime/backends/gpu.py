"""What the GPU backends (``torch-cuda``, ``tensorrt``) share: their options, CUDA-graph
capture, and ``GpuConfig``, the one-string form of the switches the CLI takes
(``--gpu-config fp16+cl+graph``). The torch device checks they use (``cuda_unusable_reason``,
``ieee_fp32``, ``import_torch``: a missing torch or CUDA as a ``ConfigError`` with the reason)
live in ``runtime.devices``, which the CUDA schedule shares without importing the backends,
and are exported here too, where the GPU backends' users find them.

This module is torch-free at import (the runtime side must not load PyTorch just because a GPU
backend exists); torch is imported by the functions that need it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from bevdeploy.errors import ConfigError
from bevdeploy.package import TensorSpec
from bevdeploy.runtime.backends.base import RunnerOptions
from bevdeploy.runtime.devices import (PRECISIONS, Precision, cuda_unusable_reason, float_dtype,
                                       ieee_fp32, import_torch, torch_device)

if TYPE_CHECKING:
    import torch

    from bevdeploy.runtime.schedules.cuda import CudaSchedule

__all__ = ["GPU_BACKENDS", "GPU_LADDER", "GPU_TOKENS", "PRECISIONS", "SWITCHES", "TENSORRT_LADDER",
           "CapturedGraph", "GpuConfig", "GpuOptions", "Precision", "cuda_unusable_reason",
           "float_dtype", "gpu_identity", "ieee_fp32", "import_torch", "numpy_dtype",
           "resolve_device", "static_buffers"]

GRAPH_WARMUP_RUNS = 3  # eager runs on a side stream before capture (cuDNN/cuBLAS pick kernels)
GPU_BACKENDS: tuple[str, ...] = ("torch-cuda", "tensorrt")


@dataclass(frozen=True)
class GpuOptions(RunnerOptions):
    """``RunnerOptions`` plus the GPU switches, each one so that ``bench`` can show its worth.

    ``device``: ``"cuda"``, ``"cuda:N"``, or ``"cpu"`` (torch-cuda only: runs the same module on
    the CPU, which is how the converter is verified on machines without a GPU). ``precision``:
    the float dtype the torch module computes in (a TensorRT engine's is fixed at build time).
    ``channels_last``: NHWC memory format for 4-D tensors (torch-cuda). ``cuda_graph``: capture
    each module once and replay it (static input/output buffers; CUDA devices only).
    """

    device: str = "cuda"
    precision: Precision = "fp32"
    channels_last: bool = False
    cuda_graph: bool = False

    @classmethod
    def of(cls, options: RunnerOptions) -> "GpuOptions":
        """``options`` as ``GpuOptions`` (the defaults for what a plain ``RunnerOptions`` lacks)."""
        if isinstance(options, GpuOptions):
            return options
        return cls(**{f.name: getattr(options, f.name) for f in fields(RunnerOptions)})


# The switch tokens of a ``GpuConfig`` besides its precision, in label order, and the field each
# one turns on.
SWITCHES: dict[str, str] = {"cl": "channels_last", "graph": "cuda_graph", "streams": "streams",
                            "host": "host_kernels"}
GPU_TOKENS: tuple[str, ...] = (*PRECISIONS, *SWITCHES)
# ``bench --gpu-ladder``: one switch added per step, so that each step's gain is what that switch
# is worth. A TensorRT engine's precision and layouts are fixed when it is built, so its ladder
# climbs the graph and stream steps only.
# The first step keeps the frame's kernels on the CPU (``host``): the next one shows what moving
# them to the device is worth.
GPU_LADDER: tuple[str, ...] = ("fp32+host", "fp32", "fp16", "fp16+cl", "fp16+cl+graph",
                               "fp16+cl+graph+streams")
TENSORRT_LADDER: tuple[str, ...] = ("fp32+host", "fp32", "graph", "graph+streams")


@dataclass(frozen=True)
class GpuConfig:
    """The GPU switches of one run, written as one string so that a command line can list
    several (``bench --gpu-config fp32 --gpu-config fp16+cl+graph+streams``).

    Tokens joined by ``+``, in any order, each at most once: one precision of ``fp32``,
    ``fp16``, ``bf16`` (``fp32`` when none is given), ``cl`` (channels-last), ``graph`` (each
    dense module captured in a CUDA graph), ``streams`` (``CudaSchedule`` with the camera and
    LiDAR branches on two CUDA streams; without it a CUDA device runs them one after the other
    on one stream, as CUDA-BEVFusion does), ``host`` (normalize, depth, voxelize, the SCN and
    decode on the CPU, as the CPU backends run them; without it they run on the device, the
    SCN in the config's precision). The first three become the runners' ``GpuOptions``,
    ``streams``, ``host`` and the precision the pipeline's schedule: the CPU schedules
    (sequential, branches, frames) keep tensors on the host between the modules, so a GPU
    backend on CUDA always runs under ``CudaSchedule``.
    """

    precision: Precision = "fp32"
    channels_last: bool = False
    cuda_graph: bool = False
    streams: bool = False
    host_kernels: bool = False

    @classmethod
    def parse(cls, text: str, *, field: str = "--gpu-config") -> "GpuConfig":
        """``text`` as a config; a bad, repeated or conflicting token is a ``ConfigError``
        naming it and listing the valid ones."""
        tokens = [token.strip().lower() for token in text.split("+")]
        valid = f"valid tokens: {', '.join(GPU_TOKENS)}, joined by '+' (e.g. fp16+cl+graph)"
        for token in tokens:
            if token not in GPU_TOKENS:
                what = "an empty token" if not token else f"unknown token {token!r}"
                raise ConfigError(f"{what} in {text!r}; {valid}", field=field)
        repeated = sorted({token for token in tokens if tokens.count(token) > 1})
        if repeated:
            raise ConfigError(f"{text!r} repeats {repeated}; {valid}", field=field)
        precisions = [token for token in tokens if token in PRECISIONS]
        if len(precisions) > 1:
            raise ConfigError(f"{text!r} names the precisions {precisions}; give one of "
                              f"{list(PRECISIONS)}", field=field)
        return cls(precision=precisions[0] if precisions else "fp32",  # type: ignore[arg-type]
                   **{name: token in tokens for token, name in SWITCHES.items()})

    @property
    def label(self) -> str:
        """The canonical text, precision first and switches in ``SWITCHES`` order
        (``parse(label)`` gives this config back)."""
        return "+".join([self.precision, *(t for t, name in SWITCHES.items()
                                           if getattr(self, name))])

    def describe(self, backend: str) -> str:
        """The label as a column title: for TensorRT the precision is the engine's, not ours."""
        if backend == "tensorrt":
            return self.label.replace(self.precision, "engine", 1)
        return self.label

    def check_backend(self, backend: str, *, field: str = "--gpu-config") -> None:
        """Refuse a backend the config cannot apply to: any but the GPU ones, and TensorRT with
        a precision or layout token (its engine fixed both when ``bevdeploy build`` made it)."""
        if backend not in GPU_BACKENDS:
            raise ConfigError(f"GPU switches ({self.label!r}) apply to the backends "
                              f"{list(GPU_BACKENDS)}, not {backend!r}", field=field)
        fixed = [t for t, on in ((self.precision, self.precision != "fp32"),
                                 ("cl", self.channels_last)) if on]
        if backend == "tensorrt" and fixed:
            raise ConfigError(f"tensorrt: an engine's precision and layouts are fixed when "
                              f"`bevdeploy build` makes it (`bevdeploy build PACKAGE --precision "
                              f"fp16`); drop {fixed} from {self.label!r} (graph and streams "
                              "apply)", field=field)

    def options(self, threads: int | None = None, *, device: str = "cuda") -> GpuOptions:
        """The runners' options: precision, channels-last and CUDA graphs on ``device``."""
        return GpuOptions(threads=threads, device=device, precision=self.precision,
                          channels_last=self.channels_last, cuda_graph=self.cuda_graph)

    def schedule(self, device: str = "cuda") -> "CudaSchedule | str":
        """The pipeline's schedule: ``CudaSchedule`` (two streams or one) on a CUDA device (a
        ``ConfigError`` saying why where CUDA is unusable); on the CPU, where torch-cuda runs
        only to check its conversion, the CPU's ``sequential`` (``streams`` refused)."""
        if device.split(":")[0] == "cpu":
            if self.streams:
                raise ConfigError("CUDA streams need a CUDA device; got device 'cpu'",
                                  field="streams")
            return "sequential"
        from bevdeploy.runtime.schedules.cuda import CudaSchedule

        return CudaSchedule(streams=self.streams, device=device, host_kernels=self.host_kernels,
                            precision=self.precision)










def resolve_device(options: GpuOptions, backend: str, *, allow_cpu: bool) -> "torch.device":
    """The ``torch.device`` of ``options.device``, refused with the reason when unusable."""
    return torch_device(options.device, backend, allow_cpu=allow_cpu,
                        cuda_graph=options.cuda_graph)


def gpu_identity(device: "torch.device") -> tuple[str, str]:
    """(name, compute capability "M.m") of a CUDA device: what a TensorRT engine is tied to."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"




def numpy_dtype(torch_dtype: "torch.dtype") -> str:
    """numpy's name of a torch dtype (for comparing with a manifest ``TensorSpec``)."""
    return str(torch_dtype).removeprefix("torch.")


class CapturedGraph:
    """One CUDA graph of ``fn`` over static input buffers.

    ``run`` copies the feeds into the static inputs (casting dtype and layout as the buffers
    are), replays the graph on the current stream and returns the static outputs: they stay
    valid until the next ``run``. Capture needs fixed shapes, which the manifest guarantees for
    the dense modules (a symbolic dimension is refused).
    """

    def __init__(self, fn: Callable[..., dict[str, "torch.Tensor"]],
                 inputs: dict[str, "torch.Tensor"]) -> None:
        import torch

        self.inputs = inputs
        side = torch.cuda.Stream(device=next(iter(inputs.values())).device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP_RUNS):
                fn(**inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(**inputs)

    def run(self, feeds: Mapping[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
        for name, buffer in self.inputs.items():
            buffer.copy_(feeds[name], non_blocking=True)
        self.graph.replay()
        return self.outputs


def static_buffers(specs: tuple[TensorSpec, ...], device: "torch.device",
                   dtype_of: Callable[[TensorSpec], "torch.dtype"], *, channels_last: bool = False,
                   module: str) -> dict[str, "torch.Tensor"]:
    """Zero-filled device buffers of the specs' shapes (the capture's static inputs)."""
    import torch

    buffers = {}
    for spec in specs:
        if not all(isinstance(d, int) for d in spec.shape):
            raise ConfigError(f"{module}.{spec.name} has a symbolic shape {list(spec.shape)}; "
                              "CUDA graphs need fixed shapes", field="cuda_graph")
        fmt = torch.channels_last if channels_last and len(spec.shape) == 4 \
            else torch.contiguous_format
        buffers[spec.name] = torch.empty(spec.shape, dtype=dtype_of(spec), device=device,
                                         memory_format=fmt).zero_()
    return buffers
