"""The deploy ``Pipeline`` end to end: against the PyTorch reference, its geometry cache, its
frame checks, its timings, ``bevdeploy infer --package`` and the torch-free import rule.

**The weights.** The package is exported from a model whose state the test also runs. A seeded
random initialisation alone is numerically degenerate: BatchNorm's initial statistics (mean 0,
variance 1) shrink the activations layer after layer to ~1e-6 by the head, the heatmap is flat
to float precision, and which 100 cells become proposals is decided by rounding noise — and,
through the decoder's self-attention among proposals, so is every box. So the test re-estimates
every BatchNorm's statistics on one frame (a training-mode forward with cumulative averaging),
which keeps activations at unit scale: the heatmap is well spread, every one of the 100 boxes
scores 0.2–0.8 (all are compared, threshold 0.05), and the heatmap has a clear gap at the
top-k boundary, which the test asserts as a precondition so that a failure can only mean the
runtime differs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from support import calibrate_batchnorm

from bevdeploy.cli import app
from bevdeploy.data.calib_yaml import write_calibration
from bevdeploy.data.frame import Detections, Frame
from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.errors import ConfigError, InputError
from bevdeploy.export.writer import export_package
from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.model.checkpoint import save_checkpoint
from bevdeploy.model.inputs import collate
from bevdeploy.presets import get_preset
from bevdeploy.runtime import Pipeline
from bevdeploy.runtime.stages import DecodeStage

torch.set_num_threads(2)

SCORE_MIN = 0.05  # every box above it is compared
CENTRE_TOL_M = 0.01
SCORE_TOL = 1e-3
TOPK_GAP_MIN = 1e-4  # heatmap gap at the proposal boundary (precondition, see the docstring)
STAGES = {"points", "voxelize", "scn", "normalize", "depth", "camera.backbone", "geometry",
          "bevpool", "camera.vtransform", "fuser", "head.bbox", "decode", "total"}
FORBIDDEN = ("torch", "spconv", "bevdeploy.model", "bevdeploy.export")  # and their submodules


@pytest.fixture(scope="module")
def frames(synthetic_world):
    loader = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val", preset="tiny")
    return [loader[0], loader[1]]


@pytest.fixture(scope="module")
def reference(frames, tmp_path_factory):
    """(model, package path): the package is exported from exactly this model's state."""
    preset = get_preset("tiny")
    torch.manual_seed(0)
    model = BEVFusion(preset)
    calibrate_batchnorm(model, frames[0])
    root = tmp_path_factory.mktemp("pipeline")
    checkpoint = save_checkpoint(model, root / "calibrated.pth")
    return model, export_package(preset, checkpoint, root / "package")


@pytest.fixture(scope="module")
def pipeline(reference):
    return Pipeline(reference[1])


def _topk_gap(model: BEVFusion, frame: Frame) -> float:
    """Gap between the last proposal's heatmap score and the best cell left out."""
    head = model.heads["object"]
    with torch.no_grad():
        dense = model(collate([frame], model.preset))["dense_heatmap"]
        scores = head.local_max(dense.sigmoid()).flatten().sort(descending=True).values
    k = head.num_proposals
    return float(scores[k - 1] - scores[k])


def _assert_same_boxes(got: Detections, expected: Detections) -> None:
    """Every box above SCORE_MIN on either side has a partner of the same class on the other
    side with its centre within CENTRE_TOL_M and its score within SCORE_TOL."""
    for a, b in ((expected, got), (got, expected)):
        for box, score, label in zip(a.boxes, a.scores, a.labels):
            if score < SCORE_MIN:
                continue
            same = np.flatnonzero(b.labels == label)
            assert same.size, f"no {a.class_names[label]} box on the other side"
            dist = np.linalg.norm(b.boxes[same, :3] - box[:3], axis=1)
            j = same[np.argmin(dist)]
            assert dist.min() < CENTRE_TOL_M, f"{a.class_names[label]} at {box[:3]}: {dist.min()}"
            assert abs(b.scores[j] - score) < SCORE_TOL
            np.testing.assert_allclose(b.boxes[j, 3:6], box[3:6], rtol=1e-3)  # l, w, h


def test_pipeline_matches_the_pytorch_reference(reference, pipeline, frames):
    model, _ = reference
    for frame in frames:
        assert _topk_gap(model, frame) > TOPK_GAP_MIN  # precondition: proposals are well defined
        expected = model.predict(frame)
        got = pipeline.run(frame)
        assert (expected.scores > SCORE_MIN).sum() >= 50  # the comparison is about real boxes
        _assert_same_boxes(got, expected)


def test_geometry_is_computed_once_per_calibration(reference, frames):
    pipeline = Pipeline(reference[1], threads=1)
    a, b = frames
    # Precondition: one rig, one calibration. The two frames' float64 matrices differ by 1e-14
    # (pose arithmetic); the kernels consume float32, where they are equal: no recomputation.
    for name in ("camera2lidar", "intrinsics"):
        np.testing.assert_array_equal(getattr(a.calib, name).astype(np.float32),
                                      getattr(b.calib, name).astype(np.float32))
    pipeline.run(a)
    pipeline.run(b)
    assert pipeline.geometry.computations == 1
    c2l = b.calib.camera2lidar.copy()
    c2l[2, :3, 3] += (0.3, -0.2, 0.0)
    pipeline.run(replace(b, calib=replace(b.calib, camera2lidar=c2l)))
    assert pipeline.geometry.computations == 2


def test_timings_cover_every_stage(pipeline, frames):
    pipeline.run(frames[0])
    t = pipeline.last_timings
    assert set(t) == STAGES
    parts = sum(v for k, v in t.items() if k != "total")
    assert all(v >= 0 for v in t.values()) and 0.5 * t["total"] < parts <= t["total"] + 1e-6


def _cameras(frame: Frame, order: list[int]) -> Frame:
    calib = replace(frame.calib, camera_names=tuple(frame.calib.camera_names[i] for i in order),
                    intrinsics=frame.calib.intrinsics[order],
                    camera2lidar=frame.calib.camera2lidar[order])
    return replace(frame, images=frame.images[order], calib=calib)


@pytest.mark.parametrize("change, field", [
    (lambda f: _cameras(f, [1, 0, 2, 3, 4, 5]), "calib.camera_names"),
    (lambda f: _cameras(f, [0, 1, 2, 3, 4]), "calib.camera_names"),
    (lambda f: replace(f, images=np.ascontiguousarray(f.images[:, :800])), "images"),
    (lambda f: replace(f, points=f.points[:, :4]), "points"),
    (lambda f: replace(f, points=np.where(np.arange(5) == 0, np.nan, f.points)), "points"),
])
def test_frames_that_do_not_fit_the_package_are_refused_by_field(pipeline, frames, change, field):
    with pytest.raises(InputError) as err:
        pipeline.run(change(frames[0]))
    assert err.value.field == field
    assert err.value.path == frames[0].source


def test_empty_clouds_and_empty_results_are_normal(reference, frames):
    pipeline = Pipeline(reference[1])
    no_points = replace(frames[0], points=np.zeros((0, 5), np.float32))
    dets = pipeline.run(no_points)
    assert len(dets) > 0 and np.isfinite(dets.boxes).all()

    pipeline.decode = DecodeStage(replace(pipeline.decode.params, score_threshold=1.0))
    dets = pipeline.run(frames[0])
    assert len(dets) == 0 and dets.boxes.shape == (0, 9)
    assert dets.class_names == pipeline.class_names


def test_pipeline_refuses_bad_options(reference):
    with pytest.raises(ConfigError):
        Pipeline(reference[1], threads=0)
    with pytest.raises(ConfigError, match="unknown backend"):
        Pipeline(reference[1], backend="tensorrt-9")


# ------------------------------------------------------------------------------- torch-free


def _forbidden_modules_after(code: str) -> list[str]:
    script = code + (
        "\nimport sys, json\n"
        f"print(json.dumps(sorted(m for m in sys.modules "
        f"if any(m == f or m.startswith(f + '.') for f in {FORBIDDEN!r}))))\n")
    done = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_runtime_does_not_import_torch():
    assert _forbidden_modules_after(
        "import bevdeploy.runtime, bevdeploy.viz\n"
        "from bevdeploy.runtime import Pipeline\n"
        "import bevdeploy.runtime.stages, bevdeploy.runtime.backends.onnxruntime") == []


def test_infer_with_a_package_is_torch_free_and_writes_its_outputs(reference, pipeline, frames,
                                                                   synthetic_world, tmp_path):
    out = tmp_path / "out"
    args = ["infer", "--package", str(reference[1]), "--data", str(synthetic_world),
            "--split", "mini_val", "--limit", "1", "--out", str(out), "--render",
            "--threads", "1", "--keep-all"]
    assert _forbidden_modules_after(
        f"from bevdeploy.cli import app\napp({args!r}, standalone_mode=False)") == []

    token = frames[0].token
    written = json.loads((out / "detections.json").read_text())
    assert written["backend"] == "onnxruntime" and list(written["frames"]) == [token]
    boxes = written["frames"][token]["boxes"]
    expected = pipeline.run(frames[0])
    assert len(boxes) == len(expected)
    np.testing.assert_allclose([[b[k] for k in ("x", "y", "z")] for b in boxes],
                               expected.boxes[:, :3], atol=1e-4)
    submission = json.loads((out / "results_nusc.json").read_text())
    assert list(submission["results"]) == [token] and submission["meta"]["use_lidar"]
    for suffix in ("bev", "cameras"):
        with Image.open(out / "render" / f"{token}_{suffix}.png") as img:
            assert img.size[0] > 100


def _write_frame_files(frame: Frame, root: Path) -> list[str]:
    """The frame as the files a user would have: a .npy cloud, PNG images, a calibration YAML."""
    root.mkdir()
    np.save(root / "cloud.npy", frame.points)
    images = []
    for name, image in zip(frame.calib.camera_names, frame.images):
        Image.fromarray(image).save(root / f"{name}.png")
        images.append(str(root / f"{name}.png"))
    write_calibration(root / "calib.yaml", frame.calib)
    return images


def test_infer_single_frame_from_files_equals_the_in_memory_frame(reference, pipeline, frames,
                                                                  tmp_path):
    frame = frames[0]
    images = _write_frame_files(frame, tmp_path / "files")
    out = tmp_path / "out"
    base = ["infer", "--package", str(reference[1]), "--pcd", str(tmp_path / "files/cloud.npy"),
            "--calib", str(tmp_path / "files/calib.yaml"), "--out", str(out), "--keep-all"]
    result = CliRunner().invoke(app, [*base, "--images", *images])
    assert result.exit_code == 0, result.output
    boxes = json.loads((out / "detections.json").read_text())["frames"]["cloud"]["boxes"]
    expected = pipeline.run(frame)
    np.testing.assert_allclose([b["score"] for b in boxes], expected.scores, atol=1e-6)
    assert not (out / "results_nusc.json").exists()  # no sample token, no submission

    # a fresh --out each: the first run's output exists now (refused without --overwrite)
    retry = [*base[:-3], "--out", str(tmp_path / "out-retry"), "--keep-all"]
    result = CliRunner().invoke(app, [*retry, "--images", *images[:5]])
    assert result.exit_code == InputError.exit_code and "--images" in result.output
    result = CliRunner().invoke(app, ["infer", "--package", str(reference[1]), "--out",
                                      str(tmp_path / "out-none")])
    assert result.exit_code == ConfigError.exit_code and "--data" in result.output
