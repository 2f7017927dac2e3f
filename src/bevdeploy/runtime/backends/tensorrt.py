"""The ``tensorrt`` backend: a dense module as a TensorRT engine built by ``bevdeploy build``.

The engine file and its record (``EngineEntry``: TensorRT version, GPU name and compute
capability, builder flags, SHA-256) sit beside the module's ONNX in the package. An engine only
runs under the TensorRT version and on the GPU that built it, so ``check_engine`` compares the
record with this machine *before* deserializing and refuses a mismatch with a ``PackageError``
naming both sides; that check is plain logic, testable without TensorRT.

The runner binds static device buffers (torch tensors) to the engine's I/O tensors once, so a
run is: copy the feeds in, ``execute_async_v3`` on the current stream (or replay its CUDA graph),
read the outputs. The SCN module is not built: TensorRT has no sparse convolution, and it stays
on the sparse executor.

``tensorrt`` and ``torch`` are imported when a runner is loaded, not by this module.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bevdeploy.errors import ConfigError, PackageError
from bevdeploy.package import EngineEntry, ModuleEntry, TensorSpec
from bevdeploy.runtime.backends.base import ModuleRunner, RunnerOptions, check_feeds
from bevdeploy.runtime.backends.gpu import (CapturedGraph, GpuOptions, gpu_identity,
                                            import_torch, numpy_dtype, resolve_device)

if TYPE_CHECKING:
    import torch

BACKEND = "tensorrt"


def import_tensorrt() -> Any:
    """``tensorrt``, or a ``ConfigError`` saying why it is unusable."""
    try:
        import tensorrt
    except ImportError as exc:
        raise ConfigError(f"the tensorrt backend needs the tensorrt Python package ({exc})",
                          field="backend") from None
    return tensorrt


def check_engine(entry: ModuleEntry, *, tensorrt_version: str, gpu: str,
                 compute_capability: str, source: str | Path) -> EngineEntry:
    """The module's engine record, refused unless it was built by this TensorRT version for
    this GPU. ``source`` is the manifest (named in the error)."""
    engine = entry.engine
    where = f"modules.{entry.name}.engine"
    if engine is None:
        raise PackageError(f"module {entry.name!r} has no TensorRT engine; build them with "
                           "`bevdeploy build PACKAGE --precision fp16`", path=source, field=where)
    if engine.tensorrt != tensorrt_version:
        raise PackageError(f"the engine of {entry.name!r} was built with TensorRT "
                           f"{engine.tensorrt} but this machine has TensorRT {tensorrt_version}; "
                           "engines only load in the version that built them: run "
                           "`bevdeploy build` again here", path=source, field=f"{where}.tensorrt")
    if (engine.gpu, engine.compute_capability) != (gpu, compute_capability):
        raise PackageError(f"the engine of {entry.name!r} was built for {engine.gpu} (compute "
                           f"capability {engine.compute_capability}) but this machine has {gpu} "
                           f"(compute capability {compute_capability}): run `bevdeploy build` "
                           "again here", path=source, field=f"{where}.gpu")
    return engine


def read_engine(root: Path, entry: ModuleEntry, engine: EngineEntry) -> bytes:
    """The engine's bytes, refused when missing or not the recorded size and SHA-256."""
    path = root / engine.file
    where = f"modules.{entry.name}.engine"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PackageError(f"cannot read the engine of {entry.name!r}: "
                           f"{exc.strerror or exc}", path=path, field=f"{where}.file") from None
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != engine.size or digest != engine.sha256:
        raise PackageError(f"{len(data)} B with SHA-256 {digest}, but the manifest records "
                           f"{engine.size} B with {engine.sha256}: the engine was modified or "
                           "corrupted", path=path, field=f"{where}.sha256")
    return data


class TensorRTRunner(ModuleRunner):
    """A ``Runner`` over one deserialized engine with static device I/O buffers."""

    def __init__(self, name: str, path: Path, engine: Any, context: Any,
                 entry: ModuleEntry, inputs: dict[str, "torch.Tensor"],
                 outputs: dict[str, "torch.Tensor"], cuda_graph: bool) -> None:
        super().__init__(name, path, entry.inputs, entry.outputs)
        self.engine = engine
        self.context = context
        self._in = inputs
        self._out = outputs
        self._graph = CapturedGraph(self._execute, inputs) if cuda_graph else None

    @classmethod
    def load(cls, path: Path, entry: ModuleEntry, options: RunnerOptions) -> "TensorRTRunner":
        """Load the engine recorded for the module whose ONNX file is ``path``."""
        opts = GpuOptions.of(options)
        if opts.precision != "fp32" or opts.channels_last:
            raise ConfigError("a TensorRT engine's precision and layouts are fixed when it is "
                              "built (`bevdeploy build --precision`); leave precision and "
                              "channels_last at their defaults", field="precision")
        trt = import_tensorrt()
        torch = import_torch(BACKEND)
        device = resolve_device(opts, BACKEND, allow_cpu=False)
        gpu, capability = gpu_identity(device)
        engine_entry = check_engine(entry, tensorrt_version=trt.__version__, gpu=gpu,
                                    compute_capability=capability,
                                    source=path.parent / "manifest.json")
        data = read_engine(path.parent, entry, engine_entry)
        logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(device):
            engine = trt.Runtime(logger).deserialize_cuda_engine(data)
            if engine is None:
                raise PackageError(f"TensorRT could not deserialize the engine of "
                                   f"{entry.name!r}", path=path.parent / engine_entry.file,
                                   field=f"modules.{entry.name}.engine")
            context = engine.create_execution_context()
            inputs = _bind(trt, engine, context, entry, "inputs", device, path)
            outputs = _bind(trt, engine, context, entry, "outputs", device, path)
            return cls(entry.name, path, engine, context, entry, inputs, outputs,
                       opts.cuda_graph)


    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        checked = check_feeds(self.name, self._inputs, feeds, source=self.path)
        t0 = time.perf_counter()
        outputs = self._run({name: torch.from_numpy(array) for name, array in checked.items()})
        result = {name: tensor.cpu().numpy() for name, tensor in outputs.items()}
        self._last_time_s = time.perf_counter() - t0
        return result

    def run_device(self, feeds: Mapping[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
        """Device tensors in, the static output buffers out (valid until the next call)."""
        t0 = time.perf_counter()
        outputs = self._run(feeds)
        self._last_time_s = time.perf_counter() - t0
        return outputs

    def _run(self, feeds: Mapping[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
        if self._graph is not None:
            return self._graph.run(feeds)
        for name, buffer in self._in.items():
            buffer.copy_(feeds[name], non_blocking=True)
        return self._execute(**self._in)

    def _execute(self, **_bound: "torch.Tensor") -> dict[str, "torch.Tensor"]:
        """Enqueue the engine on the current stream; its I/O addresses are the bound buffers."""
        import torch

        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise PackageError(f"TensorRT failed to enqueue {self.name!r}", path=self.path,
                               field=f"modules.{self.name}.engine")
        return self._out


def _bind(trt: Any, engine: Any, context: Any, entry: ModuleEntry, kind: str,
          device: "torch.device", path: Path) -> dict[str, "torch.Tensor"]:
    """Allocate one device buffer per manifest tensor, check it against the engine's tensor of
    the same name (mode, dtype, shape) and bind its address to the context."""
    import torch

    mode = trt.TensorIOMode.INPUT if kind == "inputs" else trt.TensorIOMode.OUTPUT
    engine_names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    names = [n for n in engine_names if engine.get_tensor_mode(n) == mode]
    specs: tuple[TensorSpec, ...] = getattr(entry, kind)
    fld = f"modules.{entry.name}.{kind}"
    if sorted(names) != sorted(s.name for s in specs):
        raise PackageError(f"the engine has {kind} {names} but the manifest lists "
                           f"{[s.name for s in specs]}", path=path, field=fld)
    torch_types = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
                   "INT32": torch.int32, "INT64": torch.int64, "INT8": torch.int8,
                   "BOOL": torch.bool, "UINT8": torch.uint8}
    buffers = {}
    for spec in specs:
        dtype = torch_types.get(engine.get_tensor_dtype(spec.name).name)
        shape = tuple(engine.get_tensor_shape(spec.name))
        if dtype is None or numpy_dtype(dtype) != spec.dtype or list(shape) != list(spec.shape):
            raise PackageError(f"{spec.name!r} is {engine.get_tensor_dtype(spec.name)} "
                               f"{list(shape)} in the engine but {spec.dtype} "
                               f"{list(spec.shape)} in the manifest", path=path, field=fld)
        buffer = torch.zeros(shape, dtype=dtype, device=device)
        context.set_tensor_address(spec.name, buffer.data_ptr())
        buffers[spec.name] = buffer
    return buffers

