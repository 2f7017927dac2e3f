"""NaN/Inf guard: an optimized module that produces non-finite outputs is refused, by layer.

A quantized or half-precision graph can overflow where the FP32 one did not (a scale calibrated
on too few frames, an FP16 LayerNorm, a layer whose weights no longer fit), and the symptom
downstream is boxes at NaN or no boxes at all (docs/reference.md#user-reported-problems, theme 4).
So every optimized module is run on the calibration feeds before the package is written; on a
non-finite output the module is run again with every intermediate float tensor exposed as a graph
output (on a copy, without graph optimizations, so each node's own result is visible) and the first
node in topological order whose output is non-finite is named in the error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from bevdeploy.errors import PackageError
from bevdeploy.optimize.calibrate import Feeds


@dataclass(frozen=True)
class Overflow:
    """The first node whose output is non-finite."""

    node: str
    op_type: str
    tensor: str
    nonfinite: int
    size: int


def _session(model: onnx.ModelProto, optimize: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def first_overflow(model: onnx.ModelProto, feeds: Feeds) -> Overflow | None:
    """The first node (topological order) with a non-finite float output on ``feeds``."""
    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.output]}
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in probe.graph.output}
    watched: list[tuple[onnx.NodeProto, str]] = []
    for node in probe.graph.node:
        for name in node.output:
            if name and types.get(name) in floats:
                watched.append((node, name))
                if name not in present:
                    probe.graph.output.append(onnx.helper.make_tensor_value_info(
                        name, types[name], None))
    names = [name for _, name in watched]
    values = dict(zip(names, _session(probe, optimize=False).run(names, feeds)))
    for node, name in watched:
        value = values[name]
        bad = int(value.size - np.count_nonzero(np.isfinite(value)))
        if bad:
            return Overflow(node.name, node.op_type, name, bad, int(value.size))
    return None


def check_finite(model: onnx.ModelProto, feeds: Sequence[Feeds], *, module: str,
                 path: Path) -> None:
    """Refuse ``model`` (a ``PackageError`` naming the module and the first overflowing node)
    if any output is NaN or Inf on any of ``feeds``."""
    session = _session(model, optimize=True)
    names = [o.name for o in session.get_outputs()]
    for index, feed in enumerate(feeds):
        for name, value in zip(names, session.run(names, feed)):
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            if not bad:
                continue
            culprit = first_overflow(model, feed)
            where = ("no single node: the optimized session overflows where the unoptimized "
                     "one does not" if culprit is None else
                     f"first non-finite node {culprit.node!r} ({culprit.op_type}, output "
                     f"{culprit.tensor!r}: {culprit.nonfinite}/{culprit.size} values)")
            raise PackageError(f"optimized {module} gives {bad} non-finite values in output "
                               f"{name!r} on calibration frame {index}; {where}. Exclude that "
                               f"layer (--exclude) or calibrate on more frames",
                               path=path, field=f"modules.{module}")
