"""The ONNX graphs ``bench.peaks`` times: a MatMul and a 3×3 Conv, in float32 and in the QDQ
form ``bevdeploy optimize --int8`` writes (``optimize.int8``: QUInt8 activations with a zero
point, QInt8 symmetric weights, per output channel for the Conv, ``reduce_range`` 7-bit
weights), so that an engine's INT8 peak is measured on the pattern its INT8 modules run as
(ONNX Runtime fuses it into QLinearConv / QLinearMatMul, OpenVINO into its INT8 kernels)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_OPSET = 17
_IR_VERSION = 8  # what every ONNX Runtime and OpenVINO release of the extras reads


@dataclass(frozen=True)
class Sizes:
    """Problem sizes: an ``n``³ MatMul and a ``channels`` → ``channels`` 3×3 Conv over an
    ``hw`` × ``hw`` map. The defaults take ~10–70 ms a call on 2 AVX-512 cores: large enough
    that thread start-up is noise, small enough that a peak is measured in a second or two."""

    n: int = 2048
    channels: int = 256
    hw: int = 96

    @property
    def matmul_macs(self) -> int:
        return self.n ** 3

    @property
    def conv_macs(self) -> int:
        return self.channels * self.channels * 9 * self.hw * self.hw


@dataclass(frozen=True)
class Problem:
    """One serialized graph with input ``x`` and output ``y``."""

    kind: str  # "matmul" or "conv": which input it takes (bench.peaks._inputs)
    precision: str  # fp32 or int8 (QDQ)
    kernel: str  # in words
    macs: int
    model: bytes


def problem_graphs(sizes: Sizes) -> list[Problem]:
    """MatMul and Conv at ``sizes``, each float32 and QDQ."""
    n, c, hw = sizes.n, sizes.channels, sizes.hw
    rng = np.random.default_rng(1)
    matmul_w = (rng.standard_normal((n, n), dtype=np.float32) / np.sqrt(n)).astype(np.float32)
    conv_w = (rng.standard_normal((c, c, 3, 3), dtype=np.float32)
              / np.sqrt(9 * c)).astype(np.float32)
    matmul = f"MatMul {n}³"
    conv = f"Conv 3×3 {c}→{c} on {hw}×{hw}"
    return [
        Problem("matmul", "fp32", matmul, sizes.matmul_macs,
                _graph("MatMul", (n, n), (n, n), matmul_w, {}, qdq=False)),
        Problem("conv", "fp32", conv, sizes.conv_macs,
                _graph("Conv", (1, c, hw, hw), (1, c, hw, hw), conv_w, {"pads": [1, 1, 1, 1]},
                       qdq=False)),
        Problem("matmul", "int8", f"{matmul} QDQ u8s8", sizes.matmul_macs,
                _graph("MatMul", (n, n), (n, n), matmul_w, {}, qdq=True)),
        Problem("conv", "int8", f"{conv} QDQ u8s8", sizes.conv_macs,
                _graph("Conv", (1, c, hw, hw), (1, c, hw, hw), conv_w, {"pads": [1, 1, 1, 1]},
                       qdq=True)),
    ]


def _graph(op: str, x_shape: tuple[int, ...], y_shape: tuple[int, ...], weight: np.ndarray,
           attrs: dict, *, qdq: bool) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    inits = []
    nodes = []
    x, w, y = "x", "w", "y"
    if qdq:
        per_channel = op == "Conv"  # MatMul weights per tensor, as ORT's quantizer writes them
        flat = np.abs(weight).reshape(weight.shape[0], -1).max(axis=1) if per_channel \
            else np.abs(weight).max()
        scale = (np.maximum(flat, 1e-8) / 63.0).astype(np.float32)  # reduce_range: 7-bit
        shaped = scale.reshape(-1, *([1] * (weight.ndim - 1))) if per_channel else scale
        quantized = np.clip(np.round(weight / shaped), -64, 63).astype(np.int8)
        zero = np.zeros(scale.shape, dtype=np.int8)
        inits += [numpy_helper.from_array(quantized, "w_q"),
                  numpy_helper.from_array(scale, "w_scale"),
                  numpy_helper.from_array(zero, "w_zero"),
                  numpy_helper.from_array(np.array(4.0 / 255, np.float32), "x_scale"),
                  numpy_helper.from_array(np.array(128, np.uint8), "x_zero"),
                  numpy_helper.from_array(np.array(8.0 / 255, np.float32), "y_scale"),
                  numpy_helper.from_array(np.array(128, np.uint8), "y_zero")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
                  helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
                  helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"],
                                   **({"axis": 0} if per_channel else {}))]
        x, w, y = "x_dq", "w_dq", "y_float"
    else:
        inits.append(numpy_helper.from_array(weight, "w"))
    nodes.append(helper.make_node(op, [x, w], [y], **attrs))
    if qdq:
        nodes += [helper.make_node("QuantizeLinear", ["y_float", "y_scale", "y_zero"], ["y_q"]),
                  helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero"], ["y"])]
    graph = helper.make_graph(nodes, f"peak_{op.lower()}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = _IR_VERSION
    return model.SerializeToString()
