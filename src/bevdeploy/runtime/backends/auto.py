"""``--backend auto``: ONNX Runtime or OpenVINO for a package on this CPU, and why.

The rule is what was measured (docs/bench/notes.md#openvino-vs-onnx-runtime-on-the-cpu: the four
dense modules of ``nuscenes-resnet50``, both runners side by side in one process on a 2-core
AVX-512 VNNI + BF16 + AMX Xeon):

* **INT8** modules on a CPU with AVX-512 VNNI or AMX: OpenVINO, whose INT8 kernels ran the INT8
  backbone and fuser 2.6–3.5× faster than ONNX Runtime's there, and still 1.22–1.28× faster
  with OpenVINO held to AVX-512 VNNI (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI``, no AMX; ONNX
  Runtime not held back).
* **BF16** inference precision: only OpenVINO has it (and only where its CPU plugin reports
  BF16), so asking for it picks OpenVINO or is refused.
* **FP32** packages: ONNX Runtime, the default. OpenVINO's FP32 ran 0.92–1.10× ONNX Runtime's
  on the same modules: the same class of AVX-512 FP32 kernels, nothing to gain from a switch.
* Without AVX-512 VNNI (AVX2, or AVX-VNNI's 256-bit form) nothing was measured in OpenVINO's
  favour, so ONNX Runtime stays: held to AVX2-VNNI, OpenVINO's INT8 ran 0.78–0.87× of an ONNX
  Runtime that was not held back, which says nothing either way about a CPU that has only
  those.

The CPU's instruction sets come from LLVM's view of the host (llvmlite, numba's own backend, so
no extra dependency); whether OpenVINO is installed from importing it, only when the rule needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from bevdeploy.errors import ConfigError
from bevdeploy.package import DeployPackage
from bevdeploy.vocabulary import DENSE_MODULES

AUTO = "auto"
# LLVM's names of the CPU features with which OpenVINO's INT8 kernels measured faster.
INT8_DOT_FEATURES = ("avx512vnni", "amx-int8")


@dataclass(frozen=True)
class BackendChoice:
    """The backend ``auto`` picked and the reason, one sentence (printed and recorded)."""

    backend: str
    reason: str


def host_features() -> frozenset[str]:
    """The CPU features LLVM reports on for this host (e.g. ``avx512vnni``, ``amx-bf16``)."""
    import llvmlite.binding as llvm

    return frozenset(name for name, on in llvm.get_host_cpu_features().items() if on)


def openvino_status() -> tuple[bool, bool]:
    """``(installed, bf16)``: whether OpenVINO imports, and whether its CPU plugin reports BF16."""
    try:
        from bevdeploy.runtime.backends.openvino import capabilities
        return True, "BF16" in capabilities()
    except ConfigError:
        return False, False


def choose_backend(precisions: Iterable[str], inference_precision: str = "fp32", *,
                   features: Collection[str] | None = None,
                   openvino: Callable[[], tuple[bool, bool]] = openvino_status) -> BackendChoice:
    """The CPU backend for a package whose dense modules have ``precisions`` (the manifest's
    ``fp32`` / ``fp16`` / ``int8``), asked to compute its float parts in
    ``inference_precision``. ``features`` are the CPU's (default: this host's), ``openvino``
    says whether OpenVINO is installed and has BF16 here (default: asks it). BF16 that cannot
    run here is a ``ConfigError`` saying why."""
    has = set(host_features() if features is None else features)
    if inference_precision == "bf16":
        installed, bf16 = openvino()
        if not installed:
            raise ConfigError("BF16 inference precision runs on the openvino backend, which is "
                              "not installed: pip install 'bevdeploy[openvino]'",
                              field="--inference-precision")
        if not bf16:
            raise ConfigError("BF16 inference precision needs native BF16 (AVX-512 BF16 or AMX), "
                              "which OpenVINO does not report for this CPU",
                              field="--inference-precision")
        return BackendChoice("openvino", "BF16 inference precision: only OpenVINO has it, and "
                                         "this CPU has native BF16")
    if "int8" not in set(precisions):
        return BackendChoice("onnxruntime", "an FP32/FP16 package: OpenVINO's FP32 measured no "
                                            "faster than ONNX Runtime's")
    dots = sorted(has & set(INT8_DOT_FEATURES))
    if not dots:
        return BackendChoice("onnxruntime", "INT8 without AVX-512 VNNI or AMX on this CPU: "
                                            "OpenVINO was not measured faster there")
    if not openvino()[0]:
        return BackendChoice("onnxruntime", "INT8 on an AVX-512 VNNI/AMX CPU would run faster "
                                            "on OpenVINO, which is not installed (pip install "
                                            "'bevdeploy[openvino]')")
    return BackendChoice("openvino", f"INT8 with {'/'.join(dots)} on this CPU: OpenVINO's INT8 "
                                     "kernels measured faster than ONNX Runtime's")


def choose_for_package(package: DeployPackage, inference_precision: str = "fp32") -> BackendChoice:
    """``choose_backend`` for the precisions of ``package``'s dense modules, on this CPU."""
    return choose_backend([package.module(name).precision for name in DENSE_MODULES],
                          inference_precision)
