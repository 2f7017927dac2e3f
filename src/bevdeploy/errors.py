"""One error hierarchy for everything a user can get wrong.

Every message names the culprit (file and field) and what was expected, so that a fleet job
that fails on frame 4,031 of a recording says which file to look at. The CLI prints these in
one line and maps each class to its own exit code (see ``EXIT_CODES``).
"""

from __future__ import annotations

from pathlib import Path


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


EXIT_CODES: dict[type[BevDeployError], int] = {
    cls: cls.exit_code
    for cls in (BevDeployError, ConfigError, InputError, DatasetError, UnsafeFileError,
                PackageError, CheckpointError)
}
