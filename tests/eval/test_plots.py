"""``eval`` writes the devkit's PR / TP-error figures and a per-class AP chart (eval/plots.py):
one set per present class, readable PNGs, the chart's title carrying the run's numbers."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from bevdeploy.cli import app


def test_eval_writes_the_devkit_figures_and_the_class_chart(trained_tiny_package: Path,
                                                            synthetic_world: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--package", str(trained_tiny_package), "--data",
                                      str(synthetic_world), "--limit", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    present = metrics["present_classes"]
    assert present and f"plots in {out / 'plots'}" in result.output.replace("\n", "")
    expected = {"summary.png", "class_ap.png", *(f"{c}_{k}.png" for c in present
                                                 for k in ("pr", "tp"))}
    assert {p.name for p in (out / "plots").iterdir()} == expected
    for name in expected:
        with Image.open(out / "plots" / name) as img:
            img.verify()
    with Image.open(out / "plots" / "class_ap.png") as img:  # 10 bars: one per class
        assert img.size[1] > 300
