"""``bevdeploy build``: TensorRT engines from a deploy package's dense ONNX modules
(``builder.build_engines``), recorded in its manifest for the ``tensorrt`` backend."""

from bevdeploy.engines.builder import build_engines, plan_flags

__all__ = ["build_engines", "plan_flags"]
