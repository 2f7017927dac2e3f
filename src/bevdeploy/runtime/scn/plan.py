"""The SCN's layer plan and the one step interpreter both executors share.

``plan_steps`` turns the parsed layer list of ``bevdeploy.scn_format.ScnGraph`` into executable
steps, the fusions libspconv makes (docs/reference.md#libspconv-runtime):

* a ``SparseConvolution`` whose output feeds only an ``Add`` (a basic block's residual join),
  and that sum only a ``Relu``, absorbs both into its epilogue (``ConvStep``);
* a ``ScatterDense`` consumed by a ``Transpose`` is written in that transpose's layout, so the
  ``Transpose`` and the ``Reshape`` to ``(1, C·Z, X, Y)`` are free views (``LayerStep``).

``execute`` walks the steps: rulebooks built once per frame per ``rulebook`` key (a conv with an
empty key gets its own) and shared by every conv with that key, tensors released after their
last use, each step timed. What a step *computes* is the executor's: ``StepOps`` is the numpy
executor's (``numpy_executor``) or torch's (``torch_executor``), so both run the same plan the
same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from bevdeploy.scn_format import (
    Add, Relu, Reshape, ScatterDense, ScnGraph, ScnLayer, SparseConv, Transpose,
)


@dataclass(frozen=True)
class ConvStep:
    """A sparse conv with its epilogue; ``output`` is the last fused layer's output."""

    layer: SparseConv
    weight: np.ndarray  # (K, C_in, C_out) float32, offsets row-major over (kx, ky, kz)
    bias: np.ndarray  # (C_out,) float32
    relu: bool
    residual: str | None  # tensor added before the activation
    output: str
    fused: tuple[str, ...]  # names of the Add / Relu layers folded in

    @property
    def name(self) -> str:
        return self.layer.name


@dataclass(frozen=True)
class LayerStep:
    """A layer run on its own (an unfused Add / Relu, ScatterDense, Transpose, Reshape)."""

    layer: ScnLayer
    dense_layout: tuple[int, ...] | None = None  # ScatterDense: the consumer's Transpose dims

    @property
    def name(self) -> str:
        return self.layer.name


Step = ConvStep | LayerStep


def _kernel_weight(conv: SparseConv) -> np.ndarray:
    """``(O, kx, ky, kz, I)`` → ``(K, I, O)`` float32 (one ``(I, O)`` GEMM operand per offset)."""
    out_channels, kx, ky, kz, in_channels = conv.weight.shape
    weight = np.transpose(conv.weight, (1, 2, 3, 4, 0)).reshape(kx * ky * kz, in_channels,
                                                                out_channels)
    return np.ascontiguousarray(weight, dtype=np.float32)


def plan_steps(graph: ScnGraph) -> list[Step]:
    """The layer list as executable steps, with conv epilogues and ScatterDense layouts fused."""
    consumers: dict[str, list[ScnLayer]] = {}
    produced_at = {graph.features.name: -1}
    for index, layer in enumerate(graph.layers):
        produced_at[layer.output] = index
        for name in layer.inputs:
            consumers.setdefault(name, []).append(layer)

    def sole_consumer(tensor: str, kind: type) -> ScnLayer | None:
        users = consumers.get(tensor, [])
        if len(users) == 1 and isinstance(users[0], kind) and tensor != graph.output.name:
            return users[0]
        return None

    steps: list[Step] = []
    absorbed: set[str] = set()
    for index, layer in enumerate(graph.layers):
        if layer.name in absorbed:
            continue
        if isinstance(layer, SparseConv):
            output, residual, relu, fused = layer.output, None, layer.activation == "ReLU", []
            add = None if relu else sole_consumer(output, Add)
            other = None
            if add is not None:
                other = add.inputs[1] if add.inputs[0] == output else add.inputs[0]
            # The Add runs at the conv's place, so its other operand must exist by then.
            if add is not None and other != output and produced_at[other] < index:
                residual, output = other, add.output
                fused.append(add.name)
            then_relu = None if relu else sole_consumer(output, Relu)
            if then_relu is not None:
                relu, output = True, then_relu.output
                fused.append(then_relu.name)
            absorbed.update(fused)
            steps.append(ConvStep(layer, _kernel_weight(layer),
                                  np.ascontiguousarray(layer.bias, dtype=np.float32), relu,
                                  residual, output, tuple(fused)))
        elif isinstance(layer, ScatterDense):
            transpose = sole_consumer(layer.output, Transpose)
            steps.append(LayerStep(layer, transpose.dims if transpose is not None else None))
        else:
            steps.append(LayerStep(layer))
    return steps


def step_inputs(step: Step) -> tuple[str, ...]:
    """The tensors a step reads, a fused conv's residual included."""
    if isinstance(step, ConvStep):
        return step.layer.inputs + ((step.residual,) if step.residual else ())
    return step.layer.inputs


def last_uses(steps: Sequence[Step]) -> dict[str, int]:
    """Tensor name → index of the last step reading it, so executors can release it there."""
    last: dict[str, int] = {}
    for index, step in enumerate(steps):
        for name in step_inputs(step):
            last[name] = index
    return last


@dataclass(frozen=True, eq=False)
class Sparse:
    """A sparse tensor: ``feats (M, C)`` on the executor's sites (tensors on the same sites
    share the sites object)."""

    feats: Any
    sites: Any


class StepOps(Protocol):
    """What each executor computes for the interpreter, on its own arrays."""

    def rulebook(self, conv: SparseConv, sites: Any) -> Any:
        """The pairs of ``conv`` on ``sites`` (built once per key per frame)."""
        ...

    def conv(self, step: ConvStep, x: Sparse, rulebook: Any, residual: Any | None) -> Sparse:
        """The conv with its epilogue (bias, the residual if fused, the ReLU if fused)."""
        ...

    def add(self, a: Any, b: Any) -> Any: ...

    def relu(self, feats: Any) -> Any: ...

    def scatter_dense(self, x: Sparse, output_shape: tuple[int, ...],
                      layout: tuple[int, ...] | None) -> Any:
        """``(1, C, X, Y, Z)`` zeros with the active sites written, stored in ``layout`` (the
        consuming Transpose's dims) when given."""
        ...

    def transpose(self, dense: Any, dims: tuple[int, ...]) -> Any: ...

    def reshape(self, dense: Any, dims: tuple[int, ...]) -> Any: ...


def rulebook_key(conv: SparseConv) -> str:
    """The rulebook cache key of a conv: its ``rulebook`` attribute, or its own for an empty one."""
    return conv.rulebook or f"<{conv.name}>"


def cached_rulebook(ops: StepOps, conv: SparseConv, sites: Any, cache: dict[str, Any],
                    timings: dict[str, float]) -> Any:
    """``conv``'s rulebook from ``cache``, built (and timed as ``rulebook:<key>``) on a miss."""
    key = rulebook_key(conv)
    if key not in cache:
        tick = time.perf_counter()
        cache[key] = ops.rulebook(conv, sites)
        timings[f"rulebook:{key}"] = time.perf_counter() - tick
    return cache[key]


@dataclass(frozen=True)
class ScnPlan:
    """A graph's steps and the step after which each tensor is released."""

    graph: ScnGraph
    steps: tuple[Step, ...]
    last_use: dict[str, int]

    @classmethod
    def of(cls, graph: ScnGraph) -> "ScnPlan":
        steps = tuple(plan_steps(graph))
        return cls(graph, steps, last_uses(steps))

    @property
    def fusions(self) -> dict[str, tuple[str, ...]]:
        """Conv name → the Add / Relu layers folded into its epilogue."""
        return {step.name: step.fused for step in self.steps
                if isinstance(step, ConvStep) and step.fused}


def execute(plan: ScnPlan, ops: StepOps, features: Sparse, timings: dict[str, float]) -> Any:
    """Run ``plan`` on the input ``features`` with ``ops``; the graph's output (dense).
    ``timings`` gets the seconds of every step under its name (a fused conv's include its Add
    and Relu) and of every rulebook build."""
    tensors: dict[str, Any] = {plan.graph.features.name: features}
    rulebooks: dict[str, Any] = {}
    for index, step in enumerate(plan.steps):
        if isinstance(step, ConvStep):
            x = tensors[step.layer.inputs[0]]
            rulebook = cached_rulebook(ops, step.layer, x.sites, rulebooks, timings)
            tick = time.perf_counter()
            residual = None if step.residual is None else tensors[step.residual].feats
            tensors[step.output] = ops.conv(step, x, rulebook, residual)
        else:
            tick = time.perf_counter()
            tensors[step.layer.output] = _layer(ops, step, tensors)
        timings[step.name] = time.perf_counter() - tick
        for name in step_inputs(step):
            if plan.last_use[name] == index:
                del tensors[name]
    return tensors[plan.graph.output.name]


def _layer(ops: StepOps, step: LayerStep, tensors: dict[str, Any]) -> Any:
    layer = step.layer
    x = tensors[layer.inputs[0]]
    if isinstance(layer, Add):
        return Sparse(ops.add(x.feats, tensors[layer.inputs[1]].feats), x.sites)
    if isinstance(layer, Relu):
        return Sparse(ops.relu(x.feats), x.sites)
    if isinstance(layer, ScatterDense):
        return ops.scatter_dense(x, layer.output_shape, step.dense_layout)
    if isinstance(layer, Transpose):
        return ops.transpose(x, layer.dims)
    assert isinstance(layer, Reshape)
    return ops.reshape(x, layer.dims)
