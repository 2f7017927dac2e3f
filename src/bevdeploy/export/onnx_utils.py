"""Export one dense PyTorch graph to a checked, shape-inferred ONNX file, and read facts back.

Every dense module goes through ``export_graph``:

1. trace with ``torch.onnx.export`` (eval mode, constant folding, static shapes);
2. simplify with ONNX Runtime's *basic* graph optimizations, which are ONNX-standard rewrites
   only (constant folding including ``Shape`` of static tensors, Identity/Dropout elimination,
   Conv+BN / Conv+Add folding). This is the job onnxsim does in NVIDIA's export script: the
   TorchScript tracer leaves ``Shape → Slice → Concat → Reshape`` chains for every ``flatten``
   and ``interpolate``, which hide the static shapes from shape inference;
3. ``onnx.checker.check_model(full_check=True)`` and strict shape inference;
4. compare the inferred I/O with the shapes the preset promises — a mismatch is an error at
   export time, not a wrong binding in the runtime.

Exporter choice: torch 2.13 still ships the TorchScript exporter behind ``dynamo=False``. It is
used here because it needs no extra dependency (the dynamo exporter needs ``onnxscript``), writes
opset 17 (the dynamo exporter starts at 18 and fails to down-convert ``Pad``), maps
``nn.LayerNorm`` to the standard ``LayerNormalization``, and traces the head in well under a
second instead of about ten. It is deprecated upstream; its warning is silenced only around the
call.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from onnx import helper
from torch import Tensor, nn

from bevdeploy.errors import PackageError
from bevdeploy.package import TensorSpec

# The first opset with a standard LayerNormalization (docs/reference.md#numerics-guardrails).
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class DenseGraph:
    """One module to export: the wrapper to trace and the I/O the preset promises for it."""

    name: str  # manifest key, e.g. "camera.backbone"
    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def float_spec(name: str, shape: Sequence[int]) -> TensorSpec:
    """A float32 tensor with a static shape (every dense graph's I/O is float32)."""
    return TensorSpec(name, tuple(int(s) for s in shape), "float32")


def example_inputs(specs: Sequence[TensorSpec], seed: int = 0) -> dict[str, Tensor]:
    """Seeded standard-normal tensors for tracing. The values never steer control flow in the
    wrappers (TopK and Gather are traced as ops), so any finite input gives the same graph."""
    gen = torch.Generator().manual_seed(seed)
    return {s.name: torch.randn(*(int(d) for d in s.shape), generator=gen) for s in specs}


def export_graph(graph: DenseGraph, path: Path, *, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Trace ``graph.module`` to ``path``; return the checked, shape-inferred model (as saved).

    Raises ``PackageError`` naming the file and tensor if the graph's inputs or outputs differ
    from what the preset promises.
    """
    module = graph.module.eval()
    args = tuple(example_inputs(graph.inputs).values())
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The exporter's own deprecation notice; shape reads in the models' input checks that
        # become constants (intended: every graph is static); Slice folding that step 2 does.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=opset,
                          input_names=[s.name for s in graph.inputs],
                          output_names=[s.name for s in graph.outputs],
                          do_constant_folding=True, export_params=True)
    simplify(buffer.getvalue(), path)
    model = check_and_infer(_drop_unused_opsets(onnx.load(str(path))))
    model.producer_name = "bevdeploy"
    model.graph.name = graph.name
    _check_io(model, graph, path)
    onnx.save(model, str(path))
    return model


def simplify(model_bytes: bytes, path: Path) -> None:
    """Write ``model_bytes`` to ``path`` after ONNX Runtime's basic optimizations.

    Only the *basic* level is used: its rewrites produce standard ONNX ops, so the file stays
    portable to TensorRT (higher levels insert ``com.microsoft`` kernels).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _drop_unused_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime declares every domain it knows in a saved model; keep the used ones."""
    used = {n.domain for n in model.graph.node} | {""}
    kept = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model


def check_and_infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """Full checker, then strict shape inference with data propagation (static shapes)."""
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                             data_prop=True)


def tensor_specs(values: Sequence[onnx.ValueInfoProto]) -> tuple[TensorSpec, ...]:
    """Name, shape (symbolic dims as their name) and numpy dtype name of graph values."""
    specs = []
    for v in values:
        t = v.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                      for d in t.shape.dim)
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name
        specs.append(TensorSpec(v.name, shape, dtype))
    return tuple(specs)


def graph_io(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The graph's true inputs (initializers excluded) and outputs."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    return tensor_specs(inputs), tensor_specs(model.graph.output)


def op_census(model: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type, subgraphs included; custom-domain ops as ``domain::Op``.
    Sorted by count (descending), then name, so manifests diff cleanly."""
    counts: Counter[str] = Counter()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            custom = node.domain not in ("", "ai.onnx")
            counts[f"{node.domain}::{node.op_type}" if custom else node.op_type] += 1
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(sub)

    walk(model.graph)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def model_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset the model was written for."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _check_io(model: onnx.ModelProto, graph: DenseGraph, path: Path) -> None:
    inputs, outputs = graph_io(model)
    for kind, got, want in (("inputs", inputs, graph.inputs), ("outputs", outputs, graph.outputs)):
        if [s.name for s in got] != [s.name for s in want]:
            raise PackageError(f"graph {kind} are {[s.name for s in got]}, expected "
                               f"{[s.name for s in want]}", path=path, field=kind)
        for g, w in zip(got, want):
            if g != w:
                raise PackageError(f"{g.name}: exported as {list(g.shape)} {g.dtype}, the preset "
                                   f"implies {list(w.shape)} {w.dtype}", path=path,
                                   field=f"{kind}.{g.name}")
