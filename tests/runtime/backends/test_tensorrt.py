"""The ``tensorrt`` backend and ``bevdeploy build``.

Without TensorRT (this CI) the tests exercise the logic that decides whether an engine may run:
engine records round-trip through a real manifest, an engine built by another TensorRT version
or for another GPU is refused naming both sides, a modified engine file is refused by its hash,
and the per-module builder flags follow the precision rule of ``engines.builder``. The cases
marked ``tensorrt`` and ``gpu`` build real engines of the tiny package and hold the backend's
detections to ONNX Runtime's at the FP16 tolerance of ``bevdeploy compare``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bevdeploy.engines import build_engines, plan_flags
from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.errors import ConfigError, PackageError
from bevdeploy.eval.compare import Tolerances, box_failures, match_boxes
from bevdeploy.package import MANIFEST_NAME, EngineEntry, load_package
from bevdeploy.runtime import Pipeline
from bevdeploy.runtime.backends.tensorrt import check_engine, read_engine

BUILT_ON = {"tensorrt": "10.3.0", "gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}
ENGINE_BYTES = b"serialized engine bytes standing in for a plan file" * 20


@pytest.fixture()
def package_with_engine(trained_tiny_package, tmp_path) -> Path:
    """A copy of the tiny package whose fuser has an engine file and a record of it."""
    root = shutil.copytree(trained_tiny_package, tmp_path / "pkg")
    (root / "fuser.plan").write_bytes(ENGINE_BYTES)
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    manifest["modules"]["fuser"]["engine"] = {
        "file": "fuser.plan", "sha256": hashlib.sha256(ENGINE_BYTES).hexdigest(),
        "size": len(ENGINE_BYTES), "precision": "fp16", "flags": ["FP16"],
        "workspace_bytes": 1 << 30, **BUILT_ON}
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return root


def test_engine_record_round_trips_through_the_manifest(package_with_engine):
    pkg = load_package(package_with_engine)
    engine = pkg.module("fuser").engine
    assert engine == EngineEntry(file="fuser.plan",
                                 sha256=hashlib.sha256(ENGINE_BYTES).hexdigest(),
                                 size=len(ENGINE_BYTES), precision="fp16", flags=("FP16",),
                                 workspace_bytes=1 << 30, **BUILT_ON)
    assert pkg.module("camera.backbone").engine is None
    assert pkg.manifest.to_dict()["modules"]["fuser"]["engine"]["gpu"] == BUILT_ON["gpu"]
    assert "engine" not in pkg.manifest.to_dict()["modules"]["head.bbox"]


def test_engine_of_the_same_version_and_gpu_is_accepted(package_with_engine):
    entry = load_package(package_with_engine).module("fuser")
    assert check_engine(entry, tensorrt_version="10.3.0", gpu=BUILT_ON["gpu"],
                        compute_capability="8.0", source="m.json") is entry.engine
    assert read_engine(package_with_engine, entry, entry.engine) == ENGINE_BYTES


def test_engine_of_another_tensorrt_version_is_refused_naming_both(package_with_engine):
    entry = load_package(package_with_engine).module("fuser")
    with pytest.raises(PackageError, match=r"built with TensorRT 10\.3\.0 but this machine has "
                                           r"TensorRT 10\.8\.0") as err:
        check_engine(entry, tensorrt_version="10.8.0", gpu=BUILT_ON["gpu"],
                     compute_capability="8.0", source="m.json")
    assert err.value.field == "modules.fuser.engine.tensorrt"


def test_engine_for_another_gpu_is_refused_naming_both(package_with_engine):
    entry = load_package(package_with_engine).module("fuser")
    with pytest.raises(PackageError, match=r"built for NVIDIA A100-SXM4-80GB \(compute "
                                           r"capability 8\.0\) but this machine has NVIDIA "
                                           r"H100 80GB HBM3 \(compute capability 9\.0\)") as err:
        check_engine(entry, tensorrt_version="10.3.0", gpu="NVIDIA H100 80GB HBM3",
                     compute_capability="9.0", source="m.json")
    assert err.value.field == "modules.fuser.engine.gpu"


def test_module_without_engine_is_refused_with_the_build_command(package_with_engine):
    entry = load_package(package_with_engine).module("head.bbox")
    with pytest.raises(PackageError, match="no TensorRT engine.*bevdeploy build"):
        check_engine(entry, tensorrt_version="10.3.0", gpu=BUILT_ON["gpu"],
                     compute_capability="8.0", source="m.json")


def test_modified_engine_file_is_refused(package_with_engine):
    entry = load_package(package_with_engine).module("fuser")
    (package_with_engine / "fuser.plan").write_bytes(ENGINE_BYTES[:-1] + b"X")
    with pytest.raises(PackageError, match="modified or corrupted") as err:
        read_engine(package_with_engine, entry, entry.engine)
    assert err.value.field == "modules.fuser.engine.sha256"


def test_malformed_engine_record_is_refused(package_with_engine):
    manifest = json.loads((package_with_engine / MANIFEST_NAME).read_text())
    manifest["modules"]["fuser"]["engine"]["flags"] = "FP16"
    (package_with_engine / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(PackageError) as err:
        load_package(package_with_engine)
    assert err.value.field == "modules.fuser.engine.flags"


def test_builder_flags_follow_the_precision_rule():
    # TensorRT 10 (weakly typed): FP16 anywhere; INT8 only where the graph is QDQ.
    assert plan_flags("fp16", "fp32", weak_typing=True, module="fuser") == ("FP16",)
    assert plan_flags("int8", "int8", weak_typing=True, module="fuser") == ("INT8", "FP16")
    assert plan_flags("int8", "fp32", weak_typing=True, module="head.bbox") == ("FP16",)
    # TensorRT 11 (strongly typed): the graph decides; FP16 needs an FP16 graph.
    assert plan_flags("fp16", "fp16", weak_typing=False, module="fuser") == ("STRONGLY_TYPED",)
    assert plan_flags("int8", "fp32", weak_typing=False, module="head.bbox") == \
        ("STRONGLY_TYPED",)
    with pytest.raises(ConfigError, match="module 'fuser' is fp32.*optimize --fp16"):
        plan_flags("fp16", "fp32", weak_typing=False, module="fuser")
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        plan_flags("fp8", "fp32", weak_typing=True, module="fuser")


def test_int8_build_of_a_float_package_is_refused_before_any_build(trained_tiny_package):
    with pytest.raises(ConfigError, match="INT8 \\(QDQ\\) graphs.*optimize --int8"):
        build_engines(trained_tiny_package, precision="int8")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                    reason="tensorrt is installed here")
def test_backend_without_tensorrt_is_a_config_error(trained_tiny_package):
    with pytest.raises(ConfigError, match="needs the tensorrt Python package"):
        Pipeline(trained_tiny_package, backend="tensorrt")


# ---------------------------------------------------------------------------------- TensorRT


@pytest.fixture(scope="module")
def fp16_engines(trained_tiny_package, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trt") / "pkg-fp16"
    cache = out.parent / "timing.cache"
    build_engines(trained_tiny_package, precision="fp16", workspace_gb=2.0, timing_cache=cache,
                  out=out)
    assert cache.stat().st_size > 0
    return out


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_built_engines_are_recorded_and_detect_like_onnxruntime(fp16_engines,
                                                                trained_tiny_package,
                                                                synthetic_world):
    import tensorrt

    pkg = load_package(fp16_engines)
    for name in ("camera.backbone", "camera.vtransform", "fuser", "head.bbox"):
        engine = pkg.module(name).engine
        assert engine is not None and engine.tensorrt == tensorrt.__version__
        assert (fp16_engines / engine.file).stat().st_size == engine.size
    assert pkg.module("lidar.backbone").engine is None  # the SCN stays on the executor
    assert load_package(trained_tiny_package).module("fuser").engine is None  # source intact
    tol = Tolerances.for_precision("fp16")
    loader = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val", preset="tiny")
    reference = Pipeline(trained_tiny_package, threads=2)
    deployed = Pipeline(fp16_engines, backend="tensorrt", threads=2)
    for i in range(2):
        metrics, _ = match_boxes(reference.run(loader[i]), deployed.run(loader[i]), tol)
        assert metrics.judged_reference >= 10 and not box_failures(metrics, tol)


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_cuda_graph_runner_equals_plain_runner(fp16_engines):
    from bevdeploy.runtime.backends import GpuOptions, create_runner

    pkg = load_package(fp16_engines)
    spec = pkg.module("fuser").inputs
    rng = np.random.default_rng(0)
    feeds = {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in spec}
    plain = create_runner("tensorrt", pkg.path("fuser"), pkg.module("fuser"), GpuOptions())
    graphed = create_runner("tensorrt", pkg.path("fuser"), pkg.module("fuser"),
                            GpuOptions(cuda_graph=True))
    np.testing.assert_allclose(graphed.run(feeds)["middle"], plain.run(feeds)["middle"],
                               rtol=0, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_real_engine_with_a_foreign_record_is_refused(fp16_engines, tmp_path):
    root = shutil.copytree(fp16_engines, tmp_path / "pkg")
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    manifest["modules"]["fuser"]["engine"]["tensorrt"] = "9.0.0"
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="built with TensorRT 9.0.0 but this machine has"):
        Pipeline(root, backend="tensorrt")

