"""The CLI's error policy, the torch-free import rule and the small commands."""

from __future__ import annotations

import subprocess
import sys

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
