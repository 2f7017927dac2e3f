"""OpenVINO on the CPU: the second CPU runner of the dense modules (``--backend openvino``).

Each module is read by OpenVINO's ONNX frontend (named explicitly, so a damaged file is one
ONNX parse error rather than every frontend's guess) and compiled once for ``"CPU"`` with one
``InferRequest``. The compile settings are stated, never left to the plugin's defaults:

* ``INFERENCE_PRECISION_HINT`` is ``f32`` unless BF16 is asked for. The CPU plugin's own default
  on a CPU with AVX-512 BF16 or AMX is ``bf16``, which would silently run an "FP32" package with
  an 8-bit mantissa. BF16 (``RunnerOptions.inference_precision="bf16"``) is refused with a
  ``ConfigError`` where OpenVINO does not list ``BF16`` in the CPU's
  ``OPTIMIZATION_CAPABILITIES``: its gain (3.3–6.2× FP32 on the r50 modules) is the native
  BF16 dot products of AVX-512 BF16 and AMX.
* An INT8 package's QDQ graphs are compiled as they are: OpenVINO's low-precision
  transformations fold each QuantizeLinear/DequantizeLinear pair around a convolution into an
  INT8 kernel (VNNI/AMX where the CPU has them); what the package keeps in float runs at the
  inference precision above.
* ``CPU_DENORMALS_OPTIMIZATION``: subnormal floats are flushed to zero, as the ONNX Runtime
  runner does. The random-weight r50 package's vtransform and fuser inputs hold subnormals
  (2.2 % and 4.3 % of the values on a synthetic frame: depth probabilities from the softmax's
  tails times features), over which FP32 convolutions ran 3–7× slower
  (docs/bench/notes.md#openvino-vs-onnx-runtime-on-the-cpu); flushing changes only values
  below 1.2e-38. OpenVINO sets the flush mode on the thread that compiles or runs the model too
  (measured); ``runtime.fp_env.callers_fp_env`` gives that thread its own mode back after
  each call.
* ``PERFORMANCE_HINT=LATENCY`` with one stream: one frame at a time, each module on every
  thread it is given (``RunnerOptions.threads`` → ``INFERENCE_NUM_THREADS``; unset: the
  plugin's choice, every core). ``optimization`` and ``spinning`` are ONNX Runtime's knobs,
  which OpenVINO has no counterpart of: it always applies its own transformations.

Outputs are written straight into fresh numpy arrays set as the request's output tensors before
each call (zero copies, and nothing a later call overwrites: the arrays handed to the next stage
belong to the caller). Only an output whose shape is still dynamic after compiling is copied
out of the request. Inputs are shared with the request for the duration of the call. On the
r50 fuser (a 66 MB output) the fresh arrays cost nothing measurable against the request's own
buffer (523 vs 532 ms), where copying out cost 30–40 ms.

At load the graph's inputs and outputs are compared with the manifest, as ONNX Runtime's runner
does, so a file that disagrees with its manifest is a ``PackageError`` before any frame runs. A
graph input with a dynamic dimension where the manifest fixes it is reshaped to the manifest's
size before compiling, so the plugin plans static memory for it.

``openvino`` is an optional extra (``pip install 'bevdeploy[openvino]'``); it is imported only
when this backend is asked for.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from bevdeploy.errors import ConfigError, PackageError
from bevdeploy.package import ModuleEntry, TensorSpec
from bevdeploy.runtime.backends.base import ModuleRunner, RunnerOptions, check_feeds
from bevdeploy.runtime.fp_env import callers_fp_env

DEVICE = "CPU"
# RunnerOptions.inference_precision → OpenVINO's INFERENCE_PRECISION_HINT.
_HINTS = {"fp32": "f32", "bf16": "bf16"}
INSTALL_HINT = "pip install 'bevdeploy[openvino]'"


def import_openvino(field: str = "--backend") -> ModuleType:
    """``openvino``, or a ``ConfigError`` saying how to install it (not an ``ImportError``)."""
    try:
        import openvino
    except ImportError as exc:
        raise ConfigError(f"the openvino backend needs OpenVINO ({INSTALL_HINT}): {exc}",
                          field=field) from None
    return openvino


@functools.cache
def core() -> Any:
    """The process's one ``openvino.Core`` (it owns the CPU plugin and its thread pools)."""
    return import_openvino().Core()


def capabilities() -> tuple[str, ...]:
    """What OpenVINO's CPU plugin says this CPU can do (``OPTIMIZATION_CAPABILITIES``:
    ``FP32``, ``INT8``, ``BF16`` where AVX-512 BF16 or AMX exist, ...)."""
    return tuple(core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))


def bf16_unavailable_reason() -> str | None:
    """Why BF16 inference precision cannot run here, or ``None`` when it can."""
    if "BF16" in capabilities():
        return None
    return ("OpenVINO reports no BF16 for this CPU (native BF16 needs AVX-512 BF16 or AMX); "
            "emulated it would be slower than FP32")


def compile_config(options: RunnerOptions) -> dict[str, Any]:
    """The CPU plugin's settings for ``options``, refused with a ``ConfigError`` when invalid
    or when BF16 is asked for on a CPU without it."""
    if options.threads is not None and options.threads < 1:
        raise ConfigError(f"must be >= 1, got {options.threads}", field="threads")
    precision = options.inference_precision
    if precision not in _HINTS:
        raise ConfigError(f"unknown inference precision {precision!r}; known: {sorted(_HINTS)}",
                          field="--inference-precision")
    if precision == "bf16":
        reason = bf16_unavailable_reason()
        if reason is not None:
            raise ConfigError(reason, field="--inference-precision")
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _HINTS[precision],
                              "CPU_DENORMALS_OPTIMIZATION": True,
                              "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if options.threads is not None:
        config["INFERENCE_NUM_THREADS"] = options.threads
    return config


class OpenVinoRunner(ModuleRunner):
    """A ``Runner`` over one OpenVINO ``CompiledModel`` on the CPU and its one ``InferRequest``."""

    def __init__(self, name: str, path: Path, compiled: Any, inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...], inference_precision: str) -> None:
        super().__init__(name, path, inputs, outputs)
        self.compiled = compiled
        self.inference_precision = inference_precision
        self._request = compiled.create_infer_request()
        self._tensor = import_openvino().Tensor
        # (name, output index, static shape or None: a dynamic output is copied out instead)
        self._outputs_plan: list[tuple[str, int, tuple[int, ...] | None, np.dtype]] = []
        for spec in outputs:
            index = next(i for i, port in enumerate(compiled.outputs)
                         if spec.name in port.get_names())
            port = compiled.outputs[index]
            static = (tuple(int(d) for d in port.get_shape())
                      if port.get_partial_shape().is_static else None)
            self._outputs_plan.append((spec.name, index, static, np.dtype(spec.dtype)))

    @classmethod
    def load(cls, path: Path, entry: ModuleEntry, options: RunnerOptions) -> "OpenVinoRunner":
        """Read ``path`` with the ONNX frontend, check its I/O against the manifest ``entry``,
        fix the dimensions the manifest fixes, and compile it for the CPU."""
        ov = import_openvino()
        config = compile_config(options)
        fld = f"modules.{entry.name}.file"
        try:
            frontend = ov.frontend.FrontEndManager().load_by_framework("onnx")
            model = frontend.convert(frontend.load(str(path)))
        except _load_errors(ov) as exc:
            raise PackageError(f"OpenVINO cannot load module {entry.name!r}: "
                               f"{_first_line(exc)}", path=path, field=fld) from None
        _check_io(entry, "inputs", model.inputs, path)
        _check_io(entry, "outputs", model.outputs, path)
        _fix_static_inputs(ov, model, entry)
        try:
            with callers_fp_env():
                compiled = core().compile_model(model, DEVICE, config)
        except _load_errors(ov) as exc:
            raise PackageError(f"OpenVINO cannot compile module {entry.name!r}: "
                               f"{_first_line(exc)}", path=path, field=fld) from None
        return cls(entry.name, path, compiled, entry.inputs, entry.outputs,
                   options.inference_precision)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        checked = check_feeds(self.name, self._inputs, feeds, source=self.path)
        request = self._request
        fresh: dict[str, np.ndarray] = {}
        for name, index, shape, dtype in self._outputs_plan:
            if shape is not None:
                fresh[name] = np.empty(shape, dtype)
                request.set_output_tensor(index, self._tensor(fresh[name], shared_memory=True))
        t0 = time.perf_counter()
        with callers_fp_env():
            results = request.infer(checked, share_inputs=True, share_outputs=True)
        self._last_time_s = time.perf_counter() - t0
        return {name: fresh[name] if name in fresh else np.array(results[index], copy=True)
                for name, index, _, _ in self._outputs_plan}


def _load_errors(ov: ModuleType) -> tuple[type[BaseException], ...]:
    """What OpenVINO raises for a file it cannot read or a graph it cannot compile."""
    frontend = ov.frontend
    return (RuntimeError, OSError, frontend.GeneralFailure, frontend.InitializationFailure,
            frontend.NotImplementedFailure, frontend.OpConversionFailure,
            frontend.OpValidationFailure)


def _first_line(exc: BaseException) -> str:
    """OpenVINO's messages start with source locations; keep the lines that say what failed."""
    lines = [line.strip() for line in str(exc).splitlines()]
    said = [line for line in lines if line and not line.startswith(("Exception from", "Check "))]
    return " ".join(said) or (lines[0] if lines else type(exc).__name__)


def _dims(partial_shape: Any) -> list[int | None]:
    return [d.get_length() if d.is_static else None for d in partial_shape]


def _check_io(entry: ModuleEntry, kind: str, ports: list[Any], path: Path) -> None:
    """Refuse a graph whose inputs or outputs differ from the manifest in name, order, dtype or
    a dimension fixed on both sides (the file was replaced by one exported for another
    preset). A dimension dynamic in the graph but fixed in the manifest is accepted: it is
    fixed before compiling (``_fix_static_inputs``)."""
    specs: tuple[TensorSpec, ...] = getattr(entry, kind)
    fld = f"modules.{entry.name}.{kind}"
    if len(ports) != len(specs) or any(spec.name not in port.get_names()
                                       for spec, port in zip(specs, ports)):
        got = [sorted(port.get_names()) for port in ports]
        raise PackageError(f"the ONNX graph has {kind} {got} but the manifest lists "
                           f"{[s.name for s in specs]}", path=path, field=fld)
    for spec, port in zip(specs, ports):
        dtype = port.get_element_type().to_dtype()
        if dtype != np.dtype(spec.dtype):
            raise PackageError(f"{spec.name!r} is {dtype} in the graph but {spec.dtype} in the "
                               f"manifest", path=path, field=fld)
        graph = _dims(port.get_partial_shape())
        if len(graph) != len(spec.shape) or any(
                isinstance(want, int) and got is not None and want != got
                for want, got in zip(spec.shape, graph)):
            raise PackageError(f"{spec.name!r} has shape {graph} in the graph but "
                               f"{list(spec.shape)} in the manifest", path=path, field=fld)


def _fix_static_inputs(ov: ModuleType, model: Any, entry: ModuleEntry) -> None:
    """Reshape the inputs whose graph dimensions are dynamic where the manifest fixes them (a
    symbolic manifest dimension stays dynamic)."""
    wanted: dict[Any, Any] = {}
    for spec, port in zip(entry.inputs, model.inputs):
        graph = _dims(port.get_partial_shape())
        target = [want if isinstance(want, int) else got for want, got in zip(spec.shape, graph)]
        if target != graph:
            wanted[port] = ov.PartialShape([-1 if d is None else d for d in target])
    if wanted:
        model.reshape(wanted)
