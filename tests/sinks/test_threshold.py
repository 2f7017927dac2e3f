"""The boxes a run reports (sinks/threshold.py): detections.json, the console and the pictures
hold the same boxes, those at or above the threshold recorded in the JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from bevdeploy.cli import app
from bevdeploy.data.frame import Detections
from bevdeploy.presets import get_preset
from bevdeploy.sinks.threshold import report_threshold, select

runner = CliRunner()
CLASSES = ("car", "pedestrian")


def _infer(package: Path, world: Path, out: Path, *extra: str) -> tuple[dict, str]:
    result = runner.invoke(app, ["infer", "--out", str(out), "--package", str(package),
                                 "--data", str(world), "--limit", "2", *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "detections.json").read_text()), result.output


def test_select_keeps_scores_at_or_above_the_threshold() -> None:
    dets = Detections(np.arange(36, dtype=np.float32).reshape(4, 9),
                      np.array([0.1, 0.3, 0.9, 0.29999], np.float32), np.array([0, 1, 0, 1]),
                      CLASSES)
    kept = select(dets, 0.3)
    assert kept.scores.tolist() == [np.float32(0.3), np.float32(0.9)]  # the detector's order
    assert kept.boxes[:, 0].tolist() == [9.0, 18.0]  # rows travel with their scores
    assert kept.labels.tolist() == [1, 0]
    assert select(dets, None) is dets
    best = select(dets, 0.0, max_boxes=2)
    assert best.scores.tolist() == [np.float32(0.9), np.float32(0.3)]
    tiny = get_preset("tiny")
    assert report_threshold(tiny, None, False) == tiny.model.head.report_threshold
    assert report_threshold(tiny, 0.5, False) == 0.5 and report_threshold(tiny, 0.5, True) is None


def test_infer_json_console_and_pictures_report_the_same_boxes(trained_tiny_package,
                                                               synthetic_world, tmp_path):
    doc, output = _infer(trained_tiny_package, synthetic_world, tmp_path / "default", "--render")
    threshold = get_preset("tiny").model.head.report_threshold
    assert doc["score_threshold"] == threshold
    counts = {token: len(f["boxes"]) for token, f in doc["frames"].items()}
    scores = [b["score"] for f in doc["frames"].values() for b in f["boxes"]]
    assert len(counts) == 2 and scores and min(scores) >= threshold
    assert f"{sum(counts.values())} boxes (score ≥ {threshold:.2f}) over 2 frame(s)" in output
    for token, n in counts.items():
        for kind in ("bev", "cameras"):
            title = Image.open(tmp_path / "default" / "render" / f"{token}_{kind}.png").text
            assert re.match(rf"{token}: {n} boxes \(score ≥ {threshold:.2f}\), \d+ GT$",
                            title["Title"]), title

    raw, output = _infer(trained_tiny_package, synthetic_world, tmp_path / "raw", "--keep-all")
    proposals = get_preset("tiny").model.head.num_proposals
    assert raw["score_threshold"] is None
    assert all(len(f["boxes"]) == proposals for f in raw["frames"].values())
    assert min(b["score"] for f in raw["frames"].values() for b in f["boxes"]) < threshold
    assert f"{2 * proposals} boxes (every proposal, --keep-all)" in output

    strict, _ = _infer(trained_tiny_package, synthetic_world, tmp_path / "strict",
                       "--score-threshold", "0.5")
    strict_scores = [b["score"] for f in strict["frames"].values() for b in f["boxes"]]
    assert strict["score_threshold"] == 0.5 and min(strict_scores, default=1.0) >= 0.5
    assert len(strict_scores) == sum(s >= 0.5 for s in scores)
