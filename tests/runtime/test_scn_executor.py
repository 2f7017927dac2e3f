"""The torch-free sparse-conv executor and its rulebooks.

References are independent of the code under test: rulebooks are held to a brute-force search
over every output cell of a small grid (docs/reference.md#sparse-encoder:
``out[o] += W[k]·in[o·s − p + k·d]``, submanifold kernels centred), the conv kernel to a plain numpy
sum over those pairs, and the executor end to end to spconv's SparseEncoder (the reference module,
single thread) on random voxels and on the voxels of a synthetic frame.

Tolerances: the executor and spconv both accumulate in float32 but in different orders, so
they agree to rounding, ≤ 1e-4 of the output's largest magnitude, cosine ≥ 0.99999.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import spconv.pytorch as spconv
import torch

from support import tiny_sparse_encoder

from bevdeploy.errors import ConfigError, InputError
from bevdeploy.export.scn import encoder_to_scn, export_scn
from bevdeploy.model.inputs import filter_points
from bevdeploy.model.lidar import build_voxelizer
from bevdeploy.package import TensorSpec
from bevdeploy.presets import get_preset
from bevdeploy.runtime.kernels.cpu.sparse_conv import (
    DuplicateSiteError, site_order, sparse_conv, strided_rulebook, subm_rulebook,
)
from bevdeploy.runtime.scn import ScnExecutor
from bevdeploy.scn_format import (
    COORDS_INPUT, FEATURES_INPUT, OUTPUT, VOXELS_DIM, Add, Relu, Reshape, ScatterDense, ScnGraph,
    SparseConv, read_scn, scn_from_model, scn_to_model,
)

TINY = get_preset("tiny")
RELATIVE_TOLERANCE = 1e-4
MIN_COSINE = 0.99999


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def random_sites(shape: tuple[int, int, int], count: int, seed: int) -> np.ndarray:
    """``count`` distinct sites of ``shape`` in random order, (count, 3) int32."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(int(np.prod(shape)), size=count, replace=False)
    return np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int32)


def brute_force_pairs(coords: np.ndarray, in_shape, kernel, stride, padding, dilation, subm):
    """Output sites in linear-index order and {(k, output row): input row}, from every cell of
    the output grid and every kernel tap (submanifold: the input sites, centred kernel)."""
    row_of = {tuple(c): i for i, c in enumerate(coords.tolist())}
    if subm:
        outputs = [tuple(c) for c in coords.tolist()]
        shift = [-(k // 2) * d for k, d in zip(kernel, dilation)]
        step = (1, 1, 1)
    else:
        out_shape = [(s + 2 * p - d * (k - 1) - 1) // st + 1
                     for s, k, st, p, d in zip(in_shape, kernel, stride, padding, dilation)]
        outputs = list(itertools.product(*(range(n) for n in out_shape)))
        shift = [-p for p in padding]
        step = stride
    taps = list(itertools.product(*(range(k) for k in kernel)))
    active, pairs = [], {}
    for o in outputs:
        found = {}
        for k, tap in enumerate(taps):
            source = tuple(oa * sa + sh + ta * da
                           for oa, sa, sh, ta, da in zip(o, step, shift, tap, dilation))
            if source in row_of:
                found[k] = row_of[source]
        if found or subm:
            for k, i in found.items():
                pairs[(k, len(active))] = i
            active.append(o)
    return np.array(active, dtype=np.int32).reshape(-1, 3), pairs


def rulebook_pairs(neighbours: np.ndarray) -> dict[tuple[int, int], int]:
    ks, os_ = np.nonzero(neighbours >= 0)
    return {(int(k), int(o)): int(neighbours[k, o]) for k, o in zip(ks, os_)}


@pytest.fixture(scope="module")
def tiny_encoder() -> torch.nn.Module:
    return tiny_sparse_encoder()


@pytest.fixture(scope="module")
def tiny_executor(tiny_encoder, tmp_path_factory) -> ScnExecutor:
    """The executor on the SCN *file* (written, then read back), as the runtime uses it."""
    path = tmp_path_factory.mktemp("scn") / "lidar.backbone.xyz.onnx"
    export_scn(tiny_encoder, TINY, path)
    return ScnExecutor(read_scn(path))


def reference_bev(encoder: torch.nn.Module, feats: np.ndarray, coords: np.ndarray) -> np.ndarray:
    batch = np.zeros((len(coords), 1), dtype=np.int32)
    with torch.no_grad():  # the encoder runs spconv single-threaded (its only correct CPU mode)
        return encoder(torch.from_numpy(feats),
                       torch.from_numpy(np.concatenate([batch, coords], axis=1)), 1).numpy()


def assert_close(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.shape == ref.shape and out.dtype == np.float32
    scale = float(np.abs(ref).max())
    assert scale > 0 and np.count_nonzero(ref) > 0.01 * ref.size  # a meaningful comparison
    assert float(np.abs(out - ref).max()) <= RELATIVE_TOLERANCE * scale
    cosine = float(np.dot(out.ravel(), ref.ravel()) / (np.linalg.norm(out) * np.linalg.norm(ref)))
    assert cosine >= MIN_COSINE


# ------------------------------------------------------------------------------------------
# rulebooks
# ------------------------------------------------------------------------------------------

SMALL = (7, 6, 9)


@pytest.mark.parametrize("kernel,dilation", [((3, 3, 3), (1, 1, 1)), ((3, 1, 3), (1, 1, 2)),
                                             ((2, 3, 3), (1, 1, 1))])
def test_subm_rulebook_matches_brute_force(kernel, dilation):
    coords = random_sites(SMALL, 90, seed=3)
    rulebook = subm_rulebook(coords, SMALL, kernel, dilation)
    _, expected = brute_force_pairs(coords, SMALL, kernel, (1, 1, 1), (0, 0, 0), dilation,
                                    subm=True)
    assert rulebook_pairs(rulebook.neighbours) == expected
    np.testing.assert_array_equal(rulebook.out_coords, coords)  # outputs keep the input order
    assert rulebook.num_pairs == len(expected)
    if kernel[0] % 2:  # an odd kernel has a centre: the identity pairs
        np.testing.assert_array_equal(rulebook.neighbours[rulebook.centre],
                                      np.arange(len(coords)))
    else:
        assert rulebook.centre == -1


@pytest.mark.parametrize("kernel,stride,padding,dilation", [
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1)),  # encoder stages 1 and 2
    ((3, 3, 3), (2, 2, 2), (1, 1, 0), (1, 1, 1)),  # encoder stage 3
    ((1, 1, 3), (1, 1, 2), (0, 0, 0), (1, 1, 1)),  # conv_out
    ((3, 2, 3), (1, 3, 2), (2, 0, 1), (2, 1, 1)),  # dilated, uneven, stride 1 on one axis
])
def test_strided_rulebook_matches_brute_force(kernel, stride, padding, dilation):
    coords = random_sites(SMALL, 70, seed=4)
    expected_sites, expected = brute_force_pairs(coords, SMALL, kernel, stride, padding,
                                                 dilation, subm=False)
    out_shape = [(s + 2 * p - d * (k - 1) - 1) // st + 1
                 for s, k, st, p, d in zip(SMALL, kernel, stride, padding, dilation)]
    rulebook = strided_rulebook(coords, out_shape, kernel, stride, padding, dilation)
    # Outputs come in linear-index order, which is the brute force's itertools order.
    np.testing.assert_array_equal(rulebook.out_coords, expected_sites)
    assert rulebook_pairs(rulebook.neighbours) == expected
    assert rulebook.centre == -1 and rulebook.out_spatial_shape == tuple(out_shape)
    assert rulebook.pair_counts.sum() == len(expected)


def test_site_index_spans_several_words_per_column():
    """z beyond 64 cells needs two occupancy words per column; lookups must cross them."""
    shape = (4, 3, 130)
    coords = random_sites(shape, 200, seed=5)
    rulebook = subm_rulebook(coords, shape, (3, 3, 3))
    _, expected = brute_force_pairs(coords, shape, (3, 3, 3), (1, 1, 1), (0, 0, 0), (1, 1, 1),
                                    subm=True)
    assert rulebook_pairs(rulebook.neighbours) == expected
    order = site_order(coords, shape)
    keys = (coords[:, 0].astype(np.int64) * shape[1] + coords[:, 1]) * shape[2] + coords[:, 2]
    np.testing.assert_array_equal(order, np.argsort(keys))


def test_repeated_site_is_refused_with_its_row():
    coords = random_sites(SMALL, 20, seed=6)
    coords = np.concatenate([coords, coords[7:8]])
    with pytest.raises(DuplicateSiteError) as info:
        subm_rulebook(coords, SMALL, (3, 3, 3))
    assert info.value.row == 20


# ------------------------------------------------------------------------------------------
# conv kernel
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
def test_sparse_conv_equals_the_sum_over_pairs(threads):
    """act(Σ_k in[pair] @ W[k] + bias + residual), summed in float64 from brute-force pairs."""
    rng = np.random.default_rng(7)
    coords = random_sites(SMALL, 120, seed=8)
    kernel, stride, padding = (3, 3, 3), (2, 2, 2), (1, 1, 1)
    out_shape = [(s + 2 * p - k) // st + 1 for s, k, st, p in zip(SMALL, kernel, stride, padding)]
    rulebook = strided_rulebook(coords, out_shape, kernel, stride, padding)
    _, pairs = brute_force_pairs(coords, SMALL, kernel, stride, padding, (1, 1, 1), subm=False)
    feats = rng.standard_normal((len(coords), 6), dtype=np.float32)
    weight = rng.standard_normal((27, 6, 5), dtype=np.float32)
    bias = rng.standard_normal(5, dtype=np.float32)
    residual = rng.standard_normal((rulebook.num_outputs, 5), dtype=np.float32)
    expected = bias.astype(np.float64) + residual
    for (k, o), i in pairs.items():
        expected[o] += feats[i].astype(np.float64) @ weight[k]
    got = sparse_conv(feats, weight, bias, rulebook, relu=True, residual=residual,
                      threads=threads)
    np.testing.assert_allclose(got, np.maximum(expected, 0.0), rtol=0, atol=1e-5)
    assert (got == 0).any() and (got > 0).any()  # the ReLU acted on both sides
    plain = sparse_conv(feats, weight, bias, rulebook, relu=False, threads=threads)
    np.testing.assert_allclose(plain, expected - residual, rtol=0, atol=1e-5)


def test_convs_sharing_a_rulebook_at_two_block_sizes_each_get_their_own_pair_blocks():
    """The compacted pairs are kept on the rulebook per block size: a second conv with another
    block size (here: another thread count) must not reuse the first one's lists."""
    shape = (12, 12, 12)
    coords = random_sites(shape, 700, seed=22)
    rulebook = subm_rulebook(coords, shape, (3, 3, 3))
    _, pairs = brute_force_pairs(coords, shape, (3, 3, 3), (1, 1, 1), (0, 0, 0), (1, 1, 1),
                                 subm=True)
    rng = np.random.default_rng(23)
    feats = rng.standard_normal((len(coords), 4), dtype=np.float32)
    weight = rng.standard_normal((27, 4, 3), dtype=np.float32)
    bias = rng.standard_normal(3, dtype=np.float32)
    expected = np.tile(bias.astype(np.float64), (len(coords), 1))
    for (k, o), i in pairs.items():
        expected[o] += feats[i].astype(np.float64) @ weight[k]
    for threads in (1, 2, 1):
        got = sparse_conv(feats, weight, bias, rulebook, relu=False, threads=threads)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert len(rulebook.compacted) == 2


# ------------------------------------------------------------------------------------------
# the executor against spconv
# ------------------------------------------------------------------------------------------


def test_executor_matches_spconv_on_random_voxels(tiny_encoder, tiny_executor):
    coords = random_sites(TINY.sparse_shape, 4000, seed=9)
    feats = np.random.default_rng(10).standard_normal((len(coords), 5), dtype=np.float32)
    out = tiny_executor.run(feats, coords)
    assert out.shape == (1, TINY.lidar_bev_channels, *TINY.bev_size)
    assert_close(out, reference_bev(tiny_encoder, feats, coords))
    timings = tiny_executor.last_timings
    assert {c.name for c in tiny_executor.graph.sparse_convs} <= set(timings)
    assert {"rulebook:subm1", "rulebook:spconv_down2", "total"} <= set(timings)


def test_executor_matches_spconv_on_a_synthetic_frame(tiny_encoder, tiny_executor,
                                                      synthetic_world):
    from bevdeploy.data.nuscenes import NuScenesLoader

    frame = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_train",
                           preset=TINY, with_gt=False)[1]
    points = filter_points(frame.points, TINY.points.point_cloud_range)
    with torch.no_grad():
        feats, coords, _ = build_voxelizer(TINY).eval()([torch.from_numpy(points)])
    feats, coords = feats.numpy(), coords[:, 1:].numpy()
    assert len(coords) > 1000
    assert_close(tiny_executor.run(feats, coords), reference_bev(tiny_encoder, feats, coords))
    # Voxel order is not part of the contract: a shuffled frame gives the same map.
    perm = np.random.default_rng(11).permutation(len(coords))
    np.testing.assert_array_equal(tiny_executor.run(feats[perm], coords[perm]),
                                  tiny_executor.run(feats, coords))


def test_result_does_not_depend_on_the_thread_count(tiny_executor):
    coords = random_sites(TINY.sparse_shape, 3000, seed=12)
    feats = np.random.default_rng(13).standard_normal((len(coords), 5), dtype=np.float32)
    one = ScnExecutor(tiny_executor.graph, threads=1).run(feats, coords)
    np.testing.assert_allclose(tiny_executor.run(feats, coords), one, rtol=0,
                               atol=1e-6 * float(np.abs(one).max()))


def test_conv_macs_count_spconvs_own_pairs(tiny_encoder, tiny_executor):
    """MACs per conv equal spconv's pair count for that conv's indice_key × C_in × C_out.
    For a submanifold conv spconv stores only the offsets before the kernel centre (the others
    are their mirror images) and leaves out the centre's identity pairs."""
    coords = random_sites((40, 40, 12), 3000, seed=14) + np.array([200, 100, 10], np.int32)
    macs = tiny_executor.conv_macs(coords)
    batch = np.concatenate([np.zeros((len(coords), 1), np.int32), coords], axis=1)
    x = spconv.SparseConvTensor(torch.ones(len(coords), 5), torch.from_numpy(batch),
                                list(TINY.sparse_shape), 1)
    with torch.no_grad():
        x = tiny_encoder.conv_out(tiny_encoder.encoder_layers(tiny_encoder.conv_input(x)))
    assert len(macs) == len(tiny_executor.graph.sparse_convs)
    for conv in tiny_executor.graph.sparse_convs:
        data = x.indice_dict[conv.rulebook]
        stored = int(data.indice_pair_num.sum())
        pairs = 2 * stored + len(data.indices) if conv.subm else stored
        assert macs[conv.name] == pairs * conv.in_channels * conv.out_channels, conv.name
    assert min(macs.values()) > 0


def test_empty_input_gives_an_all_zero_map(tiny_executor):
    out = tiny_executor.run(np.zeros((0, 5), np.float32), np.zeros((0, 3), np.int32))
    assert out.shape == (1, TINY.lidar_bev_channels, *TINY.bev_size)
    assert not out.any()


# ------------------------------------------------------------------------------------------
# graphs other than the SparseEncoder's: unfused Add / Relu, ScatterDense without Transpose
# ------------------------------------------------------------------------------------------


def _subm3(name: str, source: str, weight: np.ndarray, bias: np.ndarray,
           shape: tuple[int, int, int]) -> SparseConv:
    """A 3×3×3 submanifold conv layer with no activation and its own rulebook."""
    return SparseConv(name, (source,), name, weight, bias, (3, 3, 3), (1, 1, 1), (1, 1, 1),
                      (1, 1, 1), True, "", "None", shape, shape)


def _numpy_subm3(feats: np.ndarray, coords: np.ndarray, shape, weight: np.ndarray,
                 bias: np.ndarray) -> np.ndarray:
    """The conv in float64 from brute-force pairs; ``weight`` (O, kx, ky, kz, I)."""
    _, pairs = brute_force_pairs(coords, shape, (3, 3, 3), (1, 1, 1), (0, 0, 0), (1, 1, 1),
                                 subm=True)
    w = weight.transpose(1, 2, 3, 4, 0).reshape(27, weight.shape[4], weight.shape[0])
    out = np.tile(bias.astype(np.float64), (len(coords), 1))
    for (k, o), i in pairs.items():
        out[o] += feats[i].astype(np.float64) @ w[k]
    return out


def _graph(layers: tuple, channels: int, shape: tuple[int, int, int]) -> ScnGraph:
    """A graph ending in ScatterDense → Reshape (no Transpose), validated by a file round trip."""
    last = layers[-1].output
    dense = (1, channels * shape[0], *shape[1:])
    layers = layers + (ScatterDense("scatter", (last,), "scatter", shape, (1, channels, *shape)),
                       Reshape("reshape", ("scatter",), OUTPUT, dense))
    graph = ScnGraph(TensorSpec(FEATURES_INPUT, (VOXELS_DIM, channels), "float32"),
                     TensorSpec(COORDS_INPUT, (VOXELS_DIM, 4), "int32"),
                     TensorSpec(OUTPUT, dense, "float32"), layers)
    return scn_from_model(scn_to_model(graph))


def _dense(values: np.ndarray, coords: np.ndarray, shape) -> np.ndarray:
    channels = values.shape[1]
    dense = np.zeros((channels, *shape))
    dense[:, coords[:, 0], coords[:, 1], coords[:, 2]] = values.T
    return dense.reshape(1, channels * shape[0], *shape[1:])


def test_unfused_layers_and_a_plain_scatter():
    """conv → (Add with the input, Relu of the conv) → Add: the conv output has two
    consumers, so nothing is fused; the ScatterDense has no Transpose after it."""
    rng = np.random.default_rng(15)
    shape, channels = (6, 5, 4), 3
    weight = rng.standard_normal((channels, 3, 3, 3, channels)).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    executor = ScnExecutor(_graph((_subm3("conv", FEATURES_INPUT, weight, bias, shape),
                                   Add("skip", ("conv", FEATURES_INPUT), "skip"),
                                   Relu("relu", ("conv",), "relu"),
                                   Add("join", ("skip", "relu"), "join")), channels, shape))
    assert not executor.fusions
    coords = random_sites(shape, 40, seed=16)
    feats = rng.standard_normal((len(coords), channels), dtype=np.float32)
    conv = _numpy_subm3(feats, coords, shape, weight, bias)
    expected = _dense(conv + feats + np.maximum(conv, 0.0), coords, shape)
    np.testing.assert_allclose(executor.run(feats, coords), expected, rtol=0, atol=1e-5)
    assert set(executor.last_timings) >= {"conv", "skip", "relu", "join", "scatter", "reshape"}


def test_add_is_fused_only_where_its_other_operand_exists():
    """relu(conv_a(x) + conv_b(x)): conv_b's output exists only after conv_a ran, so the Add
    and Relu fold into conv_b, not into conv_a."""
    rng = np.random.default_rng(20)
    shape, channels = (5, 6, 7), 4
    params = [(rng.standard_normal((channels, 3, 3, 3, channels)).astype(np.float32),
               rng.standard_normal(channels).astype(np.float32)) for _ in range(2)]
    executor = ScnExecutor(_graph((_subm3("a", FEATURES_INPUT, *params[0], shape),
                                   _subm3("b", FEATURES_INPUT, *params[1], shape),
                                   Add("add", ("a", "b"), "add"),
                                   Relu("relu", ("add",), "relu")), channels, shape))
    assert dict(executor.fusions) == {"b": ("add", "relu")}
    coords = random_sites(shape, 60, seed=21)
    feats = rng.standard_normal((len(coords), channels), dtype=np.float32)
    total = sum(_numpy_subm3(feats, coords, shape, w, b) for w, b in params)
    np.testing.assert_allclose(executor.run(feats, coords),
                               _dense(np.maximum(total, 0.0), coords, shape), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------
# BF16 convs through OpenVINO
# ------------------------------------------------------------------------------------------

BF16_MIN_COSINE = 0.9999  # BF16 inputs and weights (8-bit mantissa), FP32 sums
BF16_RELATIVE_TOLERANCE = 2e-2


def _bf16_or_skip() -> None:
    pytest.importorskip("openvino")
    from bevdeploy.runtime.backends.openvino import bf16_unavailable_reason

    reason = bf16_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def test_bf16_convs_match_fp32_with_their_fused_residual_and_relu():
    """relu(conv_a(x) + conv_b(x)) at 64 channels: both convs run in BF16 (conv_b with the
    fused Add and Relu); the map agrees with the FP32 kernel to BF16 rounding."""
    _bf16_or_skip()
    from bevdeploy.runtime.scn.bf16 import MIN_CHANNELS

    rng = np.random.default_rng(24)
    shape, channels = (9, 8, 7), MIN_CHANNELS
    params = [(rng.standard_normal((channels, 3, 3, 3, channels)).astype(np.float32) / 20,
               rng.standard_normal(channels).astype(np.float32)) for _ in range(2)]
    graph = _graph((_subm3("a", FEATURES_INPUT, *params[0], shape),
                    _subm3("b", FEATURES_INPUT, *params[1], shape),
                    Add("add", ("a", "b"), "add"), Relu("relu", ("add",), "relu")),
                   channels, shape)
    bf16 = ScnExecutor(graph, precision="bf16")
    assert bf16.bf16_convs == {"a", "b"} and dict(bf16.fusions) == {"b": ("add", "relu")}
    coords = random_sites(shape, 300, seed=25)
    feats = rng.standard_normal((len(coords), channels), dtype=np.float32)
    ref = ScnExecutor(graph).run(feats, coords)
    out = bf16.run(feats, coords)
    assert (ref == 0).any() and (ref > 0).any()  # the ReLU acted on both sides
    assert float(np.abs(out - ref).max()) <= BF16_RELATIVE_TOLERANCE * float(np.abs(ref).max())
    cosine = float(np.dot(out.ravel(), ref.ravel()) / (np.linalg.norm(out) * np.linalg.norm(ref)))
    assert BF16_MIN_COSINE <= cosine < 1.0  # BF16 really ran: not bit-equal to FP32
    # The convs' outputs live in OpenVINO's buffers, reused by the next run: a returned map
    # must not change when the executor runs another frame.
    kept = out.copy()
    other = bf16.run(rng.standard_normal((len(coords), channels), dtype=np.float32), coords)
    np.testing.assert_array_equal(out, kept)
    assert not np.array_equal(other, out)
    # another voxel count (rows padded to the same bucket, the padding sliced off): FP32's map
    fewer = random_sites(shape, 250, seed=28)
    few_feats = rng.standard_normal((len(fewer), channels), dtype=np.float32)
    few_ref = ScnExecutor(graph).run(few_feats, fewer)
    assert float(np.abs(bf16.run(few_feats, fewer) - few_ref).max()) <= \
        BF16_RELATIVE_TOLERANCE * float(np.abs(few_ref).max())
    empty = bf16.run(np.zeros((0, channels), np.float32), np.zeros((0, 3), np.int32))
    assert empty.shape == ref.shape and not empty.any()


def test_bf16_leaves_narrow_convs_on_the_fp32_kernel(tiny_executor):
    """The tiny SCN is at most 32 channels wide: in BF16 mode nothing moves, the map is FP32's."""
    _bf16_or_skip()
    bf16 = ScnExecutor(tiny_executor.graph, precision="bf16")
    assert not bf16.bf16_convs
    coords = random_sites(TINY.sparse_shape, 500, seed=26)
    feats = np.random.default_rng(27).standard_normal((len(coords), 5), dtype=np.float32)
    np.testing.assert_array_equal(bf16.run(feats, coords), tiny_executor.run(feats, coords))


@pytest.mark.parametrize("precision", ["fp16", "int8", "BF16"])
def test_unknown_precision_is_refused(tiny_executor, precision):
    with pytest.raises(ConfigError) as info:
        ScnExecutor(tiny_executor.graph, precision=precision)
    assert info.value.field == "precision"


# ------------------------------------------------------------------------------------------
# errors and the torch-free guarantee
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case,field", [
    ("features of the wrong width", "feats"),
    ("integer features", "feats"),
    ("NaN feature", "feats"),
    ("coords without z", "coords"),
    ("coordinate past the grid", "coords"),
    ("negative coordinate", "coords"),
    ("repeated site", "coords"),
])
def test_bad_input_is_refused_naming_the_field(tiny_executor, case, field):
    coords = random_sites(TINY.sparse_shape, 50, seed=17)
    feats = np.ones((50, 5), np.float32)
    if case == "features of the wrong width":
        feats = np.ones((50, 4), np.float32)
    elif case == "integer features":
        feats = np.ones((50, 5), np.int32)
    elif case == "NaN feature":
        feats[3, 2] = np.nan
    elif case == "coords without z":
        coords = coords[:, :2]
    elif case == "coordinate past the grid":
        coords[4, 2] = TINY.sparse_shape[2]
    elif case == "negative coordinate":
        coords[4, 0] = -1
    else:
        coords[9] = coords[2]
    with pytest.raises(InputError) as info:
        tiny_executor.run(feats, coords)
    assert info.value.field == field and info.value.path is not None


@pytest.mark.parametrize("threads", [0, -1, 10_000, 1.5, True])
def test_thread_count_outside_numba_pool_is_refused(tiny_executor, threads):
    with pytest.raises(ConfigError) as info:
        ScnExecutor(tiny_executor.graph, threads=threads)
    assert info.value.field == "threads"


def test_executor_runs_without_torch(tiny_encoder, tmp_path):
    """Reading the SCN file and running it imports neither torch, spconv nor the model."""
    path = tmp_path / "lidar.backbone.xyz.onnx"
    export_scn(tiny_encoder, TINY, path)
    code = f"""
        import sys
        import numpy as np
        from bevdeploy.runtime.scn import ScnExecutor
        from bevdeploy.scn_format import read_scn
        coords = np.array([[10, 20, 5], [11, 20, 5], [300, 40, 30]], dtype=np.int32)
        out = ScnExecutor(read_scn({str(path)!r})).run(np.ones((3, 5), np.float32), coords)
        assert out.shape == {(1, TINY.lidar_bev_channels, *TINY.bev_size)} and out.any()
        bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'spconv')
                     or m.startswith(('bevdeploy.model', 'bevdeploy.export')))
        print(bad)
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_graph_built_in_memory_runs_like_the_file(tiny_encoder, tiny_executor):
    """``encoder_to_scn`` (what the benchmark uses) and the written file are the same graph."""
    coords = random_sites(TINY.sparse_shape, 800, seed=18)
    feats = np.random.default_rng(19).standard_normal((len(coords), 5), dtype=np.float32)
    in_memory = ScnExecutor(encoder_to_scn(tiny_encoder, TINY))
    np.testing.assert_array_equal(in_memory.run(feats, coords), tiny_executor.run(feats, coords))
