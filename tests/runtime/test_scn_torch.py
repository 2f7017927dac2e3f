"""The torch SCN executor (the GPU backend's LiDAR backbone), held to the CPU ``ScnExecutor``.

``ScnExecutor`` is itself held to spconv and to brute-force rulebooks
(``test_scn_executor.py``), so here it is the reference: rulebooks must be *equal* to the CPU's
(same output sites in the same order, same neighbour rows), and the dense map equal to rounding.

Tolerances (max |Δ| relative to max |CPU FP32|, and cosine). Measured on the tiny encoder with
4000 random and 14.7k synthetic-frame voxels: FP32 ≤ 5.1e-7 and 1 − cos ≤ 1e-14 (summation
order only); FP16 ≤ 7.7e-4 and 1 − cos ≤ 6e-8; BF16 ≤ 6.5e-3 and 1 − cos ≤ 4e-6. Limits:
FP32 1e-5 and cosine ≥ 0.999999 (20× margin); FP16 ``compare``'s fp16 limits, 2 % and cosine
≥ 0.999; BF16 (3 fewer mantissa bits) 8 % and cosine ≥ 0.995. On CUDA, FP32 matmuls must not
use TF32 (torch's default is off): the FP32 limits assume IEEE float32 products.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from support import tiny_sparse_encoder

from bevdeploy.errors import ConfigError, InputError
from bevdeploy.export.scn import export_scn
from bevdeploy.package import TensorSpec
from bevdeploy.presets import get_preset
from bevdeploy.runtime.kernels.cpu.sparse_conv import strided_rulebook, subm_rulebook
from bevdeploy.runtime.scn import ScnExecutor
from bevdeploy.runtime.scn.torch_executor import TorchScnExecutor, sorted_sites
from bevdeploy.runtime.scn.torch_executor import strided_rulebook as torch_strided_rulebook
from bevdeploy.runtime.scn.torch_executor import subm_rulebook as torch_subm_rulebook
from bevdeploy.scn_format import (
    COORDS_INPUT, FEATURES_INPUT, OUTPUT, VOXELS_DIM, Add, Relu, Reshape, ScatterDense, ScnGraph,
    SparseConv, read_scn, scn_from_model, scn_to_model,
)

TINY = get_preset("tiny")
FP32_REL_MAX_ABS, FP32_COSINE = 1e-5, 0.999999
LOW_PRECISION = {torch.float16: (0.02, 0.999), torch.bfloat16: (0.08, 0.995)}  # rel, cosine


def random_sites(shape: tuple[int, int, int], count: int, seed: int) -> np.ndarray:
    """``count`` distinct sites of ``shape`` in random order, (count, 3) int32."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(int(np.prod(shape)), size=count, replace=False)
    return np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int32)


def assert_close(out: torch.Tensor, ref: np.ndarray, rel_max_abs: float, min_cosine: float
                 ) -> None:
    got = out.detach().cpu().float().numpy().astype(np.float64)
    assert got.shape == ref.shape
    scale = float(np.abs(ref).max())
    assert scale > 0 and np.count_nonzero(ref) > 0.01 * ref.size  # a meaningful comparison
    assert float(np.abs(got - ref).max()) <= rel_max_abs * scale
    cosine = float(np.dot(got.ravel(), ref.ravel()) / (np.linalg.norm(got) * np.linalg.norm(ref)))
    assert cosine >= min_cosine


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> ScnGraph:
    """The tiny encoder's SCN *file*, written and read back, as the runtime loads it."""
    path = tmp_path_factory.mktemp("scn") / "lidar.backbone.xyz.onnx"
    export_scn(tiny_sparse_encoder(), TINY, path)
    return read_scn(path)


@pytest.fixture(scope="module")
def cpu_executor(graph) -> ScnExecutor:
    return ScnExecutor(graph)


@pytest.fixture(scope="module")
def random_voxels() -> tuple[np.ndarray, np.ndarray]:
    coords = random_sites(TINY.sparse_shape, 4000, seed=9)
    return np.random.default_rng(10).standard_normal((len(coords), 5), dtype=np.float32), coords


@pytest.fixture(scope="module")
def frame_voxels(synthetic_world) -> tuple[np.ndarray, np.ndarray]:
    """The voxels of a synthetic frame, through the real loader and the reference voxelizer."""
    from bevdeploy.data.nuscenes import NuScenesLoader
    from bevdeploy.model.inputs import filter_points
    from bevdeploy.model.lidar import build_voxelizer

    frame = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_train",
                           preset=TINY, with_gt=False)[1]
    points = filter_points(frame.points, TINY.points.point_cloud_range)
    with torch.no_grad():
        feats, coords, _ = build_voxelizer(TINY).eval()([torch.from_numpy(points)])
    assert len(coords) > 1000
    return feats.numpy(), coords[:, 1:].numpy().astype(np.int32)


def _run_and_compare(graph, cpu_executor, voxels, device: str, dtype: torch.dtype,
                     coords_dtype: torch.dtype = torch.int32) -> None:
    feats, coords = voxels
    reference = cpu_executor.run(feats, coords).astype(np.float64)
    out = TorchScnExecutor(graph, device=device, dtype=dtype).run(
        torch.from_numpy(feats).to(device), torch.from_numpy(coords).to(device, coords_dtype))
    assert out.dtype == dtype and out.device.type == device and out.is_contiguous()
    assert out.shape == (1, TINY.lidar_bev_channels, *TINY.bev_size)
    limits = (FP32_REL_MAX_ABS, FP32_COSINE) if dtype == torch.float32 else LOW_PRECISION[dtype]
    assert_close(out, reference, *limits)


# ------------------------------------------------------------------------------------------
# the executor against ScnExecutor
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coords_dtype", [torch.int32, torch.int64])
def test_fp32_equals_the_cpu_executor_on_random_voxels(graph, cpu_executor, random_voxels,
                                                       coords_dtype):
    _run_and_compare(graph, cpu_executor, random_voxels, "cpu", torch.float32, coords_dtype)


def test_fp32_equals_the_cpu_executor_on_a_synthetic_frame(graph, cpu_executor, frame_voxels):
    _run_and_compare(graph, cpu_executor, frame_voxels, "cpu", torch.float32)
    # Voxel order is not part of the contract: a shuffled frame gives the same map.
    feats, coords = (torch.from_numpy(a) for a in frame_voxels)
    perm = torch.from_numpy(np.random.default_rng(11).permutation(len(coords)))
    executor = TorchScnExecutor(graph)
    torch.testing.assert_close(executor.run(feats[perm], coords[perm]),
                               executor.run(feats, coords), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precisions_stay_close_to_fp32(graph, cpu_executor, frame_voxels, dtype):
    _run_and_compare(graph, cpu_executor, frame_voxels, "cpu", dtype)


# ------------------------------------------------------------------------------------------
# rulebooks: equal to the CPU's
# ------------------------------------------------------------------------------------------

SMALL = (7, 6, 9)


def _sorted_small_sites(count: int, seed: int) -> np.ndarray:
    """Random sites in linear-index order: the order the torch executor keeps its sites in."""
    coords = random_sites(SMALL, count, seed)
    keys = (coords[:, 0].astype(np.int64) * SMALL[1] + coords[:, 1]) * SMALL[2] + coords[:, 2]
    return coords[np.argsort(keys)]


@pytest.mark.parametrize("kernel,dilation", [((3, 3, 3), (1, 1, 1)), ((3, 1, 3), (1, 1, 2)),
                                             ((2, 3, 3), (1, 1, 1))])
def test_subm_rulebook_equals_the_cpus(kernel, dilation):
    coords = _sorted_small_sites(90, seed=3)
    expected = subm_rulebook(coords, SMALL, kernel, dilation)
    sites, order = sorted_sites(torch.from_numpy(coords), SMALL)
    got = torch_subm_rulebook(sites, kernel, dilation)
    np.testing.assert_array_equal(order.numpy(), np.arange(len(coords)))
    np.testing.assert_array_equal(got.neighbours.numpy(), expected.neighbours)
    np.testing.assert_array_equal(got.out_sites.coords.numpy(), expected.out_coords)
    assert expected.num_pairs > 2 * len(coords)  # the sites have neighbours to find


@pytest.mark.parametrize("kernel,stride,padding,dilation", [
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1)),  # encoder stages 1 and 2
    ((3, 3, 3), (2, 2, 2), (1, 1, 0), (1, 1, 1)),  # encoder stage 3
    ((1, 1, 3), (1, 1, 2), (0, 0, 0), (1, 1, 1)),  # conv_out
    ((3, 2, 3), (1, 3, 2), (2, 0, 1), (2, 1, 1)),  # dilated, even, stride 1 on one axis
])
def test_strided_rulebook_equals_the_cpus(kernel, stride, padding, dilation):
    coords = _sorted_small_sites(70, seed=4)
    out_shape = tuple((s + 2 * p - d * (k - 1) - 1) // st + 1
                      for s, k, st, p, d in zip(SMALL, kernel, stride, padding, dilation))
    expected = strided_rulebook(coords, out_shape, kernel, stride, padding, dilation)
    sites, _ = sorted_sites(torch.from_numpy(coords), SMALL)
    got = torch_strided_rulebook(sites, out_shape, kernel, stride, padding, dilation)
    np.testing.assert_array_equal(got.out_sites.coords.numpy(), expected.out_coords)
    np.testing.assert_array_equal(got.neighbours.numpy(), expected.neighbours)
    assert got.out_sites.shape == expected.out_spatial_shape and expected.num_pairs > 0


# ------------------------------------------------------------------------------------------
# a graph other than the SparseEncoder's: unfused Add / Relu, ScatterDense without Transpose
# ------------------------------------------------------------------------------------------


def test_unfused_layers_and_a_plain_scatter_run_like_the_cpu_executor():
    """conv → (Add with the input, Relu of the conv) → Add: the conv output has two consumers,
    so nothing is fused; the ScatterDense has no Transpose after it."""
    rng = np.random.default_rng(15)
    shape, channels = (6, 5, 4), 3
    weight = rng.standard_normal((channels, 3, 3, 3, channels)).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    dense = (1, channels * shape[0], *shape[1:])
    layers = (SparseConv("conv", (FEATURES_INPUT,), "conv", weight, bias, (3, 3, 3), (1, 1, 1),
                         (1, 1, 1), (1, 1, 1), True, "", "None", shape, shape),
              Add("skip", ("conv", FEATURES_INPUT), "skip"), Relu("relu", ("conv",), "relu"),
              Add("join", ("skip", "relu"), "join"),
              ScatterDense("scatter", ("join",), "scatter", shape, (1, channels, *shape)),
              Reshape("reshape", ("scatter",), OUTPUT, dense))
    graph = scn_from_model(scn_to_model(ScnGraph(
        TensorSpec(FEATURES_INPUT, (VOXELS_DIM, channels), "float32"),
        TensorSpec(COORDS_INPUT, (VOXELS_DIM, 4), "int32"), TensorSpec(OUTPUT, dense, "float32"),
        layers)))
    cpu = ScnExecutor(graph)
    assert not cpu.fusions  # the shared plan runs every layer on its own
    coords = random_sites(shape, 40, seed=16)
    feats = rng.standard_normal((len(coords), channels), dtype=np.float32)
    out = TorchScnExecutor(graph).run(torch.from_numpy(feats), torch.from_numpy(coords))
    assert out.shape == dense and out.is_contiguous()
    assert_close(out, cpu.run(feats, coords).astype(np.float64), FP32_REL_MAX_ABS, FP32_COSINE)


# ------------------------------------------------------------------------------------------
# input and configuration errors, empty input
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case,field", [
    ("features of the wrong width", "feats"),
    ("one-dimensional features", "feats"),
    ("integer features", "feats"),
    ("numpy features", "feats"),
    ("features on another device", "feats"),
    ("coords without z", "coords"),
    ("fewer coords than features", "coords"),
    ("float coords", "coords"),
    ("int16 coords", "coords"),
    ("coords on another device", "coords"),
])
def test_bad_input_is_refused_naming_the_field(graph, case, field):
    coords = torch.from_numpy(random_sites(TINY.sparse_shape, 50, seed=17))
    feats = torch.ones(50, 5)
    if case == "features of the wrong width":
        feats = torch.ones(50, 4)
    elif case == "one-dimensional features":
        feats = torch.ones(50)
    elif case == "integer features":
        feats = torch.ones(50, 5, dtype=torch.int32)
    elif case == "numpy features":
        feats = np.ones((50, 5), np.float32)
    elif case == "features on another device":  # "meta" stands in for a GPU on a CPU machine
        feats = feats.to("meta")
    elif case == "coords without z":
        coords = coords[:, :2]
    elif case == "fewer coords than features":
        coords = coords[:49]
    elif case == "float coords":
        coords = coords.float()
    elif case == "int16 coords":
        coords = coords.to(torch.int16)
    else:
        coords = coords.to("meta")
    with pytest.raises(InputError) as info:
        TorchScnExecutor(graph).run(feats, coords)
    assert info.value.field == field and info.value.path == "<torch scn executor>"


@pytest.mark.parametrize("option,field", [({"dtype": torch.float64}, "dtype"),
                                          ({"dtype": torch.int32}, "dtype"),
                                          ({"device": "no-such-device"}, "device")])
def test_unsupported_dtype_or_device_is_refused(graph, option, field):
    with pytest.raises(ConfigError) as info:
        TorchScnExecutor(graph, **option)
    assert info.value.field == field


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_empty_input_gives_an_all_zero_map(graph, dtype):
    out = TorchScnExecutor(graph, dtype=dtype).run(torch.zeros(0, 5),
                                                   torch.zeros(0, 3, dtype=torch.int32))
    assert out.shape == (1, TINY.lidar_bev_channels, *TINY.bev_size) and out.dtype == dtype
    assert not out.any()


# ------------------------------------------------------------------------------------------
# CUDA: the same code on the GPU
# ------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_the_cpu_executor(graph, cpu_executor, random_voxels, frame_voxels, dtype):
    for voxels in (random_voxels, frame_voxels):
        _run_and_compare(graph, cpu_executor, voxels, "cuda", dtype, torch.int64)
