"""Fixtures of the CUDA-kernel tests: one frame of the synthetic world (``tiny`` preset)."""

from __future__ import annotations

import pytest

from bevdeploy.data.frame import Frame
from bevdeploy.data.nuscenes import NuScenesLoader


@pytest.fixture(scope="module")
def world_frame(synthetic_world) -> Frame:
    """Real points, images and calibration, as the pipeline would feed the kernels."""
    return NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val",
                          preset="tiny")[0]
