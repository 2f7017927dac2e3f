"""Detections as files: bevdeploy's own JSON and the nuScenes submission."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.io import atomic_write
from bevdeploy.sinks.base import RunRecord

DETECTIONS_NAME = "detections.json"


class DetectionsJson:
    """``detections.json``: ``header`` (what ran: preset, backend, package), the run record and
    every finished frame's detections by token, in the bevdeploy box convention."""

    def __init__(self, path: str | Path, header: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.header = dict(header)
        self.frames: dict[str, Any] = {}

    def write(self, frame: Frame, detections: Detections, timings: Mapping[str, float]) -> None:
        self.frames[frame.token] = detections.to_dict()

    def close(self, run: RunRecord) -> list[Path]:
        doc = {**self.header, "run": dict(run), "frames": self.frames}
        return [atomic_write(self.path, json.dumps(doc).encode())]


class Submission:
    """A nuScenes detection submission (``results_nusc.json``): every finished frame's boxes in
    the global frame (``data.nuscenes.detections_to_nuscenes``); needs frames with poses."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.results: dict[str, list[dict[str, Any]]] = {}

    def write(self, frame: Frame, detections: Detections, timings: Mapping[str, float]) -> None:
        from bevdeploy.data.nuscenes import detections_to_nuscenes
        from bevdeploy.eval.nuscenes_eval import sample_token

        token = sample_token(frame)
        self.results[token] = detections_to_nuscenes(detections, frame.calib, token)

    def close(self, run: RunRecord) -> list[Path]:
        from bevdeploy.data.nuscenes import write_submission

        return [write_submission(self.path, self.results)]
