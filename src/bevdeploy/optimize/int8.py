"""INT8 post-training quantization to explicit QDQ graphs with ONNX Runtime's quantizer.

The result is the form both ONNX Runtime and TensorRT execute: ``QuantizeLinear`` /
``DequantizeLinear`` pairs around every quantized layer, per-channel symmetric INT8 weights,
per-tensor activations. The recipe is CUDA-BEVFusion's (docs/reference.md#quantisation-recipe):

* **What is quantized.** ``camera.backbone`` (ResNet + FPN + dtransform + depthnet) and ``fuser``
  (ConvFuser + SECOND + SECONDFPN). ``camera.vtransform`` and ``head.bbox`` are never quantized
  (NVIDIA builds them FP16 only; the head's attention and top-k gain little and break easily),
  and ``lidar.backbone`` runs on bevdeploy's own sparse-conv executor in FP32: INT8 sparse
  convolution is a libspconv (GPU) feature.
* **Layers kept in float** are given as glob patterns over node names, ``MODULE:GLOB`` or bare
  ``GLOB`` (every quantized module). ``RECIPE_EXCLUDES`` holds NVIDIA's one dense exclusion,
  ``decoder.neck.deblocks[0][0]``; ``--exclude`` adds the user's (first or last layers, or what
  the sensitivity report ranks worst). A pattern that matches nothing is an error, not a no-op.
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

INT8_MODULES: tuple[str, ...] = ("camera.backbone", "fuser")
RECIPE_EXCLUDES: tuple[str, ...] = ("fuser:/neck/deblocks.0/deblocks.0.0/*",)
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
    """How to quantize: calibrator, float-kept layers, weight range."""

    calibrator: str = "percentile"
    excludes: tuple[str, ...] = RECIPE_EXCLUDES
    reduce_range: bool = True
    percentile: float = 99.999

    def __post_init__(self) -> None:
        if self.calibrator not in CALIBRATORS:
            raise ConfigError(f"unknown calibrator {self.calibrator!r}; known: "
                              f"{sorted(CALIBRATORS)}", field="calibrator")
        for pattern in self.excludes:
            module, _, glob = pattern.rpartition(":")
            if module and module not in INT8_MODULES:
                raise ConfigError(f"exclusion {pattern!r} names module {module!r}, but only "
                                  f"{list(INT8_MODULES)} are quantized", field="exclude")
            if not glob:
                raise ConfigError(f"exclusion {pattern!r} has no node pattern", field="exclude")

    def describe(self) -> dict[str, Any]:
        return {"calibrator": self.calibrator, "ort_method": CALIBRATORS[self.calibrator].name,
                "percentile": self.percentile if self.calibrator == "percentile" else None,
                "format": "QDQ", "activations": "QUInt8 per-tensor asymmetric",
                "weights": "QInt8 per-channel symmetric", "reduce_range": self.reduce_range,
                "shared_ranges": list(SHARED_JOINS), "exclude_patterns": list(self.excludes)}


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
    """Refuse an exclusion that matched no node of any quantized module (a typo would otherwise
    silently quantize the layer the user meant to protect)."""
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
             exclude: Sequence[str] = (), only: Sequence[str] | None = None) -> onnx.ModelProto:
    """The QDQ model of ``model`` under the calibrated ``ranges``.

    ``exclude`` are node names kept in float; ``only`` (the sensitivity report's probe)
    restricts quantization to those nodes. The ranges are handed to ``quantize_static`` as its
    own calibration cache, so calibrating once serves any number of quantizations.
    """
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
