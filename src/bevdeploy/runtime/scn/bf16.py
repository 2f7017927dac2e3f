"""The wide sparse convs of an SCN as BF16 implicit GEMMs through OpenVINO
(``ScnExecutor(..., precision="bf16")``).

Why: the FP32 kernel (``bevdeploy.runtime.kernels.cpu.sparse_conv``) is bound by OpenBLAS's
small sgemm calls. On a CPU with AMX or AVX-512 BF16, oneDNN's BF16 MatMul (OpenVINO's CPU
plugin) is fast enough to pay for an *implicit* GEMM that also multiplies the zeros of the
missing neighbours: each conv is one ``(M_out, K·C_in) × (K·C_in, C_out)`` product. It pays
only for wide layers: on a 120k-voxel nuScenes-resnet50 frame, 2 cores with AMX, the
128-channel convs ran 2.2× faster than the FP32 kernel and the 64-channel ones 1.4×, while as
single layers the 32-channel ones were no faster and the 16-channel ones 2.7× slower (the
zeros, 40–70 % of their gathered rows, cost more than the GEMM saves), so only convs with at
least ``MIN_CHANNELS`` input channels go this way; the others stay on the FP32 kernel
(docs/bench/notes.md#scn-in-bf16).

The graph of one conv, compiled once at executor construction with a dynamic voxel count and
``INFERENCE_PRECISION_HINT=bf16``: the features get a zero row appended; ``Gather`` takes the
rows of the rulebook transposed, ``(M_out, K)``, where −1 (a missing neighbour) is Gather's
negative index of that zero row; a ``Reshape`` to ``(M_out, K·C_in)``, the ``MatMul`` with the
stacked weights, the bias, the fused residual and ReLU. Accumulation is oneDNN's (BF16 products,
FP32 sums), so results differ from FP32 by BF16 rounding of the inputs and weights.

OpenVINO is the optional ``openvino`` extra: imported only here, when BF16 is asked for, and
refused with a ``ConfigError`` when it is absent or the CPU has no native BF16.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np

from bevdeploy.errors import ConfigError
from bevdeploy.runtime.fp_env import callers_fp_env
from bevdeploy.runtime.backends.openvino import bf16_unavailable_reason, core, import_openvino
from bevdeploy.runtime.kernels.cpu.sparse_conv import Rulebook
from bevdeploy.runtime.scn.plan import ConvStep

MIN_CHANNELS = 64  # input channels from which a conv runs in BF16 (see the module docstring)
ROW_BUCKET = 4096  # output rows are padded to a multiple of this (see ``_bucketed_rows``)
_FIELD = "precision"


def _conv_model(step: ConvStep) -> Any:
    """The OpenVINO model of one conv: inputs ``feats`` (M_in, C_in), ``rows`` (M_out, K)
    int32 and, with a fused residual, ``residual`` (M_out, C_out); output (M_out, C_out)."""
    import openvino as ov
    import openvino.opset13 as ops

    num_offsets, c_in, c_out = step.weight.shape
    feats = ops.parameter([-1, c_in], ov.Type.f32, name="feats")
    rows = ops.parameter([-1, num_offsets], ov.Type.i32, name="rows")
    padded = ops.concat([feats, ops.constant(np.zeros((1, c_in), np.float32))], 0)
    gathered = ops.gather(padded, rows, ops.constant(np.int64(0)))
    flat = ops.reshape(gathered, ops.constant(np.array([-1, num_offsets * c_in], np.int64)),
                       special_zero=False)
    out = ops.add(ops.matmul(flat, ops.constant(step.weight.reshape(num_offsets * c_in, c_out)),
                             False, False), ops.constant(step.bias))
    inputs = [feats, rows]
    if step.residual is not None:
        residual = ops.parameter([-1, c_out], ov.Type.f32, name="residual")
        out = ops.add(out, residual)
        inputs.append(residual)
    if step.relu:
        out = ops.relu(out)
    return ov.Model([out], inputs, step.name)


class Bf16Convs:
    """The convs of ``steps`` with at least ``MIN_CHANNELS`` input channels, compiled for BF16
    on ``threads`` threads; ``run`` computes one of them (``names`` lists which)."""

    def __init__(self, steps: Iterable[ConvStep], threads: int) -> None:
        import_openvino(field=_FIELD)
        reason = bf16_unavailable_reason()
        if reason is not None:
            raise ConfigError(reason, field=_FIELD)
        config = {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": threads,
                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        with callers_fp_env():
            self._requests = {step.name: core().compile_model(_conv_model(step), "CPU", config)
                              .create_infer_request()
                              for step in steps if step.layer.in_channels >= MIN_CHANNELS}
        # each frame's rulebooks → their padded gather rows, gone with the rulebooks
        self._rows: weakref.WeakKeyDictionary[Rulebook, np.ndarray] = weakref.WeakKeyDictionary()

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._requests)

    def run(self, step: ConvStep, feats: np.ndarray, rulebook: Rulebook,
            residual: np.ndarray | None) -> np.ndarray:
        """``act(Σ_k W[k]·in + bias (+ residual))`` (M_out, C_out) float32, like
        ``sparse_conv``, for a conv in ``names``.

        The result is the conv's own OpenVINO output buffer, not a copy (copies cost 8 % of
        these convs' time on the r50 SCN): it is valid until this conv runs again, i.e. for
        the rest of the executor's run, which releases every conv output before it returns."""
        count = rulebook.num_outputs
        if count == 0:
            return np.zeros((0, step.weight.shape[2]), dtype=np.float32)
        rows = self._rows.get(rulebook)
        if rows is None:  # once per rulebook: the convs sharing it share the padded rows
            rows = self._rows[rulebook] = _bucketed_rows(rulebook)
        inputs = [feats, rows]
        if residual is not None:
            padded = np.zeros((rows.shape[0], residual.shape[1]), np.float32)
            padded[:count] = residual
            inputs.append(padded)
        with callers_fp_env():
            return self._requests[step.name].infer(inputs, share_inputs=True,
                                                   share_outputs=True)[0][:count]


def _bucketed_rows(rulebook: Rulebook) -> np.ndarray:
    """The rulebook's rows by output, ``(M_out', K)`` int32: ``neighbours`` transposed, each
    output's input rows side by side (−1: none, i.e. the zero row), padded with rows of −1
    (outputs that are sliced off) to ``M_out'``, a multiple of ``ROW_BUCKET``. Every frame has
    another voxel count, and OpenVINO plans a MatMul for each new row count it meets; with the
    counts bucketed, the plans of earlier frames serve later ones
    (docs/bench/notes.md#scn-in-bf16)."""
    num_offsets, count = rulebook.neighbours.shape
    rows = np.full((-(-count // ROW_BUCKET) * ROW_BUCKET, num_offsets), -1, np.int32)
    rows[:count] = rulebook.neighbours.T
    return rows
