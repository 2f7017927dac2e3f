"""Run the SCN file (``lidar.backbone.xyz.onnx``) on the CPU, without PyTorch or spconv.

``ScnExecutor`` plays the role libspconv plays for CUDA-BEVFusion
(docs/reference.md#libspconv-runtime): it interprets the parsed layer list of
``bevdeploy.scn_format.ScnGraph`` with the rulebook and gather-GEMM kernels of
``bevdeploy.runtime.kernels.cpu.sparse_conv``:

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

With ``precision="bf16"`` the wide convs run as BF16 implicit GEMMs through OpenVINO instead
(``bevdeploy.runtime.scn.bf16``), with the same epilogue fusions.

The plan (the fusions above, the last uses) and its walk are ``scn.plan``'s, shared with
``scn.torch_executor``, which runs the same plan in torch; this module supplies the steps'
arithmetic on numpy arrays. ``last_timings`` holds the seconds of the last ``run``: one entry per
executed step under its layer name (a fused conv's entry includes its Add and Relu, see
``fusions``), one ``rulebook:<key>`` entry per rulebook build, and ``total``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numba
import numpy as np

from bevdeploy.errors import ConfigError, InputError
from bevdeploy.runtime.fp_env import flush_subnormals
from bevdeploy.runtime.kernels.cpu.sparse_conv import (
    DuplicateSiteError, Rulebook, blas_single_thread, site_order, sparse_conv, strided_rulebook,
    subm_rulebook,
)
from bevdeploy.runtime.scn.plan import ConvStep, ScnPlan, Sparse, cached_rulebook, execute
from bevdeploy.scn_format import Add, Relu, ScnGraph, SparseConv

if TYPE_CHECKING:
    from bevdeploy.runtime.scn.bf16 import Bf16Convs

_SOURCE = "<scn executor>"
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True, eq=False)
class _Sites:
    """The active sites of a sparse tensor; tensors on the same sites share this object."""

    coords: np.ndarray  # (M, 3) int32 (x, y, z)
    spatial_shape: tuple[int, int, int]


class _NumpyOps:
    """The steps' arithmetic on numpy arrays (``plan.StepOps``), with the CPU kernels; the
    convs ``bf16`` holds run there instead."""

    def __init__(self, threads: int, bf16: Bf16Convs | None = None) -> None:
        self.threads = threads
        self.bf16 = bf16

    def rulebook(self, conv: SparseConv, sites: _Sites) -> Rulebook:
        if conv.subm:
            return subm_rulebook(sites.coords, sites.spatial_shape, conv.kernel_size,
                                 conv.dilation)
        return strided_rulebook(sites.coords, conv.output_spatial_shape, conv.kernel_size,
                                conv.stride, conv.padding, conv.dilation)

    def conv(self, step: ConvStep, x: Sparse, rulebook: Rulebook,
             residual: np.ndarray | None) -> Sparse:
        if self.bf16 is not None and step.name in self.bf16.names:
            out = self.bf16.run(step, x.feats, rulebook, residual)
        else:
            out = sparse_conv(x.feats, step.weight, step.bias, rulebook, relu=step.relu,
                              residual=residual, threads=self.threads)
        sites = x.sites if step.layer.subm else _Sites(rulebook.out_coords,
                                                       rulebook.out_spatial_shape)
        return Sparse(out, sites)

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def relu(self, feats: np.ndarray) -> np.ndarray:
        return np.maximum(feats, np.float32(0.0))

    def scatter_dense(self, x: Sparse, output_shape: tuple[int, ...],
                      layout: tuple[int, ...] | None) -> np.ndarray:
        return _scatter_dense(x, output_shape, layout)

    def transpose(self, dense: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
        return np.transpose(dense, dims)

    def reshape(self, dense: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
        return np.reshape(dense, dims)


class ScnExecutor:
    """Executes an ``ScnGraph``: ``run(feats (M, F), coords (M, 3) int32 xyz) → (1, C·Z, X, Y)``.

    ``threads`` is the number of numba threads a run uses (default: all numba may use); BLAS
    is held to one thread per numba thread during a run. ``precision`` is ``fp32``, or
    ``bf16``: the convs with at least ``bf16.MIN_CHANNELS`` input channels then run as BF16
    implicit GEMMs through OpenVINO on as many threads (``bevdeploy.runtime.scn.bf16``; needs
    the ``openvino`` extra and a CPU with AVX-512 BF16 or AMX, else a ``ConfigError``);
    ``bf16_convs`` names them. ``sparse_shape``, ``in_channels`` and ``output_shape`` describe
    the graph's input grid and features and its dense output. The executor holds no per-frame
    state besides ``last_timings``; one instance must not run two frames at once.
    """

    def __init__(self, graph: ScnGraph, *, threads: int | None = None,
                 precision: str = "fp32") -> None:
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
        if precision not in PRECISIONS:
            raise ConfigError(f"expected one of {PRECISIONS}, got {precision!r}", path=_SOURCE,
                              field="precision")
        self.precision = precision
        self._plan = ScnPlan.of(graph)
        bf16 = None
        if precision == "bf16":
            from bevdeploy.runtime.scn.bf16 import Bf16Convs

            bf16 = Bf16Convs((step for step in self._plan.steps if isinstance(step, ConvStep)),
                             self.threads)
        self._ops = _NumpyOps(self.threads, bf16)
        self.bf16_convs: frozenset[str] = bf16.names if bf16 is not None else frozenset()
        self.fusions: Mapping[str, tuple[str, ...]] = self._plan.fusions
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
            with blas_single_thread(), flush_subnormals():
                sites = _Sites(coords, self.sparse_shape)
                result = execute(self._plan, self._ops, Sparse(feats, sites), timings)
        finally:
            numba.set_num_threads(previous_threads)
        timings["total"] = time.perf_counter() - start
        self.last_timings = timings
        return np.ascontiguousarray(result, dtype=np.float32)

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
                rulebook = cached_rulebook(self._ops, layer, x, rulebooks, {})
                macs[layer.name] = rulebook.num_pairs * layer.in_channels * layer.out_channels
                sites[layer.output] = x if layer.subm else _Sites(rulebook.out_coords,
                                                                  rulebook.out_spatial_shape)
            elif isinstance(layer, (Add, Relu)):
                sites[layer.output] = sites[layer.inputs[0]]
        return macs

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


def _scatter_dense(x: Sparse, output_shape: tuple[int, ...],
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
