"""The header of a PCL ``.pcd`` file checked against the bytes that follow it, before a reader
allocates what the header declares.

pypcd4 trusts the header: ``POINTS 5.8e17`` over one record is read as one point without a word,
``COUNT 1000000000`` builds a billion-field dtype, and a ``binary_compressed`` payload is
decompressed into a buffer of the size the file claims. ``check_pcd_header`` reads the header
itself (lines capped in length and number), bounds the record, and requires a binary payload to
be exactly ``POINTS`` records and a compressed one to declare exactly that many bytes, with a
size LZF can reach from the compressed bytes present. ASCII payloads are counted after parsing
(by the caller), which needs no more memory than the file itself.
"""

from __future__ import annotations

import struct
from pathlib import Path

from pypcd4.pypcd4 import MetaData

from bevdeploy.errors import InputError, excerpt

MAX_HEADER_LINE = 4096
MAX_HEADER_LINES = 64  # comments included; the header proper has 10 lines
MAX_RECORD_VALUES = 256  # sum of COUNT: x, y, z, intensity, ring, time and a few more
LZF_MAX_RATIO = 100  # LZF encodes at most 264 repeated bytes in 3: ~88×


def check_pcd_header(path: Path) -> int:
    """The number of points the header of ``path`` declares, once it is known to fit the file;
    ``InputError`` naming the field otherwise."""
    lines, end = _header_lines(path)
    try:
        meta = MetaData.parse_header(lines)
    except Exception as exc:  # pydantic's ValidationError, ValueError on a bad number
        raise InputError(f"not a readable PCD header: {excerpt(exc)}", path=path,
                         field="header") from None
    counts = tuple(meta.count)
    if any(c < 1 for c in counts) or sum(counts) > MAX_RECORD_VALUES:
        raise InputError(f"COUNT {excerpt(list(counts))} declares more than "
                         f"{MAX_RECORD_VALUES} values per point (or a count below 1)",
                         path=path, field="count")
    if meta.points < 0 or meta.points != meta.width * meta.height:
        raise InputError(f"POINTS {meta.points} is not WIDTH × HEIGHT ({meta.width} × "
                         f"{meta.height})", path=path, field="points")
    record = meta.build_dtype().itemsize
    payload = path.stat().st_size - end
    encoding = str(getattr(meta.data, "value", meta.data)).lower()
    if encoding == "binary" and payload != meta.points * record:
        raise InputError(f"the header declares {meta.points:,} points of {record} bytes "
                         f"({meta.points * record:,} bytes) but {payload:,} bytes of data "
                         "follow it", path=path, field="points")
    if encoding == "binary_compressed" and meta.points:
        with path.open("rb") as handle:
            handle.seek(end)
            sizes = handle.read(8)
        if len(sizes) < 8:
            raise InputError("the compressed payload has no size fields", path=path,
                             field="data")
        compressed, uncompressed = struct.unpack("<II", sizes)
        if compressed > payload - 8 or uncompressed != meta.points * record \
                or uncompressed > LZF_MAX_RATIO * compressed + MAX_HEADER_LINE:
            raise InputError(f"the header declares {meta.points:,} points ({meta.points * record:,}"
                             f" bytes) but the compressed payload holds {payload - 8:,} bytes "
                             f"declaring {compressed:,} → {uncompressed:,}", path=path,
                             field="points")
    return meta.points


def _header_lines(path: Path) -> tuple[list[str], int]:
    """The header's lines as pypcd4 reads them (comments and blank lines skipped, up to the
    ``DATA`` line) and the offset of the payload."""
    lines: list[str] = []
    with path.open("rb") as handle:
        for _ in range(MAX_HEADER_LINES):
            raw = handle.readline(MAX_HEADER_LINE + 1)
            if not raw:
                break
            if len(raw) > MAX_HEADER_LINE:
                raise InputError(f"a header line longer than {MAX_HEADER_LINE} bytes",
                                 path=path, field="header")
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise InputError("the header is not text", path=path, field="header") from None
            if line and not line.startswith("#"):
                lines.append(line)
                if line.startswith("DATA"):
                    return lines, handle.tell()
    raise InputError("no DATA line in the first header lines", path=path, field="header")
