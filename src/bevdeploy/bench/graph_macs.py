"""How much of a quantized module's work is INT8: the share of its weighted layers' MACs
whose operands come out of DequantizeLinear nodes (the QDQ form ``bevdeploy optimize --int8``
writes, which the engines run as integer kernels).

A module recorded as ``int8`` is rarely all INT8: layers the recipe or ``--exclude`` keep
float, and a head whose convolutions are INT8 while its transformer decoder stays float. The
roofline floors such a module with its INT8 MACs at the INT8 peak and the rest at the float
peak, so the share is read from the graph itself, with ONNX's shape inference giving each
layer's shapes; a layer whose shapes stay unknown makes the share unknown (the floor then
takes the module as all INT8, a lower floor than the truth).
"""

from __future__ import annotations

import math
from pathlib import Path

import onnx
from onnx import NodeProto, shape_inference

WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def int8_mac_share(path: str | Path) -> float | None:
    """The share of the MACs of ``path``'s weighted layers (``WEIGHTED_OPS``) that are INT8
    (both operands dequantized), or ``None`` when a layer's shapes cannot be inferred or the
    graph has no weighted layer."""
    model = shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes: dict[str, list[int | None]] = {
        t.name: list(t.dims) for t in graph.initializer}
    for value in [*graph.value_info, *graph.input, *graph.output]:
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None
                              for d in value.type.tensor_type.shape.dim]
    producer = {out: node.op_type for node in graph.node for out in node.output}
    total = quantized = 0
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        macs = _macs(node, shapes)
        if macs is None:
            return None
        total += macs
        if all(producer.get(name) == "DequantizeLinear" for name in node.input[:2]):
            quantized += macs
    return quantized / total if total else None


def _macs(node: NodeProto, shapes: dict[str, list[int | None]]) -> int | None:
    """Multiply-adds of one weighted layer from its operand and result shapes."""
    a, w = (shapes.get(name) for name in node.input[:2])
    out = shapes.get(node.output[0])
    if not a or not w or not out or None in (*a, *w, *out):
        return None
    op = node.op_type
    if op == "Conv":  # every output element sums C_in/groups × kernel products
        return math.prod(out) * math.prod(w[1:])
    if op == "ConvTranspose":  # every input element scatters into C_out/groups × kernel
        return math.prod(a) * math.prod(w[1:])
    if op == "MatMul":  # (..., M, K) @ (..., K, N)
        return math.prod(out) * a[-1]
    trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
    return math.prod(out) * (a[0] if trans_a else a[1])  # Gemm
