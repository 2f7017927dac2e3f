"""The ``torch-cuda`` backend: a dense module of the package as a PyTorch module on a device.

For GPUs without TensorRT. The module is built from the package's own ONNX file
(``onnx_torch.convert``), so it needs no model code and runs exactly the graph that was
exported and hashed. The switches (``GpuOptions``): compute precision fp32/fp16/bf16,
channels-last memory format, and CUDA-graph capture of the whole module over static input
buffers. ``device="cpu"`` runs the same module on the CPU; that is how the conversion is held to
ONNX Runtime on machines without a GPU.

Two ways in: ``run`` (the ``Runner`` protocol: numpy in, numpy out, synchronising) and
``run_device`` (torch tensors on the device in and out, nothing synchronised), which a
device-resident schedule chains module to module without host round-trips.

torch is imported here, so ``create_runner`` imports this module only when the backend is
asked for; the rest of the runtime stays torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError

from bevdeploy.errors import PackageError
from bevdeploy.package import ModuleEntry, TensorSpec
from bevdeploy.runtime.backends.base import ModuleRunner, RunnerOptions, check_feeds
from bevdeploy.runtime.backends.gpu import (CapturedGraph, GpuOptions, resolve_device,
                                            static_buffers)
from bevdeploy.runtime.backends.onnx_torch import convert
from bevdeploy.runtime.devices import float_dtype, ieee_fp32

BACKEND = "torch-cuda"

# ONNX element types of the dtypes a manifest can name.
_ONNX_TYPES = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16,
               "int32": onnx.TensorProto.INT32, "int64": onnx.TensorProto.INT64}


class TorchCudaRunner(ModuleRunner):
    """A ``Runner`` over one converted module on one torch device."""

    def __init__(self, name: str, path: Path, module: torch.nn.Module, entry: ModuleEntry,
                 options: GpuOptions, device: torch.device) -> None:
        super().__init__(name, path, entry.inputs, entry.outputs)
        self.module = module
        self.options = options
        self.device = device
        self.dtype = float_dtype(options.precision)
        self._output_names = [spec.name for spec in entry.outputs]
        self._graph: CapturedGraph | None = None

    @classmethod
    def load(cls, path: Path, entry: ModuleEntry, options: RunnerOptions) -> "TorchCudaRunner":
        """Convert ``path`` after checking that its graph I/O is the manifest ``entry``'s."""
        opts = GpuOptions.of(options)
        device = resolve_device(opts, BACKEND, allow_cpu=True)
        dtype = float_dtype(opts.precision)
        if dtype == torch.float32:
            ieee_fp32(device)
        try:
            model = onnx.load(str(path))
        except (OSError, DecodeError) as exc:
            raise PackageError(f"cannot read module {entry.name!r}: {exc}", path=path,
                               field=f"modules.{entry.name}.file") from None
        check_graph_io(model, entry, path)
        module = convert(model, dtype=dtype, source=path).to(device)
        if opts.channels_last:
            module = module.to(memory_format=torch.channels_last)
        runner = cls(entry.name, path, module, entry, opts, device)
        if opts.cuda_graph:
            with torch.inference_mode():
                runner._graph = CapturedGraph(
                    runner._forward,
                    static_buffers(entry.inputs, device, runner._input_dtype,
                                   channels_last=opts.channels_last, module=entry.name))
        return runner


    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        checked = check_feeds(self.name, self._inputs, feeds, source=self.path)
        t0 = time.perf_counter()
        tensors = {name: torch.from_numpy(array).to(self.device, non_blocking=True)
                   for name, array in checked.items()}
        outputs = self._run(tensors)
        result = {spec.name: outputs[spec.name].to("cpu", _torch_dtype(spec.dtype)).numpy()
                  for spec in self._outputs}
        self._last_time_s = time.perf_counter() - t0
        return result

    def run_device(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Device tensors in (any float dtype: cast to the compute dtype), device tensors out in
        the compute dtype. With CUDA graphs the outputs are the graph's static buffers: valid
        until this runner's next call. Shapes are not re-checked here (the caller is a
        schedule that produced them from the same manifest)."""
        t0 = time.perf_counter()
        outputs = self._run(feeds)
        self._last_time_s = time.perf_counter() - t0
        return outputs

    # ---- internals ----------------------------------------------------------------------

    def _input_dtype(self, spec: TensorSpec) -> torch.dtype:
        dtype = _torch_dtype(spec.dtype)
        return self.dtype if dtype.is_floating_point else dtype

    def _run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            if self._graph is not None:
                return self._graph.run(feeds)
            return self._forward(**{spec.name: self._prepare(spec, feeds[spec.name])
                                    for spec in self._inputs})

    def _prepare(self, spec: TensorSpec, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device, self._input_dtype(spec), non_blocking=True)
        if self.options.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def _forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        values = self.module(*(inputs[spec.name] for spec in self._inputs))
        return dict(zip(self._output_names, values))


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def check_graph_io(model: onnx.ModelProto, entry: ModuleEntry, path: Path) -> None:
    """Refuse a graph whose inputs or outputs differ from the manifest in name, order, dtype or
    a fixed dimension (the file was replaced by one exported for another preset)."""
    initializers = {t.name for t in model.graph.initializer}
    graph_io = {"inputs": [v for v in model.graph.input if v.name not in initializers],
                "outputs": list(model.graph.output)}
    for kind, values in graph_io.items():
        specs: tuple[TensorSpec, ...] = getattr(entry, kind)
        fld = f"modules.{entry.name}.{kind}"
        if [v.name for v in values] != [s.name for s in specs]:
            raise PackageError(f"the ONNX graph has {kind} {[v.name for v in values]} but the "
                               f"manifest lists {[s.name for s in specs]}", path=path, field=fld)
        for spec, value in zip(specs, values):
            tensor_type = value.type.tensor_type
            if _ONNX_TYPES.get(spec.dtype) != tensor_type.elem_type:
                raise PackageError(f"{spec.name!r} is "
                                   f"{onnx.TensorProto.DataType.Name(tensor_type.elem_type)} in "
                                   f"the graph but {spec.dtype} in the manifest", path=path,
                                   field=fld)
            dims = [d.dim_value if d.HasField("dim_value") else None
                    for d in tensor_type.shape.dim]
            fixed = [d if isinstance(d, int) else None for d in spec.shape]
            if dims != fixed:
                raise PackageError(f"{spec.name!r} has shape {dims} in the graph but "
                                   f"{list(spec.shape)} in the manifest", path=path, field=fld)
