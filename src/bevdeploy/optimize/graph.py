"""Facts about an ONNX graph that every optimization pass reports or checks.

An optimized module must be a drop-in replacement: the runtime binds it by the manifest's input
and output names, shapes and dtypes, so ``check_io_kept`` refuses a pass whose result changed
any of them. Node counts and serialized sizes are what the before/after tables print.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from bevdeploy.errors import PackageError
from bevdeploy.export.onnx_utils import graph_io

# Node types ONNX Runtime's quantizer gives INT8 weights (the layers a sensitivity report ranks).
WEIGHTED_OPS: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")
QDQ_OPS: tuple[str, ...] = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class GraphStats:
    """Size of one module file: node count and serialized bytes."""

    nodes: int
    bytes: int

    @classmethod
    def of(cls, model: onnx.ModelProto) -> "GraphStats":
        return cls(nodes=len(model.graph.node), bytes=model.ByteSize())


def check_io_kept(before: onnx.ModelProto, after: onnx.ModelProto, *, module: str, step: str,
                  path: Path) -> None:
    """Refuse ``after`` if its graph inputs or outputs differ from ``before``'s in name, order,
    shape or dtype (the runtime would then refuse, or worse, misbind, the package)."""
    for kind, old, new in zip(("inputs", "outputs"), graph_io(before), graph_io(after)):
        if old != new:
            raise PackageError(f"{step} changed the {kind} of {module}: {_text(old)} became "
                               f"{_text(new)}", path=path, field=f"modules.{module}.{kind}")


def weighted_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes with a constant weight input, in graph (topological) order."""
    constants = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node
            if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in constants]


def int8_layers(model: onnx.ModelProto) -> list[str]:
    """Weighted layers of a QDQ graph whose weight arrives through a ``DequantizeLinear`` (INT8
    weights) and whose activation input does too: the layers that really compute in INT8."""
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in model.graph.node
            if n.op_type in WEIGHTED_OPS and len(n.input) > 1
            and n.input[0] in dq_outputs and n.input[1] in dq_outputs]


def _text(specs: tuple) -> str:
    return "[" + ", ".join(f"{s.name} {list(s.shape)} {s.dtype}" for s in specs) + "]"
