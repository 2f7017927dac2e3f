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
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock, Timeout

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


@contextmanager
def staged_dir(out: str | Path, *, cannot: str) -> Iterator[Path]:
    """A staging directory for ``out`` (``staging_dir``), moved into place (``replace_dir``)
    when the block ends and removed when it raises, so no half-written directory is left. An
    ``OSError`` in the block (a full disk, a vanished staging directory) becomes one
    ``OutputError`` ``"<cannot>: <reason>"`` naming ``out``."""
    staging = staging_dir(out)
    try:
        yield staging
        replace_dir(staging, out)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"{cannot}: {os_reason(exc)}", path=out, field="output") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------- output directories


class OutputLock:
    """The lock beside an output (``.<name>.lock``, held with ``filelock`` and naming its holder):
    a second process writing the same output is refused, told who holds it. ``demo`` holds one
    on its working directory, ``OutputDir`` on each output directory. The lock file stays on
    release: removing it would let a waiting process lock a dead inode."""

    def __init__(self, out: str | Path, *, flag: str = "--out") -> None:
        self.out = Path(os.path.abspath(out))
        check_output_dir(self.out)
        output_dir(self.out.parent)
        self.path = self.out.parent / f".{self.out.name}.lock"
        self._lock = FileLock(self.path, timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            raise OutputError(f"another process is writing this output "
                              f"({_holder(self.path)}); wait for it or choose another "
                              f"{flag}", path=self.out, field=flag) from None
        except OSError as exc:
            raise _cannot_write(self.path, exc) from None
        try:
            _write_holder(self.path)
        except OSError as exc:
            self._lock.release()
            raise _cannot_write(self.path, exc) from None

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class OutputDir:
    """One writer per output directory, replaced whole: the rule of every command that writes
    a directory.

    Opening it takes an ``OutputLock`` for the life of the command (unless ``locked=False``,
    for a directory inside one already locked), refuses an existing non-empty ``out`` unless
    ``overwrite`` (the message names the CLI flag), then lets ``replaceable(out)`` refuse what
    even ``--overwrite`` must not delete (a user's directory where a package belongs), and
    gives a fresh ``staging`` directory beside it. ``commit`` swaps ``staging`` in for ``out``
    atomically (no stale file of an earlier run survives); ``close`` without a commit deletes
    the staging directory and leaves ``out`` as it was.
    """

    def __init__(self, out: str | Path, *, overwrite: bool, flag: str = "--overwrite",
                 out_flag: str = "--out", replaceable: Callable[[Path], None] | None = None,
                 locked: bool = True) -> None:
        self.out = Path(os.path.abspath(out))
        self._lock = OutputLock(self.out, flag=out_flag) if locked else None
        self.staging: Path | None = None
        try:
            if _occupied(self.out):
                if not overwrite:
                    raise OutputError(f"already exists; pass {flag} to replace it",
                                      path=self.out, field=out_flag)
                if replaceable is not None:
                    replaceable(self.out)
            self.staging = staging_dir(self.out)
        except BaseException:
            self.close()
            raise

    def final(self, path: str | Path) -> Path:
        """Where ``path``, if written under ``staging``, lies once committed."""
        p = Path(path)
        if self.staging is None or self.staging not in p.parents:
            return p
        return self.out / p.relative_to(self.staging)

    def commit(self) -> Path:
        """Replace ``out`` with the staging directory; returns ``out``."""
        assert self.staging is not None, "committed twice"
        replace_dir(self.staging, self.out)
        self.staging = None
        return self.out

    def close(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _occupied(out: Path) -> bool:
    """Whether ``out`` holds something an overwrite would delete (an empty folder does not)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        return True
    return out.is_dir() and any(out.iterdir())


def _write_holder(lock_path: Path) -> None:
    """Name this process in the lock file (filelock opens it without truncating)."""
    text = (f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:200]}\n")
    with open(lock_path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return f"held by {text[:300]}" if text else "held by another process"
