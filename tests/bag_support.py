"""Helpers of the bag tests: rewrite a bag message by message (to make hostile ones)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcap_ros2.writer import Writer

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
