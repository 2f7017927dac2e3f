"""The four dense ONNX graphs: validity, shapes, TensorRT-parsable ops, and ONNX Runtime vs
PyTorch on the same random inputs.

The references are the model's own modules called the way the reference pipeline calls them
(not the export wrappers), with non-trivial batch-norm statistics so that Conv+BN folding is
exercised. The head is compared with ``TransFusionHead.forward`` and its decode-time score
product, so the export-friendly rewrites (identity-gather one-hot, ``Div``/``Sub`` index split,
``Gather`` on the flat BEV axis) are checked against the original maths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from bevdeploy.export.camera import camera_backbone_graph, camera_vtransform_graph
from bevdeploy.export.fuser import fuser_graph
from bevdeploy.export.head import head_graph
from bevdeploy.export.onnx_utils import DenseGraph, export_graph, graph_io, op_census
from bevdeploy.export.trt_ops import SUPPORTED_OPS, tensorrt_violations
from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.presets import get_preset

TINY = get_preset("tiny")
GRAPHS = ("camera.backbone", "camera.vtransform", "fuser", "head.bbox")
BUILDERS = {"camera.backbone": camera_backbone_graph, "camera.vtransform": camera_vtransform_graph,
            "fuser": fuser_graph, "head.bbox": head_graph}
REL_TOL = 1e-4  # max-abs error relative to the reference output's max-abs (FP32)
MIN_COSINE = 0.99999


def _randomize_norms(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN/LayerNorm parameters and statistics (fresh modules have identity BN)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
        elif isinstance(m, torch.nn.LayerNorm):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


@pytest.fixture(scope="module")
def model() -> BEVFusion:
    torch.manual_seed(0)
    m = BEVFusion(TINY)
    _randomize_norms(m, seed=1)
    return m.eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> dict[str, tuple[DenseGraph, Path]]:
    root = tmp_path_factory.mktemp("dense")
    out = {}
    for name in GRAPHS:
        graph = BUILDERS[name](model, TINY)
        path = root / f"{name}.onnx"
        export_graph(graph, path)
        out[name] = (graph, path)
    return out


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _assert_close(got: np.ndarray, ref: torch.Tensor, what: str) -> None:
    ref_np = ref.detach().numpy().astype(np.float64)
    got = got.astype(np.float64)
    assert got.shape == ref_np.shape, what
    scale = np.abs(ref_np).max()
    assert scale > 0, f"{what}: all-zero reference"
    err = np.abs(got - ref_np).max()
    cosine = (got.ravel() @ ref_np.ravel()) / (np.linalg.norm(got) * np.linalg.norm(ref_np))
    assert err <= REL_TOL * scale, f"{what}: max-abs {err:.3g} > {REL_TOL} × {scale:.3g}"
    assert cosine >= MIN_COSINE, f"{what}: cosine {cosine:.7f}"


# ---------------------------------------------------------------------------------- validity


@pytest.mark.parametrize("name", GRAPHS)
def test_graph_passes_the_full_checker_and_infers_the_promised_static_shapes(exported, name):
    graph, path = exported[name]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    inputs, outputs = graph_io(inferred)
    assert inputs == graph.inputs and outputs == graph.outputs
    assert all(isinstance(d, int) and d > 0 for s in inputs + outputs for d in s.shape)
    assert [o.version for o in model.opset_import if o.domain == ""] == [17]


@pytest.mark.parametrize("name", GRAPHS)
def test_graph_uses_only_operators_tensorrt_parses(exported, name):
    model = onnx.load(str(exported[name][1]))
    assert set(op_census(model)) <= SUPPORTED_OPS
    assert tensorrt_violations(model) == []


def test_head_graph_uses_the_export_friendly_rewrites(exported):
    ops = op_census(onnx.load(str(exported["head.bbox"][1])))
    assert ops["TopK"] == 1 and ops["LayerNormalization"] == 3 * TINY.model.head.num_decoder_layers
    assert "OneHot" not in ops and "Mod" not in ops and "GatherElements" not in ops


def test_tensorrt_check_reports_custom_and_unsupported_ops():
    """The checker itself must fail on what TensorRT refuses, naming the node."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])
    k = onnx.helper.make_tensor("k", onnx.TensorProto.INT64, [1], [4000])
    nodes = [onnx.helper.make_node("Unique", ["x"], ["u"], name="uniq"),
             onnx.helper.make_node("CustomLayerNormalization", ["x"], ["n"], domain="nv",
                                   name="ln"),
             onnx.helper.make_node("TopK", ["x", "k"], ["v", "i"], name="top")]
    outs = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in "unv"]
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [x], outs, [k]))
    problems = tensorrt_violations(model)
    assert len(problems) == 3
    assert "'uniq'" in problems[0] and "'nv'" in problems[1] and "3840" in problems[2]


# ---------------------------------------------------------------------------------- parity


def test_camera_backbone_matches_pytorch(model, exported):
    n = TINY.cameras.num_cameras
    h, w = TINY.cameras.image_size
    gen = torch.Generator().manual_seed(3)
    img = torch.randn(1, n, 3, h, w, generator=gen)
    # A sparse depth image: ~3 % of pixels hold a depth inside dbound, the rest 0.
    lo, hi, _ = TINY.model.vtransform.dbound
    depth = torch.rand(1, n, 1, h, w, generator=gen) * (hi - lo) + lo
    depth = depth * (torch.rand(depth.shape, generator=gen) < 0.03)
    got = dict(zip(["camera_depth_weights", "camera_feature"],
                   _session(exported["camera.backbone"][1]).run(
                       None, {"img": img.numpy(), "depth": depth.numpy()})))

    camera = model.encoders["camera"]
    with torch.no_grad():
        feat = camera["neck"](camera["backbone"](img[0]))[0]
        weights, feats = camera["vtransform"].depth_and_features(feat, depth[0])
    _assert_close(got["camera_depth_weights"], weights, "camera_depth_weights")
    _assert_close(got["camera_feature"], feats.permute(0, 2, 3, 1), "camera_feature (NHWC)")
    np.testing.assert_allclose(got["camera_depth_weights"].sum(axis=1), 1.0, atol=1e-5)


def test_camera_vtransform_matches_pytorch(model, exported):
    graph, path = exported["camera.vtransform"]
    feat_in = torch.randn(*graph.inputs[0].shape, generator=torch.Generator().manual_seed(4))
    got = _session(path).run(None, {"feat_in": feat_in.numpy()})[0]
    with torch.no_grad():
        ref = model.encoders["camera"]["vtransform"].downsample(feat_in)
    _assert_close(got, ref, "feat_out")


def test_fuser_matches_pytorch(model, exported):
    graph, path = exported["fuser"]
    gen = torch.Generator().manual_seed(5)
    camera, lidar = (torch.randn(*s.shape, generator=gen) for s in graph.inputs)
    got = _session(path).run(None, {"camera": camera.numpy(), "lidar": lidar.numpy()})[0]
    with torch.no_grad():
        ref = model.decoder["neck"](model.decoder["backbone"](model.fuser([camera, lidar])))[0]
    _assert_close(got, ref, "middle")


def _suppressed_heatmap(dense_heatmap: torch.Tensor, suppressed: list[bool]) -> torch.Tensor:
    """Independent local-max rule (docs/reference.md#head-forward step 4): a suppressed class keeps
    an interior cell only where it equals its 3×3 maximum; unsuppressed classes keep every cell."""
    h = dense_heatmap.sigmoid()
    pooled = F.max_pool2d(h, 3, stride=1, padding=1)
    interior = torch.zeros_like(h, dtype=torch.bool)
    interior[..., 1:-1, 1:-1] = True
    keep = (h == pooled) & interior
    keep[:, [not s for s in suppressed]] = True
    return h * keep


def _head_input(model: BEVFusion, shape: tuple[int, ...]) -> torch.Tensor:
    """A random input whose top-(P+1) heatmap peaks are separated by more than the FP32
    difference between backends, so both select the same queries in the same order."""
    head = model.heads["object"]
    suppressed = [c not in TINY.model.head.no_suppression_classes for c in TINY.classes]
    for seed in range(20):
        # σ = 3 spreads the untrained heatmap's top scores over ~0.1 instead of ~0.04.
        x = 3.0 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            dense = head.heatmap_head(head.shared_conv(x))
        top = _suppressed_heatmap(dense, suppressed).flatten().topk(head.num_proposals + 1).values
        if (top[:-1] - top[1:]).min() > 1e-5:
            return x
    raise AssertionError("no seed with well-separated heatmap peaks")


def test_head_matches_pytorch_on_the_same_queries(model, exported):
    graph, path = exported["head.bbox"]
    middle = _head_input(model, graph.inputs[0].shape)
    got = dict(zip([s.name for s in graph.outputs],
                   _session(path).run(None, {"middle": middle.numpy()})))
    head = model.heads["object"]
    with torch.no_grad():
        out = head(middle)
    one_hot = F.one_hot(out["query_labels"], TINY.num_classes).permute(0, 2, 1)
    score = out["heatmap"].sigmoid() * out["query_heatmap_score"] * one_hot
    # Same queries: each proposal's class is the only non-zero score column.
    np.testing.assert_array_equal(got["score"].argmax(axis=1), out["query_labels"].numpy())
    _assert_close(got["score"], score, "score")
    for name, key in (("rot", "rot"), ("dim", "dim"), ("reg", "center"), ("height", "height"),
                      ("vel", "vel")):
        _assert_close(got[name], out[key], name)


# ---------------------------------------------------------------------------------- full size


SPEC_TABLE = {  # docs/reference.md#onnx-modules, nuscenes-resnet50
    "camera.backbone": ({"img": (1, 6, 3, 256, 704), "depth": (1, 6, 1, 256, 704)},
                        {"camera_depth_weights": (6, 118, 32, 88),
                         "camera_feature": (6, 32, 88, 80)}),
    "camera.vtransform": ({"feat_in": (1, 80, 360, 360)}, {"feat_out": (1, 80, 180, 180)}),
    "fuser": ({"camera": (1, 80, 180, 180), "lidar": (1, 256, 180, 180)},
              {"middle": (1, 512, 180, 180)}),
    "head.bbox": ({"middle": (1, 512, 180, 180)},
                  {"score": (1, 10, 200), "rot": (1, 2, 200), "dim": (1, 3, 200),
                   "reg": (1, 2, 200), "height": (1, 1, 200), "vel": (1, 2, 200)}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", GRAPHS)
def test_nuscenes_resnet50_graphs_have_cuda_bevfusions_names_and_shapes(name, tmp_path):
    preset = get_preset("nuscenes-resnet50")
    graph = BUILDERS[name](BEVFusion(preset).eval(), preset)
    path = tmp_path / f"{name}.onnx"
    export_graph(graph, path)
    inputs, outputs = graph_io(onnx.load(str(path), load_external_data=False))
    want_in, want_out = SPEC_TABLE[name]
    assert {s.name: s.shape for s in inputs} == want_in
    assert {s.name: s.shape for s in outputs} == want_out
    assert tensorrt_violations(onnx.load(str(path))) == []
