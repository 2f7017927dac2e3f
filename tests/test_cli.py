"""The CLI's error policy, the torch-free import rule and the small commands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from bevdeploy.cli import app

runner = CliRunner()


def test_unknown_preset_exits_with_the_config_error_code_and_one_line():
    result = runner.invoke(app, ["presets", "show", "no-such-preset"])
    assert result.exit_code == 2
    assert "unknown preset" in result.output
    assert "Traceback" not in result.output


def test_presets_show_prints_loadable_yaml(tmp_path):
    result = runner.invoke(app, ["presets", "show", "tiny"])
    assert result.exit_code == 0
    path = tmp_path / "p.yaml"
    path.write_text(result.stdout)
    result = runner.invoke(app, ["presets", "show", str(path)])
    assert result.exit_code == 0 and "name: tiny" in result.stdout


def test_doctor_reports_versions():
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0
    for name in ("numpy", "onnxruntime", "nuscenes-devkit", "cuda", "tensorrt"):
        assert name in result.stdout


def test_runtime_side_does_not_import_torch():
    code = ("import sys, bevdeploy.cli, bevdeploy.data, bevdeploy.presets, bevdeploy.data.preprocess;"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_gpu_config_is_refused_where_it_cannot_apply(tmp_path):
    """Checked before the package, the dataset or a model is loaded (none exists here)."""
    missing = str(tmp_path / "missing")
    cases = [
        (["infer", "--out", str(tmp_path / "o1"), "--package", missing, "--data", missing,
          "--backend", "onnxruntime", "--gpu-config", "fp16"], "not 'onnxruntime'"),
        (["eval", "--out", str(tmp_path / "o2"), "--data", missing, "--gpu-config", "graph"],
         "not 'torch'"),
        (["infer", "--out", str(tmp_path / "o3"), "--package", missing, "--data", missing,
          "--backend", "tensorrt", "--gpu-config", "fp16+graph"], "drop ['fp16']"),
        (["eval", "--out", str(tmp_path / "o4"), "--package", missing, "--data", missing,
          "--backend", "torch-cuda", "--gpu-config", "fp16+bf16"], "the precisions"),
    ]
    for args, says in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "[--gpu-config]" in result.output and says in result.output
        assert "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is usable here")
def test_infer_on_a_gpu_backend_without_cuda_says_why(trained_tiny_package, synthetic_world,
                                                      tmp_path):
    result = runner.invoke(app, ["infer", "--out", str(tmp_path / "out"), "--package",
                                 str(trained_tiny_package), "--data", str(synthetic_world),
                                 "--backend", "torch-cuda", "--gpu-config", "fp16+streams"])
    assert result.exit_code == 2, result.output
    assert "needs CUDA: " in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "detections.json").exists()


def test_schedule_is_checked_before_anything_loads(tmp_path):
    missing = str(tmp_path / "missing")
    cases = [
        (["infer", "--out", str(tmp_path / "o1"), "--package", missing, "--data", missing,
          "--schedule", "frames"], "overlaps consecutive frames"),
        (["eval", "--out", str(tmp_path / "o2"), "--data", missing, "--schedule", "branches"],
         "eager reference"),
        (["eval", "--out", str(tmp_path / "o3"), "--package", missing, "--data", missing,
          "--backend", "torch-cuda", "--schedule", "branches"], "CUDA schedule"),
        (["infer", "--out", str(tmp_path / "o4"), "--package", missing, "--data", missing,
          "--schedule", "parallel"], "is not a schedule"),
    ]
    for args, says in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "[--schedule]" in result.output and says in result.output


def test_infer_under_branches_writes_the_same_detections_as_sequential(trained_tiny_package,
                                                                      synthetic_world, tmp_path):
    outputs = {}
    for schedule in ("sequential", "branches"):
        out = tmp_path / schedule
        result = runner.invoke(app, ["infer", "--out", str(out), "--package",
                                     str(trained_tiny_package), "--data", str(synthetic_world),
                                     "--limit", "2", "--schedule", schedule, "--keep-all"])
        assert result.exit_code == 0, result.output
        outputs[schedule] = json.loads((out / "detections.json").read_text())
    frames = outputs["sequential"]["frames"]
    assert len(frames) == 2 and sum(len(f["boxes"]) for f in frames.values()) > 10
    assert outputs["branches"]["frames"] == frames

