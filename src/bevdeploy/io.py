"""Atomic writes: every output of bevdeploy appears whole or not at all.

A killed export, a full disk or a crash mid-write must leave the previous file or directory
intact and never a truncated one that a later run would mistake for a good output. Files go
through a sibling temporary file and ``os.replace``; directories are built in a sibling staging
directory and swapped in with renames, the previous one deleted only once the new one is in place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """Open a binary handle whose content replaces ``path`` only when the block succeeds."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; outputs are ordinary files
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


def staging_dir(out: str | Path) -> Path:
    """A fresh sibling directory of ``out`` (same filesystem, so the final rename is atomic)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; outputs are ordinary directories
    return staging


def replace_dir(staging: str | Path, out: str | Path) -> None:
    """Move the finished ``staging`` directory to ``out``.

    A previous ``out`` is renamed aside first and deleted only after the new one is in place;
    if the second rename fails the previous one is put back.
    """
    staging, out = Path(staging), Path(out)
    if not out.exists():
        os.rename(staging, out)
        return
    aside = out.parent / f".{out.name}.{uuid.uuid4().hex}.old"
    os.rename(out, aside)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)
