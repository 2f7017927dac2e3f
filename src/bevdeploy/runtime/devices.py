"""Torch devices for the runtime's GPU side, torch-free at import: the checks that turn a
missing torch or CUDA into a ``ConfigError`` with the reason, the device a name resolves to, and
the float precisions. The GPU backends (``backends.gpu``), the device-side stages and the CUDA
schedule share them; torch is imported by the functions that need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from bevdeploy.errors import ConfigError

if TYPE_CHECKING:
    import torch

Precision = Literal["fp32", "fp16", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")


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


def torch_device(name: str, backend: str, *, allow_cpu: bool,
                 cuda_graph: bool = False) -> "torch.device":
    """The ``torch.device`` called ``name`` for ``backend`` (a runner or a schedule, named in
    the errors), refused with the reason when unusable: no CUDA, no such device, the CPU where
    ``allow_cpu`` is off, CUDA graphs on the CPU."""
    torch = import_torch(backend)
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"{name!r} is not a torch device ({exc})",
                          field="device") from None
    if device.type == "cpu" and allow_cpu:
        if cuda_graph:
            raise ConfigError("CUDA graphs need a CUDA device; got device 'cpu'",
                              field="cuda_graph")
        return device
    if device.type != "cuda":
        raise ConfigError(f"the {backend} backend runs on CUDA devices, not {name!r}",
                          field="device")
    reason = cuda_unusable_reason()
    if reason is not None:
        raise ConfigError(f"the {backend} backend needs CUDA: {reason}", field="device")
    index = device.index or 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"no CUDA device {index}; this machine has "
                          f"{torch.cuda.device_count()}", field="device")
    return torch.device("cuda", index)


def ieee_fp32(device: "torch.device") -> None:
    """Make float32 convolutions and matrix products on CUDA true float32, process-wide.

    cuDNN runs float32 convolutions in TF32 by default on Ampere and later GPUs (a 10-bit
    mantissa, ~1e-3 relative per product), which ``compare``'s FP32 limits (1e-3 of the scale
    after the deepest chain) cannot hold; torch has no per-module switch. Called for an
    ``fp32`` module, SCN or reference on a CUDA device; other precisions are unaffected.
    """
    import torch

    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def float_dtype(precision: str) -> "torch.dtype":
    import torch

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise ConfigError(f"unknown precision {precision!r}; known: {list(PRECISIONS)}",
                          field="precision")
    return dtypes[precision]
