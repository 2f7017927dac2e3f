"""Export the LiDAR SparseEncoder as the SCN file ``lidar.backbone.xyz.onnx``.

The graph is built from the module structure rather than traced (NVIDIA monkey-patches spconv
to trace; docs/reference.md#scn-onnx-format), which needs no example input and cannot miss a layer.
It follows CUDA-BEVFusion's deployment of the encoder:

* batch norm is folded into each conv (``W·γ/√(σ²+ε)``, ``(b − μ)·γ/√(σ²+ε) + β`` per output
  channel), so every conv carries a bias; the folded network is the encoder in eval mode;
* a ReLU that directly follows conv+BN is fused as ``activation="ReLU"`` (NVIDIA's
  ``fuse_relu_only``); a basic block's second conv is followed by a separate ``Add`` with the
  block input and a ``Relu``;
* rulebook keys are NVIDIA's: the basic blocks of stage k share ``subm{k}`` (stage 1 therefore
  shares ``subm1`` with ``conv_input``), other convs keep their ``indice_key``
  (``spconv{k}``, ``spconv_down2``);
* ``ScatterDense`` (format ``xyz``) → ``Transpose [0, 1, 4, 2, 3]`` → ``Reshape`` gives the dense
  ``(1, C·Z, X, Y)`` BEV map with channel index ``c·Z + z``.

Only the XYZ variant is written; see ``bevdeploy.scn_format`` for the file format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from spconv.pytorch import SparseSequential
from spconv.pytorch.conv import SparseConvolution
from torch import nn

from bevdeploy.errors import ConfigError
from bevdeploy.export.onnx_utils import op_census
from bevdeploy.model.lidar.sparse_encoder import SparseBasicBlock
from bevdeploy.package import TensorSpec, sha256_file
from bevdeploy.presets import Preset
from bevdeploy.scn_format import (
    COORDS_INPUT, DOMAIN, DOMAIN_VERSION, FEATURES_INPUT, FORMAT_XYZ, NDIM, NVIDIA_OUTPUT_BOUND,
    ONNX_OPSET, OUTPUT, VOXELS_DIM, Add, Relu, Reshape, ScatterDense, ScnGraph, ScnLayer,
    SparseConv, Transpose, conv_output_spatial_shape, write_scn,
)

WeightDType = Literal["float32", "float16"]
_PRECISION = {"float32": "fp32", "float16": "fp16"}


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None,
                   bn: nn.BatchNorm1d) -> tuple[np.ndarray, np.ndarray]:
    """Fold inference-mode ``bn`` into a conv with ``(O, …, I)`` weight; float64 results.

    Done in float64 so that the only rounding is the final cast to the file's dtype.
    """
    mean = bn.running_mean.detach().double()
    scale = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    b = bias.detach().double() if bias is not None else torch.zeros_like(mean)
    w = weight.detach().double() * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    return w.numpy(), ((b - mean) * scale + shift).numpy()


class _GraphBuilder:
    """Appends layers while tracking the spatial shape of the current sparse tensor."""

    def __init__(self, sparse_shape: tuple[int, int, int], in_channels: int,
                 dtype: WeightDType, output_bound: int, source: str) -> None:
        self.layers: list[ScnLayer] = []
        self.spatial = sparse_shape
        self.channels = in_channels
        self.dtype = dtype
        self.output_bound = output_bound
        self.source = source

    def fail(self, field: str, message: str) -> ConfigError:
        return ConfigError(message, path=self.source, field=field)

    def conv(self, name: str, x: str, conv: nn.Module, bn: nn.Module, activation: str,
             rulebook: str) -> str:
        if not isinstance(conv, SparseConvolution) or not isinstance(bn, nn.BatchNorm1d):
            raise self.fail(name, f"expected an spconv SparseConvolution followed by "
                                  f"BatchNorm1d, got {type(conv).__name__}, {type(bn).__name__}")
        if conv.ndim != NDIM or conv.transposed or conv.inverse or conv.groups != 1:
            raise self.fail(name, "only 3-D, non-transposed, non-inverse, ungrouped sparse "
                                  "convs can be exported")
        if conv.in_channels != self.channels:
            raise self.fail(name, f"takes {conv.in_channels} channels but receives "
                                  f"{self.channels}")
        weight, bias = (a.astype(self.dtype) for a in fold_batchnorm(conv.weight, conv.bias, bn))
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise self.fail(name, f"the BN-folded weights are not finite in {self.dtype} "
                                  f"(degenerate BN statistics, or too large for float16)")
        kernel, stride, padding, dilation = (tuple(int(v) for v in getattr(conv, attr))
                                             for attr in ("kernel_size", "stride", "padding",
                                                          "dilation"))
        out_spatial = self.spatial if conv.subm else conv_output_spatial_shape(
            self.spatial, kernel, stride, padding, dilation)
        precision = _PRECISION[self.dtype]
        self.layers.append(SparseConv(
            name=name, inputs=(x,), output=name, weight=weight, bias=bias, kernel_size=kernel, stride=stride, padding=padding,
            dilation=dilation, subm=bool(conv.subm), rulebook=rulebook, activation=activation,
            input_spatial_shape=self.spatial, output_spatial_shape=out_spatial,
            output_bound=self.output_bound, precision=precision, output_precision=precision))
        self.spatial, self.channels = out_spatial, int(conv.out_channels)
        return name

    def conv_bn_relu(self, name: str, x: str, seq: nn.Module) -> str:
        """An mmdet3d sparse conv module ``SparseSequential(conv, BN[, ReLU])``; it keeps its
        own ``indice_key`` as rulebook."""
        children = list(seq.children()) if isinstance(seq, SparseSequential) else []
        if len(children) not in (2, 3) or (len(children) == 3
                                           and not isinstance(children[2], nn.ReLU)):
            raise self.fail(name, f"expected SparseSequential(conv, BatchNorm1d[, ReLU]), got "
                                  f"{seq!r}")
        conv = children[0]
        activation = "ReLU" if len(children) == 3 else "None"
        key = getattr(conv, "indice_key", None) or ""
        return self.conv(f"{name}.0", x, conv, children[1], activation, key)

    def basic_block(self, name: str, x: str, block: SparseBasicBlock, rulebook: str) -> str:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + x)``: conv1 fuses its ReLU; the add and
        the final ReLU are nodes of their own."""
        hidden = self.conv(f"{name}.conv1", x, block.conv1, block.bn1, "ReLU", rulebook)
        out = self.conv(f"{name}.conv2", hidden, block.conv2, block.bn2, "None", rulebook)
        precision = _PRECISION[self.dtype]
        self.layers.append(Add(f"{name}.add", (out, x), f"{name}.add", precision, precision))
        self.layers.append(Relu(f"{name}.relu", (f"{name}.add",), f"{name}.relu"))
        return f"{name}.relu"


def encoder_to_scn(sparse_encoder: nn.Module, preset: Preset, *,
                   weight_dtype: WeightDType = "float32") -> ScnGraph:
    """The SCN layer list of ``sparse_encoder`` (a ``SparseEncoder`` built for ``preset``).

    Raises ``ConfigError`` when the module does not have the SparseEncoder layout or does not
    match the preset's point features, sparse shape or BEV output.
    """
    if weight_dtype not in _PRECISION:
        raise ConfigError(f"weight_dtype must be one of {list(_PRECISION)}, got {weight_dtype!r}",
                          field="weight_dtype")
    source = preset.name
    sparse_shape = tuple(preset.sparse_shape)
    module_shape = getattr(sparse_encoder, "sparse_shape", sparse_shape)
    if tuple(module_shape) != sparse_shape:
        raise ConfigError(f"the encoder was built for sparse shape {list(module_shape)}, the "
                          f"preset needs {list(sparse_shape)}", path=source, field="sparse_shape")
    for part in ("conv_input", "encoder_layers", "conv_out"):
        if not hasattr(sparse_encoder, part):
            raise ConfigError(f"not a SparseEncoder: no {part!r} submodule", path=source,
                              field="model.lidar_encoder")
    # Exporting reads BN running statistics: the folded graph is the eval-mode function.
    builder = _GraphBuilder((sparse_shape[0], sparse_shape[1], sparse_shape[2]),
                            preset.points.num_features, weight_dtype,
                            max(NVIDIA_OUTPUT_BOUND, preset.voxel.max_voxels), source)
    x = builder.conv_bn_relu("conv_input", FEATURES_INPUT, sparse_encoder.conv_input)
    for k, (stage_name, stage) in enumerate(sparse_encoder.encoder_layers.named_children(), 1):
        for block_name, block in stage.named_children():
            name = f"encoder_layers.{stage_name}.{block_name}"
            if isinstance(block, SparseBasicBlock):
                x = builder.basic_block(name, x, block, f"subm{k}")
            else:
                x = builder.conv_bn_relu(name, x, block)
    x = builder.conv_bn_relu("conv_out", x, sparse_encoder.conv_out)

    channels = builder.channels
    sx, sy, sz = builder.spatial
    if ((sx, sy, sz) != preset.lidar_encoder_shapes[-1]
            or channels * sz != preset.lidar_bev_channels):
        raise ConfigError(f"the encoder ends at {channels} channels × {[sx, sy, sz]}, the preset "
                          f"expects {preset.lidar_bev_channels} BEV channels at "
                          f"{list(preset.lidar_encoder_shapes[-1])}", path=source,
                          field="model.lidar_encoder")
    builder.layers += [
        ScatterDense("scatter", (x,), "scatter", builder.spatial, (1, channels, sx, sy, sz),
                     FORMAT_XYZ),
        Transpose("transpose", ("scatter",), "transpose", (0, 1, 4, 2, 3)),
        Reshape("reshape", ("transpose",), OUTPUT, (1, channels * sz, sx, sy)),
    ]
    return ScnGraph(
        features=TensorSpec(FEATURES_INPUT, (VOXELS_DIM, preset.points.num_features),
                            weight_dtype),
        coords=TensorSpec(COORDS_INPUT, (VOXELS_DIM, NDIM + 1), "int32"),
        output=TensorSpec(OUTPUT, (1, channels * sz, sx, sy), weight_dtype),
        layers=tuple(builder.layers))


def export_scn(sparse_encoder: nn.Module, preset: Preset, path: Path, *,
               weight_dtype: WeightDType = "float32") -> dict[str, Any]:
    """Write the SCN file to ``path`` (atomically) and return its manifest entry.

    The entry has the keys of ``bevdeploy.package.ModuleEntry``; ``details`` adds the layer
    census (sparse convs, adds, relus), the custom domain and the coordinate order.
    ``weight_dtype="float16"`` stores FP16 weights, biases and I/O as NVIDIA's file does;
    libspconv's loader accepts only FP16 initializers.
    """
    path = Path(path)
    graph = encoder_to_scn(sparse_encoder, preset, weight_dtype=weight_dtype)
    model = write_scn(graph, path)
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "size": path.stat().st_size,
        "precision": _PRECISION[weight_dtype],
        "opset": ONNX_OPSET,
        "inputs": [graph.features.to_dict(), graph.coords.to_dict()],
        "outputs": [graph.output.to_dict()],
        "ops": op_census(model),
        "details": {
            **graph.census(),
            "domain": DOMAIN,
            "domain_version": DOMAIN_VERSION,
            "coordinate_order": FORMAT_XYZ,
            "sparse_shape": list(graph.sparse_shape),
            "weight_dtype": weight_dtype,
        },
    }
