"""``--on-missing-camera`` and ``--drop-camera`` of ``infer`` and ``eval``: checked before
anything loads, and turned into the dataset source's ``CameraDropout``."""

from __future__ import annotations

from collections.abc import Sequence

from bevdeploy.data.camera_dropout import CameraDropout, OnMissingCamera
from bevdeploy.errors import ConfigError


def camera_dropout(on_missing: OnMissingCamera, drop: Sequence[str] | None, *,
                   dataset: bool, ray: str | None) -> CameraDropout:
    """The dropout of a run. Only a dataset source (``--data``) honours it so far, and only in
    this process: a bag, a single frame or ``--ray`` workers would silently ignore it, so they
    are refused."""
    dropout = CameraDropout(OnMissingCamera(on_missing).value, tuple(drop or ()))
    if dropout == CameraDropout():
        return dropout
    flag = "--drop-camera" if dropout.drop else "--on-missing-camera"
    if not dataset:
        raise ConfigError("camera dropout applies to a dataset (--data) only", field=flag)
    if ray is not None:
        raise ConfigError("camera dropout is not passed to --ray workers yet; run without "
                          "--ray", field=flag)
    return dropout
