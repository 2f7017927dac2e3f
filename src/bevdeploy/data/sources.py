"""Frame sources: where the frames of a run come from.

A source is a sized, indexable sequence of ``Frame``s that can also name a frame before it is
loaded (``label``: the sample token or file, for progress lines and failure records, so that a
frame whose files are damaged is still named). Loading happens in ``__getitem__``, inside the
frame loop, so one bad frame is one failure under the run's error policy rather than the end of
the run. ``global_poses`` says whether the frames carry the ego and global poses a nuScenes
submission needs.

Two sources exist: a split of a nuScenes-format dataset (read through the devkit) and one frame
given as files (a point cloud, one image per camera, a calibration YAML). Both yield the same
``Frame``, so every consumer — ``infer``, ``eval``, ``demo``, ``compare`` — is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from bevdeploy.data.frame import Frame
from bevdeploy.errors import ConfigError, InputError
from bevdeploy.presets import Preset


@runtime_checkable
class FrameSource(Protocol):
    """What the frame loop reads: ``len``, ``source[i]`` (loads frame ``i``) and ``label(i)``."""

    global_poses: bool

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Frame: ...

    def label(self, index: int) -> str: ...


class DatasetSource:
    """The frames of one split of a nuScenes-format dataset (``data.nuscenes.NuScenesLoader``),
    optionally only the first ``limit``. Opening it reads the dataset's tables, so a wrong root
    or split fails before any model loads."""

    global_poses = True

    def __init__(self, root: str | Path, preset: Preset, *, version: str = "v1.0-mini",
                 split: str = "mini_val", limit: int | None = None) -> None:
        from bevdeploy.data.nuscenes import NuScenesLoader

        if limit is not None and limit < 1:
            raise ConfigError(f"must be at least 1, got {limit}", field="limit")
        self.root = Path(root)
        self.version = version
        self.split = split
        self.loader = NuScenesLoader(root, version=version, split=split, preset=preset)
        self._count = len(self.loader) if limit is None else min(limit, len(self.loader))

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> Frame:
        return self.loader[range(self._count)[index]]

    def label(self, index: int) -> str:
        return self.loader.sample_tokens[index]


@dataclass(frozen=True)
class FrameFiles:
    """One frame as files: a point cloud, the images in the preset's camera order and the rig's
    calibration YAML (``data.calib_yaml``)."""

    points: Path
    images: tuple[Path, ...]
    calibration: Path


class FileSource:
    """One frame read from files. The files are read when the source is made (a damaged file
    fails in milliseconds, before the model loads); the frame is named after the point file."""

    global_poses = False

    def __init__(self, files: FrameFiles, preset: Preset) -> None:
        from bevdeploy.data.calib_yaml import read_calibration
        from bevdeploy.data.readers import read_images, read_points

        names = preset.cameras.names
        if len(files.images) != len(names):
            raise InputError(f"{len(files.images)} images given but the preset has "
                             f"{len(names)} cameras {list(names)}", field="--images")
        self.files = files
        self._frame = Frame(images=read_images(files.images, names, preset.cameras.raw_size),
                            points=read_points(files.points, preset.points.num_features),
                            calib=read_calibration(files.calibration, names),
                            token=files.points.name.split(".")[0], source=str(files.points))

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> Frame:
        if index not in (0, -1):
            raise IndexError(f"frame {index} of a one-frame source")
        return self._frame

    def label(self, index: int) -> str:
        return str(self.files.points)

