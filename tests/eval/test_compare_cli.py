"""`bevdeploy compare` exit codes with the shipped tiny weights: 0 for a faithful package, 1 when
one weight of the package was changed (a copy, re-hashed so that it loads)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from support import copy_with_fuser_weight

from bevdeploy.cli import app
from bevdeploy.presets import get_preset

TINY = get_preset("tiny")


@pytest.mark.skipif(not TINY.checkpoint_path.is_file(), reason="no shipped tiny weights")
def test_compare_exit_codes(synthetic_world: Path, tmp_path: Path) -> None:
    from bevdeploy.export.writer import export_package

    package = export_package(TINY, TINY.checkpoint_path, tmp_path / "package")
    args = ["compare", "--data", str(synthetic_world), "--checkpoint", str(TINY.checkpoint_path),
            "--frames", "1"]
    runner = CliRunner()
    good = runner.invoke(app, [*args, "--package", str(package)])
    assert good.exit_code == 0, good.output
    assert "PASSED" in good.output
    bad = runner.invoke(app, [*args, "--package", str(copy_with_fuser_weight(package, tmp_path / "bad", None))])
    assert bad.exit_code == 1, bad.output
    assert "fuser" in bad.output


@pytest.mark.skipif(not TINY.checkpoint_path.is_file(), reason="no shipped tiny weights")
def test_compare_without_checkpoint_finds_the_presets_weights_by_hash(synthetic_world: Path,
                                                                      tmp_path: Path) -> None:
    """The package was exported from the preset's own file (nothing of that name lies beside
    it): compare finds it by its SHA-256 and says which file it loaded."""
    from bevdeploy.export.writer import export_package

    package = export_package(TINY, TINY.checkpoint_path, tmp_path / "package")
    result = CliRunner().invoke(app, ["compare", "--data", str(synthetic_world), "--package",
                                      str(package), "--frames", "1"])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output and TINY.checkpoint_path.name in result.output


@pytest.mark.parametrize("extra, says", [
    (["--backend", "onnxruntime", "--gpu-config", "fp16"], "apply to the backends"),
    (["--backend", "torch-cuda", "--gpu-config", "bf16"], "no bf16 limits"),
    (["--backend", "tensorrt", "--gpu-config", "fp16"], "drop ['fp16']"),
])
def test_compare_refuses_gpu_settings_that_cannot_apply(tmp_path: Path, extra, says) -> None:
    """Checked before the package or the data is read (neither exists here)."""
    result = CliRunner().invoke(app, ["compare", "--package", str(tmp_path / "none"),
                                      "--data", str(tmp_path / "none"), *extra])
    assert result.exit_code == 2, result.output
    assert says in " ".join(result.output.split())
