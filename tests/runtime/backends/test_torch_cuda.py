"""The ``torch-cuda`` backend: the package's ONNX modules converted to PyTorch, held to ONNX
Runtime module by module and end to end.

On this CPU-only CI the runner runs with ``device="cpu"``: the converted module is the same one
the GPU runs, so the conversion (every op, attribute and constant) is checked here; the
``gpu`` cases repeat the comparisons on CUDA, in FP32 and in FP16 with channels-last and CUDA
graphs.

Inputs are real: each module is fed what the ONNX Runtime pipeline fed it on a synthetic frame,
and the package holds the shipped trained tiny weights, so the head's heatmap has real peaks and
its top-k proposals are well separated.

Tolerances. FP32: both sides compute in float32 and differ in summation order only, ~1e-6
relative per layer: max |Δ| / max |ORT| ≤ 1e-4 and cosine ≥ 0.99999 leave two orders of
margin. Boxes: same class, centre within 1 mm, size within 1e-4 relative, score within 1e-4
(the ``fp32`` limits of ``bevdeploy compare`` are 10× looser). FP16/BF16: ``compare``'s fp16
limits (cosine ≥ 0.999, 2 % of the scale; boxes 5 cm, scores 0.01); bf16 has 3 fewer mantissa
bits than fp16, so its cosine limit is 0.995.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from bevdeploy.data.frame import Detections
from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.errors import ConfigError, PackageError
from bevdeploy.eval.compare import (Tolerances, align_proposals, box_failures, match_boxes,
                                    tensor_metrics)
from bevdeploy.package import TensorSpec, load_package
from bevdeploy.runtime import Pipeline
from bevdeploy.runtime.backends import BACKENDS, GpuOptions, create_runner
from bevdeploy.runtime.backends.onnx_torch import convert
from bevdeploy.runtime.backends.torch_cuda import TorchCudaRunner
from bevdeploy.vocabulary import DENSE_MODULES

FP32_REL_MAX_ABS = 1e-4
FP32_COSINE = 0.99999
BOX_CENTRE_M = 1e-3
BOX_SCORE = 1e-4
SCORE_MIN = 0.05
MIN_BOXES = 10  # precondition: the comparison is about real detections


@pytest.fixture(scope="module")
def package(trained_tiny_package) -> Path:
    return trained_tiny_package


@pytest.fixture(scope="module")
def frames(synthetic_world):
    loader = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val", preset="tiny")
    return [loader[0], loader[1]]


class _Recording:
    """Delegates to a runner and keeps the last feeds and outputs (the modules' real I/O)."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.feeds: dict[str, np.ndarray] = {}
        self.outputs: dict[str, np.ndarray] = {}

    def run(self, feeds):
        self.feeds = {k: np.array(v) for k, v in feeds.items()}
        self.outputs = self.runner.run(feeds)
        return self.outputs


@pytest.fixture(scope="module")
def ort_pipeline(package):
    return Pipeline(package, threads=2)


@pytest.fixture(scope="module")
def module_io(ort_pipeline, frames):
    """Each dense module's ONNX Runtime feeds and outputs on a real frame."""
    recorders = {name: _Recording(r) for name, r in ort_pipeline.runners.items()}
    originals = ort_pipeline.runners
    ort_pipeline.runners = recorders
    try:
        ort_pipeline.run(frames[0])
    finally:
        ort_pipeline.runners = originals
    return {name: (rec.feeds, rec.outputs) for name, rec in recorders.items()}


def _torch_runners(package: Path, **options) -> dict[str, TorchCudaRunner]:
    pkg = load_package(package)
    opts = GpuOptions(**options)
    return {name: create_runner("torch-cuda", pkg.path(name), pkg.module(name), opts)
            for name in DENSE_MODULES}


def _assert_close(got: np.ndarray, expected: np.ndarray, *, rel: float, cosine: float,
                  what: str) -> None:
    assert np.abs(expected).max() > 0, f"{what}: all-zero reference"
    m = tensor_metrics(expected, got)
    assert m.shape_deployed == m.shape_reference, what
    assert m.nonfinite_deployed == 0, what
    assert m.rel_max_abs <= rel, f"{what}: max-abs/scale {m.rel_max_abs:.2e}"
    assert m.cosine >= cosine, f"{what}: cosine {m.cosine:.7f}"


def _assert_same_detections(got: Detections, expected: Detections) -> None:
    keep_e, keep_g = expected.scores >= SCORE_MIN, got.scores >= SCORE_MIN
    assert keep_e.sum() >= MIN_BOXES
    assert keep_e.sum() == keep_g.sum()
    for a, b in ((expected, got), (got, expected)):
        for box, score, label in zip(a.boxes, a.scores, a.labels):
            if score < SCORE_MIN:
                continue
            same = np.flatnonzero(b.labels == label)
            dist = np.linalg.norm(b.boxes[same, :3] - box[:3], axis=1)
            j = same[np.argmin(dist)]
            assert dist.min() < BOX_CENTRE_M
            assert abs(b.scores[j] - score) < BOX_SCORE
            np.testing.assert_allclose(b.boxes[j, 3:6], box[3:6], rtol=1e-4)


# ---------------------------------------------------------------------------------- CPU


def test_backend_is_registered():
    assert "torch-cuda" in BACKENDS and "tensorrt" in BACKENDS


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_each_module_equals_onnxruntime_on_cpu(package, module_io, channels_last):
    runners = _torch_runners(package, device="cpu", channels_last=channels_last)
    for name in DENSE_MODULES:
        feeds, expected = module_io[name]
        got = runners[name].run(feeds)
        assert list(got) == [s.name for s in runners[name].outputs]
        for key, value in expected.items():
            assert got[key].dtype == value.dtype
            _assert_close(got[key], value, rel=FP32_REL_MAX_ABS, cosine=FP32_COSINE,
                          what=f"{name}.{key}")


def test_bf16_follows_the_precision_switch(package, module_io):
    """The precision switch really changes the arithmetic (bf16 differs from fp32) while the
    result stays within bf16's rounding of it."""
    pkg = load_package(package)
    name = "camera.vtransform"
    runner = create_runner("torch-cuda", pkg.path(name), pkg.module(name),
                           GpuOptions(device="cpu", precision="bf16"))
    assert all(p.dtype == torch.bfloat16 for p in runner.module.buffers() if p.is_floating_point())
    feeds, expected = module_io[name]
    got = runner.run(feeds)["feat_out"]
    assert got.dtype == np.float32  # the manifest's output dtype
    m = tensor_metrics(expected["feat_out"], got)
    assert m.rel_max_abs > 1e-4  # it did not compute in fp32
    assert m.cosine >= 0.995 and m.rel_max_abs <= 0.05


def test_fp16_modules_on_the_cpu_pass_the_fp16_tensor_tolerance(package, module_io):
    """The FP16 conversion every GPU run relies on, checked where CI can: each module computed
    in float16 on the CPU stays within ``compare``'s fp16 tensor limits of ONNX Runtime FP32.
    The head's proposals are first paired (``align_proposals``): near-equal heatmap scores may
    swap places in the top-k, which reorders the outputs without changing any box."""
    tol = Tolerances.for_precision("fp16")
    runners = _torch_runners(package, device="cpu", precision="fp16")
    worst = 0.0
    for name, runner in runners.items():
        feeds, expected = module_io[name]
        got = runner.run(feeds)
        if name == "head.bbox":
            order = align_proposals(expected, got)
            got = {k: v[..., order] for k, v in got.items()}
        for key, value in expected.items():
            _assert_close(got[key], value, rel=tol.rel_max_abs, cosine=tol.cosine_min,
                          what=f"{name}.{key}")
            worst = max(worst, tensor_metrics(value, got[key]).rel_max_abs)
    assert worst > 1e-5  # it did compute in float16


def test_pipeline_detections_equal_onnxruntime_on_cpu(package, ort_pipeline, frames):
    """The issue's "torch-cuda detections equal ORT CPU detections", here with device cpu."""
    options = GpuOptions(device="cpu")
    torch_pipeline = Pipeline(package, backend="torch-cuda", threads=2, runner_options=options)
    assert all(isinstance(r, TorchCudaRunner) and r.options is options
               for r in torch_pipeline.runners.values())
    for frame in frames:
        _assert_same_detections(torch_pipeline.run(frame), ort_pipeline.run(frame))


def test_unknown_op_is_refused_naming_op_and_node(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="first"),
         helper.make_node("Tanh", ["y"], ["z"], name="squash")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(PackageError, match=r"Tanh node 'squash'.*op 'Tanh'") as err:
        convert(model, source=tmp_path / "m.onnx")
    assert err.value.field == "nodes.squash"


def test_shape_from_a_graph_input_is_refused(tmp_path):
    """A Reshape whose shape depends on an input would need a device→host read per run."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(PackageError, match="'shape' depends on the graph inputs"):
        convert(model, source=tmp_path / "m.onnx")


def test_folded_constants_and_integer_division_match_onnx_semantics():
    """Ops on constants only are folded at conversion; integer Div truncates, Gather with a
    negative constant index counts from the end."""
    graph = helper.make_graph(
        [helper.make_node("Div", ["a", "b"], ["q"], name="div"),           # [7, 9] // [2, 4]
         helper.make_node("Gather", ["x", "q"], ["g"], axis=1, name="gather"),
         helper.make_node("Gather", ["x", "neg"], ["last"], axis=1, name="gather_neg"),
         helper.make_node("Concat", ["g", "last"], ["y"], axis=1, name="cat")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[helper.make_tensor("a", TensorProto.INT64, [2], [7, 9]),
                     helper.make_tensor("b", TensorProto.INT64, [2], [2, 4]),
                     helper.make_tensor("neg", TensorProto.INT64, [1], [-1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    module = convert(model)
    assert not any(n.op == "call_function" and "div" in str(n.target) for n in module.graph.nodes)
    x = torch.arange(20, dtype=torch.float32).reshape(2, 10) + 1
    (y,) = module(x)
    np.testing.assert_array_equal(y.numpy(), [[4, 3, 10], [14, 13, 20]])


def test_manifest_mismatch_is_refused(package):
    pkg = load_package(package)
    entry = pkg.module("fuser")
    renamed = dataclasses.replace(entry, inputs=(TensorSpec("cam", (1, 32, 64, 64), "float32"),
                                                 entry.inputs[1]))
    with pytest.raises(PackageError, match=r"inputs \['camera', 'lidar'\]") as err:
        TorchCudaRunner.load(pkg.path("fuser"), renamed, GpuOptions(device="cpu"))
    assert err.value.field == "modules.fuser.inputs"


def test_device_and_graph_switches_are_checked(package):
    pkg = load_package(package)
    path, entry = pkg.path("fuser"), pkg.module("fuser")
    with pytest.raises(ConfigError, match="CUDA graphs need a CUDA device"):
        TorchCudaRunner.load(path, entry, GpuOptions(device="cpu", cuda_graph=True))
    with pytest.raises(ConfigError, match="unknown precision"):
        TorchCudaRunner.load(path, entry, GpuOptions(device="cpu", precision="fp8"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs CUDA: .*CPU-only build|needs CUDA"):
            Pipeline(package, backend="torch-cuda")


# ---------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_each_module_equals_onnxruntime_on_cuda_fp32(package, module_io):
    runners = _torch_runners(package, device="cuda")
    for name in DENSE_MODULES:
        feeds, expected = module_io[name]
        got = runners[name].run(feeds)
        for key, value in expected.items():
            _assert_close(got[key], value, rel=FP32_REL_MAX_ABS, cosine=FP32_COSINE,
                          what=f"{name}.{key}")


@pytest.mark.gpu
def test_cuda_graph_replays_equal_eager(package, module_io):
    """Captured once, replayed on new inputs: the static buffers are refilled, not stale."""
    eager = _torch_runners(package, device="cuda")
    graphed = _torch_runners(package, device="cuda", cuda_graph=True)
    for name in ("camera.vtransform", "fuser"):
        feeds, _ = module_io[name]
        for scale in (1.0, 0.5):
            scaled = {k: (v * scale).astype(v.dtype) for k, v in feeds.items()}
            want = eager[name].run(scaled)
            got = graphed[name].run(scaled)
            for key in want:
                _assert_close(got[key], want[key], rel=1e-6, cosine=0.999999, what=name)


@pytest.mark.gpu
def test_pipeline_detections_equal_onnxruntime_on_cuda_fp32(package, ort_pipeline, frames):
    torch_pipeline = Pipeline(package, backend="torch-cuda", threads=2)
    for frame in frames:
        _assert_same_detections(torch_pipeline.run(frame), ort_pipeline.run(frame))


@pytest.mark.gpu
def test_fp16_channels_last_graphs_pass_the_fp16_tolerance(package, ort_pipeline, frames,
                                                          module_io):
    tol = Tolerances.for_precision("fp16")
    runners = _torch_runners(package, device="cuda", precision="fp16", channels_last=True,
                             cuda_graph=True)
    for name in ("camera.backbone", "camera.vtransform", "fuser"):
        feeds, expected = module_io[name]
        got = runners[name].run(feeds)
        for key, value in expected.items():
            _assert_close(got[key], value, rel=tol.rel_max_abs, cosine=tol.cosine_min,
                          what=f"{name}.{key}")
    fp16_pipeline = Pipeline(package, backend="torch-cuda", threads=2,
                             runner_options=runners["fuser"].options)
    for frame in frames:
        metrics, _ = match_boxes(ort_pipeline.run(frame), fp16_pipeline.run(frame), tol)
        assert metrics.judged_reference >= MIN_BOXES
        assert not box_failures(metrics, tol)


@pytest.mark.slow
@pytest.mark.parametrize("preset_name", ["nuscenes-resnet50", "nuscenes-swint"])
def test_full_size_presets_convert_and_equal_onnxruntime(preset_name, tmp_path):
    """Every op the full-size exports emit (SwinT adds Split, Erf, 2-D Gather, Pad) converts,
    and each module equals ONNX Runtime on seeded normal inputs (random weights)."""
    import onnxruntime as ort

    from bevdeploy.export.writer import export_package
    from bevdeploy.presets import get_preset

    torch.manual_seed(0)
    pkg = load_package(export_package(get_preset(preset_name), None, tmp_path / "pkg"))
    rng = np.random.default_rng(0)
    for name in DENSE_MODULES:
        runner = create_runner("torch-cuda", pkg.path(name), pkg.module(name),
                               GpuOptions(device="cpu"))
        feeds = {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in runner.inputs}
        session = ort.InferenceSession(str(pkg.path(name)), providers=["CPUExecutionProvider"])
        expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        got = runner.run(feeds)
        for key, value in expected.items():
            _assert_close(got[key], value, rel=FP32_REL_MAX_ABS, cosine=FP32_COSINE,
                          what=f"{preset_name} {name}.{key}")
