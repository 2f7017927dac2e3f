"""An info ``.pkl`` of either format, opened by what it holds, and as a frame source.

Two formats travel as "info files": the legacy ``infos`` list (mmdet3d 0.x, mit-han-lab
BEVFusion, CUDA-BEVFusion; ``data.infos``) and mmdetection3d ≥ 1.1's ``metainfo`` +
``data_list`` (``data.info_v2``). A user should not need to know which one they have, so the
file is unpickled once (restricted, expansion-bounded: ``data.infos.unpickle_info_file``) and
its top-level keys pick the reader. Both give ``RecordFrames``, so their Frames are built by
the same code as a dataset's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bevdeploy.data.info_v2 import DataListLoader, is_data_list
from bevdeploy.data.infos import InfoLoader, unpickle_info_file
from bevdeploy.data.nuscenes import RecordFrames
from bevdeploy.data.sources import RecordsSource
from bevdeploy.errors import ConfigError, DatasetError
from bevdeploy.presets import Preset


def open_info_file(path: str | Path, preset: Preset | str, dataroot: str | Path | None = None,
                   **options: Any) -> RecordFrames:
    """The frames of an info file of either format; ``options`` are ``RecordFrames``' (sweeps,
    sweep policy, seed, with_gt, pad_empty_sweeps). ``dataroot``: legacy paths are re-anchored
    there (used as stored without it); ``data_list`` names are found there (default: the
    file's directory)."""
    p = Path(path)
    data = unpickle_info_file(p)
    if is_data_list(data):
        return DataListLoader(p, preset, dataroot, data=data, **options)
    if isinstance(data, Mapping) and "infos" in data:
        return InfoLoader(p, preset, dataroot, data=data, **options)
    keys = sorted(map(str, data))[:8] if isinstance(data, Mapping) else type(data).__name__
    raise DatasetError(f"not an info file: expected 'infos' (mmdet3d 0.x / mit-han-lab) or "
                       f"'metainfo' + 'data_list' (mmdet3d >= 1.1), found {keys}", path=p,
                       field="infos|data_list")


class InfoSource(RecordsSource):
    """The frames of an info file (``infer/eval --info``), optionally only the first ``limit``
    in time order, named by their sample tokens. Opening it reads and checks every record, so
    a bad file fails before any model loads; images and points are read per frame."""

    def __init__(self, path: str | Path, preset: Preset, *, dataroot: str | Path | None = None,
                 limit: int | None = None) -> None:
        if limit is not None and limit < 1:  # before the file is read
            raise ConfigError(f"must be at least 1, got {limit}", field="limit")
        self.path = Path(path)
        self._take(open_info_file(self.path, preset, dataroot), limit)

    @property
    def version(self) -> str:
        """The dataset version the file names (``""`` when it names none)."""
        return self.loader.version
