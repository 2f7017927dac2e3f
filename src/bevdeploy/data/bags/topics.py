"""Which topic is which sensor: the topic map, from a YAML file or detected from the bag.

```yaml
lidar: /lidar_top/points
cameras:                       # the preset's camera names, in any order
  CAM_FRONT: {image: /cam_front/image_raw/compressed, info: /cam_front/camera_info}
  ...
frames: {global: map, base: base_link}   # optional: the ego-pose chain in /tf
```

Without ``frames`` (in a YAML or detected) the chain is the first ``/tf`` transform whose parent
is map, odom or world (``ego_frames``).

Detection matches a preset camera name (``CAM_FRONT``) to a topic having a path segment of the
same letters and digits (``/cam_front/...``), or failing that to a topic whose first message's
``frame_id`` does; the single PointCloud2 topic is the LiDAR. When a camera has both a
``CompressedImage`` and an ``Image`` topic the compressed one is taken (it is what bags keep);
anything still ambiguous or unmatched is an error that lists the candidates and asks for
``--topics``. ``bevdeploy bag info`` prints the proposed map as this YAML.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bevdeploy.data.bags.msgdefs import CAMERA_INFO, COMPRESSED_IMAGE, IMAGE, POINTCLOUD2
from bevdeploy.data.bags.reader import Bag
from bevdeploy.errors import ConfigError, InputError

IMAGE_SCHEMAS = (COMPRESSED_IMAGE, IMAGE)
GLOBAL_FRAMES = ("map", "odom", "world")


@dataclass(frozen=True)
class CameraTopics:
    image: str
    info: str


@dataclass(frozen=True)
class TopicMap:
    """The LiDAR topic, one (image, CameraInfo) pair per preset camera in the preset's order,
    and optionally the global and base frames of the ego pose in ``/tf``."""

    lidar: str
    cameras: dict[str, CameraTopics]
    global_frame: str | None = None
    base_frame: str | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"lidar": self.lidar, "cameras": {
            name: {"image": c.image, "info": c.info} for name, c in self.cameras.items()}}
        if self.global_frame or self.base_frame:
            doc["frames"] = {"global": self.global_frame, "base": self.base_frame}
        return doc

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def read_topic_map(path: str | Path, camera_names: Sequence[str]) -> TopicMap:
    """A topic map YAML, checked to name every preset camera (and nothing else)."""
    from bevdeploy.safe_yaml import load_yaml_file

    p = Path(path)
    doc = load_yaml_file(p, ConfigError, field="topics")
    if not isinstance(doc, dict) or not isinstance(doc.get("lidar"), str):
        raise ConfigError("expected a mapping with a 'lidar' topic and 'cameras'", path=p,
                          field="lidar")
    cams = doc.get("cameras")
    if not isinstance(cams, dict):
        raise ConfigError("expected a mapping camera name → {image, info}", path=p,
                          field="cameras")
    unknown = sorted(set(cams) - set(camera_names))
    missing = [c for c in camera_names if c not in cams]
    if unknown or missing:
        raise ConfigError(f"cameras must be the preset's {list(camera_names)}; missing "
                          f"{missing}, unknown {unknown}", path=p, field="cameras")
    out = {}
    for name in camera_names:
        entry = cams[name]
        if not (isinstance(entry, dict) and isinstance(entry.get("image"), str)
                and isinstance(entry.get("info"), str)):
            raise ConfigError("expected {image: TOPIC, info: TOPIC}", path=p,
                              field=f"cameras.{name}")
        out[name] = CameraTopics(entry["image"], entry["info"])
    frames = doc.get("frames") or {}
    if not isinstance(frames, dict):
        raise ConfigError("expected {global: FRAME, base: FRAME}", path=p, field="frames")
    return TopicMap(doc["lidar"], out, frames.get("global"), frames.get("base"))


def _frame_id(bag: Bag, topic: str) -> str:
    msg = bag.first(topic)
    return "" if msg is None else str(msg.header.frame_id)


def _match(bag: Bag, name: str, candidates: list[str]) -> list[str]:
    key = _norm(name)
    by_topic = [t for t in candidates if key in {_norm(s) for s in t.split("/") if s}]
    if by_topic:
        return by_topic
    return [t for t in candidates if _norm(_frame_id(bag, t)).removesuffix("opticalframe")
            .removesuffix("optical") == key]


def detect_topic_map(bag: Bag, camera_names: Sequence[str]) -> TopicMap:
    """The topic map proposed for ``bag`` and the preset's cameras (module doc)."""
    def of(*schemas: str) -> list[str]:
        return [t.name for t in bag.topics.values() if t.schema in schemas]

    clouds = of(POINTCLOUD2)
    if len(clouds) != 1:
        raise InputError(f"{'no' if not clouds else 'several'} PointCloud2 topic(s) "
                         f"{clouds}; name the LiDAR in --topics. The bag has: {bag.listing()}",
                         path=bag.path, field="lidar")
    images, infos = of(*IMAGE_SCHEMAS), of(CAMERA_INFO)
    cameras, notes, problems = {}, [], []
    for name in camera_names:
        found = _match(bag, name, images)
        if len(found) > 1:
            compressed = [t for t in found if bag.topics[t].schema == COMPRESSED_IMAGE]
            if len(compressed) == 1:
                notes.append(f"{name}: {compressed[0]} taken over "
                             f"{sorted(set(found) - set(compressed))}")
                found = compressed
        info = _match(bag, name, infos)
        if len(found) != 1 or len(info) != 1:
            problems.append(f"{name}: image topics {found or 'none'}, CameraInfo {info or 'none'}")
            continue
        cameras[name] = CameraTopics(found[0], info[0])
    if problems:
        raise InputError("cannot tell which topic is which camera (" + "; ".join(problems)
                         + f"); write a --topics YAML. The bag has: {bag.listing()}",
                         path=bag.path, field="cameras")
    global_frame, base_frame = ego_frames(bag)
    return TopicMap(clouds[0], cameras, global_frame, base_frame, tuple(notes))


def ego_frames(bag: Bag) -> tuple[str | None, str | None]:
    """(global, base) of the ego pose: the first ``/tf`` transform whose parent is map, odom
    or world; (None, None) without one."""
    if "/tf" not in bag.topics or bag.topics["/tf"].count == 0:
        return None, None
    msg = bag.first("/tf")
    for tr in getattr(msg, "transforms", []):
        parent = tr.header.frame_id.lstrip("/")
        if parent in GLOBAL_FRAMES:
            return parent, tr.child_frame_id.lstrip("/")
    return None, None
