"""What runs on a Ray worker: one actor per worker opens the detector and the dataset once, then
turns frame indices into results (``FrameWorker``). Nothing here imports Ray: the pool wraps
the class with ``ray.remote``, so this module is plain, picklable Python (it asks Ray only
for the name of the node it runs on).

What crosses the object store is decided here. Frames are **loaded on the worker** from the
dataset root, a path every node reads (a shared file system or the same copy on each node):
shipping the sensor data from the driver would move megabytes per frame through one machine.
What comes back (``FrameOutcome``) is the detections, the stage times and a *slim* frame — the
calibration, token, timestamp and source that the detections, submission and metrics sinks
read — with the images and points left out unless renders were asked for
(``keep_sensors``). ``result_bytes`` is the pickled size of the outcome, which is what Ray
serialises and moves, measured on the worker.

The package is read from its directory on each node, which must be the same package there:
``WorkerFacts`` (the bevdeploy version and the SHA-256 of the package's manifest, which pins
every module's SHA-256 and is checked against the files when the package loads) is compared
with the driver's before any frame runs.
"""

from __future__ import annotations

import os
import pickle
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

import bevdeploy
from bevdeploy.data.frame import Detections, Frame
from bevdeploy.errors import BevDeployError
from bevdeploy.package import MANIFEST_NAME, DeployPackage, sha256_file
from bevdeploy.presets import Preset


@dataclass(frozen=True)
class SourceSpec:
    """How a worker opens the run's dataset split (``data.sources.DatasetSource``)."""

    root: str
    version: str
    split: str
    limit: int | None

    @classmethod
    def of(cls, source: Any) -> "SourceSpec":
        return cls(str(Path(source.root).resolve()), source.version, source.split,
                   len(source))

    def open(self, preset: Preset) -> Any:
        from bevdeploy.data.sources import DatasetSource

        return DatasetSource(self.root, preset, version=self.version, split=self.split,
                             limit=self.limit)


@dataclass(frozen=True)
class WorkerFacts:
    """What must be the same on the driver and on every worker for their results to be the
    same: the bevdeploy version and the package (its manifest's SHA-256; ``None`` for the
    reference, whose weights the version and the checkpoint path pin)."""

    version: str
    package_sha256: str | None

    @classmethod
    def of(cls, model: Any) -> "WorkerFacts":
        root = model.root if isinstance(model, DeployPackage) else None
        if isinstance(model, (str, Path)) and (Path(model) / MANIFEST_NAME).is_file():
            root = Path(model)
        digest = None if root is None else sha256_file(Path(root) / MANIFEST_NAME)
        return cls(bevdeploy.__version__, digest)

    def mismatch(self, driver: "WorkerFacts") -> str | None:
        """What differs from the driver's facts, in words, or ``None``."""
        if self.version != driver.version:
            return f"runs bevdeploy {self.version}, the driver {driver.version}"
        if self.package_sha256 != driver.package_sha256:
            return (f"has a package whose manifest SHA-256 is {self.package_sha256}, the "
                    f"driver's is {driver.package_sha256}")
        return None


@dataclass
class FrameOutcome:
    """One frame's result as it travels back: the slim frame, detections and stage times, or
    the frame's ``BevDeployError`` (returned, not raised, so it arrives as itself)."""

    index: int
    frame: Frame | None = None
    detections: Detections | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: BevDeployError | None = None
    result_bytes: int = 0


def _node_id() -> str:
    """The Ray node this worker runs on ("" outside Ray)."""
    try:
        import ray

        # asking an unconnected process would start a Ray instance
        return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else ""
    except Exception:  # noqa: BLE001 - only a label
        return ""


def where() -> str:
    """This worker's host, pid and Ray node, for messages and run records."""
    return f"{socket.gethostname()} pid {os.getpid()} node {_node_id()[:12]}"


def slim(frame: Frame) -> Frame:
    """The frame without its sensor data or ground truth (what the detections, submission and
    metrics sinks never read)."""
    return replace(frame, images=np.zeros((0, 0, 0, 3), np.uint8),
                   points=np.zeros((0, frame.points.shape[1]), np.float32), gt=None)


class FrameWorker:
    """One worker: the detector of ``model`` (a package directory or a preset) opened once with
    ``open_kwargs`` (``detector.open``'s), and the dataset of ``source``. A failure to open
    (a package missing or damaged on this node) is kept and reported by ``facts``, so the driver
    refuses the worker by name instead of seeing it die."""

    def __init__(self, model: Any, open_kwargs: dict[str, Any], source: SourceSpec, *,
                 keep_sensors: bool = False) -> None:
        from bevdeploy import detector

        self.keep_sensors = keep_sensors
        self.where = where()
        self.facts_ = WorkerFacts.of(model)
        self.open_error: BevDeployError | None = None
        try:
            self.detector = detector.open(model, **open_kwargs)
            self.source = source.open(self.detector.preset)
        except BevDeployError as exc:
            self.open_error = exc

    def facts(self) -> tuple[WorkerFacts, str, int, BevDeployError | None]:
        """This worker's facts, its host and pid, and the error that kept it from opening."""
        return self.facts_, self.where, os.getpid(), self.open_error

    def run(self, index: int) -> FrameOutcome:
        """Load frame ``index`` and detect; a ``BevDeployError`` comes back in the outcome."""
        if self.open_error is not None:
            return FrameOutcome(index, error=self.open_error)
        try:
            frame = self.source[index]
            detections = self.detector(frame)
        except BevDeployError as exc:
            outcome = FrameOutcome(index, error=exc)
        else:
            outcome = FrameOutcome(index, frame if self.keep_sensors else slim(frame), detections,
                                   dict(self.detector.last_timings))
        outcome.result_bytes = len(pickle.dumps(outcome, protocol=5))
        return outcome
