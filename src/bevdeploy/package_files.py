"""A package is closed: every file it makes the runtime read is a regular file inside it.

The manifest's hash of a module says nothing about *where* the bytes come from. A module file
that is a symbolic link (to a file outside whose hash was copied into the manifest), a hard link
shared with a file elsewhere, a device or a FIFO, and an ONNX tensor whose external data lives
outside the package directory, would all let a package read — or make the loader block on —
something its sender chose outside it. Each is refused as a ``PackageError`` naming the file and
the manifest field, before any runtime opens it.

External data is checked by reading the graph's tensor records without their data
(``onnx.load(..., load_external_data=False)``), for the dense graphs and the SCN file alike; a
location must be a relative path that stays inside the package and names a regular file there.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

from bevdeploy.errors import PackageError, excerpt, os_reason


def check_regular_file(path: Path, field: str, what: str) -> os.stat_result:
    """``lstat`` of ``path`` if it is a regular file with one link; ``PackageError`` otherwise."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise PackageError(f"{what} is missing", path=path, field=field) from None
    except OSError as exc:
        raise PackageError(f"cannot read: {os_reason(exc)}", path=path, field=field) from None
    if stat.S_ISLNK(info.st_mode):
        raise PackageError(f"{what} is a symbolic link (to {excerpt(os.readlink(path))}); a "
                           "package holds its files itself", path=path, field=field)
    if not stat.S_ISREG(info.st_mode):
        raise PackageError(f"{what} is not a regular file (a directory, device, FIFO or "
                           "socket)", path=path, field=field)
    if info.st_nlink > 1:
        raise PackageError(f"{what} is hard-linked {info.st_nlink} times: its bytes are shared "
                           "with a file elsewhere; copy the package instead of linking it",
                           path=path, field=field)
    return info


def check_external_data(root: Path, path: Path, field: str) -> None:
    """Refuse an ONNX file at ``path`` whose tensors keep their data outside ``root``, or in a
    file there that is not a regular, singly linked file."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX at all: the runtime that opens it says so, as a PackageError
        return
    inside = Path(os.path.realpath(root))
    # onnx has no public iterator over every tensor (initializers, subgraphs, attributes)
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        target = inside / location
        # realpath: a symbolic link anywhere on the way (a folder inside) is followed here
        if Path(location).is_absolute() or inside not in Path(os.path.realpath(target)).parents:
            raise PackageError(f"tensor {excerpt(tensor.name)} keeps its data outside the "
                               f"package ({excerpt(location)})", path=path, field=field)
        check_regular_file(target, field, f"external data of tensor {excerpt(tensor.name)}")
