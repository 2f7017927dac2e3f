"""`bevdeploy compare` exit codes with the shipped tiny weights: 0 for a faithful package, 1 when
one weight of the package was changed (a copy, re-hashed so that it loads)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from bevdeploy.cli import app
from bevdeploy.package import MANIFEST_NAME, sha256_file
from bevdeploy.presets import get_preset

TINY = get_preset("tiny")


def _perturb_fuser(package: Path, out: Path) -> Path:
    shutil.copytree(package, out)
    path = out / "fuser.onnx"
    model = onnx.load(str(path))
    inits = {init.name: init for init in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = numpy_helper.to_array(inits[conv.input[1]]).copy()
    weight.flat[0] = 10.0 * np.abs(weight).max()
    inits[conv.input[1]].CopyFrom(numpy_helper.from_array(weight, conv.input[1]))
    onnx.save(model, str(path))
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["modules"]["fuser"].update(sha256=sha256_file(path), size=path.stat().st_size)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return out


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
    bad = runner.invoke(app, [*args, "--package", str(_perturb_fuser(package, tmp_path / "bad"))])
    assert bad.exit_code == 1, bad.output
    assert "fuser" in bad.output
