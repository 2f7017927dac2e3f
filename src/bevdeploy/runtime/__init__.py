"""The torch-free deployment runtime: a deploy package + a ``Frame`` → ``Detections``.

Nothing under ``bevdeploy.runtime`` imports PyTorch, spconv, ``bevdeploy.model`` or
``bevdeploy.export``: a deployment needs the package directory, numpy, numba and an ONNX
backend only (docs/architecture.md#sources-detector-sinks).

``Pipeline`` is exported lazily so that importing a kernel or a stage (``bevdeploy.runtime.
kernels``, ``bevdeploy.runtime.stages``) does not load ONNX Runtime and the SCN executor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bevdeploy.runtime.pipeline import Pipeline

__all__ = ["Pipeline"]


def __getattr__(name: str) -> Any:
    if name == "Pipeline":
        from bevdeploy.runtime.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
