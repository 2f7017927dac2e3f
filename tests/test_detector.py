"""``bevdeploy.detector``: one factory for a package on a backend and for the PyTorch reference,
its options checked before anything loads."""

from __future__ import annotations

import numpy as np
import pytest

from bevdeploy import detector
from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.errors import ConfigError
from bevdeploy.model.factory import create_model
from bevdeploy.presets import get_preset
from bevdeploy.runtime import Pipeline
from bevdeploy.vocabulary import RANDOM_INIT_SEED


@pytest.fixture(scope="module")
def frame(synthetic_world):
    return NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val",
                          preset="tiny")[0]


def test_a_package_directory_opens_the_runtime_and_detects_as_the_pipeline(
        trained_tiny_package, frame):
    with detector.open(trained_tiny_package, threads=1) as deployed:
        assert isinstance(deployed, detector.PackageDetector)
        assert deployed.backend == "onnxruntime" and deployed.preset.name == "tiny"
        found = deployed(frame)
        assert set(deployed.last_timings) >= {"total", "fuser", "head.bbox", "scn"}
    expected = Pipeline(trained_tiny_package, threads=1).run(frame)
    assert len(found) == len(expected) > 0
    np.testing.assert_array_equal(found.boxes, expected.boxes)
    np.testing.assert_array_equal(found.scores, expected.scores)
    np.testing.assert_array_equal(found.labels, expected.labels)


def test_a_preset_opens_the_reference_with_the_one_weight_policy(frame):
    preset = get_preset("tiny")
    reference = detector.open("tiny", threads=1)
    assert isinstance(reference, detector.ReferenceDetector) and reference.backend == "torch"
    assert reference.weights.checkpoint == preset.checkpoint_path  # the preset's own file
    assert reference.weights.report is not None and reference.weights.report.ok
    model, _ = create_model(preset, preset.checkpoint_path)
    found, expected = reference(frame), model.predict(frame)
    assert len(found) > 0 and reference.last_timings["total"] > 0
    np.testing.assert_array_equal(found.boxes, expected.boxes)

    random = detector.open(preset, checkpoint=None, seed=RANDOM_INIT_SEED, threads=1)
    assert random.weights.checkpoint == preset.checkpoint_path  # still the preset's default


def test_a_preset_without_weights_is_random_only_where_allowed():
    with pytest.raises(ConfigError) as err:
        detector.open("nuscenes-resnet50", random_ok=False)
    assert err.value.field == "--checkpoint" and "no default checkpoint" in str(err.value)


def test_a_package_takes_no_checkpoint(trained_tiny_package):
    with pytest.raises(ConfigError) as err:
        detector.open(trained_tiny_package, checkpoint=get_preset("tiny").checkpoint_path)
    assert err.value.field == "--checkpoint"


@pytest.mark.parametrize("kwargs, field, says", [
    ({"package": True, "schedule": "frames"}, "--schedule", "overlaps consecutive frames"),
    ({"package": True, "schedule": "fastest"}, "--schedule", "is not a schedule"),
    ({"package": False, "schedule": "branches"}, "--schedule", "eager reference"),
    ({"package": True, "backend": "torch"}, "--backend", "drop it to use the torch backend"),
    ({"package": False, "backend": "onnxruntime"}, "--backend", "give --package"),
    ({"package": True, "gpu_config": "fp16"}, None, "not 'onnxruntime'"),
    ({"package": True, "backend": "tensorflow"}, "--backend", "unknown backend"),
    ({"package": False, "backend": "auto"}, "--backend", "give --package"),
    ({"package": True, "inference_precision": "fp8"}, "--inference-precision", "unknown"),
    ({"package": True, "inference_precision": "bf16"}, "--inference-precision", "has none"),
    ({"package": True, "backend": "torch-cuda", "inference_precision": "bf16"},
     "--inference-precision", "--gpu-config"),
])
def test_options_are_refused_before_anything_loads(kwargs, field, says):
    with pytest.raises(ConfigError) as err:
        detector.check_options(**kwargs)
    assert says in str(err.value)
    if field is not None:
        assert err.value.field == field


def test_options_default_to_the_runtime_for_a_package_and_the_reference_without():
    assert detector.check_options(package=True).backend == "onnxruntime"
    assert detector.check_options(package=False).backend == "torch"
    options = detector.check_options(package=True, backend="torch-cuda",
                                     gpu_config="fp16+graph")
    assert options.gpu_config is not None and options.gpu_config.precision == "fp16"


def test_openvino_and_auto_open_a_package_on_a_cpu_backend(trained_tiny_package, frame):
    """``openvino`` detects what ONNX Runtime does (FP32: the same boxes to float rounding);
    ``auto`` resolves to one of the two with its reason (an FP32 package: ONNX Runtime)."""
    pytest.importorskip("openvino")
    expected = Pipeline(trained_tiny_package, threads=1).run(frame)
    with detector.open(trained_tiny_package, backend="openvino", threads=1) as deployed:
        assert deployed.backend == "openvino" and deployed.options.choice is None
        found = deployed(frame)
    assert len(found) == len(expected) > 0
    np.testing.assert_array_equal(found.labels, expected.labels)
    np.testing.assert_allclose(found.boxes, expected.boxes, atol=1e-3, rtol=1e-4)
    with detector.open(trained_tiny_package, backend="auto", threads=1) as chosen:
        assert chosen.backend == "onnxruntime" == chosen.pipeline.backend
        assert chosen.options.record() == {"name": "onnxruntime", "inference_precision": "fp32",
                                           "auto_choice": chosen.options.choice}
        assert "FP32" in chosen.options.line() and chosen.options.line().startswith(
            "backend auto → onnxruntime")
