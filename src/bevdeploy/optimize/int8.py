"""INT8 post-training quantization to explicit QDQ graphs with ONNX Runtime's quantizer.

The result is the form both ONNX Runtime and TensorRT execute: ``QuantizeLinear`` /
``DequantizeLinear`` pairs around every quantized layer, per-channel symmetric INT8 weights,
per-tensor activations. The recipe is CUDA-BEVFusion's (docs/reference.md#quantisation-recipe):

* **What is quantized.** ``camera.backbone`` (ResNet + FPN + dtransform + depthnet) and ``fuser``
  (ConvFuser + SECOND + SECONDFPN) whole, and of ``head.bbox`` only its convolutions
  (``RECIPE_INCLUDES``): the 3×3 shared conv over the fused map (nuscenes-resnet50: 19 GMAC of
  the head's ~25), the two heatmap convs and the prediction heads' convs. Everything of the
  transformer decoder (attention MatMuls/Gemms, Softmax, FFN, LayerNorm), the top-k query
  selection and gathers, the class encoding and the positional encoding stays float: that is
  where NVIDIA's FP16-only head keeps its precision, and it is a small share of the MACs. The
  per-conv choice is the sensitivity map's (docs/bench/notes.md#int8-head-convolutions).
  ``camera.vtransform`` is never quantized (NVIDIA builds it FP16 only), and ``lidar.backbone``
  runs on bevdeploy's own sparse-conv executor in FP32. ``Int8Options.modules`` drops a module
  from INT8 (``optimize --no-int8-head`` keeps the whole head float, as for TensorRT, where NVIDIA
  builds it FP16).
* **Layers kept in float** are given as glob patterns over node names, ``MODULE:GLOB`` or bare
  ``GLOB`` (every quantized module). ``RECIPE_EXCLUDES`` holds NVIDIA's one dense exclusion,
  ``decoder.neck.deblocks[0][0]``, and two head layers: the last heatmap conv, whose sigmoid
  ranks the top-k queries, and the velocity prediction head
  (docs/bench/notes.md#int8-head-convolutions); ``--exclude`` adds the user's (first or last
  layers, or what the sensitivity report ranks worst, e.g. ``head.bbox:/shared_conv/*``). A
  pattern that matches no node INT8 may touch is an error, not a no-op.
* **Shared quantizers.** NVIDIA ties the quantizers of both inputs of every FPN concat (one
  ``QuantConcat`` quantizer) so the join runs in INT8 without re-quantization, and gives each
  ResNet residual the quantizer of the tensor it comes from (``conv1``'s input). The second is
  what ONNX Runtime's QDQ form does anyway: one tensor, one Q/DQ pair shared by all its consumers
  (``DedicatedQDQPair`` off). For the first, none of its flags (``QDQKeepRemovableActivations``,
  ``ForceQuantizeNoInputCheck``, ``AddQDQPairToWeight``) ties two tensors; ``TensorQuantOverrides``
  does: the inputs and output of each Concat get the union of their calibrated ranges as
  ``rmin``/``rmax``, hence one scale and zero point. The two inputs of a residual Add are *not*
  merged (NVIDIA does not either): merging them chains every stage of the residual stream into
  one range and measurably costs accuracy (docs/bench/notes.md#int8-without-vnni).
* **Types: QUInt8 activations, QInt8 weights, reduce_range.** ONNX Runtime's CPU kernels are
  built for U8S8; on x86 without VNNI the U8S8 dot product (VPMADDUBSW) saturates its 16-bit
  pair sums with full-range weights, which ``reduce_range`` (7-bit weights) avoids at the same
  speed (docs/bench/notes.md#int8-without-vnni); S8S8 saturates the same way. On a VNNI CPU or
  for TensorRT pass ``reduce_range=False``.

Calibrators (ONNX Runtime's) against the names of NVIDIA's recipe
(docs/reference.md#quantisation-recipe): ``minmax`` = max calibration (NVIDIA's for weights),
``entropy`` = the histogram calibrator's KL-divergence method (TensorRT's entropy calibration),
``percentile`` = the histogram calibrator's percentile method, ``distribution`` = ONNX Runtime's
distribution fit (meant for float8; offered, not recommended). NVIDIA's ``mse`` amax search has
no ONNX Runtime counterpart.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationMethod, QuantFormat, QuantType, TensorsData, create_calibrator, quantize_static,
)
from onnxruntime.quantization.calibrate import save_tensors_data

from bevdeploy.errors import ConfigError
from bevdeploy.optimize.calibrate import Feeds, FeedReader

INT8_MODULES: tuple[str, ...] = ("camera.backbone", "fuser", "head.bbox")
# Modules quantized only in part: the node globs INT8 may touch (a module not listed here has
# every quantizable node quantized). For the head: its convolutions, nothing of the decoder.
RECIPE_INCLUDES: Mapping[str, tuple[str, ...]] = {
    "head.bbox": ("/shared_conv/*", "/heatmap_head/*", "/prediction_heads.*"),
}
# NVIDIA's float deblock; the last heatmap conv, whose 8-bit logits tie and reorder the cells the
# top-k ranks (the head layer of the lowest cosine, 1.5 % of its MACs); and the velocity head,
# whose 8-bit output moves velocities by 20 % of their scale (mAP does not score velocity).
RECIPE_EXCLUDES: tuple[str, ...] = ("fuser:/neck/deblocks.0/deblocks.0.0/*",
                                    "head.bbox:/heatmap_head/heatmap_head.1/*",
                                    "head.bbox:/prediction_heads.*/vel/*")
CALIBRATORS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
    "distribution": CalibrationMethod.Distribution,
}
SHARED_JOINS: tuple[str, ...] = ("Concat",)
# Ops ONNX Runtime's QDQ quantizer gives their input's scale on the output (registry.py).
SCALE_PRESERVING: tuple[str, ...] = ("Resize", "MaxPool", "Reshape", "Transpose", "Squeeze",
                                     "Unsqueeze", "Flatten", "Slice", "AveragePool")
# Ops whose output stays float. The depth Softmax feeds the LSS outer product in bevpool, not
# another INT8 layer: quantizing its probabilities to 1/255 steps only loses depth resolution.
FLOAT_OUTPUT_OPS: tuple[str, ...] = ("Softmax",)


@dataclass(frozen=True)
class Int8Options:
    """How to quantize: which modules, calibrator, float-kept layers, weight range."""

    calibrator: str = "percentile"
    excludes: tuple[str, ...] | None = None  # None: the recipe's (of the quantized modules)
    reduce_range: bool = True
    percentile: float = 99.999
    modules: tuple[str, ...] = INT8_MODULES

    def __post_init__(self) -> None:
        if self.calibrator not in CALIBRATORS:
            raise ConfigError(f"unknown calibrator {self.calibrator!r}; known: "
                              f"{sorted(CALIBRATORS)}", field="calibrator")
        unknown = [m for m in self.modules if m not in INT8_MODULES]
        if unknown or not self.modules:
            raise ConfigError(f"INT8 modules {list(self.modules)}: choose one or more of "
                              f"{list(INT8_MODULES)}", field="int8_modules")
        if self.excludes is None:
            object.__setattr__(self, "excludes", recipe_excludes(self.modules))
        for pattern in self.excludes:
            module, _, glob = pattern.rpartition(":")
            if module and module not in self.modules:
                raise ConfigError(f"exclusion {pattern!r} names module {module!r}, but only "
                                  f"{list(self.modules)} are quantized", field="exclude")
            if not glob:
                raise ConfigError(f"exclusion {pattern!r} has no node pattern", field="exclude")

    def describe(self) -> dict[str, Any]:
        return {"calibrator": self.calibrator, "ort_method": CALIBRATORS[self.calibrator].name,
                "percentile": self.percentile if self.calibrator == "percentile" else None,
                "format": "QDQ", "activations": "QUInt8 per-tensor asymmetric",
                "weights": "QInt8 per-channel symmetric", "reduce_range": self.reduce_range,
                "shared_ranges": list(SHARED_JOINS), "modules": list(self.modules),
                "include_patterns": {m: list(RECIPE_INCLUDES[m]) for m in self.modules
                                     if m in RECIPE_INCLUDES},
                "exclude_patterns": list(self.excludes)}


def recipe_excludes(modules: Sequence[str]) -> tuple[str, ...]:
    """The ``RECIPE_EXCLUDES`` that concern ``modules`` (a module left out of INT8 has none)."""
    return tuple(p for p in RECIPE_EXCLUDES if p.rpartition(":")[0] in ("", *modules))


def recipe_scope(model: onnx.ModelProto, module: str) -> list[str] | None:
    """The nodes of ``module`` INT8 may touch (``RECIPE_INCLUDES``), in graph order; ``None``
    for a module quantized whole."""
    globs = RECIPE_INCLUDES.get(module)
    if globs is None:
        return None
    return [n.name for n in model.graph.node if any(fnmatch.fnmatchcase(n.name, g) for g in globs)]


def quantizable_names(model: onnx.ModelProto, module: str) -> list[str]:
    """The node names an exclusion of ``module`` may name: its recipe scope, or every node."""
    scope = recipe_scope(model, module)
    return [n.name for n in model.graph.node] if scope is None else scope


def excluded_nodes(model: onnx.ModelProto, module: str, patterns: Sequence[str]) -> list[str]:
    """Names of ``module``'s nodes matched by ``patterns`` (``MODULE:GLOB`` or ``GLOB``)."""
    names = [n.name for n in model.graph.node]
    hits: list[str] = []
    for pattern in patterns:
        scope, _, glob = pattern.rpartition(":")
        if scope and scope != module:
            continue
        hits.extend(n for n in names if fnmatch.fnmatchcase(n, glob) and n not in hits)
    return hits


def check_patterns_used(patterns: Sequence[str], matched: Mapping[str, Sequence[str]]) -> None:
    """Refuse an exclusion that matched no node of any quantized module (``matched``: each
    module's ``quantizable_names``): a typo would otherwise silently quantize the layer the user
    meant to protect, and a node outside the recipe's scope is float anyway."""
    for pattern in patterns:
        scope, _, glob = pattern.rpartition(":")
        modules = [scope] if scope else list(matched)
        if not any(fnmatch.fnmatchcase(n, glob) for m in modules for n in matched.get(m, ())):
            raise ConfigError(f"exclusion {pattern!r} matches no node of {modules}",
                              field="exclude")


def calibrate(model: onnx.ModelProto, feeds: Sequence[Feeds], options: Int8Options
              ) -> TensorsData:
    """Every activation's calibrated range on ``feeds`` (ONNX Runtime's calibrator).

    The feeds go to the calibrator one frame per ``collect_data`` call: ONNX Runtime keeps every
    intermediate tensor of a call in memory before it reduces them (min/max or histograms, both
    accumulate across calls), which for nuscenes-resnet50's camera backbone is ~2 GB per frame.
    """
    extra = {"percentile": options.percentile} if options.calibrator == "percentile" else {}
    with tempfile.TemporaryDirectory(prefix="bevdeploy-calib-") as tmp:
        source = Path(tmp) / "model.onnx"
        onnx.save(model, source)
        calibrator = create_calibrator(source, augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                       calibrate_method=CALIBRATORS[options.calibrator],
                                       providers=["CPUExecutionProvider"], extra_options=extra)
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print
            for feed in feeds:
                calibrator.collect_data(FeedReader([feed]))
            return calibrator.compute_data()


def shared_overrides(model: onnx.ModelProto, ranges: TensorsData) -> dict[str, list[dict]]:
    """``TensorQuantOverrides`` giving the tensors that meet at each Concat one range.

    Joins are merged transitively (a tensor feeding two joins ties both groups), so every
    tensor ends up in exactly one group with the union of the group's calibrated ranges.
    """
    constants = {t.name for t in model.graph.initializer}
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    producers = {o: n for n in model.graph.node for o in n.output}

    def sources(tensor: str) -> list[str]:
        """``tensor`` and, through ops whose output ORT quantizes with their input's scale
        (Resize, MaxPool, ...), the tensors it is a copy of: all must share the range."""
        chain = [tensor]
        node = producers.get(tensor)
        while node is not None and node.op_type in SCALE_PRESERVING and node.input[0] in \
                ranges.data:
            chain.append(node.input[0])
            node = producers.get(node.input[0])
        return chain

    for node in model.graph.node:
        if node.op_type not in SHARED_JOINS:
            continue
        tensors = [s for t in node.input if t and t not in constants and t in ranges.data
                   for s in sources(t)]
        if node.output[0] in ranges.data:
            tensors.append(node.output[0])
        for other in tensors[1:]:
            parent[find(other)] = find(tensors[0])
    groups: dict[str, list[str]] = {}
    for tensor in parent:
        groups.setdefault(find(tensor), []).append(tensor)
    overrides: dict[str, list[dict]] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        lo = np.float32(min(float(ranges.data[t].range_value[0]) for t in members))
        hi = np.float32(max(float(ranges.data[t].range_value[1]) for t in members))
        for tensor in members:
            overrides[tensor] = [{"rmin": lo, "rmax": hi}]
    return overrides


def quantize(model: onnx.ModelProto, ranges: TensorsData, options: Int8Options, *,
             module: str, exclude: Sequence[str] = (), only: Sequence[str] | None = None
             ) -> onnx.ModelProto:
    """The QDQ model of ``module``'s ``model`` under the calibrated ``ranges``.

    ``exclude`` are node names kept in float; ``only`` (the sensitivity report's probe)
    restricts quantization to those nodes, and without it a module quantized in part
    (``RECIPE_INCLUDES``) is restricted to its recipe's scope. The ranges are handed to
    ``quantize_static`` as its own calibration cache, so calibrating once serves any number of
    quantizations.
    """
    if only is None:
        only = recipe_scope(model, module)
    if only is not None:
        only = [n for n in only if n not in exclude]
        if not only:  # ORT reads an empty nodes_to_quantize as "all nodes"
            raise ConfigError(f"every INT8 layer of {module} is excluded; leave the module out "
                              f"of INT8 instead", field="exclude")
    extra = {"TensorQuantOverrides": shared_overrides(model, ranges),
             "OpTypesToExcludeOutputQuantization": list(FLOAT_OUTPUT_OPS)}
    with tempfile.TemporaryDirectory(prefix="bevdeploy-int8-") as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(ranges, cache)
        out = Path(tmp) / "int8.onnx"
        with _quiet_root_logger():  # "consider pre-processing": the exporter already did
            quantize_static(model, out, calibration_data_reader=None,
                            calibration_cache_path=cache,
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=options.reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=list(exclude),
                            nodes_to_quantize=None if only is None else list(only),
                            calibrate_method=CALIBRATORS[options.calibrator],
                            extra_options=extra)
        quantized = onnx.load(out)
    onnx.checker.check_model(quantized)
    return quantized


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizer logs a pre-processing hint on the root logger at every call."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
