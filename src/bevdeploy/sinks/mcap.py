"""Detections as a Foxglove scene in an MCAP file (``infer --bag-out``).

Each finished frame becomes one ``foxglove.SceneUpdate`` (protobuf, from
``foxglove-schemas-protobuf``, written with MCAP's protobuf schema encoding): a deletion of the
previous frame's boxes, then one entity per box scoring at least the threshold — a cube
coloured by class and a billboard label ``class score`` — in the LiDAR sweep's ``frame_id`` at
its stamp, so Foxglove draws the boxes over the points. With ``copy_from`` the input bag's
messages are copied alongside (raw CDR bytes, the original schemas), interleaved in log time as
frames finish, so one file opens with points, images, TF and boxes. The file is written to a
temporary path and renamed when the run closes, with the frames that finished.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from foxglove_schemas_protobuf.SceneEntityDeletion_pb2 import SceneEntityDeletion
from foxglove_schemas_protobuf.SceneUpdate_pb2 import SceneUpdate
from mcap.records import Message
from mcap.writer import Writer
from mcap_protobuf.schema import build_file_descriptor_set

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.io import atomic_file
from bevdeploy.sinks.base import RunRecord, ended_early

DETECTIONS_TOPIC = "/bevdeploy/detections"
# One colour per class index (RGB 0..1), Tableau 10: distinct, readable on a dark background.
PALETTE = np.array([[0.12, 0.47, 0.71], [1.0, 0.5, 0.05], [0.17, 0.63, 0.17], [0.84, 0.15, 0.16],
                    [0.58, 0.4, 0.74], [0.55, 0.34, 0.29], [0.89, 0.47, 0.76], [0.5, 0.5, 0.5],
                    [0.74, 0.74, 0.13], [0.09, 0.75, 0.81]])


def scene_update(detections: Detections, *, stamp_ns: int, frame_id: str,
                 score_threshold: float) -> SceneUpdate:
    """The SceneUpdate of one frame (module doc)."""
    update = SceneUpdate()
    deletion = update.deletions.add()
    deletion.timestamp.FromNanoseconds(stamp_ns)
    deletion.type = SceneEntityDeletion.ALL
    keep = detections.scores >= score_threshold
    for i, (box, score, label) in enumerate(zip(detections.boxes[keep], detections.scores[keep],
                                                detections.labels[keep])):
        x, y, z, l, w, h, yaw = (float(v) for v in box[:7])
        name = detections.class_names[int(label)]
        entity = update.entities.add()
        entity.timestamp.FromNanoseconds(stamp_ns)
        entity.frame_id = frame_id
        entity.id = f"box-{i}"
        meta = entity.metadata.add()
        meta.key, meta.value = "class", name
        meta = entity.metadata.add()
        meta.key, meta.value = "score", f"{float(score):.4f}"
        r, g, b = PALETTE[int(label) % len(PALETTE)]
        cube = entity.cubes.add()
        cube.pose.position.x, cube.pose.position.y, cube.pose.position.z = x, y, z
        cube.pose.orientation.z, cube.pose.orientation.w = np.sin(yaw / 2), np.cos(yaw / 2)
        cube.size.x, cube.size.y, cube.size.z = l, w, h
        cube.color.r, cube.color.g, cube.color.b, cube.color.a = r, g, b, 0.4
        text = entity.texts.add()
        text.pose.position.x, text.pose.position.y, text.pose.position.z = x, y, z + h / 2
        text.pose.orientation.w = 1.0
        text.billboard, text.scale_invariant, text.font_size = True, True, 14.0
        text.color.r, text.color.g, text.color.b, text.color.a = r, g, b, 1.0
        text.text = f"{name} {float(score):.2f}"
    return update


class FoxgloveScene:
    """The sink (module doc). ``headers`` maps a frame's token to its sweep's (stamp ns,
    frame_id) — a ``BagSource``'s ``header`` — else the frame's µs timestamp and
    ``frame_id`` are used; ``copy_from`` is the input bag to copy."""

    def __init__(self, path: str | Path, *, score_threshold: float, headers: Any = None,
                 copy_from: Any = None, frame_id: str = "lidar") -> None:
        self.path = Path(path)
        self.score_threshold = score_threshold
        self.headers = headers
        self.frame_id = frame_id
        self.copy_from = copy_from  # a data.bags.reader.Bag
        self._stack = contextlib.ExitStack()
        self._writer: Writer | None = None
        self._channel: int | None = None
        self._copied: dict[int, int] = {}  # input channel id → output channel id
        self._schemas: dict[int, int] = {}
        self._pending: Iterator[Any] | None = None
        self._next: Message | None = None
        self.frames = 0

    def _open(self) -> Writer:
        if self._writer is None:
            handle: BinaryIO = self._stack.enter_context(atomic_file(self.path))
            self._writer = Writer(handle)
            self._writer.start(profile="", library="bevdeploy")
            fds = build_file_descriptor_set(SceneUpdate)
            schema = self._writer.register_schema("foxglove.SceneUpdate", "protobuf",
                                                  fds.SerializeToString())
            self._channel = self._writer.register_channel(DETECTIONS_TOPIC, "protobuf", schema)
            if self.copy_from is not None:
                self._pending = (m for m in self.copy_from.raw() if isinstance(m, Message))
                self._next = next(self._pending, None)
        return self._writer

    def _copy_until(self, ns: int | None) -> None:
        """Copy the input's messages logged at or before ``ns`` (all when None)."""
        writer = self._open()
        summary = self.copy_from.summary if self.copy_from is not None else None
        while self._next is not None and (ns is None or self._next.log_time <= ns):
            m = self._next
            if m.channel_id not in self._copied:
                ch = summary.channels[m.channel_id]
                if ch.schema_id and ch.schema_id not in self._schemas:
                    s = summary.schemas[ch.schema_id]
                    self._schemas[ch.schema_id] = writer.register_schema(s.name, s.encoding,
                                                                         s.data)
                self._copied[m.channel_id] = writer.register_channel(
                    ch.topic, ch.message_encoding, self._schemas.get(ch.schema_id, 0))
            writer.add_message(self._copied[m.channel_id], m.log_time, m.data, m.publish_time,
                               m.sequence)
            self._next = next(self._pending, None) if self._pending is not None else None

    def write(self, frame: Frame, detections: Detections, timings: Mapping[str, float]) -> None:
        header = self.headers(frame.token) if self.headers is not None else None
        stamp_ns, frame_id = header or (frame.timestamp * 1000, self.frame_id)
        writer = self._open()
        self._copy_until(stamp_ns)
        update = scene_update(detections, stamp_ns=stamp_ns, frame_id=frame_id,
                              score_threshold=self.score_threshold)
        assert self._channel is not None
        writer.add_message(self._channel, stamp_ns, update.SerializeToString(), stamp_ns,
                           self.frames)
        self.frames += 1

    def close(self, run: RunRecord) -> list[Path]:
        """Finish the file: the rest of the input copied when the run was not cut short."""
        if self._writer is None:
            return []
        if not ended_early(run):
            self._copy_until(None)
        self._writer.finish()
        if self.copy_from is not None:
            self.copy_from.close()
        self._stack.close()
        return [self.path]
