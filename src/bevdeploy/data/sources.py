"""Frame sources: where the frames of a run come from.

A source is a sized, indexable sequence of ``Frame``s that can also name a frame before it is
loaded (``label``: the sample token or file, for progress lines and failure records, so that a
frame whose files are damaged is still named). Loading happens in ``__getitem__``, inside the
frame loop, so one bad frame is one failure under the run's error policy rather than the end of
the run. ``global_poses`` says whether the frames carry the ego and global poses a nuScenes
submission needs.

Here: a split of a nuScenes-format dataset (read through the devkit) and one frame given as files
(a point cloud, one image per camera, a calibration YAML). Beside them: an mmdetection3d info
file over its data root (``data.info_files.InfoSource``) and, as a stream read in order, a ROS 2
bag (``data.bags.BagSource``, ``data.streams``). All yield the same ``Frame``, so every consumer —
``infer``, ``eval``, ``demo``, ``compare`` — is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from bevdeploy.data.camera_dropout import CameraDropout
from bevdeploy.data.frame import Frame
from bevdeploy.errors import ConfigError
from bevdeploy.presets import Preset

if TYPE_CHECKING:
    from bevdeploy.data.nuscenes import RecordFrames  # imported by the sources that use it


@runtime_checkable
class FrameSource(Protocol):
    """What the frame loop reads: ``len``, ``source[i]`` (loads frame ``i``) and ``label(i)``."""

    global_poses: bool

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Frame: ...

    def label(self, index: int) -> str: ...


class RecordsSource:
    """The first ``limit`` frames (all by default) of a ``data.nuscenes.RecordFrames`` loader
    (a dataset split, an info file), named by their sample tokens before they load; the
    sources over such loaders set ``loader`` through ``_take``."""

    global_poses = True
    loader: RecordFrames

    def _take(self, loader: RecordFrames, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ConfigError(f"must be at least 1, got {limit}", field="limit")
        self.loader = loader
        self._count = len(loader) if limit is None else min(limit, len(loader))

    @property
    def sample_tokens(self) -> tuple[str, ...]:
        return self.loader.sample_tokens[:self._count]

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> Frame:
        return self.loader[range(self._count)[index]]

    def label(self, index: int) -> str:
        return self.loader.sample_tokens[index]


class DatasetSource(RecordsSource):
    """The frames of one split of a nuScenes-format dataset (``data.nuscenes.NuScenesLoader``),
    optionally only the first ``limit``; ``dropout`` says what a camera without data does
    (``data.camera_dropout``). Opening it reads the dataset's tables, so a wrong root or split
    fails before any model loads."""

    def __init__(self, root: str | Path, preset: Preset, *, version: str = "v1.0-mini",
                 split: str = "mini_val", limit: int | None = None,
                 dropout: CameraDropout = CameraDropout()) -> None:
        from bevdeploy.data.nuscenes import NuScenesLoader

        if limit is not None and limit < 1:  # before the dataset's tables are read
            raise ConfigError(f"must be at least 1, got {limit}", field="limit")
        self.root = Path(root)
        self.version = version
        self.split = split
        self.dropout = dropout
        self._take(NuScenesLoader(root, version=version, split=split, preset=preset,
                                  dropout=dropout), limit)


@dataclass(frozen=True)
class FrameFiles:
    """One frame as files: a point cloud (``data.point_files``: the columns of each format), one
    image per camera (matched to the preset's cameras by ``data.camera_files``) and the rig's
    calibration YAML (``data.calib_yaml``); ``intensity_scale`` multiplies the intensities."""

    points: Path
    images: tuple[Path, ...]
    calibration: Path
    intensity_scale: float | None = None


class FileSource:
    """One frame read from files. The files are read when the source is made (a damaged file
    fails in milliseconds, before the model loads); the frame is named after the point file.
    ``notes`` holds what the user should be told: images taken in the given order because no
    file name carries a camera name, intensities that look like 0–1 reflectance."""

    global_poses = False

    def __init__(self, files: FrameFiles, preset: Preset) -> None:
        from bevdeploy.data.calib_yaml import read_calibration
        from bevdeploy.data.camera_files import match_camera_files
        from bevdeploy.data.point_files import read_key_sweep
        from bevdeploy.data.readers import read_images

        names = preset.cameras.names
        cameras = match_camera_files(files.images, names)
        points, self.notes = read_key_sweep(files.points, preset.points.num_features,
                                            intensity_scale=files.intensity_scale)
        if not cameras.by_name:
            self.notes.insert(0, "no image file name carries a camera name: the images are "
                              f"taken in the given order as {list(names)}")
        self.files = files
        self._frame = Frame(images=read_images(cameras.paths, names, preset.cameras.raw_size),
                            points=points,
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

