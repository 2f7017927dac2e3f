"""Calibration data: the inputs each dense module really receives in the deployed FP32 pipeline.

INT8 ranges are only as good as the activations they are measured on. The fuser's LiDAR input is
the sparse-conv executor's BEV and its camera input comes out of bevpool + ``camera.vtransform``;
neither can be synthesised. So the FP32 package is run, unmodified, through the runtime's own
``Pipeline`` on frames of a dataset, and each dense module's runner is wrapped in a recorder that
keeps a copy of every feed it is given. What is recorded is therefore exactly what the quantized
module will see at deployment (up to the error of the modules upstream of it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from bevdeploy.data.frame import Frame
from bevdeploy.errors import ConfigError
from bevdeploy.package import DeployPackage
from bevdeploy.runtime import Pipeline

Feeds = dict[str, np.ndarray]


class _RecordingRunner:
    """A runner that keeps a copy of every feed, then runs the wrapped runner unchanged."""

    def __init__(self, inner: Any, record: list[Feeds]) -> None:
        self._inner = inner
        self._record = record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._record.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self._inner.run(feeds)


@dataclass(frozen=True)
class CalibrationSet:
    """Recorded feeds per module (one dict per frame) and where the frames came from."""

    feeds: Mapping[str, Sequence[Feeds]]
    dataset: str
    split: str
    tokens: tuple[str, ...]

    @property
    def frames(self) -> int:
        return len(self.tokens)

    def describe(self) -> dict[str, Any]:
        """The manifest's record of the calibration data."""
        return {"dataset": self.dataset, "split": self.split, "frames": self.frames,
                "sample_tokens": list(self.tokens)}


Progress = Callable[[int, int, str], None]  # (frames done, frames in all, the frame's name)


def record_inputs(package: DeployPackage, frames: Iterable[Frame], modules: Sequence[str],
                  *, threads: int | None = None, progress: Progress | None = None
                  ) -> dict[str, list[Feeds]]:
    """Run ``frames`` through the package's pipeline and return each module's feeds;
    ``progress`` is told after each frame."""
    pipeline = Pipeline(package, threads=threads)
    recorded: dict[str, list[Feeds]] = {name: [] for name in modules}
    for name in modules:
        pipeline.runners[name] = _RecordingRunner(pipeline.runners[name], recorded[name])
    frames = list(frames)
    for done, frame in enumerate(frames, start=1):
        pipeline.run(frame)
        if progress is not None:
            progress(done, len(frames), frame.token or str(done - 1))
    return recorded


def frame_indices(available: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``available`` frames (scenes differ more between
    than within, so consecutive frames would calibrate on one street)."""
    if count < 1:
        raise ConfigError(f"must be >= 1, got {count}", field="calib_frames")
    if available < 1:
        raise ConfigError("the calibration split holds no frames", field="calib")
    count = min(count, available)
    return sorted({int(round(i)) for i in np.linspace(0, available - 1, count)})


def calibration_set(package: DeployPackage, data: Path, modules: Sequence[str], *,
                    frames: int, version: str = "v1.0-mini", split: str = "mini_train",
                    threads: int | None = None, progress: Progress | None = None
                    ) -> CalibrationSet:
    """Record the feeds of ``modules`` on ``frames`` frames of a nuScenes-format dataset
    (``progress``: see ``record_inputs``)."""
    from bevdeploy.data.nuscenes import NuScenesLoader

    loader = NuScenesLoader(data, version=version, split=split, preset=package.preset)
    picked = frame_indices(len(loader), frames)
    chosen = [loader[i] for i in picked]
    feeds = record_inputs(package, chosen, modules, threads=threads, progress=progress)
    return CalibrationSet(feeds=feeds, dataset=str(data), split=split,
                          tokens=tuple(f.token or str(i) for f, i in zip(chosen, picked)))


class FeedReader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over recorded feeds (rewindable)."""

    def __init__(self, feeds: Sequence[Feeds]) -> None:
        self._feeds = list(feeds)
        self._it: Iterator[Feeds] = iter(self._feeds)

    def get_next(self) -> Feeds | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)
