"""Inference backends behind one ``Runner`` interface (``base.py``).

``create_runner`` is the single place that maps a backend name to its implementation; the
pipeline asks it for one runner per dense module of the package.
"""

from __future__ import annotations

from pathlib import Path

from bevdeploy.errors import ConfigError
from bevdeploy.package import ModuleEntry
from bevdeploy.runtime.backends.base import Runner, RunnerOptions, check_feeds

BACKENDS: tuple[str, ...] = ("onnxruntime",)

__all__ = ["BACKENDS", "Runner", "RunnerOptions", "check_feeds", "create_runner"]


def create_runner(backend: str, path: Path, entry: ModuleEntry, options: RunnerOptions) -> Runner:
    """Load one module with ``backend``; an unknown name is a ``ConfigError`` listing the known."""
    if backend == "onnxruntime":
        from bevdeploy.runtime.backends.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner.load(path, entry, options)
    raise ConfigError(f"unknown backend {backend!r}; available: {list(BACKENDS)}",
                      field="backend")
