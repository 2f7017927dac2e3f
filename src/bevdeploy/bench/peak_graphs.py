"""The ONNX graphs ``bench.peaks`` times: a chain of MatMuls and a chain of 3×3 Convs, in
float32 and in the QDQ form ``bevdeploy optimize --int8`` writes (``optimize.int8``: QUInt8
activations with a zero point between the layers, QInt8 symmetric weights, per output channel
for the Conv, ``reduce_range`` 7-bit weights), so that an engine's INT8 peak is measured on the
pattern its INT8 modules run as (ONNX Runtime fuses it into QLinearConv / QLinearMatMul,
OpenVINO into its INT8 kernels).

A chain, not one layer: an engine converts a graph's float input into its own layout and
precision once and back at the output (OpenVINO reorders NCHW into blocked layouts, an INT8
graph quantizes), and a module's dozens of layers pay that once. A single 3×3 Conv 256→256 on
96×96 measured OpenVINO's INT8 at 1.5–2.0 TOP/s where four chained ones reached 3.2–3.6 and the
r50 INT8 backbone itself 3.3 (2-core AVX-512 VNNI/AMX Xeon; docs/bench/notes.md#roofline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

_OPSET = 17
_IR_VERSION = 8  # what every ONNX Runtime and OpenVINO release of the extras reads


@dataclass(frozen=True)
class Sizes:
    """Problem sizes: ``layers`` chained ``n``³ MatMuls, and ``layers`` chained ``channels``
    → ``channels`` 3×3 Convs over an ``hw`` × ``hw`` map. The defaults take ~10–200 ms a call
    on 2 AVX-512 cores: large enough that thread start-up and the edges' conversions are noise,
    small enough that a peak is measured in a second or two."""

    n: int = 2048
    channels: int = 512
    hw: int = 64
    layers: int = 4

    @property
    def matmul_macs(self) -> int:
        return self.layers * self.n ** 3

    @property
    def conv_macs(self) -> int:
        return self.layers * self.channels * self.channels * 9 * self.hw * self.hw


@dataclass(frozen=True)
class Problem:
    """One serialized graph with input ``x`` and output ``y``."""

    kind: str  # "matmul" or "conv": which input it takes (bench.peaks._inputs)
    precision: str  # fp32 or int8 (QDQ)
    kernel: str  # in words
    macs: int
    model: bytes


def problem_graphs(sizes: Sizes) -> list[Problem]:
    """The MatMul chain and the Conv chain at ``sizes``, each float32 and QDQ."""
    n, c, hw, layers = sizes.n, sizes.channels, sizes.hw, sizes.layers
    rng = np.random.default_rng(1)
    matmul_w = [(rng.standard_normal((n, n), dtype=np.float32) / np.sqrt(n)).astype(np.float32)
                for _ in range(layers)]
    conv_w = [(rng.standard_normal((c, c, 3, 3), dtype=np.float32)
               / np.sqrt(9 * c)).astype(np.float32) for _ in range(layers)]
    matmul = f"{layers}× MatMul {n}³"
    conv = f"{layers}× Conv 3×3 {c}→{c} on {hw}×{hw}"
    pads = {"pads": [1, 1, 1, 1]}
    return [
        Problem("matmul", "fp32", matmul, sizes.matmul_macs,
                _chain("MatMul", (n, n), matmul_w, {}, qdq=False)),
        Problem("conv", "fp32", conv, sizes.conv_macs,
                _chain("Conv", (1, c, hw, hw), conv_w, pads, qdq=False)),
        Problem("matmul", "int8", f"{matmul} QDQ u8s8", sizes.matmul_macs,
                _chain("MatMul", (n, n), matmul_w, {}, qdq=True)),
        Problem("conv", "int8", f"{conv} QDQ u8s8", sizes.conv_macs,
                _chain("Conv", (1, c, hw, hw), conv_w, pads, qdq=True)),
    ]


def _chain(op: str, shape: tuple[int, ...], weights: list[np.ndarray], attrs: dict, *,
           qdq: bool) -> bytes:
    """``x`` through one ``op`` per weight (shape-preserving), to ``y``; with ``qdq`` every
    activation is quantized and dequantized (QuantizeLinear → DequantizeLinear) before each
    layer and at the output, every weight stored as INT8 behind a DequantizeLinear."""
    # activations: scale 4/255 around zero point 128 covers ±2, the layers keep unit scale
    inits = [numpy_helper.from_array(np.array(4.0 / 255, np.float32), "a_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "a_zero")]
    nodes = []
    x = "x"
    for i, weight in enumerate(weights):
        if qdq:
            nodes += _quantize_dequantize(x, f"x{i}")
            x = f"x{i}_dq"
            per_channel = op == "Conv"  # MatMul weights per tensor, as ORT's quantizer writes
            peak = np.abs(weight).reshape(weight.shape[0], -1).max(axis=1) if per_channel \
                else np.abs(weight).max()
            scale = (np.maximum(peak, 1e-8) / 63.0).astype(np.float32)  # reduce_range: 7 bits
            shaped = scale.reshape(-1, *([1] * (weight.ndim - 1))) if per_channel else scale
            inits += [numpy_helper.from_array(
                          np.clip(np.round(weight / shaped), -64, 63).astype(np.int8), f"w{i}_q"),
                      numpy_helper.from_array(scale, f"w{i}_scale"),
                      numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"w{i}_zero")]
            nodes.append(helper.make_node("DequantizeLinear", [f"w{i}_q", f"w{i}_scale",
                                                               f"w{i}_zero"], [f"w{i}"],
                                          **({"axis": 0} if per_channel else {})))
        else:
            inits.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(helper.make_node(op, [x, f"w{i}"], [f"h{i}"], **attrs))
        x = f"h{i}"
    if qdq:
        nodes += _quantize_dequantize(x, "out")
        x = "out_dq"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(nodes, f"peak_{op.lower()}_chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              inits if qdq else inits[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = _IR_VERSION
    return model.SerializeToString()


def _quantize_dequantize(x: str, name: str) -> list[NodeProto]:
    """QuantizeLinear → DequantizeLinear of activation ``x`` (output ``{name}_dq``)."""
    return [helper.make_node("QuantizeLinear", [x, "a_scale", "a_zero"], [f"{name}_q"]),
            helper.make_node("DequantizeLinear", [f"{name}_q", "a_scale", "a_zero"],
                             [f"{name}_dq"])]
