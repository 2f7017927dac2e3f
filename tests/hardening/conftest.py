"""Fixtures of the hardening tests: one exported ``tiny`` package (the shipped trained weights)
and a copy of the world to damage; the bad-input cases also copy and damage the good
single-frame input set ``frame_files`` (tests/conftest.py). Tests never damage shared fixtures in
place."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_package(trained_tiny_package: Path) -> Path:
    """The ``tiny`` preset exported with its shipped checkpoint (mAP 0.625 on mini_val): the
    session's ``trained_tiny_package``, exported once for every test folder."""
    return trained_tiny_package


@pytest.fixture
def world_copy(synthetic_world: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic world, free to damage."""
    return Path(shutil.copytree(synthetic_world, tmp_path / "world"))
