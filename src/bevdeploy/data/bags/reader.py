"""The bag file: its index (topics, types, counts, rates) and its messages, streamed in order.

Messages are read one chunk at a time through the MCAP index, so a one-hour bag is never in
memory; each chunk's CRC is checked, and a chunk that fails (a bad CRC, a truncated or
undecompressible record) is reported as a ``CorruptChunk`` naming its byte offset and the
LiDAR sweeps it held (from the chunk's message index, which lies outside the damaged data),
so the frame loop can skip exactly those frames or stop, by its policy. A bag without an index
(a recording that was not closed) is refused with the command that rebuilds one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from mcap.data_stream import ReadDataStream
from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap.records import Chunk, ChunkIndex, Message, MessageIndex, Schema
from mcap.stream_reader import breakup_chunk
from mcap_ros2.decoder import DecoderFactory

from bevdeploy.errors import InputError, os_reason


@dataclass(frozen=True)
class Topic:
    """One channel of the bag as its index describes it."""

    name: str
    schema: str  # e.g. sensor_msgs/msg/PointCloud2
    encoding: str  # message encoding, "cdr" for ROS 2
    count: int
    start_ns: int
    end_ns: int



@dataclass(frozen=True)
class BagMessage:
    """A message of a wanted topic, decoded by its ROS 2 definition."""

    topic: str
    schema: str
    log_time: int
    msg: Any


@dataclass(frozen=True)
class CorruptChunk:
    """A chunk that could not be read: where, why, and which messages of the watched topic
    (``lost_ns``: their log times) it held."""

    offset: int
    reason: str
    start_ns: int
    end_ns: int
    lost_ns: tuple[int, ...]

    def error(self, path: str | Path) -> InputError:
        return InputError(f"chunk at byte {self.offset} (messages {self.start_ns}..{self.end_ns}"
                          f" ns) is corrupt: {self.reason}", path=path, field="chunk")


def resolve(path: str | Path) -> Path:
    """The ``.mcap`` file of ``path``: the file itself, or the one file in a ``ros2 bag``
    directory (``metadata.yaml`` beside it)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.mcap"))
        if len(files) != 1:
            raise InputError(f"a bag directory must hold exactly one .mcap file, found "
                             f"{[f.name for f in files]}", path=p, field="bag")
        return files[0]
    if not p.is_file():
        raise InputError("bag file not found", path=p, field="bag")
    return p


class Bag:
    """An open MCAP file. ``topics`` come from the summary; ``messages(topics)`` streams."""

    def __init__(self, path: str | Path) -> None:
        self.path = resolve(path)
        try:
            self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise InputError(f"cannot read the bag: {os_reason(exc)}", path=self.path,
                             field="bag") from None
        try:
            self.summary = make_reader(self._file).get_summary()
        except (McapError, ValueError, EOFError, OSError) as exc:
            self.close()
            raise InputError(f"not a readable MCAP file ({type(exc).__name__}: {exc})",
                             path=self.path, field="bag") from None
        if self.summary is None or self.summary.statistics is None:
            self.close()
            raise InputError("the bag has no index (summary section): the recording was not "
                             "closed cleanly; `mcap recover IN.mcap -o OUT.mcap` rebuilds it",
                             path=self.path, field="summary")
        self._decoders = DecoderFactory()
        stats = self.summary.statistics
        self.topics: dict[str, Topic] = {}
        self._ids: dict[str, int] = {}
        for cid, ch in sorted(self.summary.channels.items()):
            schema = self.summary.schemas.get(ch.schema_id)
            self._ids[ch.topic] = cid
            self.topics[ch.topic] = Topic(
                ch.topic, schema.name if schema else "", ch.message_encoding,
                stats.channel_message_counts.get(cid, 0), *self._time_range(cid))

    def _time_range(self, cid: int) -> tuple[int, int]:
        chunks = [c for c in self.summary.chunk_indexes if cid in c.message_index_offsets]
        if not chunks:
            return 0, 0
        return min(c.message_start_time for c in chunks), max(c.message_end_time for c in chunks)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Bag":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def require(self, topic: str, *, schemas: Sequence[str], field: str) -> Topic:
        """The topic, checked to exist, hold messages, be ROS 2 CDR and have one of
        ``schemas``; otherwise one line listing what the bag has."""
        t = self.topics.get(topic)
        if t is None:
            raise InputError(f"no topic {topic!r}; the bag has: {self.listing()}",
                             path=self.path, field=field)
        if t.schema not in schemas:
            raise InputError(f"topic {topic!r} is {t.schema or 'schemaless'}, expected "
                             f"{' or '.join(schemas)}", path=self.path, field=field)
        if t.encoding != "cdr":
            raise InputError(f"topic {topic!r} is encoded as {t.encoding!r}, not ROS 2 CDR",
                             path=self.path, field=field)
        if t.count == 0:
            raise InputError(f"topic {topic!r} has no messages (a sensor never seen)",
                             path=self.path, field=field)
        return t

    def listing(self) -> str:
        return ", ".join(f"{t.name} ({t.schema or '?'}, {t.count})"
                         for t in self.topics.values()) or "no topics"

    def _decode(self, cid: int, message: Message) -> BagMessage:
        ch = self.summary.channels[cid]
        schema: Schema = self.summary.schemas[ch.schema_id]
        try:
            decoder = self._decoders.decoder_for(ch.message_encoding, schema)
            assert decoder is not None  # checked by require()
            msg = decoder(message.data)
        except (McapError, ValueError, IndexError, KeyError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot decode a {schema.name} message at {message.log_time} ns "
                             f"({type(exc).__name__}: {exc})", path=f"{self.path} {ch.topic}",
                             field="data") from None
        return BagMessage(ch.topic, schema.name, message.log_time, msg)

    def rate_hz(self, topic: str) -> float:
        """Messages per second of ``topic``: the inverse of the median interval between log
        times (read from the message indexes, not the data), so gaps between recordings in one
        bag do not skew it; 0 with fewer than two messages."""
        cid = self._ids[topic]
        times: list[int] = []
        for index in self.summary.chunk_indexes:
            times += self._lost(index, cid)
        gaps = np.diff(np.sort(np.asarray(times, np.int64)))
        gaps = gaps[gaps > 0]
        return 1e9 / float(np.median(gaps)) if len(gaps) else 0.0

    def first(self, topic: str) -> Any:
        """The first message of ``topic``, decoded (for its ``frame_id``)."""
        for item in self.messages([topic]):
            if isinstance(item, BagMessage):
                return item.msg
        return None

    def messages(self, topics: Sequence[str], *, watch: str | None = None
                 ) -> Iterator[BagMessage | CorruptChunk]:
        """The messages of ``topics`` in log-time order (chunks in time order, messages sorted
        within a chunk); a damaged chunk is one ``CorruptChunk`` listing the messages of
        ``watch`` it held. Decoding errors of one message raise ``InputError``."""
        for item in self.raw(topics, watch=watch):
            yield item if isinstance(item, CorruptChunk) else self._decode(item.channel_id, item)

    def raw(self, topics: Sequence[str] | None = None, *, watch: str | None = None
            ) -> Iterator[Message | CorruptChunk]:
        """``messages`` undecoded (all topics when ``topics`` is None), for copying."""
        ids = set(self.summary.channels) if topics is None else {
            self._ids[t] for t in topics if t in self._ids}
        chunks = sorted((c for c in self.summary.chunk_indexes
                         if ids & set(c.message_index_offsets)),
                        key=lambda c: (c.message_start_time, c.chunk_start_offset))
        watched = self._ids.get(watch) if watch else None
        for index in chunks:
            try:
                self._file.seek(index.chunk_start_offset + 1 + 8)
                chunk = Chunk.read(ReadDataStream(self._file))
                records = breakup_chunk(chunk, validate_crc=True)
            except Exception as exc:  # noqa: BLE001 - any failure to parse damaged bytes
                yield CorruptChunk(index.chunk_start_offset, f"{type(exc).__name__}: {exc}",
                                   index.message_start_time, index.message_end_time,
                                   self._lost(index, watched))
                continue
            yield from sorted((r for r in records if isinstance(r, Message)
                               and r.channel_id in ids), key=lambda m: m.log_time)

    def _lost(self, index: ChunkIndex, cid: int | None) -> tuple[int, ...]:
        """Log times of channel ``cid``'s messages in a chunk, from its message index (which
        lies outside the chunk's data, so it survives a damaged chunk)."""
        offset = index.message_index_offsets.get(cid) if cid is not None else None
        if offset is None:
            return ()
        try:
            self._file.seek(offset + 1 + 8)
            return tuple(t for t, _ in MessageIndex.read(ReadDataStream(self._file)).records)
        except Exception:  # noqa: BLE001 - the index may be damaged too
            return ()


