"""ONNX graph → ``torch.fx.GraphModule``, for exactly the operators bevdeploy's exporter emits.

The ``torch-cuda`` backend runs a package's dense modules as PyTorch modules built from the
package's ONNX files, so a deployment needs no model code. ``onnx2torch`` was evaluated for this
and not used: its converters read shape-like operands (Reshape's shape, Slice's starts, Pad's
pads, Resize's sizes) from *tensors at run time* (``shape.tolist()``, ``torch.Size(shape)``), a
device→host read per op that stalls the GPU queue and is illegal inside CUDA-graph capture; it
also depends on torchvision (a second wheel to match the ``torch==`` pin) and its last release
is from 2024. Our graphs are small in op variety, so this module converts them itself.

**Static and dynamic values.** Every ONNX tensor is either *static* (an initializer, a
``Constant``, or computed from those alone: folded here, at conversion time, by the same op
implementation) or *dynamic* (it depends on a graph input and becomes an fx node). Shape-like
operands must be static: they become Python ints in the generated code, so a run launches
kernels only. A dynamic one, an unknown op or an attribute value this converter does not
implement is a ``PackageError`` naming the op and the node.

**One float dtype.** The module computes in the float dtype chosen at conversion (fp32, fp16 or
bf16): float initializers are stored in it, and a ``Cast`` to any float type casts to it. The
graph's own float casts (an FP16 package's I/O casts, the head's bool→float mask) then follow the
runner's precision instead of pinning one.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import fx

from bevdeploy.errors import PackageError

Value = Any  # fx.Node (dynamic) or np.ndarray (static)

# ONNX element types → torch dtypes (float types map to the module's compute dtype instead).
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}
_OTHER_TYPES = {onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32,
                onnx.TensorProto.INT8: torch.int8, onnx.TensorProto.UINT8: torch.uint8,
                onnx.TensorProto.BOOL: torch.bool}


# ---------------------------------------------------------------------------------- builder


class _Builder:
    """Accumulates the fx graph; folds ops whose operands are all static."""

    def __init__(self, dtype: torch.dtype, source: Path, opset: int) -> None:
        self.graph = fx.Graph()
        self.opset = opset
        self.root = torch.nn.Module()
        self.dtype = dtype
        self.source = source
        self._buffers: dict[int, fx.Node] = {}
        self._alive: list[np.ndarray] = []  # keeps ids in ``_buffers`` unique

    def operand(self, value: Value) -> Any:
        """``value`` as an argument of a graph node: static arrays become module buffers."""
        if not isinstance(value, np.ndarray):
            return value
        node = self._buffers.get(id(value))
        if node is None:
            tensor = torch.from_numpy(np.array(value, copy=True))
            if tensor.is_floating_point():
                tensor = tensor.to(self.dtype)
            name = f"c{len(self._buffers)}"
            self.root.register_buffer(name, tensor)
            node = self.graph.get_attr(name)
            self._buffers[id(value)] = node
            self._alive.append(value)
        return node

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Value:
        """A graph node calling ``fn``, or ``fn``'s value now when no operand is dynamic."""
        if not any(isinstance(a, fx.Node) for a in _flat((args, kwargs))):
            result = fn(*_tree(args, _to_torch), **_tree(kwargs, _to_torch))
            return _tree(result, _to_numpy)
        return self.graph.call_function(fn, _tree(args, self.operand),
                                        _tree(kwargs, self.operand))

    def item(self, value: Value, index: int) -> Value:
        """Output ``index`` of a multi-output op."""
        if isinstance(value, fx.Node):
            return self.graph.call_function(operator.getitem, (value, index))
        return value[index]


def _flat(tree: Any) -> list[Any]:
    if isinstance(tree, (list, tuple)):
        return [leaf for item in tree for leaf in _flat(item)]
    if isinstance(tree, dict):
        return [leaf for item in tree.values() for leaf in _flat(item)]
    return [tree]


def _tree(tree: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(tree, tuple):
        return tuple(_tree(item, fn) for item in tree)
    if isinstance(tree, list):
        return [_tree(item, fn) for item in tree]
    if isinstance(tree, dict):
        return {k: _tree(v, fn) for k, v in tree.items()}
    return fn(tree)


def _to_torch(value: Any) -> Any:
    return torch.from_numpy(np.array(value, copy=True)) if isinstance(value, np.ndarray) else value


def _to_numpy(value: Any) -> Any:
    return value.numpy() if isinstance(value, torch.Tensor) else value


@dataclass
class _Node:
    """One ONNX node being converted: its operands (None for an omitted optional input)."""

    proto: onnx.NodeProto
    inputs: list[Value | None]
    attrs: dict[str, Any]
    g: _Builder

    @property
    def label(self) -> str:
        return f"{self.proto.op_type} node {self.proto.name or self.proto.output[0]!r}"

    def fail(self, message: str) -> PackageError:
        return PackageError(f"{self.label}: {message}", path=self.g.source,
                            field=f"nodes.{self.proto.name or self.proto.output[0]}")

    def static(self, index: int, what: str) -> np.ndarray:
        """Operand ``index`` as a constant array; refused if it depends on a graph input."""
        value = self.inputs[index] if index < len(self.inputs) else None
        if value is None:
            raise self.fail(f"missing input {what!r}")
        if not isinstance(value, np.ndarray):
            raise self.fail(f"input {what!r} depends on the graph inputs; the torch backend "
                            "needs it constant (static shapes)")
        return value

    def optional_static(self, index: int, what: str) -> np.ndarray | None:
        present = index < len(self.inputs) and self.inputs[index] is not None
        return self.static(index, what) if present else None

    def attr(self, name: str, default: Any = None) -> Any:
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value


def _ints(array: np.ndarray | Sequence[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(array).reshape(-1))


# ---------------------------------------------------------------------- run-time helpers
# Called from the generated code; every argument but the tensors is a Python constant.


def _reshape_keep_zeros(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """ONNX Reshape where a 0 copies the input's dimension."""
    return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(shape)])


def _permute_reversed(x: torch.Tensor) -> torch.Tensor:
    return x.permute(tuple(reversed(range(x.dim()))))


def _flatten(x: torch.Tensor, axis: int) -> torch.Tensor:
    axis = axis % x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _unsqueeze_axes(x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return x


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ONNX Div: true division for floats, truncating division for integers."""
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _gather(data: torch.Tensor, indices: torch.Tensor, axis: int, wrap: bool) -> torch.Tensor:
    """ONNX Gather: ``data.shape[:axis] + indices.shape + data.shape[axis + 1:]``."""
    axis = axis % data.dim()
    if wrap:  # negative indices count from the end
        indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    picked = torch.index_select(data, axis, indices.reshape(-1))
    return picked.reshape(data.shape[:axis] + indices.shape + data.shape[axis + 1:])


def _layer_norm(x: torch.Tensor, axis: int, weight: torch.Tensor, bias: torch.Tensor | None,
                eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[axis % x.dim():], weight, bias, eps)


def _gemm(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, alpha: float, beta: float,
          trans_a: bool, trans_b: bool) -> torch.Tensor:
    """The general Gemm (``B`` dynamic); a constant ``B`` becomes ``F.linear`` instead."""
    y = torch.matmul(a.t() if trans_a else a, b.t() if trans_b else b)
    if alpha != 1.0:
        y = y * alpha
    return y if c is None else y + (c * beta if beta != 1.0 else c)


def _split(x: torch.Tensor, sizes: tuple[int, ...] | int, axis: int) -> tuple[torch.Tensor, ...]:
    return tuple(torch.split(x, sizes, dim=axis))


# ---------------------------------------------------------------------------------- op converters


def _elementwise(fn: Callable[..., Any]) -> Callable[[_Node], list[Value]]:
    def convert(n: _Node) -> list[Value]:
        return [n.g.call(fn, *n.inputs)]
    return convert


def _conv(n: _Node) -> list[Value]:
    x, w = n.inputs[0], n.static(1, "W")
    b = n.inputs[2] if len(n.inputs) > 2 else None
    spatial = w.ndim - 2
    if n.attr("auto_pad", "NOTSET") != "NOTSET":
        raise n.fail(f"auto_pad={n.attr('auto_pad')!r} is not supported (export with explicit "
                     "pads)")
    pads = _ints(n.attr("pads", [0] * 2 * spatial))
    begin, end = pads[:spatial], pads[spatial:]
    if spatial not in (1, 2, 3):
        raise n.fail(f"{spatial}-D convolution is not supported")
    if begin != end:
        x = n.g.call(F.pad, x, [p for i in reversed(range(spatial)) for p in (begin[i], end[i])])
        begin = (0,) * spatial
    fn = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    return [n.g.call(fn, x, w, b, stride=_ints(n.attr("strides", [1] * spatial)),
                     padding=begin, dilation=_ints(n.attr("dilations", [1] * spatial)),
                     groups=int(n.attr("group", 1)))]


def _conv_transpose(n: _Node) -> list[Value]:
    x, w = n.inputs[0], n.static(1, "W")
    b = n.inputs[2] if len(n.inputs) > 2 else None
    spatial = w.ndim - 2
    pads = _ints(n.attr("pads", [0] * 2 * spatial))
    if n.attr("auto_pad", "NOTSET") != "NOTSET" or pads[:spatial] != pads[spatial:] \
            or "output_shape" in n.attrs or spatial not in (1, 2, 3):
        raise n.fail("only explicit symmetric pads without output_shape are supported")
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[spatial - 1]
    return [n.g.call(fn, x, w, b, stride=_ints(n.attr("strides", [1] * spatial)),
                     padding=pads[:spatial],
                     output_padding=_ints(n.attr("output_padding", [0] * spatial)),
                     groups=int(n.attr("group", 1)),
                     dilation=_ints(n.attr("dilations", [1] * spatial)))]


def _max_pool(n: _Node) -> list[Value]:
    kernel = _ints(n.attr("kernel_shape"))
    spatial = len(kernel)
    pads = _ints(n.attr("pads", [0] * 2 * spatial))
    if n.attr("auto_pad", "NOTSET") != "NOTSET" or pads[:spatial] != pads[spatial:] \
            or len(n.proto.output) > 1 or spatial not in (1, 2, 3):
        raise n.fail("only explicit symmetric pads and no Indices output are supported")
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial - 1]
    return [n.g.call(fn, n.inputs[0], kernel, stride=_ints(n.attr("strides", [1] * spatial)),
                     padding=pads[:spatial], dilation=_ints(n.attr("dilations", [1] * spatial)),
                     ceil_mode=bool(n.attr("ceil_mode", 0)))]


def _gemm_node(n: _Node) -> list[Value]:
    a, b = n.inputs[0], n.inputs[1]
    c = n.inputs[2] if len(n.inputs) > 2 else None
    alpha, beta = float(n.attr("alpha", 1.0)), float(n.attr("beta", 1.0))
    trans_a, trans_b = bool(n.attr("transA", 0)), bool(n.attr("transB", 0))
    if isinstance(b, np.ndarray) and (c is None or isinstance(c, np.ndarray)):
        # F.linear(x, W, bias) = x @ W.T + bias with W (N, K): fold transB, alpha and beta.
        weight = np.ascontiguousarray(b if trans_b else b.T) * np.asarray(alpha, b.dtype)
        bias = None
        if c is not None:
            bias = np.broadcast_to(c * np.asarray(beta, c.dtype), (weight.shape[0],)).copy()
        x = n.g.call(torch.t, a) if trans_a else a
        return [n.g.call(F.linear, x, weight, bias)]
    return [n.g.call(_gemm, a, b, c, alpha, beta, trans_a, trans_b)]


def _reshape(n: _Node) -> list[Value]:
    if n.attr("allowzero", 0):
        raise n.fail("allowzero=1 is not supported")
    shape = _ints(n.static(1, "shape"))
    if 0 in shape:
        return [n.g.call(_reshape_keep_zeros, n.inputs[0], shape)]
    return [n.g.call(torch.reshape, n.inputs[0], shape)]


def _transpose(n: _Node) -> list[Value]:
    perm = n.attr("perm")
    if perm is None:
        return [n.g.call(_permute_reversed, n.inputs[0])]
    return [n.g.call(torch.permute, n.inputs[0], _ints(perm))]


def _squeeze(n: _Node) -> list[Value]:
    axes = n.optional_static(1, "axes") if n.g.opset >= 13 else n.attr("axes")
    if axes is None:
        return [n.g.call(torch.squeeze, n.inputs[0])]
    return [n.g.call(torch.squeeze, n.inputs[0], _ints(axes))]


def _unsqueeze(n: _Node) -> list[Value]:
    axes = n.static(1, "axes") if n.g.opset >= 13 else n.attr("axes")
    return [n.g.call(_unsqueeze_axes, n.inputs[0], _ints(axes))]


def _concat(n: _Node) -> list[Value]:
    return [n.g.call(torch.cat, list(n.inputs), dim=int(n.attr("axis")))]


def _split_node(n: _Node) -> list[Value]:
    axis = int(n.attr("axis", 0))
    count = len(n.proto.output)
    sizes = n.optional_static(1, "split") if n.g.opset >= 13 else n.attr("split")
    if sizes is None:
        if "num_outputs" in n.attrs and int(n.attr("num_outputs")) != count:
            raise n.fail("num_outputs differs from the node's output count")
        result = n.g.call(torch.tensor_split, n.inputs[0], count, dim=axis)
    else:
        result = n.g.call(_split, n.inputs[0], list(_ints(sizes)), axis)
    return [n.g.item(result, i) for i in range(count)]


def _slice(n: _Node) -> list[Value]:
    starts = _ints(n.static(1, "starts"))
    ends = _ints(n.static(2, "ends"))
    axes = n.optional_static(3, "axes")
    steps = n.optional_static(4, "steps")
    axes_t = _ints(axes) if axes is not None else tuple(range(len(starts)))
    steps_t = _ints(steps) if steps is not None else (1,) * len(starts)
    if any(s < 1 for s in steps_t):
        raise n.fail(f"steps {list(steps_t)}: only positive steps are supported")
    if any(a < 0 for a in axes_t):
        raise n.fail(f"negative axes {list(axes_t)} are not supported")
    index: list[slice] = [slice(None)] * (max(axes_t) + 1)
    big = 2**62  # ONNX writes "to the end" as INT64_MAX; Python slicing clamps
    for axis, start, end, step in zip(axes_t, starts, ends, steps_t):
        index[axis] = slice(start, None if end >= big else end, None if step == 1 else step)
    return [n.g.call(operator.getitem, n.inputs[0], tuple(index))]


def _gather_node(n: _Node) -> list[Value]:
    data, indices = n.inputs[0], n.inputs[1]
    axis = int(n.attr("axis", 0))
    if isinstance(indices, np.ndarray) and indices.ndim == 0:
        return [n.g.call(torch.select, data, axis, int(indices))]
    wrap = not isinstance(indices, np.ndarray) or bool((indices < 0).any())
    if isinstance(indices, np.ndarray):
        indices = indices.astype(np.int64)
    return [n.g.call(_gather, data, indices, axis, wrap)]


def _flatten_node(n: _Node) -> list[Value]:
    return [n.g.call(_flatten, n.inputs[0], int(n.attr("axis", 1)))]


def _softmax(n: _Node) -> list[Value]:
    if n.g.opset < 13:
        raise n.fail("Softmax before opset 13 (flattening semantics) is not supported")
    return [n.g.call(torch.softmax, n.inputs[0], int(n.attr("axis", -1)))]


def _layer_norm_node(n: _Node) -> list[Value]:
    scale = n.inputs[1]
    bias = n.inputs[2] if len(n.inputs) > 2 else None
    if len(n.proto.output) > 1 and any(n.proto.output[1:]):
        raise n.fail("the Mean / InvStdDev outputs are not supported")
    return [n.g.call(_layer_norm, n.inputs[0], int(n.attr("axis", -1)), scale, bias,
                     float(n.attr("epsilon", 1e-5)))]


def _resize(n: _Node) -> list[Value]:
    mode = n.attr("mode", "nearest")
    transform = n.attr("coordinate_transformation_mode", "half_pixel")
    scales = n.optional_static(2, "scales")
    sizes = n.optional_static(3, "sizes")
    if n.attr("antialias", 0) or n.attr("axes") is not None \
            or n.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise n.fail("antialias, axes and keep_aspect_ratio_policy are not supported")
    # torch's bilinear (align_corners=False) is ONNX half_pixel; pytorch_half_pixel differs
    # from it only for an output dimension of 1. Nearest/asymmetric/floor is torch's "nearest".
    if mode == "linear" and transform in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        kwargs: dict[str, Any] = {"mode": "bilinear",
                                  "align_corners": transform == "align_corners"}
    elif mode == "nearest" and transform == "asymmetric" \
            and n.attr("nearest_mode", "round_prefer_floor") == "floor":
        kwargs = {"mode": "nearest"}
    else:
        raise n.fail(f"mode {mode!r} with coordinate_transformation_mode {transform!r} is not "
                     "supported")
    if sizes is not None and sizes.size:
        target = _ints(sizes)
        if len(target) != 4:
            raise n.fail("only 4-D (N, C, H, W) inputs are supported")
        kwargs["size"] = target[2:]
    elif scales is not None and scales.size == 4 and tuple(scales[:2]) == (1.0, 1.0):
        kwargs["scale_factor"] = tuple(float(s) for s in scales[2:])
    else:
        raise n.fail("needs constant 4-D sizes, or scales of 1 on N and C")
    return [n.g.call(F.interpolate, n.inputs[0], **kwargs)]


def _pad(n: _Node) -> list[Value]:
    if n.attr("mode", "constant") != "constant":
        raise n.fail(f"mode {n.attr('mode')!r} is not supported")
    if len(n.inputs) > 3 and n.inputs[3] is not None:
        raise n.fail("the axes input is not supported")
    pads = _ints(n.static(1, "pads"))
    value = n.optional_static(2, "constant_value")
    rank = len(pads) // 2
    torch_pads = [p for i in reversed(range(rank)) for p in (pads[i], pads[rank + i])]
    fill = 0.0 if value is None or value.size == 0 else float(value.reshape(-1)[0])
    return [n.g.call(F.pad, n.inputs[0], torch_pads, "constant", fill)]


def _topk(n: _Node) -> list[Value]:
    k = _ints(n.static(1, "K"))[0]
    result = n.g.call(torch.topk, n.inputs[0], k, dim=int(n.attr("axis", -1)),
                      largest=bool(n.attr("largest", 1)), sorted=bool(n.attr("sorted", 1)))
    return [n.g.item(result, 0), n.g.item(result, 1)]


def _cast(n: _Node) -> list[Value]:
    to = int(n.attr("to"))
    if to in _FLOAT_TYPES and isinstance(n.inputs[0], np.ndarray):
        return [n.inputs[0].astype(np.float32)]  # a constant: stored in the compute dtype
    if to in _FLOAT_TYPES:
        dtype = n.g.dtype
    elif to in _OTHER_TYPES:
        dtype = _OTHER_TYPES[to]
    else:
        raise n.fail(f"cast to {onnx.TensorProto.DataType.Name(to)} is not supported")
    return [n.g.call(torch.Tensor.to, n.inputs[0], dtype)]


def _identity(n: _Node) -> list[Value]:
    return [n.inputs[0]]


_CONVERTERS: dict[str, Callable[[_Node], list[Value]]] = {
    "Add": _elementwise(torch.add), "Sub": _elementwise(torch.sub),
    "Mul": _elementwise(torch.mul), "Div": _elementwise(_div),
    "Relu": _elementwise(torch.relu), "Sigmoid": _elementwise(torch.sigmoid),
    "Erf": _elementwise(torch.erf), "Equal": _elementwise(torch.eq),
    "Where": _elementwise(torch.where), "MatMul": _elementwise(torch.matmul),
    "Conv": _conv, "ConvTranspose": _conv_transpose, "MaxPool": _max_pool, "Gemm": _gemm_node,
    "Reshape": _reshape, "Transpose": _transpose, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "Concat": _concat, "Split": _split_node, "Slice": _slice, "Gather": _gather_node,
    "Flatten": _flatten_node, "Softmax": _softmax, "LayerNormalization": _layer_norm_node,
    "Resize": _resize, "Pad": _pad, "TopK": _topk, "Cast": _cast, "Identity": _identity,
}

SUPPORTED_OPS: frozenset[str] = frozenset(_CONVERTERS) | {"Constant"}


# ---------------------------------------------------------------------------------- entry point


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    value = helper.get_attribute_value(attr)
    dtypes = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
              "value_ints": np.int64}
    if attr.name not in dtypes:
        raise PackageError(f"Constant node {node.name!r}: attribute {attr.name!r} is not "
                           "supported", field=f"nodes.{node.name}")
    return np.asarray(value, dtype=dtypes[attr.name])


def convert(model: onnx.ModelProto, *, dtype: torch.dtype = torch.float32,
            source: str | Path = "<onnx>") -> fx.GraphModule:
    """The ONNX ``model`` as a GraphModule computing in float ``dtype``.

    Its ``forward`` takes the graph inputs positionally, in graph order, and returns a tuple of
    the graph outputs in graph order. Raises ``PackageError`` (path ``source``) naming the first
    node it cannot convert.
    """
    source = Path(source)
    opsets = {o.domain: o.version for o in model.opset_import}
    opset = opsets.get("", opsets.get("ai.onnx", 0))
    g = _Builder(dtype, source, opset)
    graph = model.graph
    values: dict[str, Value] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for inp in graph.input:
        if inp.name not in values:
            values[inp.name] = g.graph.placeholder(_identifier(inp.name))
    for proto in graph.node:
        if proto.domain not in ("", "ai.onnx"):
            raise PackageError(f"{proto.op_type} node {proto.name!r}: custom domain "
                               f"{proto.domain!r} has no torch implementation", path=source,
                               field=f"nodes.{proto.name}")
        if proto.op_type == "Constant":
            values[proto.output[0]] = _constant_value(proto)
            continue
        convert_op = _CONVERTERS.get(proto.op_type)
        if convert_op is None:
            raise PackageError(f"{proto.op_type} node {proto.name!r}: the torch backend does "
                               f"not implement op {proto.op_type!r} (it converts "
                               f"{sorted(SUPPORTED_OPS)})", path=source,
                               field=f"nodes.{proto.name}")
        missing = [name for name in proto.input if name and name not in values]
        if missing:
            raise PackageError(f"{proto.op_type} node {proto.name!r}: inputs {missing} are "
                               "produced by no earlier node", path=source,
                               field=f"nodes.{proto.name}")
        node = _Node(proto, [values[name] if name else None for name in proto.input],
                     {a.name: helper.get_attribute_value(a) for a in proto.attribute}, g)
        outputs = convert_op(node)
        for name, value in zip(proto.output, outputs):
            if name:
                values[name] = value
    result = tuple(g.operand(values[o.name]) for o in graph.output)
    g.graph.output(result)
    module = fx.GraphModule(g.root, g.graph, class_name="OnnxModule")
    return module.eval()


def _identifier(name: str) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"in_{cleaned}"
