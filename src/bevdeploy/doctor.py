"""`bevdeploy doctor`: what is installed and what can run here, each with a one-line reason.

Versions come from package metadata so that asking does not import heavy packages; only the
CUDA, Triton and TensorRT probes import what they must to give an honest answer. The last rows
say, per inference backend (``--backend`` of infer / eval / bench), whether it can run here and,
if not, what is missing, and what ``--backend auto`` picks on this CPU for each kind of package.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import platform
from dataclasses import dataclass

from bevdeploy.runtime.backends.gpu import cuda_unusable_reason

PACKAGES: tuple[tuple[str, str], ...] = (
    ("numpy", "numpy"),
    ("onnx", "onnx"),
    ("onnxruntime", "onnxruntime"),
    ("openvino", "openvino"),
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
    reason = cuda_unusable_reason()
    if reason is not None:
        return Check("cuda", False, reason)
    major, minor = torch.cuda.get_device_capability(0)
    return Check("cuda", True, f"{torch.cuda.get_device_name(0)} (compute capability "
                               f"{major}.{minor}, CUDA {torch.version.cuda})")


def triton_check() -> Check:
    """Triton compiles the CUDA kernels of the GPU runtime (``runtime/kernels/cuda``)."""
    try:
        triton = importlib.import_module("triton")
    except Exception as exc:
        return Check("triton", False, f"does not import ({type(exc).__name__}: {exc})")
    return Check("triton", True, f"Triton {triton.__version__}")


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


def backend_checks(cuda: Check, triton: Check, tensorrt: Check) -> list[Check]:
    """One row per ``--backend``: usable here, or the first missing piece. Both GPU backends
    run under the CUDA schedule, whose kernels (BEV pooling at least) are Triton's."""
    rows = [Check("backend onnxruntime", _version("onnxruntime") is not None,
                  "CPU execution provider" if _version("onnxruntime") else "not installed"),
            openvino_check()]
    if not cuda.ok:
        rows.append(Check("backend torch-cuda", False, f"needs CUDA torch: {cuda.detail}"))
    elif not triton.ok:
        rows.append(Check("backend torch-cuda", False, f"needs triton for the CUDA kernels "
                          f"(pip install 'bevdeploy[gpu]'): {triton.detail}"))
    else:
        rows.append(Check("backend torch-cuda", True, f"ONNX → PyTorch modules on {cuda.detail}"))
    if not tensorrt.ok:
        trt = Check("backend tensorrt", False, f"needs tensorrt: {tensorrt.detail}")
    elif not cuda.ok:
        trt = Check("backend tensorrt", False, f"needs CUDA torch for its buffers: {cuda.detail}")
    elif not triton.ok:
        trt = Check("backend tensorrt", False, f"needs triton for the CUDA kernels: "
                    f"{triton.detail}")
    else:
        trt = Check("backend tensorrt", True, f"{tensorrt.detail}; engines from `bevdeploy "
                    "build` run only on this GPU and TensorRT version")
    return [*rows, trt, auto_check()]


def openvino_check() -> Check:
    """The second CPU backend (the ``openvino`` extra): installed, and what its CPU plugin says
    this CPU can do (BF16 inference precision needs ``BF16`` there)."""
    from bevdeploy.errors import ConfigError
    from bevdeploy.runtime.backends.openvino import capabilities

    try:
        caps = capabilities()
    except ConfigError as exc:
        return Check("backend openvino", False, str(exc))
    except RuntimeError as exc:  # installed, but its CPU plugin does not start
        return Check("backend openvino", False, f"the CPU plugin does not load: {exc}")
    return Check("backend openvino", True, f"CPU plugin, capabilities {' '.join(caps)}")


def auto_check() -> Check:
    """What ``--backend auto`` picks on this CPU for an FP32 package, an INT8 package and BF16
    inference precision (``runtime.backends.auto``); the reason of each is printed when a
    command runs with ``--backend auto``."""
    from bevdeploy.errors import ConfigError
    from bevdeploy.runtime.backends.auto import (INT8_DOT_FEATURES, choose_backend, host_features,
                                                 openvino_status)

    dots = "/".join(sorted(host_features() & set(INT8_DOT_FEATURES))) or "no AVX-512 VNNI/AMX"
    parts = []
    for label, precisions, inference in (("fp32 package", ["fp32"], "fp32"),
                                         (f"int8 package ({dots})", ["int8", "fp32"], "fp32"),
                                         ("bf16", ["fp32"], "bf16")):
        try:
            parts.append(f"{label} → {choose_backend(precisions, inference).backend}")
        except ConfigError:
            installed = openvino_status()[0]
            parts.append(f"{label} → refused ("
                         + ("no native BF16 here)" if installed else "openvino not installed)"))
    return Check("backend auto", True, "; ".join(parts))


def cpu_checks() -> list[Check]:
    """The CPU the CPU runtime's speed depends on: model, usable cores, the instruction sets
    that decide FP32 and INT8 speed (``bench.measure.ISA_FEATURES``), and what they imply.

    ONNX Runtime's INT8 convolutions are fast where the CPU has 8-bit dot products (VNNI, in
    AVX-512 or AVX form; AMX tiles beyond that); with AVX2 alone each 8-bit product pair goes
    through a multiply-add and a widening add, so an INT8 package may be no faster than FP32
    there, which ``bevdeploy bench`` measures."""
    from bevdeploy.bench.measure import cpu_identity

    cpu = cpu_identity()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    isa = set(cpu["isa"])
    rows = [Check("cpu", True, f"{cpu['model'] or 'unknown model'} ({cpu['microarchitecture']}),"
                               f" {usable} of {os.cpu_count()} cores usable"),
            Check("cpu isa", "avx2" in isa, " ".join(cpu["isa"]) or "no AVX2: the numba "
                  "kernels and ONNX Runtime fall back to narrower vectors")]
    if "amx-int8" in isa:
        int8 = Check("int8 on this cpu", True, "AMX tiles and VNNI: INT8 modules are expected "
                     "to beat FP32")
    elif isa & {"avx512vnni", "avxvnni"}:
        int8 = Check("int8 on this cpu", True, "VNNI 8-bit dot products: INT8 modules are "
                     "expected to beat FP32")
    else:
        int8 = Check("int8 on this cpu", False, "no VNNI: 8-bit products take two "
                     "instructions, INT8 may be no faster than FP32 (measure: bevdeploy bench)")
    bf16 = Check("bf16 on this cpu", "avx512bf16" in isa,
                 "native BF16 dot products (AVX-512 BF16)" if "avx512bf16" in isa
                 else "no native BF16 dot products")
    return [*rows, int8, bf16]


def run_checks() -> list[Check]:
    cuda, triton, tensorrt = cuda_check(), triton_check(), tensorrt_check()
    return [*package_checks(), *cpu_checks(), onnxruntime_providers(), cuda, triton, tensorrt,
            *backend_checks(cuda, triton, tensorrt)]
