"""Helpers of the bag tests: rewrite a bag message by message (to make hostile ones), or copy
it without one topic's messages, or build a long one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcap_ros2.writer import Writer

from bevdeploy.data.bags import msgdefs
from bevdeploy.data.bags.reader import Bag, BagMessage

Edit = Callable[[str, int, Any], list[tuple[str, int, Any]]]


def rewrite_bag(src: Path, dst: Path, edit: Edit, *, chunk_size: int = 1024 * 1024) -> Path:
    """``dst``: ``src``'s messages, each replaced by what ``edit(topic, log_time, msg)``
    returns (a list of (topic, log_time, msg); [] drops it)."""
    with Bag(src) as bag, open(dst, "wb") as f:
        writer = Writer(f, chunk_size=chunk_size)
        schemas = {}
        for t in bag.topics.values():
            s = next(s for s in bag.summary.schemas.values() if s.name == t.schema)
            if s.name not in schemas:
                schemas[s.name] = writer.register_msgdef(s.name, s.data.decode())
        for item in bag.messages(list(bag.topics)):
            assert isinstance(item, BagMessage)
            for topic, log_time, msg in edit(item.topic, item.log_time, item.msg):
                writer.write_message(topic, schemas[bag.topics[item.topic].schema], msg,
                                     log_time=log_time, publish_time=log_time)
        writer.finish()
    return dst


def drop_messages(src: Path, dst: Path, topic: str) -> Path:
    """``dst``: ``src`` copied record for record with every channel registered but none of
    ``topic``'s messages: a sensor that was recorded but never published."""
    from mcap.records import Message
    from mcap.writer import Writer as McapWriter

    with Bag(src) as bag, open(dst, "wb") as f:
        writer = McapWriter(f)
        writer.start(profile="ros2", library="bevdeploy tests")
        schemas = {sid: writer.register_schema(s.name, s.encoding, s.data)
                   for sid, s in bag.summary.schemas.items()}
        channels = {cid: writer.register_channel(c.topic, c.message_encoding,
                                                 schemas[c.schema_id])
                    for cid, c in bag.summary.channels.items()}
        for m in bag.raw():
            assert isinstance(m, Message)
            if bag.summary.channels[m.channel_id].topic != topic:
                writer.add_message(channels[m.channel_id], m.log_time, m.data, m.publish_time)
        writer.finish()
    return dst


def long_bag(short_bag: Path, out: Path, sweeps: int = 1000) -> Path:
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
        registered = {s: writer.register_msgdef(s, msgdefs.msgdef(s))
                      for s in set(schemas.values())}
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
