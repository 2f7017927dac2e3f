"""Run the SCN file (``lidar.backbone.xyz.onnx``) on the CPU, without PyTorch or spconv.

``ScnExecutor`` plays the role libspconv plays for CUDA-BEVFusion (spec/deploy.md §3.3): it
interprets the parsed layer list of ``bevdeploy.scn_format.ScnGraph`` with the rulebook and
gather-GEMM kernels of ``bevdeploy.runtime.kernels.cpu.sparse_conv``:

* ``SparseConvolution``: bias and the fused ``activation`` are applied in the kernel's
  epilogue. Rulebooks are built once per frame per ``rulebook`` key and shared by every conv
  with that key (the reader has checked that sharing convs have the same geometry and input
  sites); a conv with an empty key gets its own.
* ``Add`` and ``Relu``: when a conv's output feeds only an ``Add`` (a basic block's residual
  join) and that sum feeds only a ``Relu``, both are folded into the conv's epilogue, as
  libspconv fuses Add&Relu; otherwise they run as numpy element-wise ops.
* ``ScatterDense`` (format xyz): active sites into a zero ``(1, C, X, Y, Z)`` tensor. When a
  ``Transpose`` consumes it, the zeros are allocated in the transposed layout and written
  through a view, so the ``Transpose`` and the ``Reshape`` to ``(1, C·Z, X, Y)`` (channel
  ``c·Z + z``) are free views, libspconv's ScatterDense&Transpose fusion.

Tensors are released after their last use. The plan (``plan_steps``: the fusions above and
the last uses) is public because ``bevdeploy.runtime.scn_torch`` runs the same plan in torch.
``last_timings`` holds the seconds of the last ``run``: one entry per executed step under its
layer name (a fused conv's entry includes its Add and Relu, see ``fusions``), one
``rulebook:<key>`` entry per rulebook build, and ``total``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numba
import numpy as np

from bevdeploy.errors import ConfigError, InputError
from bevdeploy.runtime.kernels.cpu.sparse_conv import (
    DuplicateSiteError, Rulebook, blas_single_thread, site_order, sparse_conv, strided_rulebook,
    subm_rulebook,
)
from bevdeploy.scn_format import (
    Add, Relu, Reshape, ScatterDense, ScnGraph, ScnLayer, SparseConv, Transpose,
)

_SOURCE = "<scn executor>"


@dataclass(frozen=True, eq=False)
class _Sites:
    """The active sites of a sparse tensor; tensors on the same sites share this object."""

    coords: np.ndarray  # (M, 3) int32 (x, y, z)
    spatial_shape: tuple[int, int, int]


@dataclass(frozen=True, eq=False)
class _Sparse:
    feats: np.ndarray  # (M, C) float32
    sites: _Sites


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


class ScnExecutor:
    """Executes an ``ScnGraph``: ``run(feats (M, F), coords (M, 3) int32 xyz) → (1, C·Z, X, Y)``.

    ``threads`` is the number of numba threads a run uses (default: all numba may use); BLAS
    is held to one thread per numba thread during a run. ``sparse_shape``, ``in_channels`` and
    ``output_shape`` describe the graph's input grid and features and its dense output. The
    executor holds no per-frame state besides ``last_timings``; one instance must not run two
    frames at once.
    """

    def __init__(self, graph: ScnGraph, *, threads: int | None = None) -> None:
        limit = numba.config.NUMBA_NUM_THREADS
        if threads is not None and not (isinstance(threads, int) and not isinstance(threads, bool)
                                        and 1 <= threads <= limit):
            raise ConfigError(f"threads must be an integer in 1..{limit} (numba's thread pool), "
                              f"got {threads!r}", path=_SOURCE, field="threads")
        self.graph = graph
        self.threads = limit if threads is None else threads
        self.sparse_shape = graph.sparse_shape
        self.in_channels = int(graph.features.shape[1])
        self.output_shape = tuple(int(d) for d in graph.output.shape)
        self._steps = plan_steps(graph)
        self._last_use = last_uses(self._steps)
        self.fusions: Mapping[str, tuple[str, ...]] = {
            step.name: step.fused for step in self._steps
            if isinstance(step, ConvStep) and step.fused}
        self.last_timings: dict[str, float] = {}

    # ---------------------------------------------------------------------------- run

    def run(self, feats: np.ndarray, coords: np.ndarray) -> np.ndarray:
        """Voxel features ``(M, F)`` and coordinates ``(M, 3)`` ``(x, y, z)`` (unique, inside
        the sparse shape) → the dense LiDAR BEV ``(1, C·Z, X, Y)`` float32."""
        start = time.perf_counter()
        feats, coords = self._prepare_input(feats, coords)
        timings: dict[str, float] = {}
        previous_threads = numba.get_num_threads()
        numba.set_num_threads(self.threads)
        try:
            with blas_single_thread():
                result = self._execute(feats, coords, timings)
        finally:
            numba.set_num_threads(previous_threads)
        timings["total"] = time.perf_counter() - start
        self.last_timings = timings
        return result

    def conv_macs(self, coords: np.ndarray) -> dict[str, int]:
        """Multiply-adds of every sparse conv on these voxel sites, by layer name: rulebook
        pairs × C_in × C_out, the work any gather-GEMM implementation must do. Builds the
        rulebooks only; no features are needed."""
        features = np.zeros((np.asarray(coords).shape[0], self.in_channels), dtype=np.float32)
        _, coords = self._prepare_input(features, coords)
        sites: dict[str, _Sites] = {self.graph.features.name: _Sites(coords, self.sparse_shape)}
        rulebooks: dict[str, Rulebook] = {}
        macs: dict[str, int] = {}
        for layer in self.graph.layers:
            if isinstance(layer, SparseConv):
                x = sites[layer.inputs[0]]
                rulebook = self._rulebook(layer, x, rulebooks, {})
                macs[layer.name] = rulebook.num_pairs * layer.in_channels * layer.out_channels
                sites[layer.output] = x if layer.subm else _Sites(rulebook.out_coords,
                                                                  rulebook.out_spatial_shape)
            elif isinstance(layer, (Add, Relu)):
                sites[layer.output] = sites[layer.inputs[0]]
        return macs

    def _execute(self, feats: np.ndarray, coords: np.ndarray,
                 timings: dict[str, float]) -> np.ndarray:
        tensors: dict[str, _Sparse | np.ndarray] = {
            self.graph.features.name: _Sparse(feats, _Sites(coords, self.sparse_shape))}
        rulebooks: dict[str, Rulebook] = {}
        for index, step in enumerate(self._steps):
            if isinstance(step, ConvStep):
                x = tensors[step.layer.inputs[0]]
                assert isinstance(x, _Sparse)
                rulebook = self._rulebook(step.layer, x.sites, rulebooks, timings)
                tick = time.perf_counter()
                tensors[step.output] = self._conv(step, x, rulebook, tensors)
            else:
                tick = time.perf_counter()
                tensors[step.layer.output] = self._layer(step, tensors)
            timings[step.name] = time.perf_counter() - tick
            for name in step_inputs(step):
                if self._last_use[name] == index:
                    del tensors[name]
        output = tensors[self.graph.output.name]
        assert isinstance(output, np.ndarray)
        return np.ascontiguousarray(output, dtype=np.float32)

    def _rulebook(self, conv: SparseConv, sites: _Sites, cache: dict[str, Rulebook],
                  timings: dict[str, float]) -> Rulebook:
        key = conv.rulebook or f"<{conv.name}>"
        if key in cache:
            return cache[key]
        tick = time.perf_counter()
        if conv.subm:
            rulebook = subm_rulebook(sites.coords, sites.spatial_shape, conv.kernel_size,
                                     conv.dilation)
        else:
            rulebook = strided_rulebook(sites.coords, conv.output_spatial_shape,
                                        conv.kernel_size, conv.stride, conv.padding,
                                        conv.dilation)
        timings[f"rulebook:{key}"] = time.perf_counter() - tick
        cache[key] = rulebook
        return rulebook

    def _conv(self, step: ConvStep, x: _Sparse, rulebook: Rulebook,
              tensors: dict[str, _Sparse | np.ndarray]) -> _Sparse:
        residual = None
        if step.residual is not None:
            other = tensors[step.residual]
            assert isinstance(other, _Sparse)
            residual = other.feats
        out = sparse_conv(x.feats, step.weight, step.bias, rulebook, relu=step.relu,
                          residual=residual, threads=self.threads)
        sites = x.sites if step.layer.subm else _Sites(rulebook.out_coords,
                                                       rulebook.out_spatial_shape)
        return _Sparse(out, sites)

    def _layer(self, step: LayerStep,
               tensors: dict[str, _Sparse | np.ndarray]) -> _Sparse | np.ndarray:
        layer = step.layer
        x = tensors[layer.inputs[0]]
        if isinstance(layer, Add):
            y = tensors[layer.inputs[1]]
            assert isinstance(x, _Sparse) and isinstance(y, _Sparse)
            return _Sparse(x.feats + y.feats, x.sites)
        if isinstance(layer, Relu):
            assert isinstance(x, _Sparse)
            return _Sparse(np.maximum(x.feats, np.float32(0.0)), x.sites)
        if isinstance(layer, ScatterDense):
            assert isinstance(x, _Sparse)
            return _scatter_dense(x, layer.output_shape, step.dense_layout)
        assert isinstance(x, np.ndarray)
        if isinstance(layer, Transpose):
            return np.transpose(x, layer.dims)
        assert isinstance(layer, Reshape)
        return np.reshape(x, layer.dims)

    # ---------------------------------------------------------------------------- checks

    def _prepare_input(self, feats: np.ndarray, coords: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Validate the voxels, then sort them by linear index as float32 / int32 arrays."""
        def fail(field: str, message: str) -> InputError:
            return InputError(message, path=_SOURCE, field=field)

        feats_array = np.asarray(feats)
        coords_array = np.asarray(coords)
        if feats_array.ndim != 2 or feats_array.shape[1] != self.in_channels \
                or not np.issubdtype(feats_array.dtype, np.floating):
            raise fail("feats", f"expected (M, {self.in_channels}) floating-point voxel features, "
                                f"got {feats_array.dtype} {feats_array.shape}")
        if coords_array.shape != (feats_array.shape[0], 3) \
                or not np.issubdtype(coords_array.dtype, np.integer):
            raise fail("coords", f"expected ({feats_array.shape[0]}, 3) integer (x, y, z) voxel "
                                 f"coordinates, got {coords_array.dtype} {coords_array.shape}")
        if not np.isfinite(feats_array).all():
            raise fail("feats", "contains NaN or Inf")
        shape = np.asarray(self.sparse_shape)
        if coords_array.size and (np.any(coords_array < 0) or np.any(coords_array >= shape)):
            raise fail("coords", f"coordinates must lie in [0, {list(self.sparse_shape)}) per "
                                 f"axis (x, y, z)")
        coords_array = np.ascontiguousarray(coords_array, dtype=np.int32)
        try:
            order = site_order(coords_array, self.sparse_shape)
        except DuplicateSiteError as exc:
            raise fail("coords", f"row {exc.row} repeats the site of an earlier row; voxel "
                                 f"sites must be unique") from None
        # Sorted sites keep each conv's gathers local; the dense output does not see the order.
        return (np.ascontiguousarray(feats_array[order], dtype=np.float32),
                np.ascontiguousarray(coords_array[order]))


def _scatter_dense(x: _Sparse, output_shape: tuple[int, ...],
                   layout: tuple[int, ...] | None) -> np.ndarray:
    """``(1, C, X, Y, Z)`` with the active sites filled and zeros elsewhere. With ``layout``
    (the consuming Transpose's dims) the memory is laid out as that transpose, so the
    returned view becomes contiguous once transposed."""
    if layout is None:
        dense = np.zeros(output_shape, dtype=np.float32)
    else:
        stored = np.zeros(tuple(output_shape[d] for d in layout), dtype=np.float32)
        dense = np.transpose(stored, np.argsort(layout))
    c = x.sites.coords
    dense[0][:, c[:, 0], c[:, 1], c[:, 2]] = x.feats.T
    return dense
