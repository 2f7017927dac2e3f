"""Sparse 3-D convolution on the CPU: rulebooks and a blocked gather-GEMM kernel.

Semantics are spconv's (docs/reference.md#sparse-convolution-semantics), cross-correlation
with the kernel offset ``k`` enumerated row-major over ``(kx, ky, kz)``:

* a **regular** (strided) conv adds ``W[k] · in[o·s − p + k·d]`` (per axis) into output site
  ``o``; its active outputs are every ``o`` inside the output shape with at least one active
  input in its receptive field;
* a **submanifold** conv keeps the input sites as outputs and centres the kernel:
  ``in = o + (k − ⌊K/2⌋)·d`` per axis. Like spconv, it ignores the ``padding`` attribute.

**Site lookup.** A site set is indexed by column occupancy: one bit per z cell in 64-bit
words per ``(x, y)`` column, plus the rank of each word's first site in linear-index order
``(x·Y + y)·Z + z``. Finding a site is one word load and a popcount, and neighbouring sites
live in neighbouring words, so lookups stay in cache. Against an open-addressing hash of the
linear index (CUDA-BEVFusion's voxelizer structure, docs/reference.md#hash-voxelization), it
builds a submanifold rulebook markedly faster (docs/bench/notes.md#rulebook-lookup-structure;
the symmetry below halves the look-ups). The price is memory for the whole ``X × Y`` column
grid: 12 bytes per column and 64 z cells, 25 MB at 1440 × 1440.

**Order.** A regular conv numbers its outputs in linear-index order (the ranks above), so
its output is deterministic and spatially sorted; a submanifold conv keeps its input order.

A ``Rulebook`` is built once per frame and geometry (the SCN ``rulebook`` key) and shared by
every conv with that key. It is stored output-major, ``neighbours[k, o]`` = the input row
feeding output ``o`` through offset ``k`` or −1, because the conv kernel is
output-stationary: each thread owns a block of output rows, gathers their inputs offset by
offset, multiplies them with ``W[k]`` through BLAS ``sgemm`` and accumulates in a block-local
buffer, then applies bias, residual and ReLU while writing the block out. Outputs are never
written twice, so the threads need no atomics, and every output sums its offsets in the same
order whatever the thread count. The pairs of each block and offset are compacted once per
rulebook (``PairBlocks``) and reused by every conv sharing it, so the gather is a branch-free
copy; that made the 16-channel layers of a 120k-voxel nuScenes-resnet50 frame about a quarter
faster and left the wider ones unchanged (docs/bench/notes.md#scn-gemm-rate). On 2 cores the
per-offset alternative (one large gather, ``sgemm`` and scatter-add over all pairs of an
offset) measured 2–5× slower per layer: it streams every gathered row through memory three
times, and BLAS's own threads contend with the gather/scatter threads.

**What bounds it.** With the gathers and scatters removed, the same sgemm calls alone take
70–85 % of a 32–128-channel layer's time and run at only 65–80 % of the machine's 2-thread
GEMM peak (a few hundred rows, 32–128 channels, one thread each), so the executor stays near
half the peak overall; the 16-channel layers are bound by the data movement instead.
Stacking the dense offsets side by side into one ``(rows, g·C_in)`` GEMM (an implicit GEMM
with zeros for missing neighbours) was measured too and did not pay: a few percent better at
32–64 channels, 10–15 % worse at 16 and 128 (docs/bench/notes.md#scn-gemm-rate). Where the
CPU has native BF16, the executor's BF16 option moves the wide convs to oneDNN's GEMM
(``bevdeploy.runtime.scn.bf16``).

The GEMM calls go to the BLAS numba binds (SciPy's). They run inside numba's parallel
region, so BLAS must be single-threaded meanwhile: callers wrap a run in ``blas_single_thread``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np

# The BLAS behind numba's np.dot, imported so that it is loaded before ``blas_single_thread``
# first scans the process's libraries.
import scipy.linalg.cython_blas  # noqa: F401
from numba import njit, prange
from threadpoolctl import ThreadpoolController

Triple = tuple[int, int, int]

_WORD_BITS = 64
_ONE = np.uint64(1)

# Block sizing of the conv kernel, see ``_block_rows``. Measured on one Zen 3 core on the
# layers of a 120k-voxel nuScenes-shaped frame (C = 16…128), blocks of 512–2048 output rows
# ran 15–25% faster than 128–256: sgemm needs a few hundred rows to approach its peak rate.
# On 2 AVX-512 cores a target of 256 gathered rows (blocks of 512–1024 rows on that frame)
# ran the convs 4 % faster than 512 (1024–2048 rows), 6–9 % on the 32- and 64-channel layers
# (docs/bench/notes.md#scn-gemm-rate).
_ROWS_PER_GEMM = 256  # gathered rows per offset and block, on average
_BLOCK_BYTES = 1 << 21  # cap on a block's buffers (accumulator, gathered rows, product)
_BLOCKS_PER_THREAD = 8  # load balance: at least this many blocks per thread


# --------------------------------------------------------------------------------------------
# Column-occupancy site index
# --------------------------------------------------------------------------------------------


@njit(inline="always")
def _popcount(v: np.uint64) -> int:
    """Set bits of a 64-bit word (the SWAR sum, which LLVM lowers to ``popcnt``)."""
    v = v - ((v >> np.uint64(1)) & np.uint64(0x5555555555555555))
    v = (v & np.uint64(0x3333333333333333)) + ((v >> np.uint64(2)) & np.uint64(0x3333333333333333))
    v = (v + (v >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((v * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(inline="always")
def _column_words(shape: np.ndarray) -> int:
    """Occupancy words per ``(x, y)`` column: one bit per z cell."""
    return (shape[2] + _WORD_BITS - 1) // _WORD_BITS


@njit(inline="always")
def _word(x: int, y: int, z: int, shape: np.ndarray, words: int) -> int:
    return (np.int64(x) * shape[1] + y) * words + z // _WORD_BITS


@njit(inline="always")
def _rank(occupancy: np.ndarray, base: np.ndarray, word: int, z: int) -> int:
    """Rank of site ``z`` of ``word`` in linear-index order, or −1 when it is not active."""
    bits = occupancy[word]
    bit = np.uint64(z % _WORD_BITS)
    if not (bits >> bit) & _ONE:
        return -1
    return base[word] + _popcount(bits & ((_ONE << bit) - _ONE))


@njit(cache=True, nogil=True)
def _ranks(occupancy: np.ndarray) -> tuple[np.ndarray, int]:
    """Exclusive prefix count of active sites per word, and the total."""
    base = np.empty(occupancy.shape[0], np.int32)
    total = 0
    for w in range(occupancy.shape[0]):
        base[w] = total
        if occupancy[w]:
            total += _popcount(occupancy[w])
    return base, total


@njit(cache=True, nogil=True)
def _site_occupancy(coords: np.ndarray, shape: np.ndarray) -> tuple[np.ndarray, int]:
    """Occupancy words of ``coords`` (M, 3), and the first row repeating a site (or −1)."""
    words = _column_words(shape)
    occupancy = np.zeros(shape[0] * shape[1] * words, np.uint64)
    duplicate = -1
    for i in range(coords.shape[0]):
        w = _word(coords[i, 0], coords[i, 1], coords[i, 2], shape, words)
        bit = _ONE << np.uint64(coords[i, 2] % _WORD_BITS)
        if occupancy[w] & bit and duplicate < 0:
            duplicate = i
        occupancy[w] |= bit
    return occupancy, duplicate


@njit(parallel=True, cache=True, nogil=True)
def _site_ranks(coords: np.ndarray, shape: np.ndarray, occupancy: np.ndarray,
                base: np.ndarray) -> np.ndarray:
    words = _column_words(shape)
    ranks = np.empty(coords.shape[0], np.int64)
    for i in prange(coords.shape[0]):
        x, y, z = coords[i, 0], coords[i, 1], coords[i, 2]
        ranks[i] = _rank(occupancy, base, _word(x, y, z, shape, words), z)
    return ranks


@njit(parallel=True, cache=True, nogil=True)
def _site_coords(occupancy: np.ndarray, base: np.ndarray, shape: np.ndarray,
                 total: int) -> np.ndarray:
    """The active sites ``(total, 3)`` int32 in rank order."""
    words = _column_words(shape)
    coords = np.empty((total, 3), np.int32)
    for x in prange(shape[0]):
        for y in range(shape[1]):
            for w in range(words):
                word = (np.int64(x) * shape[1] + y) * words + w
                bits = occupancy[word]
                rank = base[word]
                while bits:
                    low = bits & (~bits + _ONE)  # lowest set bit
                    coords[rank, 0] = x
                    coords[rank, 1] = y
                    coords[rank, 2] = w * _WORD_BITS + _popcount(low - _ONE)
                    rank += 1
                    bits ^= low
    return coords


class DuplicateSiteError(ValueError):
    """Two input rows name the same site; ``row`` is the later one."""

    def __init__(self, row: int) -> None:
        super().__init__(f"row {row} repeats the site of an earlier row")
        self.row = row


def _int64(values: Sequence[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _indexed(coords: np.ndarray, shape: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(occupancy, base, ranks) of unique sites ``coords``; raises ``DuplicateSiteError``."""
    occupancy, duplicate = _site_occupancy(coords, shape)
    if duplicate >= 0:
        raise DuplicateSiteError(duplicate)
    base, _ = _ranks(occupancy)
    return occupancy, base, _site_ranks(coords, shape, occupancy, base)


def site_order(coords: np.ndarray, spatial_shape: Sequence[int]) -> np.ndarray:
    """The permutation ``order`` (M,) int64 such that ``coords[order]`` is sorted by linear
    index ``(x·Y + y)·Z + z``. ``coords`` (M, 3) int32 must lie inside ``spatial_shape``;
    a repeated site raises ``DuplicateSiteError``."""
    _, _, ranks = _indexed(coords, _int64(spatial_shape))
    order = np.empty_like(ranks)
    order[ranks] = np.arange(ranks.shape[0])
    return order


# --------------------------------------------------------------------------------------------
# Rulebooks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Rulebook:
    """The input→output site pairs of one sparse conv geometry on one frame.

    ``neighbours`` is ``(K, M_out)`` int32: the input row feeding output ``o`` through kernel
    offset ``k`` (row-major over ``(kx, ky, kz)``), or −1. ``out_coords`` are the output
    sites ``(M_out, 3)`` int32 ``(x, y, z)``; ``centre`` is the offset whose pairs are the
    identity (a submanifold conv's kernel centre), or −1. ``compacted`` holds its
    ``PairBlocks`` per block size, built by the first conv that needs them (``pair_blocks``).
    """

    neighbours: np.ndarray
    out_coords: np.ndarray
    out_spatial_shape: Triple
    centre: int
    compacted: dict[int, "PairBlocks"] = field(default_factory=dict, init=False, repr=False)

    @property
    def num_outputs(self) -> int:
        return int(self.neighbours.shape[1])

    @cached_property
    def pair_counts(self) -> np.ndarray:
        """(K,) int64: active pairs per kernel offset."""
        return np.count_nonzero(self.neighbours >= 0, axis=1)

    @property
    def num_pairs(self) -> int:
        """All active (input, output) pairs; a conv costs ``num_pairs · C_in · C_out`` MACs."""
        return int(self.pair_counts.sum())


@njit(parallel=True, cache=True, nogil=True)
def _subm_neighbours(coords: np.ndarray, shape: np.ndarray, kernel: np.ndarray,
                     dilation: np.ndarray, occupancy: np.ndarray, base: np.ndarray,
                     row_of_rank: np.ndarray, symmetric: bool) -> np.ndarray:
    """``neighbours`` of a submanifold conv. With an odd kernel, offset ``K−1−k`` is offset
    ``k`` mirrored, so only the offsets before the centre are looked up and the others are
    their inverse: ``o`` sees ``i`` through ``k`` exactly when ``i`` sees ``o`` through
    ``K−1−k``."""
    kx, ky, kz = kernel[0], kernel[1], kernel[2]
    num_offsets = kx * ky * kz
    centre = num_offsets // 2
    looked_up = centre if symmetric else num_offsets
    words = _column_words(shape)
    count = coords.shape[0]
    neighbours = np.full((num_offsets, count), -1, np.int32)
    for o in prange(count):
        for k in range(looked_up):
            x = coords[o, 0] + (k // (ky * kz) - kx // 2) * dilation[0]
            y = coords[o, 1] + ((k // kz) % ky - ky // 2) * dilation[1]
            z = coords[o, 2] + (k % kz - kz // 2) * dilation[2]
            if 0 <= x < shape[0] and 0 <= y < shape[1] and 0 <= z < shape[2]:
                rank = _rank(occupancy, base, _word(x, y, z, shape, words), z)
                if rank >= 0:
                    neighbours[k, o] = row_of_rank[rank]
    if symmetric:
        # For a fixed k each input feeds at most one output, so the writes never collide.
        for o in prange(count):
            neighbours[centre, o] = o
            for k in range(centre):
                i = neighbours[k, o]
                if i >= 0:
                    neighbours[num_offsets - 1 - k, i] = o
    return neighbours


def subm_rulebook(coords: np.ndarray, spatial_shape: Sequence[int], kernel_size: Sequence[int],
                  dilation: Sequence[int] = (1, 1, 1)) -> Rulebook:
    """The rulebook of a submanifold conv on sites ``coords`` (M, 3) int32 ``(x, y, z)``.

    ``coords`` must lie inside ``spatial_shape`` (the caller validates); a repeated site raises
    ``DuplicateSiteError``, since the sites of a sparse tensor are a set.
    """
    shape = _int64(spatial_shape)
    kernel = _int64(kernel_size)
    occupancy, base, ranks = _indexed(coords, shape)
    row_of_rank = np.empty(ranks.shape[0], np.int32)
    row_of_rank[ranks] = np.arange(ranks.shape[0], dtype=np.int32)
    odd = bool(np.all(kernel % 2 == 1))
    neighbours = _subm_neighbours(coords, shape, kernel, _int64(dilation), occupancy, base,
                                  row_of_rank, odd)
    centre = neighbours.shape[0] // 2 if odd else -1  # offset 0 on every axis
    return Rulebook(neighbours, coords, (int(shape[0]), int(shape[1]), int(shape[2])), centre)


@njit(inline="always")
def _axis_target(coord: int, k: int, stride: int, padding: int, dilation: int, size: int) -> int:
    """The output index along one axis that input ``coord`` reaches through kernel tap ``k``,
    or −1: ``o·s − p + k·d = coord`` must have an integer solution inside ``[0, size)``."""
    t = coord + padding - k * dilation
    if t < 0 or t % stride != 0 or t // stride >= size:
        return -1
    return t // stride


@njit(cache=True, nogil=True)
def _strided_occupancy(coords: np.ndarray, out_shape: np.ndarray, kernel: np.ndarray,
                       stride: np.ndarray, padding: np.ndarray, dilation: np.ndarray
                       ) -> np.ndarray:
    """Occupancy of the output sites: every target of every input through every tap."""
    words = _column_words(out_shape)
    occupancy = np.zeros(out_shape[0] * out_shape[1] * words, np.uint64)
    for i in range(coords.shape[0]):
        for a in range(kernel[0]):
            ox = _axis_target(coords[i, 0], a, stride[0], padding[0], dilation[0], out_shape[0])
            if ox < 0:
                continue
            for b in range(kernel[1]):
                oy = _axis_target(coords[i, 1], b, stride[1], padding[1], dilation[1],
                                  out_shape[1])
                if oy < 0:
                    continue
                for c in range(kernel[2]):
                    oz = _axis_target(coords[i, 2], c, stride[2], padding[2], dilation[2],
                                      out_shape[2])
                    if oz >= 0:
                        occupancy[_word(ox, oy, oz, out_shape, words)] |= \
                            _ONE << np.uint64(oz % _WORD_BITS)
    return occupancy


@njit(parallel=True, cache=True, nogil=True)
def _strided_neighbours(coords: np.ndarray, out_shape: np.ndarray, kernel: np.ndarray,
                        stride: np.ndarray, padding: np.ndarray, dilation: np.ndarray,
                        occupancy: np.ndarray, base: np.ndarray, num_out: int) -> np.ndarray:
    """``neighbours[k, o] = i``; each (k, o) has at most one input, so writes never collide."""
    kx, ky, kz = kernel[0], kernel[1], kernel[2]
    words = _column_words(out_shape)
    neighbours = np.full((kx * ky * kz, num_out), -1, np.int32)
    for i in prange(coords.shape[0]):
        for a in range(kx):
            ox = _axis_target(coords[i, 0], a, stride[0], padding[0], dilation[0], out_shape[0])
            if ox < 0:
                continue
            for b in range(ky):
                oy = _axis_target(coords[i, 1], b, stride[1], padding[1], dilation[1],
                                  out_shape[1])
                if oy < 0:
                    continue
                for c in range(kz):
                    oz = _axis_target(coords[i, 2], c, stride[2], padding[2], dilation[2],
                                      out_shape[2])
                    if oz >= 0:
                        o = _rank(occupancy, base, _word(ox, oy, oz, out_shape, words), oz)
                        neighbours[(a * ky + b) * kz + c, o] = i
    return neighbours


def strided_rulebook(coords: np.ndarray, out_spatial_shape: Sequence[int],
                     kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                     dilation: Sequence[int] = (1, 1, 1)) -> Rulebook:
    """The rulebook of a regular sparse conv from unique input sites ``coords`` (M, 3) int32;
    output sites follow ``out_spatial_shape`` (the dense conv formula, see
    ``bevdeploy.scn_format.conv_output_spatial_shape``) and come in linear-index order."""
    out_shape = _int64(out_spatial_shape)
    geometry = (_int64(kernel_size), _int64(stride), _int64(padding), _int64(dilation))
    occupancy = _strided_occupancy(coords, out_shape, *geometry)
    base, total = _ranks(occupancy)
    neighbours = _strided_neighbours(coords, out_shape, *geometry, occupancy, base, total)
    out_coords = _site_coords(occupancy, base, out_shape, total)
    triple = (int(out_shape[0]), int(out_shape[1]), int(out_shape[2]))
    return Rulebook(neighbours, out_coords, triple, -1)


# --------------------------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PairBlocks:
    """A rulebook's pairs compacted per block of ``block_rows`` output rows and per offset.

    Block ``b``'s pairs through offset ``k`` are ``pair_in[s:e]`` (input rows) and
    ``pair_row[s:e]`` (output rows within the block) for ``s, e = starts[b, k], starts[b, k +
    1]``, in output order; the centre offset's identity pairs are left out (the conv multiplies
    the block's own rows for it). Built once per rulebook and block size, so the convs that
    share a rulebook (four or five per key in the SparseEncoder) gather from ready lists
    instead of each scanning ``neighbours`` with a data-dependent branch per entry.
    """

    block_rows: int
    starts: np.ndarray  # (num_blocks, K + 1) int64
    pair_in: np.ndarray  # int32
    pair_row: np.ndarray  # int32


@njit(parallel=True, cache=True, nogil=True)
def _block_pair_counts(neighbours: np.ndarray, centre: int, block_rows: int) -> np.ndarray:
    """``counts[b, k]``: pairs of offset ``k`` among block ``b``'s outputs (0 for the centre)."""
    num_offsets, num_out = neighbours.shape
    num_blocks = (num_out + block_rows - 1) // block_rows
    counts = np.zeros((num_blocks, num_offsets), np.int64)
    for block in prange(num_blocks):
        first = block * block_rows
        last = min(num_out, first + block_rows)
        for k in range(num_offsets):
            if k == centre:
                continue
            n = 0
            for o in range(first, last):
                n += neighbours[k, o] >= 0
            counts[block, k] = n
    return counts


@njit(parallel=True, cache=True, nogil=True)
def _block_pairs(neighbours: np.ndarray, centre: int, block_rows: int, starts: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The pair lists of ``PairBlocks``; each block writes its own segments."""
    num_offsets, num_out = neighbours.shape
    pair_in = np.empty(starts[-1, -1], np.int32)
    pair_row = np.empty(starts[-1, -1], np.int32)
    for block in prange(starts.shape[0]):
        first = block * block_rows
        last = min(num_out, first + block_rows)
        for k in range(num_offsets):
            if k == centre:
                continue
            n = starts[block, k]
            for o in range(first, last):
                i = neighbours[k, o]
                if i >= 0:
                    pair_in[n] = i
                    pair_row[n] = o - first
                    n += 1
    return pair_in, pair_row


def pair_blocks(rulebook: Rulebook, block_rows: int) -> PairBlocks:
    """The rulebook's ``PairBlocks`` for blocks of ``block_rows`` outputs, built on first use
    and kept on the rulebook."""
    blocks = rulebook.compacted.get(block_rows)
    if blocks is None:
        counts = _block_pair_counts(rulebook.neighbours, rulebook.centre, block_rows)
        starts = np.zeros((counts.shape[0], counts.shape[1] + 1), np.int64)
        flat = np.cumsum(counts.ravel())
        starts[:, 1:] = flat.reshape(counts.shape)
        starts[1:, 0] = starts[:-1, -1]
        pair_in, pair_row = _block_pairs(rulebook.neighbours, rulebook.centre, block_rows, starts)
        blocks = PairBlocks(block_rows, starts, pair_in, pair_row)
        rulebook.compacted[block_rows] = blocks
    return blocks


@njit(parallel=True, cache=True, nogil=True)
def _conv(feats: np.ndarray, weight: np.ndarray, bias: np.ndarray, centre: int,
          starts: np.ndarray, pair_in: np.ndarray, pair_row: np.ndarray, residual: np.ndarray,
          has_residual: bool, relu: bool, block_rows: int, num_out: int) -> np.ndarray:
    """Output-stationary blocked gather-GEMM over ``PairBlocks``; see the module docstring."""
    num_offsets = weight.shape[0]
    c_in = feats.shape[1]
    c_out = weight.shape[2]
    out = np.empty((num_out, c_out), np.float32)
    for block in prange(starts.shape[0]):
        first = block * block_rows
        rows = min(num_out, first + block_rows) - first
        acc = np.empty((rows, c_out), np.float32)
        if centre >= 0:  # identity pairs: the block's own rows, no gather needed
            np.dot(feats[first:first + rows], weight[centre], acc)
        else:
            acc[:] = 0.0
        most = 0
        for k in range(num_offsets):
            most = max(most, starts[block, k + 1] - starts[block, k])
        gathered = np.empty((most, c_in), np.float32)
        product = np.empty((most, c_out), np.float32)
        for k in range(num_offsets):
            start = starts[block, k]
            n = starts[block, k + 1] - start
            if n == 0:
                continue
            for p in range(n):
                i = pair_in[start + p]
                for ch in range(c_in):
                    gathered[p, ch] = feats[i, ch]
            np.dot(gathered[:n], weight[k], product[:n])
            for p in range(n):
                r = pair_row[start + p]
                for ch in range(c_out):
                    acc[r, ch] += product[p, ch]
        for r in range(rows):
            for ch in range(c_out):
                value = acc[r, ch] + bias[ch]
                if has_residual:
                    value += residual[first + r, ch]
                out[first + r, ch] = max(value, np.float32(0.0)) if relu else value
    return out


def _block_rows(rulebook: Rulebook, c_in: int, c_out: int, threads: int) -> int:
    """Output rows per block, a power of two: enough that an offset's gathered rows fill one
    efficient sgemm (``_ROWS_PER_GEMM`` on average, from the rulebook's pair density), few
    enough that the block's buffers fit ``_BLOCK_BYTES`` and every thread gets several
    blocks."""
    num_out = rulebook.num_outputs
    density = rulebook.num_pairs / max(1, num_out * rulebook.neighbours.shape[0])
    rows = 1 << math.ceil(math.log2(_ROWS_PER_GEMM / max(density, 1e-3)))
    rows = min(rows, _BLOCK_BYTES // (4 * (2 * c_out + c_in)),
               num_out // (_BLOCKS_PER_THREAD * max(1, threads)))
    return max(16, 1 << int(math.log2(max(rows, 1))))


def sparse_conv(feats: np.ndarray, weight: np.ndarray, bias: np.ndarray, rulebook: Rulebook, *,
                relu: bool, residual: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    """One sparse conv with its epilogue: ``act(Σ_k W[k]·in + bias (+ residual))``.

    ``feats`` (M_in, C_in) float32 C-contiguous; ``weight`` (K, C_in, C_out) float32
    C-contiguous, offsets row-major over ``(kx, ky, kz)``; ``bias`` (C_out,); ``residual``
    (M_out, C_out) or None (fuses a residual ``Add``); ``relu`` fuses the activation.
    ``threads`` only sizes the blocks (the caller sets numba's thread count).
    Returns ``(M_out, C_out)`` float32 in the rulebook's output order.
    """
    c_in, c_out = weight.shape[1], weight.shape[2]
    if rulebook.num_outputs == 0:
        return np.zeros((0, c_out), dtype=np.float32)
    blocks = pair_blocks(rulebook, _block_rows(rulebook, c_in, c_out, threads))
    extra = residual if residual is not None else np.empty((0, c_out), dtype=np.float32)
    return _conv(feats, weight, bias, rulebook.centre, blocks.starts, blocks.pair_in,
                 blocks.pair_row, extra, residual is not None, relu, blocks.block_rows,
                 rulebook.num_outputs)


@lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    """The BLAS libraries of this process, scanned once (a scan costs about a millisecond)."""
    return ThreadpoolController()


@contextmanager
def blas_single_thread() -> Iterator[None]:
    """Limit every loaded BLAS to one thread for the duration: the conv kernel calls sgemm
    from each numba thread, and a multi-threaded BLAS would oversubscribe the cores."""
    with _blas_controller().limit(limits=1, user_api="blas"):
        yield
