"""Inference backends behind one ``Runner`` interface (``base.py``).

``create_runner`` is the single place that maps a backend name to its implementation; the
pipeline asks it for one runner per dense module of the package. ``onnxruntime`` runs the ONNX
files on the CPU, ``openvino`` too (the optional extra, imported only when asked for; the one
backend with a BF16 inference precision); ``auto`` is not a runner but a choice between those two
made per CPU (``backends.auto``), resolved before ``create_runner`` is called; ``torch-cuda`` converts them to PyTorch modules on a GPU; ``tensorrt`` runs
the engines ``bevdeploy build`` added to the package. The GPU backends take ``GpuOptions``
(a ``RunnerOptions`` with device, precision, channels-last and CUDA-graph switches) and import
torch / TensorRT only when asked for, so the runtime stays importable without them.
"""

from __future__ import annotations

from pathlib import Path

from bevdeploy.errors import ConfigError
from bevdeploy.package import ModuleEntry
from bevdeploy.runtime.backends.base import DeviceRunner, Runner, RunnerOptions, check_feeds
from bevdeploy.runtime.backends.gpu import GpuOptions, import_torch

CPU_BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino")
BACKENDS: tuple[str, ...] = (*CPU_BACKENDS, "torch-cuda", "tensorrt")

__all__ = ["BACKENDS", "CPU_BACKENDS", "DeviceRunner", "GpuOptions", "Runner", "RunnerOptions",
           "check_feeds", "create_runner"]


def create_runner(backend: str, path: Path, entry: ModuleEntry, options: RunnerOptions) -> Runner:
    """Load one module with ``backend``; an unknown name is a ``ConfigError`` listing the known,
    an inference precision the backend lacks (``bf16`` off OpenVINO) one naming the option."""
    if options.inference_precision != "fp32" and backend != "openvino":
        raise ConfigError(f"inference precision {options.inference_precision} runs on the "
                          f"openvino backend, not {backend}", field="--inference-precision")
    if backend == "onnxruntime":
        from bevdeploy.runtime.backends.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner.load(path, entry, options)
    if backend == "openvino":
        from bevdeploy.runtime.backends.openvino import OpenVinoRunner

        return OpenVinoRunner.load(path, entry, options)
    if backend == "torch-cuda":
        import_torch(backend)  # a ConfigError saying how to get torch, not an ImportError
        from bevdeploy.runtime.backends.torch_cuda import TorchCudaRunner

        return TorchCudaRunner.load(path, entry, options)
    if backend == "tensorrt":
        from bevdeploy.runtime.backends.tensorrt import TensorRTRunner

        return TensorRTRunner.load(path, entry, options)
    raise ConfigError(f"unknown backend {backend!r}; available: {list(BACKENDS)}",
                      field="backend")
