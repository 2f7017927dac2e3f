"""Session fixtures of the optimize tests: the shipped tiny model exported once, and its
optimized variants built once (calibrated on the 3 mini_train frames of the synthetic world)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bevdeploy.presets import get_preset

TINY = get_preset("tiny")
SHIPPED = TINY.checkpoint_path
CALIB_FRAMES = 3


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bevdeploy.export.writer import export_package

    return export_package(TINY, SHIPPED, tmp_path_factory.mktemp("optimize") / "fp32")


@pytest.fixture(scope="session")
def calib_source(synthetic_world: Path):
    from bevdeploy.optimize import CalibrationSource

    return CalibrationSource(synthetic_world, frames=CALIB_FRAMES, split="mini_train")


@pytest.fixture(scope="session")
def int8_result(tiny_package: Path, calib_source, tmp_path_factory: pytest.TempPathFactory):
    from bevdeploy.optimize import Int8Options, OptimizeOptions, optimize_package

    options = OptimizeOptions(simplify=True, int8=Int8Options(), calib=calib_source,
                              sensitivity="block")
    return optimize_package(tiny_package, tmp_path_factory.mktemp("int8") / "pkg", options)


@pytest.fixture(scope="session")
def fp16_result(tiny_package: Path, calib_source, tmp_path_factory: pytest.TempPathFactory):
    from bevdeploy.optimize import OptimizeOptions, optimize_package

    options = OptimizeOptions(fp16=True, calib=calib_source)
    return optimize_package(tiny_package, tmp_path_factory.mktemp("fp16") / "pkg", options)
