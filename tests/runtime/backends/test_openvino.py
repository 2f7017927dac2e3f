"""The OpenVINO backend held to ONNX Runtime's: every dense module of the trained tiny package on
the inputs a real frame gives it, the whole pipeline's detections, the INT8 package, BF16 where
the CPU has it; the manifest and file checks; and ``--backend auto``'s choice.

Tolerances (max-abs relative to the reference output's largest magnitude, and cosine):
FP32 vs FP32 ``1e-4`` / ``0.99999`` (two FP32 kernel libraries summing in different orders:
measured ≤ 3e-6 relative, cosine 1.0000000); INT8 vs INT8 ``0.05`` / ``0.995`` (the same QDQ
graph, but each runtime requantizes with its own rounding and fuses differently, so activations
a quantization step apart are expected: measured 1.8e-2 / 0.99917 on the backbone's features);
BF16 vs FP32 ``0.03`` / ``0.999`` on the dense feature maps (an 8-bit mantissa: measured
5.5e-3 / 0.999984) and, end to end, the same boxes found (the head's top-k proposals reorder
under BF16, so its raw outputs are not compared position by position: their cosine per
position measured 0.80–0.999).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bevdeploy import detector
from bevdeploy.cli import app
from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.errors import ConfigError, InputError, PackageError
from bevdeploy.package import load_package
from bevdeploy.runtime import Pipeline
from bevdeploy.runtime.backends import RunnerOptions, create_runner
from bevdeploy.runtime.backends import openvino as ovb
from bevdeploy.runtime.backends.auto import choose_backend, host_features
from bevdeploy.vocabulary import DENSE_MODULES

pytest.importorskip("openvino")

FP32_REL, FP32_COS = 1e-4, 0.99999
INT8_REL, INT8_COS = 0.05, 0.995
BF16_REL, BF16_COS = 0.03, 0.999
HAS_BF16 = ovb.bf16_unavailable_reason() is None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_close(found: dict[str, np.ndarray], expected: dict[str, np.ndarray], *, rel: float,
                 cos: float, what: str) -> None:
    assert list(found) == list(expected), what
    for name, want in expected.items():
        got = found[name]
        assert got.shape == want.shape and got.dtype == want.dtype, f"{what}.{name}"
        scale = float(np.abs(want).max())
        assert scale > 0, f"{what}.{name}: an all-zero reference proves nothing"
        err = float(np.abs(got - want).max())
        assert err <= rel * scale, f"{what}.{name}: max-abs {err:.3g} > {rel} × {scale:.3g}"
        assert cosine(got, want) >= cos, f"{what}.{name}: cosine {cosine(got, want):.7f}"


@pytest.fixture(scope="module")
def frames(synthetic_world):
    loader = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val",
                            preset="tiny")
    return [loader[0], loader[1]]


def module_feeds(package: Path, frame) -> dict[str, dict[str, np.ndarray]]:
    """The inputs each dense module gets when ONNX Runtime's pipeline runs ``frame``."""
    pipeline = Pipeline(package, threads=2)
    feeds: dict[str, dict[str, np.ndarray]] = {}
    for name, runner in pipeline.runners.items():
        def recording(given, name=name, run=runner.run):
            feeds[name] = {k: np.array(v, copy=True) for k, v in given.items()}
            return run(given)
        runner.run = recording  # type: ignore[method-assign]
    pipeline.run(frame)
    return feeds


@pytest.fixture(scope="module")
def feeds(trained_tiny_package, frames):
    return module_feeds(trained_tiny_package, frames[0])


@pytest.fixture(scope="module")
def int8_package(trained_tiny_package, synthetic_world, tmp_path_factory):
    from bevdeploy.optimize import CalibrationSource, Int8Options, OptimizeOptions, \
        optimize_package

    options = OptimizeOptions(simplify=True, int8=Int8Options(),
                              calib=CalibrationSource(synthetic_world, frames=3,
                                                      split="mini_train"))
    return optimize_package(trained_tiny_package, tmp_path_factory.mktemp("ov-int8") / "pkg",
                            options).root


def both(package: Path, name: str, feeds, options: RunnerOptions = RunnerOptions()):
    pkg = load_package(package)
    entry = pkg.module(name)
    ort = create_runner("onnxruntime", pkg.path(name), entry, RunnerOptions(threads=2))
    ov = create_runner("openvino", pkg.path(name), entry, options)
    return ov.run(feeds[name]), ort.run(feeds[name]), ov


# ------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("name", DENSE_MODULES)
def test_fp32_module_equals_onnx_runtime_on_real_inputs(trained_tiny_package, feeds, name):
    found, expected, runner = both(trained_tiny_package, name, feeds, RunnerOptions(threads=2))
    assert runner.last_time_s > 0
    assert_close(found, expected, rel=FP32_REL, cos=FP32_COS, what=name)


def test_fp32_is_compiled_in_f32_with_the_given_threads(trained_tiny_package):
    """The CPU plugin defaults to bf16 on a BF16 CPU: an FP32 package must say f32."""
    pkg = load_package(trained_tiny_package)
    entry = pkg.module("fuser")
    runner = create_runner("openvino", pkg.path("fuser"), entry, RunnerOptions(threads=1))
    assert str(runner.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>",
                                                                             "f32")
    assert runner.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert runner.compiled.get_property("NUM_STREAMS") == 1


def test_outputs_of_one_call_survive_the_next(trained_tiny_package, feeds):
    """Each call's outputs are its own arrays: the next stage keeps them while the runner is
    called again (the request's own output buffers would be overwritten)."""
    pkg = load_package(trained_tiny_package)
    runner = create_runner("openvino", pkg.path("camera.vtransform"),
                           pkg.module("camera.vtransform"), RunnerOptions(threads=2))
    x = feeds["camera.vtransform"]["feat_in"]
    first = runner.run({"feat_in": x})["feat_out"]
    kept = first.copy()
    second = runner.run({"feat_in": np.ascontiguousarray(x[..., ::-1])})["feat_out"]
    assert not np.shares_memory(first, second)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, kept)


def test_pipeline_detections_equal_onnx_runtime(trained_tiny_package, frames):
    with Pipeline(trained_tiny_package, backend="openvino", threads=2) as ov, \
            Pipeline(trained_tiny_package, backend="onnxruntime", threads=2) as ort:
        for frame in frames:
            found, expected = ov.run(frame), ort.run(frame)
            assert len(found) == len(expected) > 0
            np.testing.assert_array_equal(found.labels, expected.labels)
            np.testing.assert_allclose(found.scores, expected.scores, atol=1e-4)
            np.testing.assert_allclose(found.boxes, expected.boxes, atol=1e-3, rtol=1e-4)
            assert ov.last_timings["fuser"] > 0


@pytest.mark.parametrize("name", ["camera.backbone", "fuser", "head.bbox"])
def test_int8_module_equals_onnx_runtime_int8(int8_package, trained_tiny_package, frames, name):
    pkg = load_package(int8_package)
    assert pkg.module(name).precision == "int8"
    int8_feeds = module_feeds(int8_package, frames[0])
    found, expected, _ = both(int8_package, name, int8_feeds, RunnerOptions(threads=2))
    assert_close(found, expected, rel=INT8_REL, cos=INT8_COS, what=name)


@pytest.mark.skipif(not HAS_BF16, reason="OpenVINO reports no BF16 for this CPU")
@pytest.mark.parametrize("name", ["camera.backbone", "camera.vtransform", "fuser"])
def test_bf16_feature_maps_stay_close_to_fp32(trained_tiny_package, feeds, name):
    found, expected, runner = both(trained_tiny_package, name, feeds,
                                   RunnerOptions(threads=2, inference_precision="bf16"))
    assert runner.inference_precision == "bf16"
    assert_close(found, expected, rel=BF16_REL, cos=BF16_COS, what=name)


def assert_finds_the_same_boxes(found, expected, what: str) -> None:
    """Every box ``expected`` reports (score ≥ 0.3) has one of its class within 0.5 m in
    ``found``: proposals may reorder and scores move a little, the objects found may not."""
    confident = expected.scores >= 0.3
    assert confident.any(), f"{what}: no confident box to compare"
    for box, label in zip(expected.boxes[confident], expected.labels[confident]):
        same = found.labels == label
        distance = np.linalg.norm(found.boxes[same, :2] - box[:2], axis=1)
        assert same.any() and distance.min() < 0.5, f"{what}: no box near {box[:3]}"


@pytest.mark.skipif(not HAS_BF16, reason="OpenVINO reports no BF16 for this CPU")
def test_bf16_pipeline_finds_the_fp32_boxes(trained_tiny_package, frames):
    options = RunnerOptions(threads=2, inference_precision="bf16")
    with Pipeline(trained_tiny_package, backend="openvino", threads=2,
                  runner_options=options) as bf16, \
            Pipeline(trained_tiny_package, threads=2) as fp32:
        # the host SCN follows the inference precision (tiny's convs are too narrow to move)
        assert bf16.scn.executor.precision == "bf16" and fp32.scn.executor.precision == "fp32"
        for frame in frames:
            assert_finds_the_same_boxes(bf16.run(frame), fp32.run(frame), "bf16")


def test_int8_pipeline_finds_the_onnx_runtime_int8_boxes(int8_package, frames):
    with Pipeline(int8_package, backend="openvino", threads=2) as ov, \
            Pipeline(int8_package, threads=2) as ort:
        for frame in frames:
            assert_finds_the_same_boxes(ov.run(frame), ort.run(frame), "int8")


# ------------------------------------------------------------------------ refusals, options


def test_inputs_are_checked_against_the_manifest(trained_tiny_package):
    pkg = load_package(trained_tiny_package)
    path = pkg.path("camera.vtransform")
    runner = create_runner("openvino", path, pkg.module("camera.vtransform"), RunnerOptions())
    with pytest.raises(InputError) as err:
        runner.run({"feat_in": np.ones((1, 32, 64, 63), np.float32)})
    assert err.value.path == str(path) and err.value.field == "camera.vtransform.feat_in"


def test_a_graph_that_disagrees_with_its_manifest_is_refused(trained_tiny_package, tmp_path):
    pkg = load_package(trained_tiny_package)
    entry = pkg.module("camera.vtransform")
    path = pkg.path(entry.name)
    wrong = replace(entry, inputs=(replace(entry.inputs[0], shape=(1, 32, 32, 32)),))
    with pytest.raises(PackageError) as err:
        ovb.OpenVinoRunner.load(path, wrong, RunnerOptions())
    assert err.value.field == "modules.camera.vtransform.inputs" and err.value.path == str(path)
    retyped = replace(entry, inputs=(replace(entry.inputs[0], dtype="float16"),))
    with pytest.raises(PackageError, match="float16 in the manifest"):
        ovb.OpenVinoRunner.load(path, retyped, RunnerOptions())
    renamed = replace(entry, outputs=(replace(entry.outputs[0], name="out"),))
    with pytest.raises(PackageError) as err:
        ovb.OpenVinoRunner.load(path, renamed, RunnerOptions())
    assert err.value.field == "modules.camera.vtransform.outputs"


@pytest.mark.parametrize("damage", ["truncated", "not onnx", "missing"])
def test_a_damaged_file_is_a_package_error(trained_tiny_package, tmp_path, damage):
    pkg = load_package(trained_tiny_package)
    entry = pkg.module("fuser")
    path = tmp_path / "fuser.onnx"
    if damage == "truncated":
        path.write_bytes(pkg.path("fuser").read_bytes()[:4096])
    elif damage == "not onnx":
        path.write_text(json.dumps({"not": "a graph"}))
    with pytest.raises(PackageError, match="OpenVINO cannot load module 'fuser'") as err:
        ovb.OpenVinoRunner.load(path, entry, RunnerOptions())
    assert err.value.path == str(path) and err.value.field == "modules.fuser.file"


def test_bf16_is_refused_where_the_cpu_plugin_lacks_it(trained_tiny_package, monkeypatch):
    monkeypatch.setattr(ovb, "capabilities", lambda: ("FP32", "INT8"))
    pkg = load_package(trained_tiny_package)
    entry = pkg.module("fuser")
    with pytest.raises(ConfigError, match="no BF16") as err:
        create_runner("openvino", pkg.path("fuser"), entry,
                      RunnerOptions(inference_precision="bf16"))
    assert err.value.field == "--inference-precision"
    with pytest.raises(ConfigError, match="no BF16"):
        detector.check_options(package=True, backend="openvino", inference_precision="bf16")


def test_bf16_is_refused_off_openvino(trained_tiny_package):
    pkg = load_package(trained_tiny_package)
    with pytest.raises(ConfigError, match="openvino backend") as err:
        create_runner("onnxruntime", pkg.path("fuser"), pkg.module("fuser"),
                      RunnerOptions(inference_precision="bf16"))
    assert err.value.field == "--inference-precision"


def test_without_openvino_the_backend_says_how_to_install_it(trained_tiny_package, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` sees uninstalled
    with pytest.raises(ConfigError, match=r"pip install 'bevdeploy\[openvino\]'") as err:
        detector.check_options(package=True, backend="openvino")
    assert err.value.field == "--backend"
    pkg = load_package(trained_tiny_package)
    with pytest.raises(ConfigError, match=r"pip install 'bevdeploy\[openvino\]'"):
        create_runner("openvino", pkg.path("fuser"), pkg.module("fuser"), RunnerOptions())


# ---------------------------------------------------------------------------------- auto


@pytest.mark.parametrize("precisions, inference, features, openvino, picked, says", [
    (["fp32"], "fp32", {"avx512vnni", "amx-int8"}, (True, True), "onnxruntime", "FP32"),
    (["int8", "fp32"], "fp32", {"avx512vnni"}, (True, False), "openvino", "avx512vnni"),
    (["int8", "fp32"], "fp32", {"amx-int8"}, (True, False), "openvino", "amx-int8"),
    (["int8", "fp32"], "fp32", {"avx2", "avxvnni"}, (True, False), "onnxruntime", "without"),
    (["int8", "fp32"], "fp32", {"avx2", "fma"}, (True, False), "onnxruntime", "AVX-512 VNNI"),
    (["int8", "fp32"], "fp32", {"amx-int8"}, (False, False), "onnxruntime", "not installed"),
    (["fp32"], "bf16", {"avx2"}, (True, True), "openvino", "BF16"),
])
def test_auto_follows_the_measured_rule(precisions, inference, features, openvino, picked, says):
    choice = choose_backend(precisions, inference, features=features, openvino=lambda: openvino)
    assert choice.backend == picked and says in choice.reason


@pytest.mark.parametrize("openvino, says", [((True, False), "does not report"),
                                            ((False, False), "not installed")])
def test_auto_refuses_bf16_it_cannot_run(openvino, says):
    with pytest.raises(ConfigError, match=says) as err:
        choose_backend(["fp32"], "bf16", features={"avx512bf16"}, openvino=lambda: openvino)
    assert err.value.field == "--inference-precision"


def test_auto_on_this_cpu_is_recorded_by_infer(int8_package, synthetic_world, tmp_path):
    """The choice is printed and written into detections.json (header and run record)."""
    dots = host_features() & {"avx512vnni", "amx-int8"}
    expected = "openvino" if dots else "onnxruntime"
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["infer", "--package", str(int8_package), "--data",
                                      str(synthetic_world), "--out", str(out), "--limit", "1",
                                      "--backend", "auto", "--threads", "2"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"backend auto → {expected}" in result.output
    doc = json.loads((out / "detections.json").read_text())
    assert doc["backend"] == expected
    record = doc["run"]["backend"]
    assert record["name"] == expected and record["inference_precision"] == "fp32"
    assert record["auto_choice"] == choose_backend(["int8"]).reason


def test_compare_runs_on_openvino(trained_tiny_package, synthetic_world, tmp_path):
    """compare (the parity evidence users run) on the openvino backend passes its limits."""
    report = tmp_path / "compare.json"
    result = CliRunner().invoke(app, ["compare", "--package", str(trained_tiny_package),
                                      "--data", str(synthetic_world), "--frames", "1",
                                      "--backend", "openvino", "--threads", "2",
                                      "--json", str(report)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "backend openvino" in result.output
    assert json.loads(report.read_text())["backend"] == "openvino"


def test_both_cpu_runners_flush_subnormals(trained_tiny_package):
    """Equal numerics, and times that do not depend on which runtime loaded first (each sets
    the flush mode on the loading thread too)."""
    from bevdeploy.runtime.backends.onnxruntime import session_options

    assert session_options(RunnerOptions()).get_session_config_entry(
        "session.set_denormal_as_zero") == "1"
    pkg = load_package(trained_tiny_package)
    runner = create_runner("openvino", pkg.path("fuser"), pkg.module("fuser"), RunnerOptions())
    assert runner.compiled.get_property("CPU_DENORMALS_OPTIMIZATION") is True


def test_branches_schedule_runs_openvino_runners_on_two_threads(trained_tiny_package, frames):
    """The camera branch's runners on the worker thread, the fuser and head on the caller's:
    the same boxes as one thread."""
    with Pipeline(trained_tiny_package, backend="openvino", threads=2,
                  schedule="branches") as branches, \
            Pipeline(trained_tiny_package, backend="openvino", threads=2) as sequential:
        for frame in frames:
            found, expected = branches.run(frame), sequential.run(frame)
            assert len(found) == len(expected) > 0
            np.testing.assert_array_equal(found.labels, expected.labels)
            np.testing.assert_allclose(found.boxes, expected.boxes, atol=1e-5)


def test_doctor_shows_openvino_and_what_auto_picks_here():
    from bevdeploy.doctor import auto_check, openvino_check

    row = openvino_check()
    assert row.ok and ("BF16" in row.detail.split()) == HAS_BF16
    detail = auto_check().detail
    assert f"fp32 package → {choose_backend(['fp32']).backend}" in detail
    assert f"→ {choose_backend(['int8']).backend}" in detail.split(";")[1]
    assert ("bf16 → openvino" if HAS_BF16 else "bf16 → refused") in detail


def test_dynamic_graph_dimensions_follow_the_manifest(trained_tiny_package, feeds, tmp_path):
    """A graph whose batch dimension is symbolic: compiled static where the manifest fixes it,
    left dynamic (its output copied out of the request) where the manifest names it too."""
    import onnx

    pkg = load_package(trained_tiny_package)
    entry = pkg.module("camera.vtransform")
    model = onnx.load(pkg.path(entry.name))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    path = tmp_path / "vtransform.onnx"
    onnx.save(model, path)
    x = feeds["camera.vtransform"]["feat_in"]
    expected = create_runner("onnxruntime", pkg.path(entry.name), entry, RunnerOptions()).run(
        {"feat_in": x})
    fixed = ovb.OpenVinoRunner.load(path, entry, RunnerOptions())
    assert fixed.compiled.inputs[0].get_partial_shape().is_static
    assert_close(fixed.run({"feat_in": x}), expected, rel=FP32_REL, cos=FP32_COS, what="fixed")
    symbolic = replace(entry, inputs=(replace(entry.inputs[0], shape=("batch", *x.shape[1:])),),
                       outputs=(replace(entry.outputs[0],
                                        shape=("batch", *entry.outputs[0].shape[1:])),))
    dynamic = ovb.OpenVinoRunner.load(path, symbolic, RunnerOptions())
    assert not dynamic.compiled.inputs[0].get_partial_shape().is_static
    first = dynamic.run({"feat_in": x})
    assert_close(first, expected, rel=FP32_REL, cos=FP32_COS, what="dynamic")
    kept = first["feat_out"].copy()
    two = dynamic.run({"feat_in": np.concatenate([x, x[..., ::-1]])})["feat_out"]
    assert two.shape[0] == 2
    np.testing.assert_array_equal(first["feat_out"], kept)  # not overwritten by the next call


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_callers_thread_keeps_its_subnormals(trained_tiny_package, feeds, backend):
    """The runtimes flush subnormals on the thread that loads or runs a model; the runners give
    that thread its own floating-point mode back, so numpy keeps reading 1e-40 as 1e-40 after a
    load and a run (without ``callers_fp_env`` both give 0.0 here)."""
    def tiny_value() -> float:
        return float((np.array([1e-40], dtype=np.float32) * np.float32(1.0))[0])

    assert tiny_value() > 0.0
    pkg = load_package(trained_tiny_package)
    runner = create_runner(backend, pkg.path("fuser"), pkg.module("fuser"), RunnerOptions())
    assert tiny_value() > 0.0
    runner.run(feeds["fuser"])
    assert tiny_value() > 0.0
