"""One error hierarchy for everything a user can get wrong, and the CLI's exit codes.

Every message names the culprit (file and field) and what was expected, so that a fleet job
that fails on frame 4,031 of a recording says which file to look at. The CLI prints these in
one line and maps each class to its own exit code; ``bevdeploy --debug`` shows the traceback.

Exit codes of every ``bevdeploy`` command (also in the README and ``bevdeploy --help``):

====  ==============================================================================
code  meaning
====  ==============================================================================
0     success
1     ``compare`` found a stage outside its tolerance (a verdict, not an error)
2     ``ConfigError``: an option, preset or configuration file is invalid (also typer's
      own usage errors: unknown option, missing argument)
3     ``InputError``: sensor input (points, images, calibration) missing or malformed
4     ``DatasetError``: a dataset directory or info file cannot be used
5     ``UnsafeFileError``: a file would have made us execute code; refused, nothing ran
6     ``PackageError``: a deploy package is missing, damaged or of an unreadable format
7     ``CheckpointError``: a checkpoint cannot be loaded into the preset
8     partial run: ``--on-error skip`` skipped at least one frame (outputs hold the rest
      and list every failure)
9     ``OutputError``: an output cannot be written (permissions, disk full, a file in the
      way); the previous output, if any, is left intact
70    internal error: an exception that is not a ``BevDeployError`` (a bug; ``--debug``
      shows the traceback to report)
130   interrupted (Ctrl-C / SIGINT); a multi-frame ``infer`` flushes what it finished
143   terminated (SIGTERM: a scheduler or ``kill``), handled like Ctrl-C
====  ==============================================================================
"""

from __future__ import annotations

import reprlib
from pathlib import Path

PARTIAL_EXIT = 8
INTERNAL_EXIT = 70  # sysexits.h EX_SOFTWARE
INTERRUPTED_EXIT = 130  # the shell's code for a process ended by SIGINT
TERMINATED_EXIT = 143  # ... and by SIGTERM (128 + 15)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the CLI's handler. A ``KeyboardInterrupt``, so
    every path that ends a run cleanly on Ctrl-C (the frame loop flushing the finished frames)
    does the same for a scheduler's or ``kill``'s stop; only the status and exit code differ."""


class BevDeployError(Exception):
    """Base of every error bevdeploy raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | Path | None = None, field: str | None = None):
        self.path = None if path is None else str(path)
        self.field = field
        where = ""
        if self.path is not None:
            where = self.path if field is None else f"{self.path} [{field}]"
        elif field is not None:
            where = f"[{field}]"
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(BevDeployError):
    """A preset or YAML configuration is malformed or physically impossible."""

    exit_code = 2


class InputError(BevDeployError):
    """Sensor input (points, images, calibration) is missing or malformed."""

    exit_code = 3


class DatasetError(BevDeployError):
    """A dataset directory (nuScenes tables, info files) cannot be used."""

    exit_code = 4


class UnsafeFileError(BevDeployError):
    """A file tried to make us execute code (pickle with globals, etc.)."""

    exit_code = 5


class PackageError(BevDeployError):
    """A deploy package is missing, damaged or does not match its manifest."""

    exit_code = 6


class CheckpointError(BevDeployError):
    """A checkpoint cannot be loaded into the selected preset."""

    exit_code = 7


class OutputError(BevDeployError):
    """An output file or directory cannot be written (permissions, disk full, a file where a
    directory is needed). Raised by ``bevdeploy.io``, which leaves the previous output intact."""

    exit_code = 9


MAX_QUOTE = 200  # characters of a value an error message quotes


def excerpt(value: object, limit: int = MAX_QUOTE) -> str:
    """``repr(value)`` cut to about ``limit`` characters, computed without expanding the whole
    value: an alias- or reference-sharing bomb (a few bytes standing for billions of elements)
    must give a short message in microseconds, not a gigabyte string (``reprlib`` stops after
    the first elements of each container and a few levels of nesting)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({type(value).__name__})"


def _short_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 3, 8, 8, 8, 8
    r.maxstring, r.maxother, r.maxlong = MAX_QUOTE, MAX_QUOTE, 40
    return r


_REPR = _short_repr()


def os_reason(exc: OSError) -> str:
    """The human part of an ``OSError`` ("Permission denied"), without the repeated path."""
    return exc.strerror or str(exc) or type(exc).__name__


EXIT_CODE_HELP = (
    "Exit codes: 0 success; 1 compare: a stage out of tolerance; 2 configuration or usage; "
    "3 input (points, images, calibration); 4 dataset; 5 unsafe file refused; 6 package; "
    f"7 checkpoint; {PARTIAL_EXIT} partial run (--on-error skip skipped frames); 9 output not "
    f"writable; {INTERNAL_EXIT} internal error (a bug); {INTERRUPTED_EXIT} interrupted (Ctrl-C); "
    f"{TERMINATED_EXIT} terminated (SIGTERM). --debug shows the traceback.")

EXIT_CODES: dict[type[BevDeployError], int] = {
    cls: cls.exit_code
    for cls in (BevDeployError, ConfigError, InputError, DatasetError, UnsafeFileError,
                PackageError, CheckpointError, OutputError)
}
