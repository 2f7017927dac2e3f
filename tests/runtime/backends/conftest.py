"""The package both backend test modules run: the tiny preset with its shipped trained weights,
exported once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from bevdeploy.export.writer import export_package
from bevdeploy.presets import get_preset


@pytest.fixture(scope="session")
def trained_tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    preset = get_preset("tiny")
    return export_package(preset, preset.checkpoint_path,
                          tmp_path_factory.mktemp("backends") / "pkg")
