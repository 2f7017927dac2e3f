"""One Triton kernel, two ways to run it: compiled on CUDA tensors, interpreted on CPU tensors.

Each kernel body is handed to ``triton.jit`` (the GPU path) and to Triton's interpreter, which
executes the same source with numpy on host memory. A launch picks by the device of its tensor
arguments, so the parity tests run the very kernel source on a machine without a GPU, with no
``TRITON_INTERPRET`` environment switch that would have to be set before anything imports
triton. The interpreter is a test harness (thousands of times slower than the GPU), not a CPU
backend: the CPU kernels are ``kernels.cpu``.

The price of that choice: a kernel body may call only Triton's builtins, not the parts of
``triton.language`` written as ``@triton.jit`` functions (``tl.max``, ``tl.sum``, ``tl.zeros``,
``tl.cdiv``), because those are compiled-mode objects unless ``TRITON_INTERPRET`` was set
before triton was first imported. Reductions go through the builtin ``tl.reduce`` with
``max_combine`` or ``sum_combine`` below: triton's own combine functions where it has them
(the interpreter recognises those and reduces with numpy), else equivalent ones, whose
plain-Python bodies the interpreter calls once per element (correct, but slow).

Kernels that must reproduce the CPU kernels' rounding bit for bit (a cell or pixel index is a
truncation, a mean a division) are compiled with ``enable_fp_fusion=False``: Triton otherwise
contracts ``a·b + c`` into one fused multiply-add, which rounds once instead of twice and so
moves points that lie within an ulp of a cell face, where numba (no contraction) does not.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch
import triton
import triton.language as tl

from bevdeploy.errors import InputError
from bevdeploy.runtime.kernels.checks import source

if TYPE_CHECKING:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import CompiledKernel


class Kernel:
    """``kernel[grid](*args, **constexprs)`` on CUDA tensors (compiled) or CPU tensors
    (interpreted); every tensor argument must be on the same device."""

    def __init__(self, fn: Callable[..., None], exact: bool) -> None:
        self.exact = exact
        self.name = fn.__name__
        self._fn = fn
        self._compiled = triton.jit(fn)
        self._options = {"enable_fp_fusion": not exact}

    @cached_property
    def _interpreted(self) -> Any:
        """Made on the first CPU launch: the interpreter's module is Triton-internal, and the
        GPU path must not depend on it."""
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(self._fn)

    def compile_for(self, target: GPUTarget, *args: Any, **constexprs: Any) -> CompiledKernel:
        """Build the kernel for ``target`` (down to the cubin; ptxas needs no GPU) with the
        argument types of a launch with ``args``: checks on any machine that it compiles for
        the GPU it will meet, e.g. ``GPUTarget("cuda", 90, 32)`` for an H100."""
        from triton.compiler import ASTSource

        names = list(inspect.signature(self._fn).parameters)
        signature = {name: _arg_type(value) for name, value in zip(names, args)}
        signature.update(dict.fromkeys(constexprs, "constexpr"))
        return triton.compile(ASTSource(self._compiled, signature, constexprs=constexprs),
                              target=target, options=self._options)

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., None]:
        def launch(*args: Any, **constexprs: Any) -> None:
            devices = {a.device for a in args if isinstance(a, torch.Tensor)}
            if len(devices) != 1:
                raise ValueError(f"kernel tensors must share one device, got {devices}")
            (device,) = devices
            if device.type == "cuda":
                with torch.cuda.device(device):
                    self._compiled[grid](*args, **constexprs, **self._options)
            else:
                self._interpreted[grid](*args, **constexprs)
        return launch


_POINTER_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32",
                  torch.float64: "*fp64", torch.uint8: "*u8", torch.int32: "*i32",
                  torch.int64: "*i64"}


def _arg_type(value: Any) -> str:
    """Triton's signature type of a launch argument."""
    if isinstance(value, torch.Tensor):
        return _POINTER_TYPES[value.dtype]
    if isinstance(value, float):
        return "fp32"
    return "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def _add(a, b):
    return a + b


max_combine = getattr(tl.standard, "_elementwise_max", _maximum)
sum_combine = getattr(tl.standard, "_sum_combine", _add)


def kernel(*, exact: bool) -> Callable[[Callable[..., None]], Kernel]:
    """Decorator: the function as a ``Kernel`` (``exact``: no FMA contraction)."""
    return lambda fn: Kernel(fn, exact)


INTERPRETER_WIDENING = 16


def lanes(device: torch.device, gpu: int) -> int:
    """Lanes per program: ``gpu`` on a GPU; ``INTERPRETER_WIDENING`` times more under the
    interpreter, where every program is a Python-level pass whose cost hardly depends on its
    width."""
    return gpu if device.type == "cuda" else INTERPRETER_WIDENING * gpu


def device_tensor(value: Any, kernel_name: str, field: str, dtypes: Sequence[torch.dtype],
                  shape: Sequence[int | None], device: torch.device | None = None
                  ) -> torch.Tensor:
    """``value`` as a contiguous tensor of one of ``dtypes`` whose shape matches ``shape``
    (``None`` matches any size), on ``device`` when given; anything else is an ``InputError``
    naming the kernel and the argument. Never copies across devices: a host tensor handed to
    a device kernel is a caller's bug that would otherwise hide a transfer in the frame."""
    if not isinstance(value, torch.Tensor):
        raise InputError(f"expected a torch tensor, got {type(value).__name__}",
                         path=source(kernel_name), field=field)
    if value.dtype not in dtypes:
        names = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise InputError(f"expected {names}, got {str(value.dtype).removeprefix('torch.')}",
                         path=source(kernel_name), field=field)
    ok = value.ndim == len(shape) and all(s is None or s == a
                                          for s, a in zip(shape, value.shape, strict=True))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise InputError(f"expected shape {want}, got {tuple(value.shape)}",
                         path=source(kernel_name), field=field)
    if device is not None and value.device != device:
        raise InputError(f"expected a tensor on {device}, got one on {value.device}",
                         path=source(kernel_name), field=field)
    return value.contiguous()


def upload(values: Any, device: torch.device, dtype: torch.dtype = torch.float64
           ) -> torch.Tensor:
    """Host constants (matrices, bounds, filter taps) as one contiguous device tensor.

    The copy goes through pinned memory and does not block: a plain ``.to("cuda")`` of a
    pageable tensor synchronises the stream, which would stall the host on every frame until
    the GPU had drained all the work queued before it.
    """
    host = torch.as_tensor(values, dtype=dtype).contiguous()
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
