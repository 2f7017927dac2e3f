"""`bevdeploy doctor`: what is installed and what can run here, each with a one-line reason.

Versions come from package metadata so that asking does not import heavy packages; only the
CUDA and TensorRT probes import what they must to give an honest answer.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import platform
from dataclasses import dataclass

PACKAGES: tuple[tuple[str, str], ...] = (
    ("numpy", "numpy"),
    ("onnx", "onnx"),
    ("onnxruntime", "onnxruntime"),
    ("torch", "torch"),
    ("spconv", "spconv"),
    ("numba", "numba"),
    ("nuscenes-devkit", "nuscenes-devkit"),
    ("pillow", "pillow"),
)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def package_checks() -> list[Check]:
    rows = [Check("python", True, platform.python_version())]
    for label, dist in PACKAGES:
        v = _version(dist)
        rows.append(Check(label, v is not None, v or "not installed"))
    return rows


def cuda_check() -> Check:
    """Is a CUDA GPU usable from PyTorch? (the GPU backends need it)."""
    if _version("torch") is None:
        return Check("cuda", False, "torch is not installed (pip install 'bevdeploy[export]')")
    try:
        import torch
    except Exception as exc:  # a broken install is a reason, not a crash
        return Check("cuda", False, f"torch does not import: {exc}")
    if not torch.cuda.is_available():
        build = "CPU-only torch build" if torch.version.cuda is None else \
            f"torch built for CUDA {torch.version.cuda} but no device/driver is visible"
        return Check("cuda", False, build)
    return Check("cuda", True, f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})")


def tensorrt_check() -> Check:
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:
        return Check("tensorrt", False, f"does not import ({type(exc).__name__}: {exc})")
    return Check("tensorrt", True, f"TensorRT {trt.__version__}")


def onnxruntime_providers() -> Check:
    try:
        import onnxruntime as ort
    except Exception as exc:
        return Check("onnxruntime providers", False, f"does not import: {exc}")
    return Check("onnxruntime providers", True, ", ".join(ort.get_available_providers()))


def run_checks() -> list[Check]:
    return [*package_checks(), onnxruntime_providers(), cuda_check(), tensorrt_check()]
