"""The sparse-conv (SCN) ONNX file ``lidar.backbone.xyz.onnx``: schema, writer and reader.

TensorRT has no sparse convolution, so CUDA-BEVFusion ships the LiDAR backbone as an ONNX
*container* of custom nodes that its sparse-conv library (libspconv) parses itself
(docs/reference.md#scn-onnx-format, #libspconv-runtime). This module owns that format for bevdeploy,
torch-free, so the deploy path can load it without PyTorch:

* op types, attribute names and values are NVIDIA's (``SparseConvolution``, ``Add``, ``Relu``,
  ``ScatterDense``, ``Reshape``, ``Transpose``; ``kernel_size``, ``rulebook``, ``activation``…),
  and weights are ``(O, kx, ky, kz, I)`` with batch norm folded in and a bias always present,
  because NVIDIA's parser (``lidar-scn-onnx-parser.cpp``) reads exactly those;
* unlike NVIDIA's file, every custom node lives in its own domain (``DOMAIN``, declared in
  ``opset_import``) and the graph declares typed inputs, value_info and output, so the file
  passes ``onnx.checker.check_model(full_check=True)``. NVIDIA's parser ignores domains and
  value_info, so it still reads the nodes; it only accepts FLOAT16 initializers, so a file meant
  for libspconv must be written with ``float16`` weights;
* the sparse input is two graph inputs, voxel features ``[voxels, F]`` and voxel coordinates
  ``[voxels, 4]`` int32 ``(batch, x, y, z)`` with batch 0 (batch size 1, as CUDA-BEVFusion).
  Nodes reference only the features tensor; the coordinates travel with it implicitly, as in
  libspconv's ``SparseDTensor``. NVIDIA's file declares only the features; its parser registers
  every graph input and CUDA-BEVFusion binds ``input(0)``, so the features come first. Whether
  closed-source libspconv accepts the extra, node-less coordinates input is untested here.

Only the XYZ coordinate order is provided (``ScatterDense.format == "xyz"``). NVIDIA's
``--inverse`` ZYX variant (reversed kernels and coordinates) is not written or read:
CUDA-BEVFusion itself ships and runs the XYZ file, and the measured speed difference is gone
(docs/reference.md#scn-onnx-format).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from bevdeploy.io import atomic_write
from bevdeploy.errors import PackageError
from bevdeploy.package import TensorSpec

SCN_FILE = "lidar.backbone.xyz.onnx"
DOMAIN = "bevdeploy.spconv"
DOMAIN_VERSION = 1
ONNX_OPSET = 13  # no standard op is used; declared for tools that expect a default-domain import
GRAPH_NAME = "scn"

FEATURES_INPUT = "voxel_features"
COORDS_INPUT = "voxel_coords"
OUTPUT = "lidar_bev"
VOXELS_DIM = "voxels"  # symbolic voxel count of the input sparse tensor

OP_SPARSE_CONV = "SparseConvolution"
OP_ADD = "Add"
OP_RELU = "Relu"
OP_SCATTER_DENSE = "ScatterDense"
OP_RESHAPE = "Reshape"
OP_TRANSPOSE = "Transpose"
OP_TYPES = (OP_SPARSE_CONV, OP_ADD, OP_RELU, OP_SCATTER_DENSE, OP_RESHAPE, OP_TRANSPOSE)

ACTIVATIONS = ("ReLU", "None")
PRECISIONS = ("fp32", "fp16")
FORMAT_XYZ = "xyz"
NVIDIA_OUTPUT_BOUND = 200_000  # exptool.py's default per-layer bound on output voxels
NDIM = 3

_ONNX_TYPE = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16,
              "int32": TensorProto.INT32}
_DTYPE_OF = {onnx_type: name for name, onnx_type in _ONNX_TYPE.items()}

Triple = tuple[int, int, int]


# --------------------------------------------------------------------------------------------
# The layer list
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SparseConv:
    """One ``SparseConvolution`` node; ``weight`` is ``(O, kx, ky, kz, I)`` with BN folded in."""

    name: str
    inputs: tuple[str]
    output: str
    weight: np.ndarray
    bias: np.ndarray
    kernel_size: Triple
    stride: Triple
    padding: Triple
    dilation: Triple
    subm: bool
    rulebook: str  # spconv's indice_key: convs sharing it reuse one rulebook
    activation: str  # "ReLU" (fused) or "None"
    input_spatial_shape: Triple
    output_spatial_shape: Triple
    output_bound: int = NVIDIA_OUTPUT_BOUND
    precision: str = "fp32"
    output_precision: str = "fp32"

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[4])

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])


@dataclass(frozen=True)
class Add:
    """Element-wise sum of two sparse tensors on the same active sites (residual join)."""

    name: str
    inputs: tuple[str, str]
    output: str
    precision: str = "fp32"
    output_precision: str = "fp32"


@dataclass(frozen=True)
class Relu:
    name: str
    inputs: tuple[str]
    output: str


@dataclass(frozen=True)
class ScatterDense:
    """Sparse → dense ``(1, C, X, Y, Z)``; inactive sites are exactly zero."""

    name: str
    inputs: tuple[str]
    output: str
    input_spatial_shape: Triple
    output_shape: tuple[int, ...]
    format: str = FORMAT_XYZ


@dataclass(frozen=True)
class Transpose:
    name: str
    inputs: tuple[str]
    output: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Reshape:
    name: str
    inputs: tuple[str]
    output: str
    dims: tuple[int, ...]


ScnLayer = SparseConv | Add | Relu | ScatterDense | Transpose | Reshape


@dataclass(frozen=True)
class ScnGraph:
    """The whole sparse encoder as a topologically ordered layer list."""

    features: TensorSpec
    coords: TensorSpec
    output: TensorSpec
    layers: tuple[ScnLayer, ...]

    @property
    def sparse_convs(self) -> list[SparseConv]:
        return [layer for layer in self.layers if isinstance(layer, SparseConv)]

    @property
    def sparse_shape(self) -> Triple:
        """(X, Y, Z) grid of the input coordinates: the first conv's input spatial shape."""
        return self.sparse_convs[0].input_spatial_shape

    def census(self) -> dict[str, int]:
        """Layer counts, as the manifest records them."""
        return {"sparse_convs": len(self.sparse_convs),
                "adds": sum(isinstance(layer, Add) for layer in self.layers),
                "relus": sum(isinstance(layer, Relu) for layer in self.layers)}


# --------------------------------------------------------------------------------------------
# Consistency: one shape walk shared by the writer (value_info) and the reader (validation)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SparseMeta:
    spatial: Triple
    channels: int
    voxels: str  # symbolic active-site count; equal names mean equal site sets


def conv_output_spatial_shape(shape: Iterable[int], kernel: Iterable[int], stride: Iterable[int],
                              padding: Iterable[int], dilation: Iterable[int]) -> Triple:
    """Spatial shape after a regular (non-submanifold) sparse conv: the dense conv formula."""
    out = tuple((s + 2 * p - d * (k - 1) - 1) // st + 1
                for s, k, st, p, d in zip(shape, kernel, stride, padding, dilation))
    return (out[0], out[1], out[2])


def _walk(graph: ScnGraph, source: str) -> dict[str, _SparseMeta | tuple[int, ...]]:
    """Type every tensor of ``graph`` and check that each layer fits its inputs.

    Returns sparse metadata or a dense shape per tensor name; raises ``PackageError`` naming
    the layer and field at the first inconsistency.
    """
    def fail(field: str, message: str) -> PackageError:
        return PackageError(message, path=source, field=field)

    convs = graph.sparse_convs
    if not convs:
        raise fail("graph.node", f"no {OP_SPARSE_CONV} node")
    channels = graph.features.shape[1]
    if not isinstance(channels, int):
        raise fail("graph.input", f"the feature count of {graph.features.name!r} must be static")
    tensors: dict[str, _SparseMeta | tuple[int, ...]] = {
        graph.features.name: _SparseMeta(convs[0].input_spatial_shape, channels, VOXELS_DIM)}

    def sparse_input(layer: ScnLayer, index: int = 0) -> _SparseMeta:
        name = layer.inputs[index]
        meta = tensors.get(name)
        if meta is None:
            raise fail(f"{layer.name}.input[{index}]", f"tensor {name!r} is not produced before "
                                                       f"this node")
        if not isinstance(meta, _SparseMeta):
            raise fail(f"{layer.name}.input[{index}]", f"tensor {name!r} is dense, a sparse "
                                                       f"tensor is expected")
        return meta

    def dense_input(layer: ScnLayer) -> tuple[int, ...]:
        meta = tensors.get(layer.inputs[0])
        if not isinstance(meta, tuple):
            raise fail(f"{layer.name}.input[0]", f"tensor {layer.inputs[0]!r} is not a dense "
                                                 f"tensor produced before this node")
        return meta

    rulebooks: dict[str, tuple[object, ...]] = {}
    for layer in graph.layers:
        if layer.output in tensors:
            raise fail(f"{layer.name}.output", f"tensor {layer.output!r} is produced twice")
        if isinstance(layer, SparseConv):
            x = sparse_input(layer)
            if x.spatial != layer.input_spatial_shape:
                raise fail(f"{layer.name}.input_spatial_shape",
                           f"{list(layer.input_spatial_shape)} but the input tensor is "
                           f"{list(x.spatial)}")
            if x.channels != layer.in_channels:
                raise fail(f"{layer.name}.in_channels", f"weight expects {layer.in_channels} "
                                                        f"channels, the input has {x.channels}")
            if layer.subm:
                expected, voxels = x.spatial, x.voxels
            else:
                expected = conv_output_spatial_shape(x.spatial, layer.kernel_size, layer.stride,
                                                     layer.padding, layer.dilation)
                voxels = f"{VOXELS_DIM}_{layer.rulebook or layer.name}"
            if layer.output_spatial_shape != expected or min(expected) < 1:
                raise fail(f"{layer.name}.output_spatial_shape",
                           f"{list(layer.output_spatial_shape)} but kernel/stride/padding give "
                           f"{list(expected)}")
            # A shared rulebook is only valid for the same input sites and the same geometry.
            geometry = (layer.subm, layer.kernel_size, layer.stride, layer.padding,
                        layer.dilation, x.voxels)
            if layer.rulebook and rulebooks.setdefault(layer.rulebook, geometry) != geometry:
                raise fail(f"{layer.name}.rulebook", f"{layer.rulebook!r} is shared with a conv of "
                                                     f"other geometry or input sites")
            tensors[layer.output] = _SparseMeta(expected, layer.out_channels, voxels)
        elif isinstance(layer, Add):
            a, b = sparse_input(layer, 0), sparse_input(layer, 1)
            if a != b:
                raise fail(f"{layer.name}.input", f"adds tensors on different site sets or "
                                                  f"channel counts: {a} vs {b}")
            tensors[layer.output] = a
        elif isinstance(layer, Relu):
            tensors[layer.output] = sparse_input(layer)
        elif isinstance(layer, ScatterDense):
            x = sparse_input(layer)
            expected_shape = (1, x.channels, *x.spatial)
            if (layer.input_spatial_shape != x.spatial
                    or tuple(layer.output_shape) != expected_shape):
                raise fail(f"{layer.name}.output_shape",
                           f"{list(layer.output_shape)} but the input gives {list(expected_shape)}")
            tensors[layer.output] = expected_shape
        elif isinstance(layer, Transpose):
            shape = dense_input(layer)
            if sorted(layer.dims) != list(range(len(shape))):
                raise fail(f"{layer.name}.dims", f"{list(layer.dims)} is not a permutation of "
                                                 f"{len(shape)} axes")
            tensors[layer.output] = tuple(shape[d] for d in layer.dims)
        elif isinstance(layer, Reshape):
            shape = dense_input(layer)
            if min(layer.dims, default=0) < 1 or math.prod(layer.dims) != math.prod(shape):
                raise fail(f"{layer.name}.dims", f"cannot reshape {list(shape)} to "
                                                 f"{list(layer.dims)}")
            tensors[layer.output] = tuple(layer.dims)
    final = tensors.get(graph.output.name)
    if final != tuple(graph.output.shape):
        raise fail("graph.output", f"{graph.output.name!r} is declared {list(graph.output.shape)} "
                                   f"but the nodes produce {final}")
    return tensors


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


def _node(layer: ScnLayer) -> onnx.NodeProto:
    def make(op: str, inputs: list[str], **attrs: object) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [layer.output], layer.name, domain=DOMAIN, **attrs)

    if isinstance(layer, SparseConv):
        return make(
            OP_SPARSE_CONV, [layer.inputs[0], f"{layer.name}.weight", f"{layer.name}.bias"],
            ndim=NDIM, input_spatial_shape=list(layer.input_spatial_shape),
            output_spatial_shape=list(layer.output_spatial_shape),
            in_channels=layer.in_channels, out_channels=layer.out_channels,
            kernel_size=list(layer.kernel_size), output_bound=layer.output_bound,
            stride=list(layer.stride), dilation=list(layer.dilation),
            padding=list(layer.padding), transposed=0, inverse=0, output_padding=[0] * NDIM,
            groups=1, subm=int(layer.subm), rulebook=layer.rulebook,
            activation=layer.activation,
            # NVIDIA writes the export-time feature shapes; -1 marks the dynamic voxel count.
            input_shape=[-1, layer.in_channels], output_shape=[-1, layer.out_channels],
            precision=layer.precision, output_precision=layer.output_precision)
    if isinstance(layer, Add):
        return make(OP_ADD, list(layer.inputs), precision=layer.precision,
                    output_precision=layer.output_precision)
    if isinstance(layer, Relu):
        return make(OP_RELU, list(layer.inputs))
    if isinstance(layer, ScatterDense):
        return make(OP_SCATTER_DENSE, list(layer.inputs),
                    input_spatial_shape=list(layer.input_spatial_shape), format=layer.format,
                    output_shape=list(layer.output_shape))
    op = OP_TRANSPOSE if isinstance(layer, Transpose) else OP_RESHAPE
    return make(op, list(layer.inputs), dims=list(layer.dims))


def scn_to_model(graph: ScnGraph, *, source: str = "<scn graph>") -> onnx.ModelProto:
    """The ONNX model of ``graph``, with value_info for every intermediate tensor."""
    tensors = _walk(graph, source)
    float_type = _ONNX_TYPE[graph.features.dtype]
    value_info = []
    for layer in graph.layers:
        if layer.output == graph.output.name:
            continue
        meta = tensors[layer.output]
        shape = [meta.voxels, meta.channels] if isinstance(meta, _SparseMeta) else list(meta)
        value_info.append(helper.make_tensor_value_info(layer.output, float_type, shape))
    initializers = []
    for conv in graph.sparse_convs:
        initializers.append(numpy_helper.from_array(conv.weight, f"{conv.name}.weight"))
        initializers.append(numpy_helper.from_array(conv.bias, f"{conv.name}.bias"))
    onnx_graph = helper.make_graph(
        [_node(layer) for layer in graph.layers], GRAPH_NAME,
        [helper.make_tensor_value_info(t.name, _ONNX_TYPE[t.dtype], list(t.shape))
         for t in (graph.features, graph.coords)],
        [helper.make_tensor_value_info(graph.output.name, _ONNX_TYPE[graph.output.dtype],
                                       list(graph.output.shape))],
        initializer=initializers, value_info=value_info)
    opsets = [helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)]
    return helper.make_model(onnx_graph, opset_imports=opsets, producer_name="bevdeploy",
                             ir_version=helper.find_min_ir_version_for(opsets,
                                                                       ignore_unknown=True))


def write_scn(graph: ScnGraph, path: str | Path) -> onnx.ModelProto:
    """Write ``graph`` to ``path`` atomically (temporary file + rename); returns the model.

    A crash mid-write leaves either the previous file or none, never a truncated file that a
    later run would mistake for a package.
    """
    path = Path(path)
    model = scn_to_model(graph, source=str(path))
    atomic_write(path, model.SerializeToString())
    return model


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------


class _NodeFields:
    """Typed attribute access for one node; every failure names the file, node and field."""

    def __init__(self, node: onnx.NodeProto, source: str, label: str) -> None:
        self.node, self.source, self.label = node, source, label
        self.attrs = {a.name: a for a in node.attribute}

    def fail(self, field: str, message: str) -> PackageError:
        return PackageError(message, path=self.source, field=f"{self.label}.{field}")

    def _get(self, name: str, kind: int) -> AttributeProto:
        attr = self.attrs.get(name)
        if attr is None:
            raise self.fail(name, f"missing attribute of {self.node.op_type} node")
        if attr.type != kind:
            raise self.fail(name, f"expected a {AttributeProto.AttributeType.Name(kind)} "
                                  f"attribute, got {AttributeProto.AttributeType.Name(attr.type)}")
        return attr

    def get_int(self, name: str, choices: tuple[int, ...] | None = None) -> int:
        value = int(self._get(name, AttributeProto.INT).i)
        if choices is not None and value not in choices:
            raise self.fail(name, f"must be one of {list(choices)}, got {value}")
        return value

    def get_ints(self, name: str, length: int | None = None) -> tuple[int, ...]:
        values = tuple(int(v) for v in self._get(name, AttributeProto.INTS).ints)
        if length is not None and len(values) != length:
            raise self.fail(name, f"expected {length} values, got {list(values)}")
        return values

    def get_triple(self, name: str, minimum: int) -> Triple:
        a, b, c = self.get_ints(name, NDIM)
        if min(a, b, c) < minimum:
            raise self.fail(name, f"values must be >= {minimum}, got {[a, b, c]}")
        return (a, b, c)

    def get_choice(self, name: str, choices: tuple[str, ...]) -> str:
        try:
            value = self._get(name, AttributeProto.STRING).s.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(name, "is not UTF-8 text") from None
        if value not in choices:
            raise self.fail(name, f"must be one of {list(choices)}, got {value!r}")
        return value

    def get_text(self, name: str) -> str:
        try:
            return self._get(name, AttributeProto.STRING).s.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(name, "is not UTF-8 text") from None

    def inputs(self, count: int) -> tuple[str, ...]:
        if len(self.node.input) != count or len(self.node.output) != 1:
            raise self.fail("input", f"{self.node.op_type} takes {count} input(s) and 1 output, "
                                     f"got {len(self.node.input)} and {len(self.node.output)}")
        return tuple(self.node.input)

    def initializer(self, index: int, initializers: Mapping[str, TensorProto]) -> np.ndarray:
        name = self.node.input[index]
        proto = initializers.get(name)
        if proto is None:
            raise self.fail(f"input[{index}]", f"initializer {name!r} is missing")
        if _DTYPE_OF.get(proto.data_type) not in ("float32", "float16"):
            raise self.fail(f"input[{index}]", f"initializer {name!r} must be float32 or float16")
        try:
            array = numpy_helper.to_array(proto)
        except (ValueError, TypeError) as exc:
            raise self.fail(f"input[{index}]", f"initializer {name!r} is damaged: {exc}") from None
        if not np.isfinite(array).all():
            raise self.fail(f"input[{index}]", f"initializer {name!r} holds NaN or Inf")
        return array


def _parse_conv(f: _NodeFields, initializers: Mapping[str, TensorProto]) -> SparseConv:
    (x, _, _) = f.inputs(3)  # NVIDIA's parser requires the bias input, so do we
    f.get_int("ndim", (NDIM,))
    for name in ("transposed", "inverse"):
        f.get_int(name, (0,))  # inverse and transposed convs never occur in the SparseEncoder
    f.get_int("groups", (1,))
    kernel = f.get_triple("kernel_size", 1)
    weight = f.initializer(1, initializers)
    bias = f.initializer(2, initializers)
    in_ch, out_ch = f.get_int("in_channels"), f.get_int("out_channels")
    if weight.shape != (out_ch, *kernel, in_ch):
        raise f.fail("input[1]", f"weight shape {list(weight.shape)} is not (out_channels, "
                                 f"*kernel_size, in_channels) = {[out_ch, *kernel, in_ch]}")
    if bias.shape != (out_ch,):
        raise f.fail("input[2]", f"bias shape {list(bias.shape)} is not ({out_ch},)")
    return SparseConv(
        name=f.label, inputs=(x,), output=f.node.output[0], weight=weight, bias=bias,
        kernel_size=kernel, stride=f.get_triple("stride", 1), padding=f.get_triple("padding", 0),
        dilation=f.get_triple("dilation", 1), subm=bool(f.get_int("subm", (0, 1))),
        rulebook=f.get_text("rulebook"), activation=f.get_choice("activation", ACTIVATIONS),
        input_spatial_shape=f.get_triple("input_spatial_shape", 1),
        output_spatial_shape=f.get_triple("output_spatial_shape", 1),
        output_bound=f.get_int("output_bound"), precision=f.get_choice("precision", PRECISIONS),
        output_precision=f.get_choice("output_precision", PRECISIONS))


def _parse_node(f: _NodeFields, initializers: Mapping[str, TensorProto]) -> ScnLayer:
    node, name = f.node, f.label
    if node.domain != DOMAIN:
        raise f.fail("domain", f"expected custom domain {DOMAIN!r}, got {node.domain!r}")
    if node.op_type == OP_SPARSE_CONV:
        return _parse_conv(f, initializers)
    if node.op_type == OP_ADD:
        a, b = f.inputs(2)
        return Add(name, (a, b), node.output[0], f.get_choice("precision", PRECISIONS),
                   f.get_choice("output_precision", PRECISIONS))
    if node.op_type in (OP_RELU, OP_SCATTER_DENSE, OP_TRANSPOSE, OP_RESHAPE):
        inputs = (f.inputs(1)[0],)
        if node.op_type == OP_RELU:
            return Relu(name, inputs, node.output[0])
        if node.op_type == OP_SCATTER_DENSE:
            return ScatterDense(name, inputs, node.output[0],
                                f.get_triple("input_spatial_shape", 1), f.get_ints("output_shape"),
                                f.get_choice("format", (FORMAT_XYZ,)))
        kind = Transpose if node.op_type == OP_TRANSPOSE else Reshape
        return kind(name, inputs, node.output[0], f.get_ints("dims"))
    raise f.fail("op_type", f"unknown op {node.op_type!r}; an SCN file holds only "
                            f"{list(OP_TYPES)}")


def _tensor_spec(value: onnx.ValueInfoProto, source: str, field: str,
                 dtypes: tuple[str, ...], rank: int) -> TensorSpec:
    def fail(message: str) -> PackageError:
        return PackageError(message, path=source, field=f"{field} {value.name!r}")

    if not value.type.HasField("tensor_type"):
        raise fail("is not a tensor")
    ttype = value.type.tensor_type
    dtype = _DTYPE_OF.get(ttype.elem_type)
    if dtype not in dtypes:
        raise fail(f"element type must be one of {list(dtypes)}")
    dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param
                 for d in ttype.shape.dim)
    if len(dims) != rank:
        raise fail(f"expected rank {rank}, got shape {list(dims)}")
    return TensorSpec(value.name, dims, dtype)


def scn_from_model(model: onnx.ModelProto, *, source: str = "<onnx model>") -> ScnGraph:
    """Parse an in-memory SCN model; see ``read_scn``."""
    def fail(field: str, message: str) -> PackageError:
        return PackageError(message, path=source, field=field)

    domains = {op.domain: op.version for op in model.opset_import}
    if domains.get(DOMAIN) != DOMAIN_VERSION:
        raise fail("opset_import", f"not a bevdeploy SCN file: domain {DOMAIN!r} version "
                                   f"{DOMAIN_VERSION} is not imported (found {domains})")
    graph = model.graph
    if len(graph.input) != 2 or len(graph.output) != 1:
        raise fail("graph.input", f"expected inputs ({FEATURES_INPUT}, {COORDS_INPUT}) and one "
                                  f"output, got {[i.name for i in graph.input]} → "
                                  f"{[o.name for o in graph.output]}")
    features = _tensor_spec(graph.input[0], source, "graph.input", ("float32", "float16"), 2)
    coords = _tensor_spec(graph.input[1], source, "graph.input", ("int32",), 2)
    if not isinstance(features.shape[1], int) or coords.shape[1] != NDIM + 1 \
            or features.shape[0] != coords.shape[0]:
        raise fail("graph.input", f"expected features [voxels, F] and coords [voxels, 4] with "
                                  f"the same voxel dimension, got {list(features.shape)} and "
                                  f"{list(coords.shape)}")
    output = _tensor_spec(graph.output[0], source, "graph.output", (features.dtype,), 4)
    if not all(isinstance(d, int) for d in output.shape):
        raise fail("graph.output", f"the dense output shape must be static, got "
                                   f"{list(output.shape)}")
    initializers = {init.name: init for init in graph.initializer}
    layers = tuple(_parse_node(_NodeFields(node, source, node.name or f"node[{i}]"), initializers)
                   for i, node in enumerate(graph.node))
    scn = ScnGraph(features, coords, output, layers)
    _walk(scn, source)
    return scn


def read_scn(path: str | Path) -> ScnGraph:
    """Parse an SCN file back into its layer list, validating it on the way.

    Every node's attributes, weights and wiring are checked (weights ``(O, kx, ky, kz, I)``,
    spatial shapes that follow from kernel/stride/padding, channel counts that chain, one dense
    output of the declared shape), so the executor can trust the result. Anything else raises
    ``PackageError`` naming the file and the node/field.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PackageError("file not found", path=path) from None
    except OSError as exc:
        raise PackageError(f"cannot read: {exc.strerror}", path=path) from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as exc:
        raise PackageError(f"not an ONNX protobuf file: {exc}", path=path) from None
    return scn_from_model(model, source=str(path))
