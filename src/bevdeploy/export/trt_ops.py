"""The ONNX operators TensorRT's ONNX parser accepts, so an export can be checked for
TensorRT-parsability on a machine without TensorRT.

Source: the "Operator Support Matrix" of ``docs/operators.md`` in the onnx/onnx-tensorrt
repository at commit ``96e781103cfc4adf4a6bb557e94bac8e693f6f4c`` ("ONNX-TensorRT 10.1 GA
release", 2024-06-17), which covers TensorRT 10.x and opsets 9–20. ``SUPPORTED_OPS`` is every
row marked ``Y`` there; rows marked ``N`` are left out. Of the per-operator restrictions listed
in the same table, only those our dense graphs could plausibly hit are checked here (TopK's
``K < 3840`` and ``sorted = 1``; MaxPool without the ``Indices`` output). Ops in a custom domain
(such as NVIDIA's ``nv::CustomLayerNormalization``) need a plugin and are reported as
unsupported.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

SOURCE = ("onnx/onnx-tensorrt docs/operators.md @ 96e781103cfc4adf4a6bb557e94bac8e693f6f4c "
          "(TensorRT 10.1 GA)")

SUPPORTED_OPS: frozenset[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid HardSwish
Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu
Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence
RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid
Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

TOPK_MAX_K = 3840  # "K input must be less than 3840"


def _constant_values(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Tensors whose value is known statically: initializers and ``Constant`` node outputs."""
    values = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = attr.t
    return values


def tensorrt_violations(model: onnx.ModelProto) -> list[str]:
    """Every reason TensorRT's ONNX parser would refuse ``model``; empty when it parses.

    Each entry names the node, so a failing export points at the layer to rewrite.
    """
    problems: list[str] = []
    graph = model.graph
    constants = _constant_values(graph)
    for node in graph.node:
        label = f"{node.op_type} node {node.name or node.output[0]!r}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{label}: custom domain {node.domain!r} needs a TensorRT plugin")
            continue
        if node.op_type not in SUPPORTED_OPS:
            problems.append(f"{label}: not supported by TensorRT's ONNX parser")
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "TopK":
            if attrs.get("sorted", 1) != 1:
                problems.append(f"{label}: 'sorted' must be 1")
            k = constants.get(node.input[1]) if len(node.input) > 1 else None
            if k is None:
                problems.append(f"{label}: K must be a constant")
            elif int(numpy_helper.to_array(k).reshape(-1)[0]) >= TOPK_MAX_K:
                problems.append(f"{label}: K must be less than {TOPK_MAX_K}")
        if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
            problems.append(f"{label}: the Indices output is not supported")
    return problems
