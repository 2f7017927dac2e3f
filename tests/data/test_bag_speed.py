"""Issue #19's speed target: reading and synchronising a bag frame costs under 10 % of the tiny
detector's time per frame (slow: about a minute on two cores)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from bag_support import long_bag
from bevdeploy import detector
from bevdeploy.data.bags.source import BagSource
from bevdeploy.data.streams import InOrder
from bevdeploy.presets import get_preset
from bevdeploy.shipped import shipped_package_dir

FRAMES = 200
WARM_UP = 5


@pytest.mark.slow
def test_read_and_sync_is_a_small_part_of_the_tiny_detectors_time(short_bag: Path,
                                                                   tmp_path: Path) -> None:
    """Timed as ``run_frames`` runs them, read frame i then detect it, so machine load weighs
    on both; medians printed. The bound asserted is twice the target: on a shared two-core
    machine the detector's threads suffer more from load than the reading does, and the
    printed figures, not the assertion, are the measurement."""
    frames = InOrder(BagSource(long_bag(short_bag, tmp_path / "long.mcap", FRAMES),
                               get_preset("tiny")))
    read, detect = [], []
    with detector.open(shipped_package_dir("tiny")) as model:
        for i in range(FRAMES):
            t0 = time.perf_counter()
            frame = frames[i]
            t1 = time.perf_counter()
            model(frame)
            read.append(t1 - t0)
            detect.append(time.perf_counter() - t1)
    r, d = np.median(read[WARM_UP:]) * 1e3, np.median(detect[WARM_UP:]) * 1e3
    print(f"median per frame over {FRAMES - WARM_UP} frames: read + sync {r:.1f} ms (p90 "
          f"{np.percentile(read[WARM_UP:], 90) * 1e3:.1f}), tiny detector {d:.1f} ms; "
          f"ratio {r / d:.1%}")
    assert r / d < 0.2
