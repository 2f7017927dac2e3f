"""Fixtures of the bag tests: the synthetic world's mini_val scene as a ROS 2 bag, and a short
piece of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bag_support import rewrite_bag
from bevdeploy.data.bags.reader import Bag


@pytest.fixture(scope="session")
def synthetic_bag(synthetic_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mini_val scene of the session world as a bag (data/synthetic/bag.py)."""
    from nuscenes.utils.splits import create_splits_scenes

    from bevdeploy.data.synthetic.bag import write_bag

    scenes = json.loads((synthetic_world / "v1.0-mini" / "scene.json").read_text())
    val = [s["name"] for s in scenes if s["name"] in create_splits_scenes()["mini_val"]]
    return write_bag(synthetic_world, tmp_path_factory.mktemp("bag") / "world.mcap",
                     scenes=val)


@pytest.fixture(scope="session")
def short_bag(synthetic_bag: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 0.3 s of the bag around its first key frame (6 sweeps), small chunks (one
    sweep per chunk) so a corrupt chunk costs one frame."""
    with Bag(synthetic_bag) as bag:
        lidar = bag.topics["/lidar_top/points"]
    start = lidar.start_ns + 300_000_000

    def keep(topic: str, t: int, msg: object) -> list:  # images and /tf around every sweep
        margin = 0 if topic == "/lidar_top/points" else 100_000_000
        return [(topic, t, msg)] if topic == "/tf_static" or (
            start - margin <= t <= start + 300_000_000 + margin) else []

    return rewrite_bag(synthetic_bag, tmp_path_factory.mktemp("short") / "short.mcap", keep,
                       chunk_size=64 * 1024)
