"""What the GPU backends (``torch-cuda``, ``tensorrt``) share: their options, the checks that
turn a missing torch or CUDA into a ``ConfigError`` with the reason, and CUDA-graph capture.

This module is torch-free at import (the runtime side must not load PyTorch just because a GPU
backend exists); torch is imported by the functions that need it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from bevdeploy.errors import ConfigError
from bevdeploy.package import TensorSpec
from bevdeploy.runtime.backends.base import RunnerOptions

if TYPE_CHECKING:
    import torch

Precision = Literal["fp32", "fp16", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")
GRAPH_WARMUP_RUNS = 3  # eager runs on a side stream before capture (cuDNN/cuBLAS pick kernels)


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


def import_torch(backend: str) -> Any:
    """``torch``, or a ``ConfigError`` saying how to get it."""
    try:
        import torch
    except ImportError as exc:
        raise ConfigError(f"the {backend} backend needs PyTorch ({exc}); install "
                          "'bevdeploy[export]' or a CUDA build of torch", field="backend") from None
    return torch


def cuda_unusable_reason() -> str | None:
    """None when torch sees a CUDA device, else why not (shared with ``bevdeploy doctor``)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    return f"torch is built for CUDA {torch.version.cuda} but no device/driver is visible"


def resolve_device(options: GpuOptions, backend: str, *, allow_cpu: bool) -> "torch.device":
    """The ``torch.device`` of ``options.device``, refused with the reason when unusable."""
    torch = import_torch(backend)
    try:
        device = torch.device(options.device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"{options.device!r} is not a torch device ({exc})",
                          field="device") from None
    if device.type == "cpu" and allow_cpu:
        if options.cuda_graph:
            raise ConfigError("CUDA graphs need a CUDA device; got device 'cpu'",
                              field="cuda_graph")
        return device
    if device.type != "cuda":
        raise ConfigError(f"the {backend} backend runs on CUDA devices, not {options.device!r}",
                          field="device")
    reason = cuda_unusable_reason()
    if reason is not None:
        raise ConfigError(f"the {backend} backend needs CUDA: {reason}", field="device")
    index = device.index or 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"no CUDA device {index}; this machine has "
                          f"{torch.cuda.device_count()}", field="device")
    return torch.device("cuda", index)


def gpu_identity(device: "torch.device") -> tuple[str, str]:
    """(name, compute capability "M.m") of a CUDA device: what a TensorRT engine is tied to."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"


def float_dtype(precision: str) -> "torch.dtype":
    import torch

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise ConfigError(f"unknown precision {precision!r}; known: {list(PRECISIONS)}",
                          field="precision")
    return dtypes[precision]


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
