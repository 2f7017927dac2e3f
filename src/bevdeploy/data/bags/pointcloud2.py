"""``sensor_msgs/PointCloud2`` of any field layout → ``(P, 5)`` points, and back.

Drivers differ: Velodyne publishes float32 x, y, z, intensity, a uint16 ring and a float32
``time``; Ouster pads its records and uses a uint32 ``t`` in nanoseconds; others write float64
coordinates or big-endian data. Rather than assume one layout, the record is described to numpy
as a structured dtype built from the message's own ``fields``, ``point_step``, ``row_step`` and
``is_bigendian``, so every layout decodes with one vectorised view. A layout that cannot be
read (no x/y/z, an unknown datatype, a record longer than ``point_step``, too little data) is an
``InputError`` naming the topic and the field, never a garbled cloud.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bevdeploy.data.bags.msgdefs import header
from bevdeploy.errors import InputError

# sensor_msgs/PointField datatypes → numpy kinds
DATATYPES: dict[int, str] = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4",
                             8: "f8"}
_CODES = {v: k for k, v in DATATYPES.items()}
INTENSITY_FIELDS = ("intensity", "reflectivity", "i")
# Per-point capture time. Float fields are seconds, integer fields nanoseconds; a value that
# is a plausible Unix time (> 1e9 s) is absolute, otherwise relative to the header stamp.
TIME_FIELDS = ("time", "t", "timestamp", "time_offset")
_ABSOLUTE_S = 1e9


@dataclass
class Cloud:
    """One decoded sweep: ``points`` (P, 5) float32 x, y, z, intensity, 0 in the sensor frame
    (column 5 is the time lag the aggregation fills), and ``time_s`` (P,) seconds of each point
    relative to the header stamp, when the cloud carries a per-point time field."""

    points: np.ndarray
    time_s: np.ndarray | None


def _dtype(msg: Any, where: str) -> np.dtype:
    names, formats, offsets = [], [], []
    order = ">" if msg.is_bigendian else "<"
    for f in msg.fields:
        kind = DATATYPES.get(int(f.datatype))
        if kind is None:
            raise InputError(f"PointField {f.name!r} has unknown datatype {f.datatype} "
                             f"(known: {sorted(DATATYPES)})", path=where, field="fields")
        count = max(int(f.count), 1)
        end = int(f.offset) + np.dtype(kind).itemsize * count
        if end > msg.point_step:
            raise InputError(f"PointField {f.name!r} ends at byte {end}, past point_step "
                             f"{msg.point_step}", path=where, field="point_step")
        if f.name in names:
            continue
        names.append(f.name)
        formats.append((order + kind, (count,)) if count > 1 else order + kind)
        offsets.append(int(f.offset))
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": int(msg.point_step)})


def decode_pointcloud2(msg: Any, *, topic: str) -> Cloud:
    """Decode a ``PointCloud2`` (a message as ``mcap_ros2`` returns it). Points with a
    non-finite coordinate (a ``is_dense: false`` cloud's holes) are dropped."""
    where = f"{topic} (sensor_msgs/PointCloud2)"
    dtype = _dtype(msg, where)
    missing = [c for c in "xyz" if c not in (dtype.names or ())]
    if missing:
        raise InputError(f"no {'/'.join(missing)} field; fields are "
                         f"{[f.name for f in msg.fields]}", path=where, field="fields")
    width, height = int(msg.width), int(msg.height)
    if msg.row_step < width * msg.point_step:
        raise InputError(f"row_step {msg.row_step} < width {width} × point_step "
                         f"{msg.point_step}", path=where, field="row_step")
    data = bytes(msg.data) if not isinstance(msg.data, (bytes, bytearray)) else msg.data
    if len(data) < height * msg.row_step:
        raise InputError(f"{len(data)} bytes of data, {height} rows × row_step {msg.row_step} "
                         f"= {height * msg.row_step} expected", path=where, field="data")
    rows = np.frombuffer(data, np.uint8, count=height * msg.row_step).reshape(height, -1)
    records = np.ascontiguousarray(rows[:, :width * msg.point_step]).reshape(-1)
    cloud = records.view(dtype) if len(records) else np.zeros(0, dtype)
    xyz = np.stack([cloud[c].astype(np.float64) for c in "xyz"], axis=1)
    intensity = next((cloud[n] for n in INTENSITY_FIELDS if n in dtype.names), None)
    points = np.zeros((len(cloud), 5), np.float32)
    points[:, :3] = xyz
    if intensity is not None:
        points[:, 3] = intensity
    keep = np.isfinite(points).all(axis=1) & (np.abs(xyz) < 1e4).all(axis=1)
    time_s = _point_times(cloud, msg, dtype)
    return Cloud(points[keep], None if time_s is None else time_s[keep])


def _point_times(cloud: np.ndarray, msg: Any, dtype: np.dtype) -> np.ndarray | None:
    name = next((n for n in TIME_FIELDS if n in (dtype.names or ())), None)
    if name is None or not len(cloud):
        return None
    raw = cloud[name]
    seconds = raw.astype(np.float64) if raw.dtype.kind == "f" else raw.astype(np.float64) * 1e-9
    stamp_s = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
    if np.nanmedian(np.abs(seconds)) > _ABSOLUTE_S:
        seconds = seconds - stamp_s
    return seconds


def encode_pointcloud2(columns: Mapping[str, np.ndarray], *, stamp_ns: int, frame_id: str,
                       bigendian: bool = False, padding: int = 0,
                       row_padding: int = 0, height: int = 1) -> dict[str, Any]:
    """A ``PointCloud2`` message (as a dict for ``mcap_ros2``'s writer) of named columns, each
    ``(P,)`` in the dtype it should have on the wire, ``padding`` bytes after each field and
    ``row_padding`` after each of ``height`` rows: the layouts drivers publish."""
    order = ">" if bigendian else "<"
    fields, offset = [], 0
    for name, values in columns.items():
        kind = np.asarray(values).dtype.str[1:]
        fields.append({"name": name, "offset": offset, "datatype": _CODES[kind], "count": 1})
        offset += np.dtype(kind).itemsize + padding
    count = len(next(iter(columns.values())))
    if count % height:
        raise ValueError(f"{count} points do not fill {height} rows")
    width = count // height
    dtype = np.dtype({"names": list(columns), "offsets": [f["offset"] for f in fields],
                      "formats": [order + np.asarray(v).dtype.str[1:] for v in columns.values()],
                      "itemsize": offset})
    records = np.zeros(count, dtype)
    for name, values in columns.items():
        records[name] = values
    rows = records.view(np.uint8).reshape(height, width * offset)
    data = np.concatenate([rows, np.zeros((height, row_padding), np.uint8)], axis=1)
    return {"header": header(stamp_ns, frame_id), "height": height, "width": width,
            "fields": fields, "is_bigendian": bigendian, "point_step": offset,
            "row_step": width * offset + row_padding, "data": data.tobytes(), "is_dense": True}
