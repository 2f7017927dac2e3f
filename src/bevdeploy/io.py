"""Atomic writes: every output of bevdeploy appears whole or not at all.

A killed export, a full disk or a crash mid-write must leave the previous file or directory
intact and never a truncated one that a later run would mistake for a good output. Files go
through a sibling temporary file and ``os.replace``; directories are built in a sibling staging
directory and swapped in with renames, the previous one deleted only once the new one is in place.

An operating-system failure while writing (no permission, disk full, a file where a directory
should be) becomes an ``OutputError`` naming the output, with the temporary file removed.
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

from bevdeploy.errors import OutputError, os_reason


def _cannot_write(path: Path, exc: OSError) -> OutputError:
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    reason = os_reason(exc) if blocker is None else f"{blocker} is a file, not a directory"
    return OutputError(f"cannot write: {reason}", path=path, field="output")


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """Open a binary handle whose content replaces ``path`` only when the block succeeds.

    The block must only write to the handle: an ``OSError`` inside it (a full disk) is reported
    as failing to write ``path``.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as exc:
        raise _cannot_write(p, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; outputs are ordinary files
        os.replace(tmp, p)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _cannot_write(p, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


def check_output_dir(path: str | Path) -> Path:
    """Refuse, before any work, an output directory that could not be created: a file in its
    place or in its parents, or a non-writable nearest existing parent. Creates nothing."""
    p = Path(os.path.abspath(path))
    existing = next(q for q in (p, *p.parents) if q.exists())
    if not existing.is_dir():
        raise OutputError(f"cannot write: {existing} is a file, not a directory", path=p,
                          field="output")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write: {existing} is not writable", path=p, field="output")
    return Path(path)


def output_dir(path: str | Path) -> Path:
    """Create the output directory ``path`` (and its parents) if needed; returns it."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_write(p, exc) from None
    return p


def staging_dir(out: str | Path) -> Path:
    """A fresh sibling directory of ``out`` (same filesystem, so the final rename is atomic)."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial",
                                        dir=out.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; outputs are ordinary directories
    except OSError as exc:
        raise _cannot_write(out, exc) from None
    return staging


def replace_dir(staging: str | Path, out: str | Path) -> None:
    """Move the finished ``staging`` directory to ``out``.

    A previous ``out`` is renamed aside first and deleted only after the new one is in place;
    if the second rename fails the previous one is put back.
    """
    staging, out = Path(staging), Path(out)
    try:
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
    except OSError as exc:
        raise _cannot_write(out, exc) from None
    shutil.rmtree(aside, ignore_errors=True)
