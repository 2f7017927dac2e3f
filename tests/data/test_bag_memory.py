"""A 1,000-sweep bag streams with flat memory (slow: about two minutes on two cores)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from bag_support import long_bag
from bevdeploy.data.bags.source import BagSource
from bevdeploy.data.streams import InOrder
from bevdeploy.presets import get_preset

SWEEPS = 1000


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.slow
def test_a_thousand_sweeps_stream_with_flat_memory(short_bag: Path, tmp_path: Path) -> None:
    path = long_bag(short_bag, tmp_path / "long.mcap", SWEEPS)
    frames = InOrder(BagSource(path, get_preset("tiny")))
    assert len(frames) == SWEEPS
    rss, times = {}, []
    for i in range(SWEEPS):
        t = time.perf_counter()
        frame = frames[i]
        times.append(time.perf_counter() - t)
        assert frame.points.shape[0] > 1000
        if i in (100, SWEEPS - 1):
            rss[i] = _rss_mb()
    growth = rss[SWEEPS - 1] - rss[100]
    print(f"RSS after frame 100: {rss[100]:.0f} MB, after {SWEEPS}: {rss[SWEEPS - 1]:.0f} MB "
          f"(growth {growth:+.1f} MB); read + sync per frame: median "
          f"{np.median(times) * 1e3:.1f} ms, p90 {np.percentile(times, 90) * 1e3:.1f} ms")
    assert growth < 32
