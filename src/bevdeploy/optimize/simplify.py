"""Graph-level simplification with onnxslim: constant folding, BatchNorm folding into the
preceding convolution, dead-node and identity removal, shape-chain elimination.

The exporter already runs ONNX Runtime's *basic* rewrites (``export.onnx_utils.simplify``), so
on our graphs this pass mostly finds what those leave: constant subgraphs around ``Reshape`` and
``Slice``, duplicate constants, and patterns onnxslim fuses that ORT's basic level does not. It
is pure Python and writes standard ONNX ops only, so the result stays loadable by TensorRT.
"""

from __future__ import annotations

import onnx
import onnxslim


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """The onnxslim-simplified copy of ``model`` (the input is not modified)."""
    slimmed = onnxslim.slim(onnx.ModelProto.FromString(model.SerializeToString()))
    onnx.checker.check_model(slimmed)
    return slimmed
