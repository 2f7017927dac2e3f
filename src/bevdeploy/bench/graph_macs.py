"""What a module's MACs are made of: the share of its weighted layers' MACs by layer kind
(convolutions or matrix products) and by whether they are INT8 (both operands come out of
DequantizeLinear nodes: the QDQ form ``bevdeploy optimize --int8`` writes, which the engines
run as integer kernels).

The roofline floors each share at its own peak (``bench.peaks`` measures a Conv and a MatMul
problem per engine and precision, and they differ: ONNX Runtime's u8s8 GEMM runs about twice
its QLinearConv's rate). A module recorded as ``int8`` is rarely all INT8 either: layers the
recipe or ``--exclude`` keep float, a head whose convolutions are INT8 while its transformer
decoder stays float. So the shares are read from the graph itself, ONNX's shape inference
giving each layer's shapes; a layer whose shapes stay unknown makes the mix unknown (the floor
then takes the whole module at its recorded precision and its engine's better problem).
"""

from __future__ import annotations

import math
from pathlib import Path

import onnx
from onnx import NodeProto, shape_inference

KINDS = {"Conv": "conv", "ConvTranspose": "conv", "MatMul": "matmul", "Gemm": "matmul"}


def mac_mix(path: str | Path) -> dict[str, float] | None:
    """The shares of ``path``'s weighted-layer MACs (``KINDS``) by ``"<kind> int8"`` /
    ``"<kind> float"`` (kind: conv or matmul), summing to 1; ``None`` when a layer's shapes
    cannot be inferred or the graph has no weighted layer."""
    model = shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes: dict[str, list[int | None]] = {
        t.name: list(t.dims) for t in graph.initializer}
    for value in [*graph.value_info, *graph.input, *graph.output]:
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None
                              for d in value.type.tensor_type.shape.dim]
    producer = {out: node.op_type for node in graph.node for out in node.output}
    macs: dict[str, int] = {}
    for node in graph.node:
        if node.op_type not in KINDS:
            continue
        count = _macs(node, shapes)
        if count is None:
            return None
        int8 = all(producer.get(name) == "DequantizeLinear" for name in node.input[:2])
        key = f"{KINDS[node.op_type]} {'int8' if int8 else 'float'}"
        macs[key] = macs.get(key, 0) + count
    total = sum(macs.values())
    return {key: count / total for key, count in sorted(macs.items())} if total else None


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
