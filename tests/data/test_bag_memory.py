"""A 1,000-sweep bag streams with flat memory (slow: about two minutes on two cores)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from mcap_ros2.writer import Writer

from bevdeploy.data.bags import msgdefs
from bevdeploy.data.bags.reader import Bag
from bevdeploy.data.bags.source import BagSource
from bevdeploy.data.streams import InOrder
from bevdeploy.presets import get_preset

SWEEPS = 1000


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def long_bag(short_bag: Path, out: Path, sweeps: int = SWEEPS) -> Path:
    """``sweeps`` LiDAR sweeps at 20 Hz, 12 Hz images and CameraInfo per camera, 50 Hz /tf
    (the ego driving on at 5 m/s), built from one sweep and one image per camera of a real
    synthetic bag; the static TF once."""
    first: dict[str, object] = {}
    with Bag(short_bag) as bag:
        schemas = {t.name: t.schema for t in bag.topics.values()}
        for m in bag.messages(list(bag.topics)):
            first.setdefault(m.topic, m.msg)
    t0 = 1_700_000_000 * 10**9
    events = []
    for i in range(sweeps):
        events.append((t0 + i * 50_000_000, "/lidar_top/points"))
    for i in range(sweeps * 50 // 20 + 10):
        events.append((t0 - 40_000_000 + i * 20_000_000, "/tf"))
    cams = sorted(t for t in schemas if t.endswith("/compressed"))
    for c, topic in enumerate(cams):
        for i in range(sweeps * 12 // 20 + 2):
            ns = t0 - 30_000_000 + c * 3_000_000 + i * 83_333_333
            events += [(ns, topic), (ns, topic.replace("/image_raw/compressed", "/camera_info"))]
    with open(out, "wb") as f:
        writer = Writer(f)
        registered = {s: writer.register_msgdef(s, msgdefs.msgdef(s)) for s in set(schemas.values())}
        writer.write_message("/tf_static", registered[schemas["/tf_static"]], first["/tf_static"],
                             log_time=t0 - 50_000_000)
        for ns, topic in sorted(events):
            msg = first[topic]
            if topic == "/tf":
                tr = msg.transforms[0]
                tr.header.stamp.sec, tr.header.stamp.nanosec = divmod(ns, 10**9)
                tr.transform.translation.x = 5.0 * (ns - t0) / 1e9
            else:
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 10**9)
            writer.write_message(topic, registered[schemas[topic]], msg, log_time=ns)
        writer.finish()
    return out


@pytest.mark.slow
def test_a_thousand_sweeps_stream_with_flat_memory(short_bag: Path, tmp_path: Path) -> None:
    path = long_bag(short_bag, tmp_path / "long.mcap")
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
