"""ONNX Runtime on the CPU: the default backend of the deploy runtime.

Each dense module becomes one ``InferenceSession`` on the CPU execution provider. The session
settings that matter for latency are exposed (``RunnerOptions``): the intra-op thread count, the
graph optimisation level and whether idle intra-op threads spin. Inter-op parallelism stays at
one thread and the execution mode sequential: the graphs are chains of convolutions with nothing
to run side by side, and parallelism across modules belongs to the pipeline's schedule, not to
each session.

Spinning is off by default (``session.intra_op.allow_spinning = 0``). Every session owns a
thread pool, and after a run its workers busy-wait for more work; in a pipeline the next thing
to run is another session or a numba kernel, which then shares its cores with those spinning
workers (measured: docs/bench/notes.md#onnx-runtime-spinning).

Subnormal floats are flushed to zero (``session.set_denormal_as_zero``), as the OpenVINO
runner does: the random-weight r50 package's camera BEV grid and fuser inputs carry subnormals
(depth probabilities from the softmax's tails times features), over which FP32 convolutions
ran 3–7× slower; flushing changes only values below 1.2e-38. Both runtimes set the flush mode
on the thread that creates the session too (measured), so with only one of them flushing the
other's times would depend on which loaded first
(docs/bench/notes.md#openvino-vs-onnx-runtime-on-the-cpu).

At load the session's own inputs and outputs are compared with the manifest, so a package whose
ONNX file and manifest disagree is refused with a ``PackageError`` before any frame runs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from bevdeploy.errors import ConfigError, PackageError
from bevdeploy.package import ModuleEntry, TensorSpec
from bevdeploy.runtime.backends.base import ModuleRunner, RunnerOptions, check_feeds
from bevdeploy.runtime.fp_env import callers_fp_env

PROVIDERS = ("CPUExecutionProvider",)

OPTIMIZATION_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

# What ONNX Runtime raises for a file it cannot load (missing, corrupt, unsupported op).
_LOAD_ERRORS = (ort_state.Fail, ort_state.InvalidGraph, ort_state.InvalidProtobuf,
                ort_state.NoSuchFile, ort_state.NotImplemented, ort_state.RuntimeException)

# ONNX Runtime's type strings for the dtypes a manifest can name.
_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)",
              "int32": "tensor(int32)", "int64": "tensor(int64)"}


def session_options(options: RunnerOptions) -> ort.SessionOptions:
    """``SessionOptions`` for ``options``; ``threads=None`` keeps ORT's default (all cores)."""
    if options.optimization not in OPTIMIZATION_LEVELS:
        raise ConfigError(f"unknown graph optimisation level {options.optimization!r}; known: "
                          f"{sorted(OPTIMIZATION_LEVELS)}", field="optimization")
    if options.threads is not None and options.threads < 1:
        raise ConfigError(f"must be >= 1, got {options.threads}", field="threads")
    so = ort.SessionOptions()
    so.graph_optimization_level = OPTIMIZATION_LEVELS[options.optimization]
    so.intra_op_num_threads = options.threads or 0
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning",
                                "1" if options.spinning else "0")
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    return so


class OnnxRuntimeRunner(ModuleRunner):
    """A ``Runner`` over one ``onnxruntime.InferenceSession`` (CPU execution provider)."""

    def __init__(self, name: str, path: Path, session: ort.InferenceSession,
                 inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> None:
        super().__init__(name, path, inputs, outputs)
        self.session = session
        self._output_names = [spec.name for spec in outputs]

    @classmethod
    def load(cls, path: Path, entry: ModuleEntry, options: RunnerOptions) -> "OnnxRuntimeRunner":
        """Open ``path`` and check that its graph I/O is the manifest ``entry``'s."""
        try:
            with callers_fp_env():
                session = ort.InferenceSession(str(path), sess_options=session_options(options),
                                               providers=list(PROVIDERS))
        except _LOAD_ERRORS as exc:
            raise PackageError(f"ONNX Runtime cannot load module {entry.name!r}: {exc}",
                               path=path, field=f"modules.{entry.name}.file") from None
        _check_io(entry, "inputs", session.get_inputs(), path)
        _check_io(entry, "outputs", session.get_outputs(), path)
        return cls(entry.name, path, session, entry.inputs, entry.outputs)


    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        checked = check_feeds(self.name, self._inputs, feeds, source=self.path)
        t0 = time.perf_counter()
        with callers_fp_env():
            values = self.session.run(self._output_names, checked)
        self._last_time_s = time.perf_counter() - t0
        return dict(zip(self._output_names, values))


def _check_io(entry: ModuleEntry, kind: str, args: list[ort.NodeArg], path: Path) -> None:
    """Refuse a graph whose inputs or outputs differ from the manifest in name, order, dtype or
    a fixed dimension (the file was replaced by one exported for another preset)."""
    specs: tuple[TensorSpec, ...] = getattr(entry, kind)
    fld = f"modules.{entry.name}.{kind}"
    got = [a.name for a in args]
    if got != [s.name for s in specs]:
        raise PackageError(f"the ONNX graph has {kind} {got} but the manifest lists "
                           f"{[s.name for s in specs]}", path=path, field=fld)
    for spec, arg in zip(specs, args):
        if _ORT_TYPES.get(spec.dtype) != arg.type:
            raise PackageError(f"{spec.name!r} is {arg.type} in the graph but {spec.dtype} in the "
                               f"manifest", path=path, field=fld)
        fixed_graph = [d if isinstance(d, int) else None for d in arg.shape]
        fixed_spec = [d if isinstance(d, int) else None for d in spec.shape]
        if fixed_graph != fixed_spec:
            raise PackageError(f"{spec.name!r} has shape {arg.shape} in the graph but "
                               f"{list(spec.shape)} in the manifest", path=path, field=fld)
