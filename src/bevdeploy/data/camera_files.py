"""Which image file is which camera (``infer --images``): by the camera name in the file name.

A shell glob sorts ``CAM_*`` files alphabetically, so CAM_BACK comes first and a positional
reading silently swaps cameras. Every nuScenes file name carries its camera
(``n015-…__CAM_FRONT_LEFT__1532….jpg``), and so do most rigs' dumps, so the files are matched
to the preset's cameras by name when every file carries exactly one; the order on the command
line then does not matter. A name inside a longer one (CAM_FRONT in CAM_FRONT_LEFT) counts only
where the longer one does not cover it; matching ignores case. Files that carry no name at all
are taken in the given order, and the caller says so; anything in between (some files named,
one file naming two cameras, two files naming one, a camera no file names) is an error that
lists the files and the cameras.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bevdeploy.errors import InputError

_FIELD = "--images"


@dataclass(frozen=True)
class CameraFiles:
    """The image files in the preset's camera order, and how they were matched."""

    paths: tuple[Path, ...]
    by_name: bool  # False: no file carries a camera name, taken in the given order


def _names_in(file_name: str, cameras: Sequence[str]) -> list[str]:
    """The cameras whose name occurs in ``file_name`` outside any longer camera name."""
    text = file_name.lower()
    found = []
    for camera in cameras:
        name = camera.lower()
        longer = [c.lower() for c in cameras if c.lower() != name and name in c.lower()]
        masked = text
        for other in longer:
            masked = masked.replace(other, " " * len(other))
        if re.search(re.escape(name), masked):
            found.append(camera)
    return found


def match_camera_files(paths: Sequence[str | Path], cameras: Sequence[str]) -> CameraFiles:
    """``paths`` ordered as ``cameras`` (see the module docstring); ``InputError`` naming the
    files and cameras that cannot be matched."""
    files = [Path(p) for p in paths]
    named = [(f, _names_in(f.name, cameras)) for f in files]
    if not any(names for _, names in named):
        if len(files) != len(cameras):
            raise InputError(f"{len(files)} images given but the preset has {len(cameras)} "
                             f"cameras {list(cameras)}", field=_FIELD)
        return CameraFiles(tuple(files), by_name=False)
    problems = []
    unnamed = [str(f) for f, names in named if not names]
    if unnamed:
        problems.append(f"no camera name in {unnamed}")
    problems += [f"{f} names {len(names)} cameras {names}"
                 for f, names in named if len(names) > 1]
    owners: dict[str, list[Path]] = {}
    for f, names in named:
        if len(names) == 1:
            owners.setdefault(names[0], []).append(f)
    problems += [f"camera {camera} is named by {len(fs)} files {[str(f) for f in fs]}"
                 for camera, fs in owners.items() if len(fs) > 1]
    missing = [camera for camera in cameras if camera not in owners]
    if missing:
        problems.append(f"no file for camera(s) {missing}")
    if problems:
        raise InputError("cannot match the images to the preset's cameras "
                         f"{list(cameras)} by the camera names in their file names: "
                         + "; ".join(problems), field=_FIELD)
    return CameraFiles(tuple(owners[camera][0] for camera in cameras), by_name=True)
