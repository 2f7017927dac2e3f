"""Sinks and the flow that feeds them (``frame_loop.run_frames``): every sink sees exactly the
frames that finished, and writes its outputs once, whatever ended the run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bevdeploy import detector
from bevdeploy.data.sources import DatasetSource
from bevdeploy.errors import InputError
from bevdeploy.frame_loop import OnError, run_frames
from bevdeploy.presets import get_preset
from bevdeploy.sinks import DetectionsJson, Metrics, Renders, StageTimings, Submission

SPLIT = "mini_val"


class _DamagedAt(DatasetSource):
    """The world's frames with frame ``bad`` failing to load, as a damaged file does."""

    def __init__(self, root, bad: int) -> None:
        super().__init__(root, get_preset("tiny"), split=SPLIT)
        self.bad = bad

    def __getitem__(self, index: int):
        if index == self.bad:
            raise InputError("truncated", path=f"frame{index}.pcd.bin", field="points")
        return super().__getitem__(index)


@pytest.fixture(scope="module")
def deployed(trained_tiny_package):
    with detector.open(trained_tiny_package, threads=1) as opened:
        yield opened


def test_skip_writes_every_sink_for_the_frames_that_finished(deployed, synthetic_world,
                                                             tmp_path):
    source = _DamagedAt(synthetic_world, bad=1)
    timings = StageTimings()
    sinks = [Renders(tmp_path / "render", extent=54.0, score_threshold=0.3),
             DetectionsJson(tmp_path / "detections.json", {"preset": "tiny"}), timings,
             Submission(tmp_path / "results_nusc.json"),
             Metrics(synthetic_world, tmp_path / "eval", version="v1.0-mini", split=SPLIT)]
    loop, written = run_frames(source, deployed, sinks, on_error=OnError.skip)
    assert loop.status == "partial" and loop.done == 2
    kept = [source.label(0), source.label(2)]

    doc = json.loads((tmp_path / "detections.json").read_text())
    assert doc["preset"] == "tiny" and list(doc["frames"]) == kept
    assert doc["run"]["status"] == "partial"
    assert doc["run"]["failures"][0]["frame"] == source.label(1)
    assert doc["run"]["failures"][0]["field"] == "points"
    assert all(len(f["boxes"]) > 0 for f in doc["frames"].values())
    assert list(json.loads((tmp_path / "results_nusc.json").read_text())["results"]) == kept

    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_samples"] == 2 and metrics["run"]["frames_failed"] == 1
    assert 0.0 < metrics["mean_ap"] <= 1.0  # trained weights find the synthetic objects

    assert len(timings.frames) == 2 and timings.medians()["total"] > 0
    assert timings.medians(skip=1)["total"] == timings.frames[1]["total"]
    pictures = sorted(p.name for p in (tmp_path / "render").iterdir())
    assert pictures == sorted(f"{t}_{kind}.png" for t in kept for kind in ("bev", "cameras"))
    assert set(written) >= {tmp_path / "detections.json", tmp_path / "render",
                            tmp_path / "eval" / "metrics.json"}


def test_a_stopped_run_keeps_its_finished_frames_but_scores_nothing(deployed, synthetic_world,
                                                                    tmp_path):
    source = _DamagedAt(synthetic_world, bad=1)
    metrics = Metrics(synthetic_world, tmp_path / "eval", version="v1.0-mini", split=SPLIT)
    loop, written = run_frames(source, deployed,
                               [DetectionsJson(tmp_path / "detections.json", {}), metrics])
    assert loop.status == "stopped" and loop.done == 1
    doc = json.loads((tmp_path / "detections.json").read_text())
    assert list(doc["frames"]) == [source.label(0)] and doc["run"]["status"] == "stopped"
    assert metrics.result is None and not (tmp_path / "eval").exists()
    assert written == [tmp_path / "detections.json"]
    with pytest.raises(InputError):
        loop.raise_if_ended()


def test_a_submission_is_in_the_global_frame(deployed, synthetic_world, tmp_path):
    """The submission sink moves boxes by the frame's poses: the same detections land
    elsewhere when the ego pose moves."""
    source = DatasetSource(synthetic_world, get_preset("tiny"), split=SPLIT, limit=1)
    frame = source[0]
    detections = deployed(frame)
    sink = Submission(tmp_path / "a.json")
    sink.write(frame, detections, {})
    sink.close({"status": "complete"})
    boxes = json.loads((tmp_path / "a.json").read_text())["results"][frame.token]
    assert 0 < len(boxes) <= len(detections)
    nearest = int(np.argmin(np.linalg.norm(detections.boxes[:, :2], axis=1)))  # kept by range
    centre = np.r_[detections.boxes[nearest, :3], 1.0].astype(np.float64)
    moved = (frame.calib.ego2global @ frame.calib.lidar2ego @ centre)[:3]
    assert np.linalg.norm(moved - centre[:3]) > 1.0  # the poses do move it
    found = min(boxes, key=lambda b: np.linalg.norm(np.subtract(b["translation"], moved)))
    np.testing.assert_allclose(found["translation"], moved, atol=1e-3)
