"""``infer/eval --info FILE [--data-root DIR]``: an info file of either format as the frames.

For ``eval`` the frames are scored against the dataset at ``--data-root`` by sample token, so
what would only fail after every frame ran (no tables there, another version, samples outside
the split) is checked here, before the model loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from bevdeploy.data.info_files import InfoSource
from bevdeploy.errors import ConfigError, DatasetError
from bevdeploy.presets import Preset


def info_source(info: Path, data_root: Optional[Path], preset: Preset,
                limit: Optional[int]) -> InfoSource:
    """The frames of ``--info`` (read and checked now, before the model loads)."""
    return InfoSource(info, preset, dataroot=data_root, limit=limit)


def scored_info_source(info: Path, data_root: Path, preset: Preset, *, version: str,
                       split: str, limit: Optional[int]) -> InfoSource:
    """``eval --info``: the frames, after checking that ``--data-root``'s ``version`` tables
    hold every one of their samples in ``split``."""
    from bevdeploy.data.nuscenes import open_devkit
    from bevdeploy.eval.nuscenes_eval import split_sample_tokens

    source = info_source(info, data_root, preset, limit)
    if source.version and source.version != version:
        raise ConfigError(f"the info file is of {source.version!r} but --version is "
                          f"{version!r}: its samples are scored in that version's tables",
                          field="--version")
    in_split = set(split_sample_tokens(open_devkit(data_root, version), split, data_root))
    outside = [t for t in source.sample_tokens if t not in in_split]
    if outside:
        raise DatasetError(f"{len(outside)} of the file's {len(source)} sample(s) are not in "
                           f"split {split!r} of {data_root / version} (e.g. {outside[0]}); give "
                           "the split the file was made from (--split)", path=info,
                           field="--split")
    return source
