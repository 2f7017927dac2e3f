"""The SCN file: ONNX validity, round trip to the module, numerical identity, damaged files.

The reference for every check is independent of the writer: BN folding is redone here in numpy
from the module's conv weights and BN statistics, layer counts come from the preset's channel
plan, and the function check runs the *parsed* layer list through fresh spconv modules.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import spconv.pytorch as spconv
import torch
from onnx import TensorProto, helper
from spconv.pytorch.conv import SparseConvolution

from support import tiny_sparse_encoder

from bevdeploy.errors import ConfigError, PackageError
from bevdeploy.export.scn import export_scn
from bevdeploy.model.lidar import build_sparse_encoder
from bevdeploy.package import ModuleEntry, TensorSpec
from bevdeploy.presets import get_preset
from bevdeploy.scn_format import (
    Add, Relu, Reshape, ScatterDense, ScnGraph, SparseConv, Transpose, read_scn,
)

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def tiny_encoder() -> torch.nn.Module:
    return tiny_sparse_encoder()


@pytest.fixture(scope="module")
def tiny_file(tiny_encoder, tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("scn") / "lidar.backbone.xyz.onnx"
    return path, export_scn(tiny_encoder, TINY, path)


def _bn_of(modules: dict[str, torch.nn.Module], conv_name: str) -> torch.nn.BatchNorm1d:
    """The BN that follows a conv: ``X.0`` → ``X.1``, ``X.conv1`` → ``X.bn1``."""
    parent, _, leaf = conv_name.rpartition(".")
    return modules[f"{parent}.{'1' if leaf == '0' else leaf.replace('conv', 'bn')}"]


def _fold(conv: SparseConvolution, bn: torch.nn.BatchNorm1d) -> tuple[np.ndarray, np.ndarray]:
    w = conv.weight.detach().numpy().astype(np.float64)  # (O, kx, ky, kz, I)
    gamma, beta = bn.weight.detach().numpy(), bn.bias.detach().numpy()
    mean, var = bn.running_mean.numpy(), bn.running_var.numpy()
    scale = gamma / np.sqrt(var.astype(np.float64) + bn.eps)
    return w * scale[:, None, None, None, None], beta - mean * scale


# ------------------------------------------------------------------------------------------
# validity and round trip
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_dtype", ["float32", "float16"])
def test_file_passes_the_full_onnx_checker(tiny_encoder, tmp_path, weight_dtype):
    path = tmp_path / "scn.onnx"
    export_scn(tiny_encoder, TINY, path, weight_dtype=weight_dtype)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    domains = {op.domain for op in model.opset_import}
    assert "bevdeploy.spconv" in domains
    assert {node.domain for node in model.graph.node} == {"bevdeploy.spconv"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scn.onnx"]  # no temp file left


def test_round_trip_matches_the_module(tiny_encoder, tiny_file):
    graph = read_scn(tiny_file[0])
    modules = dict(tiny_encoder.named_modules())
    convs = [(name, m) for name, m in tiny_encoder.named_modules()
             if isinstance(m, SparseConvolution)]
    assert [c.name for c in graph.sparse_convs] == [name for name, _ in convs]
    for layer, (name, conv) in zip(graph.sparse_convs, convs):
        weight, bias = _fold(conv, _bn_of(modules, name))
        np.testing.assert_allclose(layer.weight, weight, rtol=1e-6, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(layer.bias, bias, rtol=1e-6, atol=1e-6, err_msg=name)
        assert layer.weight.dtype == np.float32 and layer.bias.dtype == np.float32
        assert layer.kernel_size == tuple(conv.kernel_size), name
        assert layer.stride == tuple(conv.stride), name
        assert layer.padding == tuple(conv.padding), name
        assert layer.dilation == tuple(conv.dilation), name
        assert layer.subm == conv.subm, name
        assert layer.rulebook == conv.indice_key, name
        # fuse_relu_only: every conv is followed by a ReLU except a basic block's conv2
        assert layer.activation == ("None" if name.endswith("conv2") else "ReLU"), name


def test_rulebook_keys_follow_cuda_bevfusion(tiny_file):
    keys = {c.name: c.rulebook for c in read_scn(tiny_file[0]).sparse_convs}
    assert keys["conv_input.0"] == "subm1"
    assert keys["encoder_layers.encoder_layer1.0.conv1"] == "subm1"
    assert keys["encoder_layers.encoder_layer3.1.conv2"] == "subm3"
    assert keys["encoder_layers.encoder_layer4.0.conv1"] == "subm4"
    assert [keys[f"encoder_layers.encoder_layer{i}.2.0"] for i in (1, 2, 3)] == \
        ["spconv1", "spconv2", "spconv3"]
    assert keys["conv_out.0"] == "spconv_down2"


def test_blocks_wire_add_and_relu_to_the_block_input(tiny_file):
    graph = read_scn(tiny_file[0])
    by_output = {layer.output: layer for layer in graph.layers}
    adds = [layer for layer in graph.layers if isinstance(layer, Add)]
    for add in adds:
        block = add.name.rsplit(".", 1)[0]
        conv2, identity = (by_output[name] for name in add.inputs)
        assert conv2.name == f"{block}.conv2"
        assert by_output[conv2.inputs[0]].name == f"{block}.conv1"
        assert by_output[f"{block}.conv1"].inputs == (identity.output,)
        assert isinstance(by_output[f"{block}.relu"], Relu)
        assert by_output[f"{block}.relu"].inputs == (add.output,)
    tail = graph.layers[-3:]
    assert isinstance(tail[0], ScatterDense) and tail[0].format == "xyz"
    assert isinstance(tail[1], Transpose) and tail[1].dims == (0, 1, 4, 2, 3)
    assert isinstance(tail[2], Reshape) and tail[2].output == graph.output.name


def _expected_census(preset) -> dict[str, int]:
    """From the channel plan: every stage but the last ends in one strided conv."""
    stages = preset.model.lidar_encoder.encoder_channels
    strided = len(stages) - 1
    blocks = sum(len(chans) for chans in stages) - strided
    return {"sparse_convs": 1 + 2 * blocks + strided + 1, "adds": blocks, "relus": blocks}


@pytest.mark.parametrize("name", ["tiny", "nuscenes-resnet50"])
def test_census_shapes_and_manifest(name, tmp_path):
    preset = get_preset(name)
    path = tmp_path / "lidar.backbone.xyz.onnx"
    entry = export_scn(build_sparse_encoder(preset), preset, path)
    graph = read_scn(path)
    assert graph.census() == _expected_census(preset)
    assert graph.census() == {"sparse_convs": 21, "adds": 8, "relus": 8}
    # output shapes of the strided convs and conv_out follow the preset's chain
    chain = [c.output_spatial_shape for c in graph.sparse_convs if not c.subm]
    assert chain == preset.lidar_encoder_shapes[1:]
    assert graph.sparse_shape == preset.sparse_shape
    out_shape = (1, preset.lidar_bev_channels, *preset.bev_size)
    module = ModuleEntry.from_dict("lidar.backbone", entry, source=path)  # the manifest schema
    assert module.file == path.name and module.size == path.stat().st_size
    assert module.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert module.precision == "fp32"
    assert module.inputs == (
        TensorSpec(graph.features.name, ("voxels", preset.points.num_features), "float32"),
        TensorSpec(graph.coords.name, ("voxels", 4), "int32"))
    assert module.outputs == (TensorSpec(graph.output.name, out_shape, "float32"),)
    domain = "bevdeploy.spconv"
    assert module.ops == {f"{domain}::SparseConvolution": 21, f"{domain}::Add": 8,
                          f"{domain}::Relu": 8, f"{domain}::ScatterDense": 1,
                          f"{domain}::Transpose": 1, f"{domain}::Reshape": 1}
    details = module.details
    assert (details["sparse_convs"], details["adds"], details["relus"]) == (21, 8, 8)
    assert details["domain"] == domain and details["coordinate_order"] == "xyz"
    if name == "nuscenes-resnet50":  # docs/reference.md#scn-onnx-format
        assert chain == [(720, 720, 21), (360, 360, 11), (180, 180, 5), (180, 180, 2)]
        assert out_shape == (1, 256, 180, 180)
        strided = [c for c in graph.sparse_convs if not c.subm]
        assert [c.padding for c in strided] == [(1, 1, 1), (1, 1, 1), (1, 1, 0), (0, 0, 0)]


def test_float16_file_meets_the_nvidia_parser_contract(tiny_encoder, tmp_path):
    """What ``lidar-scn-onnx-parser.cpp`` reads: FP16 raw initializers of exact size, a bias
    input on every conv, and its attributes with the types it reads them as."""
    path = tmp_path / "scn16.onnx"
    export_scn(tiny_encoder, TINY, path, weight_dtype="float16")
    model = onnx.load(path)
    inits = {init.name: init for init in model.graph.initializer}
    ints = {"kernel_size", "stride", "padding", "dilation"}
    for node in model.graph.node:
        assert node.op_type in {"SparseConvolution", "Add", "Relu", "ScatterDense", "Reshape",
                                "Transpose"}
        attrs = {a.name: a for a in node.attribute}
        if node.op_type != "SparseConvolution":
            continue
        assert len(node.input) == 3
        for name in node.input[1:]:
            init = inits[name]
            assert init.data_type == TensorProto.FLOAT16
            assert len(init.raw_data) == 2 * int(np.prod(init.dims))
        assert all(attrs[a].type == onnx.AttributeProto.INTS and len(attrs[a].ints) == 3
                   for a in ints)
        for a in ("subm", "output_bound", "inverse"):
            assert attrs[a].type == onnx.AttributeProto.INT
        assert attrs["activation"].s in (b"ReLU", b"None")
        assert attrs["precision"].s == b"fp16"
    graph = read_scn(path)
    modules = dict(tiny_encoder.named_modules())
    for layer in graph.sparse_convs:
        weight, _ = _fold(modules[layer.name], _bn_of(modules, layer.name))
        assert layer.weight.dtype == np.float16
        np.testing.assert_allclose(layer.weight.astype(np.float64), weight, rtol=1e-3, atol=1e-6)


# ------------------------------------------------------------------------------------------
# the folded network is the same function
# ------------------------------------------------------------------------------------------


def _run_parsed(graph: ScnGraph, feats: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Interpret the parsed layer list with fresh spconv modules holding the parsed weights."""
    tensors: dict[str, object] = {
        graph.features.name: spconv.SparseConvTensor(feats, coords, list(graph.sparse_shape), 1)}
    for layer in graph.layers:
        x = tensors[layer.inputs[0]]
        if isinstance(layer, SparseConv):
            kind = spconv.SubMConv3d if layer.subm else spconv.SparseConv3d
            conv = kind(layer.in_channels, layer.out_channels, layer.kernel_size,
                        stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                        bias=True, indice_key=layer.rulebook or None)
            conv.weight.data = torch.from_numpy(layer.weight.astype(np.float32))
            conv.bias.data = torch.from_numpy(layer.bias.astype(np.float32))
            y = conv(x)
            assert list(y.spatial_shape) == list(layer.output_spatial_shape)
            if layer.activation == "ReLU":
                y = y.replace_feature(torch.relu(y.features))
        elif isinstance(layer, Add):
            y = x.replace_feature(x.features + tensors[layer.inputs[1]].features)
        elif isinstance(layer, Relu):
            y = x.replace_feature(torch.relu(x.features))
        elif isinstance(layer, ScatterDense):
            y = x.dense()
            assert tuple(y.shape) == layer.output_shape
        elif isinstance(layer, Transpose):
            y = x.permute(*layer.dims)
        else:
            y = x.reshape(layer.dims)
        tensors[layer.output] = y
    return tensors[graph.output.name]


def _random_voxels(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense cluster (neighbourhoods overlap) plus scattered voxels over the whole grid."""
    rng = np.random.default_rng(seed)
    X, Y, Z = TINY.sparse_shape
    cluster = rng.integers((200, 240, 0), (240, 280, Z - 1), size=(6000, 3))
    scattered = rng.integers((0, 0, 0), (X, Y, Z - 1), size=(800, 3))
    xyz = np.unique(np.concatenate([cluster, scattered]), axis=0)
    rng.shuffle(xyz)
    coords = np.concatenate([np.zeros((len(xyz), 1), np.int64), xyz], axis=1)
    feats = rng.normal(size=(len(xyz), TINY.points.num_features)).astype(np.float32)
    return torch.from_numpy(feats), torch.from_numpy(coords).int()


@pytest.fixture
def one_torch_thread():
    """spconv 2.3.8's CPU convs return wrong sums now and then with more than one torch
    intra-op thread (measured against a dense conv3d: errors of order 10 on unit-scale data),
    exact with one; pin one thread so the comparison measures the export, not that race."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_folded_network_is_the_same_function(tiny_encoder, tiny_file, one_torch_thread):
    feats, coords = _random_voxels(seed=2)
    with torch.no_grad():
        expected = tiny_encoder(feats, coords, 1)
        actual = _run_parsed(read_scn(tiny_file[0]), feats, coords)
    assert actual.shape == expected.shape == (1, TINY.lidar_bev_channels, *TINY.bev_size)
    assert float((expected != 0).float().mean()) > 0.01  # the comparison is not vacuous
    scale = float(expected.abs().max())
    assert float((actual - expected).abs().max()) <= 1e-4 * scale
    cosine = torch.nn.functional.cosine_similarity(actual.flatten(), expected.flatten(), dim=0)
    assert float(cosine) >= 0.99999


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------


def test_reader_does_not_import_torch(tiny_file):
    code = ("import sys; from bevdeploy.scn_format import read_scn; "
            f"g = read_scn({str(tiny_file[0])!r}); assert g.census()['sparse_convs'] == 21; "
            "assert not [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_and_non_onnx_files_raise_package_error(tmp_path):
    missing = tmp_path / "absent.onnx"
    with pytest.raises(PackageError, match="file not found") as exc:
        read_scn(missing)
    assert exc.value.path == str(missing)
    rng = np.random.default_rng(3)
    for i in range(20):
        junk = tmp_path / f"junk{i}.onnx"
        junk.write_bytes(rng.integers(0, 256, size=int(rng.integers(1, 4000)), dtype=np.uint8)
                         .tobytes())
        with pytest.raises(PackageError) as exc:
            read_scn(junk)
        assert exc.value.path == str(junk)


def test_a_dense_onnx_model_is_not_an_scn_file(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [x], [y]))
    path = tmp_path / "dense.onnx"
    onnx.save(model, path)
    with pytest.raises(PackageError, match="not a bevdeploy SCN file") as exc:
        read_scn(path)
    assert exc.value.path == str(path) and exc.value.field == "opset_import"


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto:
    return next(a for a in node.attribute if a.name == name)


def _drop_kernel_size(m):
    node = _node(m, "encoder_layers.encoder_layer2.0.conv1")
    node.attribute.remove(_attr(node, "kernel_size"))


def _truncate_weight(m):
    init = next(i for i in m.graph.initializer if i.name == "conv_out.0.weight")
    init.raw_data = init.raw_data[:-8]


def _change_stride(m):
    _attr(_node(m, "encoder_layers.encoder_layer1.2.0"), "stride").ints[:] = [3, 3, 3]


def _unknown_op(m):
    _node(m, "encoder_layers.encoder_layer1.0.relu").op_type = "LeakyRelu"


def _dangling_add(m):
    _node(m, "encoder_layers.encoder_layer2.1.add").input[1] = "nowhere"


def _zyx_scatter(m):
    _attr(_node(m, "scatter"), "format").s = b"zyx"


def _bad_rulebook(m):
    _attr(_node(m, "encoder_layers.encoder_layer2.0.conv1"), "rulebook").s = b"subm1"


@pytest.mark.parametrize("corrupt, field", [
    (_drop_kernel_size, "encoder_layers.encoder_layer2.0.conv1.kernel_size"),
    (_truncate_weight, "conv_out.0.input[1]"),
    (_change_stride, "encoder_layers.encoder_layer1.2.0.output_spatial_shape"),
    (_unknown_op, "encoder_layers.encoder_layer1.0.relu.op_type"),
    (_dangling_add, "encoder_layers.encoder_layer2.1.add.input[1]"),
    (_zyx_scatter, "scatter.format"),
    (_bad_rulebook, "encoder_layers.encoder_layer2.0.conv1.rulebook"),
])
def test_damaged_scn_file_names_the_node_and_field(tiny_file, tmp_path, corrupt, field):
    model = onnx.load(tiny_file[0])
    corrupt(model)
    path = tmp_path / "damaged.onnx"
    onnx.save(model, path)
    with pytest.raises(PackageError) as exc:
        read_scn(path)
    assert exc.value.path == str(path)
    assert exc.value.field == field


def test_encoder_that_does_not_fit_the_preset_is_refused(tiny_encoder, tmp_path):
    with pytest.raises(ConfigError) as exc:
        export_scn(tiny_encoder, get_preset("nuscenes-resnet50"), tmp_path / "x.onnx")
    assert exc.value.field == "sparse_shape"
    assert not (tmp_path / "x.onnx").exists()
