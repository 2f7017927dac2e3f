"""``BagSource``: the frames of a ROS 2 bag, streamed in order with bounded memory.

Every LiDAR sweep is a key (or, for ``eval``, every sweep whose stamp is a sample of the
ground truth: ``keys``). A key waits until every camera has an image stamped beyond
``key + slop`` (or the stream is ``MAX_WAIT_NS`` past it, so a dead camera cannot hold the
stream); then the nearest image of each camera within ``slop`` is taken, the calibration is
read from the TF tree at the right times, and the previous sweeps are aggregated. Buffers keep
only what a later key can still use: images newer than the oldest waiting key minus the slop,
sweeps within ``MAX_SWEEP_SPAN_NS``, ``/tf`` samples bracketing those times.

Calibration, in the nuScenes convention (docs/reference.md#conventions): with an ego pose in
``/tf`` (global → base), ``camera2lidar`` goes through the global frame with the camera's own
ego pose at its stamp, previous sweeps are moved into the key sweep's frame the same way and
``lidar2ego`` / ``ego2global`` are set (so a nuScenes submission can be written); without one,
the extrinsics come from the static tree at the key's stamp, the frame is a single sweep (the
key sweep repeated, as the reference pads a sample without sweeps) and has no global pose.

Failures are per frame, under the run's error policy: a sweep in a corrupt chunk, a stamp that
goes backwards, a camera with no image within the slop, a TF chain that does not connect, an
unknown encoding — each one line naming the bag, topic and field.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bevdeploy.data.bags.images import decode_into, intrinsics
from bevdeploy.data.bags.msgdefs import (CAMERA_INFO, COMPRESSED_IMAGE, IMAGE, POINTCLOUD2,
                                         TF_MESSAGE)
from bevdeploy.data.bags.pointcloud2 import Cloud, decode_pointcloud2
from bevdeploy.data.bags.reader import Bag, BagMessage, CorruptChunk
from bevdeploy.data.bags.tf import TfTree, invert_rigid
from bevdeploy.data.bags.topics import (TopicMap, detect_topic_map, ego_frames,
                                        read_topic_map)
from bevdeploy.data.frame import Calibration, Frame
from bevdeploy.data.readers import remove_close, select_sweeps
from bevdeploy.data.streams import FrameSlot
from bevdeploy.errors import ConfigError, InputError
from bevdeploy.presets import Preset

DEFAULT_SLOP_S = 0.05
MAX_WAIT_NS = 2_000_000_000  # a key is emitted at the latest this long after its stamp
MAX_SWEEP_SPAN_NS = 550_000_000  # previous sweeps older than this are not aggregated
_HEADERS_KEPT = 16
# A frame's images are decoded on this many threads (libjpeg-turbo releases the GIL): the
# frame loop reads while the detector waits, so on a two-core machine the second core is free.
DECODE_THREADS = 2


def _ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


@dataclass
class _Sweep:
    ns: int
    frame_id: str
    cloud: Cloud | None
    key: str | None  # token of the frame it is the key of, None for a previous sweep only
    error: InputError | None = None


@dataclass(frozen=True)
class _Image:
    ns: int
    frame_id: str
    msg: Any
    compressed: bool


class BagSource:
    """The frames of ``path`` for ``preset`` (module doc). ``topics``: a topic map YAML, else
    detected; ``slop_s``: the camera sync window; ``keys``: sample timestamp (µs) → sample
    token, to run only the sweeps the ground truth annotates (their frames carry the token).
    Opening reads the bag's index and checks the topics, before any model loads."""

    def __init__(self, path: str | Path, preset: Preset, *, topics: str | Path | None = None,
                 slop_s: float = DEFAULT_SLOP_S, keys: Mapping[int, str] | None = None) -> None:
        if not 0 < slop_s <= 1.0:
            raise ConfigError(f"must be in (0, 1] s, got {slop_s}", field="--sync-slop")
        self.preset = preset
        self.slop_ns = int(round(slop_s * 1e9))
        self.bag = Bag(path)
        names = preset.cameras.names
        self.map: TopicMap = (read_topic_map(topics, names) if topics is not None
                              else detect_topic_map(self.bag, names))
        if not (self.map.global_frame or self.map.base_frame):  # a YAML without frames
            self.map = replace(self.map, **dict(zip(("global_frame", "base_frame"),
                                                    ego_frames(self.bag))))
        lidar = self.bag.require(self.map.lidar, schemas=(POINTCLOUD2,), field="lidar")
        for name, cam in self.map.cameras.items():
            self.bag.require(cam.image, schemas=(COMPRESSED_IMAGE, IMAGE), field=name)
            self.bag.require(cam.info, schemas=(CAMERA_INFO,), field=f"{name}.info")
        self.tf_topics = [t for t in ("/tf_static", "/tf") if t in self.bag.topics]
        for t in self.tf_topics:
            self.bag.require(t, schemas=(TF_MESSAGE,), field=t)
        self.global_poses = "/tf" in self.tf_topics and bool(self.map.global_frame
                                                              and self.map.base_frame)
        if keys is not None:  # samples within the LiDAR's time span (1 s for log latency)
            lo, hi = lidar.start_ns - 1_000_000_000, lidar.end_ns + 1_000_000_000
            keys = {us: tok for us, tok in sorted(keys.items()) if lo <= us * 1000 <= hi}
        self.keys = keys
        self._count = lidar.count if keys is None else len(keys)
        self.headers: OrderedDict[str, tuple[int, str]] = OrderedDict()

    def __len__(self) -> int:
        return self._count

    @property
    def label_prefix(self) -> str:
        return f"{self.bag.path.name} {self.map.lidar}"

    def header(self, token: str) -> tuple[int, str] | None:
        """(stamp ns, frame_id) of the key sweep of a recently loaded frame."""
        return self.headers.get(token)

    # ---- the stream -----------------------------------------------------------------------

    def slots(self) -> Iterator[FrameSlot]:
        state = _State(self)
        cam_of = {c.image: n for n, c in self.map.cameras.items()}
        info_of = {c.info: n for n, c in self.map.cameras.items()}
        topics = [self.map.lidar, *cam_of, *info_of, *self.tf_topics]
        try:
            for item in self.bag.messages(topics, watch=self.map.lidar):
                if isinstance(item, CorruptChunk):
                    state.corrupt(item)
                elif item.topic == self.map.lidar:
                    state.sweep(item)
                elif item.topic in cam_of:
                    state.image(cam_of[item.topic], item)
                elif item.topic in info_of:
                    state.infos[info_of[item.topic]] = item.msg
                else:
                    state.tree.add(item.msg, static=item.topic == "/tf_static",
                                   topic=f"{self.bag.path} {item.topic}")
                yield from state.ready(now_ns=item.log_time if isinstance(item, BagMessage)
                                       else item.end_ns)
            yield from state.ready(now_ns=None)
        finally:
            state.decoders.shutdown(cancel_futures=True)
            self.bag.close()


class _State:
    """The buffers of one pass over the bag."""

    def __init__(self, source: BagSource) -> None:
        self.src = source
        self.tree = TfTree()
        self.images: dict[str, deque[_Image]] = {n: deque() for n in source.map.cameras}
        self.last_ns: dict[str, int] = {}
        self.infos: dict[str, Any] = {}
        self.pending: deque[_Sweep] = deque()
        self.history: deque[_Sweep] = deque()
        self.camera_errors: list[InputError] = []
        self.keys = deque(source.keys.items()) if source.keys is not None else None
        self.decoded: dict[str, tuple[int, np.ndarray]] = {}  # camera → (stamp, pixels) last used
        self.to_key: tuple[int, np.ndarray] | None = None  # (key stamp, T_keylidar←global)
        self.decoders = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="bag-decode")

    def _where(self, topic: str) -> str:
        return f"{self.src.bag.path} {topic}"

    # ---- incoming messages

    def corrupt(self, chunk: CorruptChunk) -> None:
        error = chunk.error(self.src.bag.path)
        for ns in chunk.lost_ns:
            self._add(_Sweep(ns, "", None, None, error))

    def sweep(self, item: BagMessage) -> None:
        lidar = self.src.map.lidar
        ns, frame_id = _ns(item.msg.header), str(item.msg.header.frame_id)
        error, cloud = None, None
        last = self.last_ns.get(lidar)
        if last is not None and ns <= last:
            error = InputError(f"header.stamp goes backwards or repeats: {ns} ns after {last} "
                               "ns", path=self._where(lidar), field="header.stamp")
        else:
            self.last_ns[lidar] = ns
            try:
                cloud = decode_pointcloud2(item.msg, topic=self._where(lidar))
            except InputError as exc:
                error = exc
        self._add(_Sweep(ns, frame_id, cloud, None, error))

    def _add(self, sweep: _Sweep) -> None:
        if self.keys is None:
            sweep.key = str(sweep.ns)
        else:  # keys passed without a sweep become failing frames
            while self.keys and self.keys[0][0] * 1000 < sweep.ns:
                us, token = self.keys.popleft()
                self.pending.append(_Sweep(us * 1000, "", None, token, InputError(
                    f"no LiDAR sweep stamped {us} µs (sample {token})",
                    path=self._where(self.src.map.lidar), field="header.stamp")))
            if self.keys and self.keys[0][0] * 1000 == sweep.ns:
                sweep.key = self.keys.popleft()[1]
        if sweep.error is None:
            self.history.append(sweep)
        if sweep.key is not None:
            self.pending.append(sweep)

    def image(self, camera: str, item: BagMessage) -> None:
        ns = _ns(item.msg.header)
        topic = item.topic
        last = self.last_ns.get(topic)
        if last is not None and ns <= last:
            self.camera_errors.append(InputError(
                f"header.stamp goes backwards or repeats: {ns} ns after {last} ns",
                path=self._where(topic), field="header.stamp"))
            return
        self.last_ns[topic] = ns
        self.images[camera].append(_Image(ns, str(item.msg.header.frame_id), item.msg,
                                          item.schema == COMPRESSED_IMAGE))

    # ---- outgoing frames

    def _is_ready(self, sweep: _Sweep, now_ns: int | None) -> bool:
        if now_ns is None or sweep.error is not None:
            return True
        if now_ns > sweep.ns + self.src.slop_ns + MAX_WAIT_NS:
            return True
        horizon = sweep.ns + self.src.slop_ns
        cameras_done = all(q and q[-1].ns > horizon for q in self.images.values())
        tf_done = not self.src.global_poses or self.tree.latest_ns >= horizon
        return cameras_done and tf_done

    def ready(self, now_ns: int | None) -> Iterator[FrameSlot]:
        if now_ns is None and self.keys:
            for us, token in list(self.keys):
                self.keys.popleft()
                self.pending.append(_Sweep(us * 1000, "", None, token, InputError(
                    f"no LiDAR sweep stamped {us} µs (sample {token}): the bag ended",
                    path=self._where(self.src.map.lidar), field="header.stamp")))
        while self.pending and self._is_ready(self.pending[0], now_ns):
            sweep = self.pending.popleft()
            errors, self.camera_errors = self.camera_errors, []
            label = (f"{self.src.label_prefix}@{sweep.ns}" if self.src.keys is None
                     else f"{sweep.key} ({sweep.ns} ns)")
            yield FrameSlot(label, lambda s=sweep, e=errors: self._frame(s, e))
            self._prune(sweep.ns)
        if not self.pending and now_ns is not None:
            self._prune(now_ns - self.src.slop_ns - MAX_WAIT_NS)

    def _prune(self, ns: int) -> None:
        """Forget what no key at or after ``ns`` can use."""
        oldest = min(ns, self.pending[0].ns) if self.pending else ns
        for q in self.images.values():
            while len(q) > 1 and q[0].ns < oldest - self.src.slop_ns:
                q.popleft()
        while self.history and self.history[0].ns < oldest - MAX_SWEEP_SPAN_NS:
            self.history.popleft()
        self.tree.prune(oldest - MAX_SWEEP_SPAN_NS - self.src.slop_ns)

    # ---- one frame

    def _frame(self, sweep: _Sweep, errors: list[InputError]) -> Frame:
        if sweep.error is not None:
            raise sweep.error
        if errors:
            raise errors[0]
        assert sweep.cloud is not None and sweep.key is not None
        src, preset = self.src, self.src.preset
        calib = self._calibration(sweep)
        images = np.empty((len(preset.cameras.names), *preset.cameras.raw_size, 3), np.uint8)
        jobs = []
        for i, name in enumerate(preset.cameras.names):
            image = self._nearest(name, sweep.ns)
            jobs.append((name, image, images[i]))
            info = self.infos.get(name)
            if info is None:
                raise InputError("no CameraInfo received before this frame",
                                 path=self._where(src.map.cameras[name].info), field=name)
            calib.intrinsics[i] = intrinsics(info, topic=self._where(src.map.cameras[name].info))
            calib.camera2lidar[i] = self._camera2lidar(sweep, image)
        list(self.decoders.map(lambda job: self._pixels(*job), jobs))  # 1st error, in order
        src.headers[sweep.key] = (sweep.ns, sweep.frame_id)
        while len(src.headers) > _HEADERS_KEPT:
            src.headers.popitem(last=False)
        frame = Frame(images=images, points=self._points(sweep), calib=calib,
                      token=sweep.key, timestamp=sweep.ns // 1000,
                      source=f"{src.bag.path} {src.map.lidar}@{sweep.ns}")
        return frame.validate(preset.points.num_features)

    def _pixels(self, camera: str, image: _Image, out: np.ndarray) -> None:
        """``image`` decoded into ``out``, its slot of the frame's array, or copied from the
        previous frame when that frame took the same image: with the LiDAR at 20 Hz and the
        cameras at 12 Hz, two sweeps in five share their nearest images, and a copy costs a
        seventh of a decode (0.3 vs 2.3 ms for 1600×900). Frames' images are only read
        downstream, never written, so the previous frame's slot is the cache."""
        last = self.decoded.get(camera)
        if last is not None and last[0] == image.ns:
            out[...] = last[1]
        else:
            decode_into(image.msg, compressed=image.compressed, out=out, field=camera,
                        topic=self._where(self.src.map.cameras[camera].image))
        self.decoded[camera] = (image.ns, out)

    def _nearest(self, camera: str, ns: int) -> _Image:
        q = self.images[camera]
        topic = self.src.map.cameras[camera].image
        if not q:
            raise InputError(f"no {camera} image near the sweep at {ns} ns (none buffered)",
                             path=self._where(topic), field=camera)
        best = min(q, key=lambda im: abs(im.ns - ns))
        if abs(best.ns - ns) > self.src.slop_ns:
            raise InputError(f"no {camera} image within {self.src.slop_ns / 1e6:.0f} ms of the "
                             f"sweep at {ns} ns (nearest {(best.ns - ns) / 1e6:+.0f} ms)",
                             path=self._where(topic), field=camera)
        return best

    def _ego(self, ns: int) -> np.ndarray:
        m = self.src.map
        return self.tree.lookup(m.global_frame, m.base_frame, ns,  # type: ignore[arg-type]
                                topic=self._where("/tf"))

    def _calibration(self, sweep: _Sweep) -> Calibration:
        n = self.src.preset.cameras.num_cameras
        lidar2ego = np.eye(4)
        if self.src.map.base_frame:
            lidar2ego = self.tree.lookup(self.src.map.base_frame, sweep.frame_id, sweep.ns,
                                         topic=self._where("/tf_static"))
        return Calibration(camera_names=tuple(self.src.preset.cameras.names),
                           intrinsics=np.zeros((n, 3, 3)), camera2lidar=np.zeros((n, 4, 4)),
                           lidar2ego=lidar2ego,
                           ego2global=self._ego(sweep.ns) if self.src.global_poses else np.eye(4))

    def _sensor2lidar(self, sweep: _Sweep, frame_id: str, ns: int) -> np.ndarray:
        """T_keylidar←sensor, through the global frame with the sensor's own ego pose when
        there is one, else through the static tree."""
        if not self.src.global_poses:
            return self.tree.lookup(sweep.frame_id, frame_id, sweep.ns,
                                    topic=self._where("/tf_static"))
        base = self.src.map.base_frame
        assert base is not None
        if self.to_key is None or self.to_key[0] != sweep.ns:  # once per frame, not per sensor
            key = self._ego(sweep.ns) @ self.tree.lookup(base, sweep.frame_id, sweep.ns,
                                                         topic=self._where("/tf_static"))
            self.to_key = (sweep.ns, invert_rigid(key))
        sensor = self._ego(ns) @ self.tree.lookup(base, frame_id, ns,
                                                  topic=self._where("/tf_static"))
        return self.to_key[1] @ sensor

    def _camera2lidar(self, sweep: _Sweep, image: _Image) -> np.ndarray:
        return self._sensor2lidar(sweep, image.frame_id, image.ns)

    def _points(self, sweep: _Sweep) -> np.ndarray:
        """Key sweep + previous sweeps as ``read_multisweep`` aggregates them
        (docs/reference.md#lidar-points); time lags from the stamps, or per point."""
        assert sweep.cloud is not None
        p = self.src.preset.points
        key = sweep.cloud.points.copy()
        key[:, 4] = 0.0 if sweep.cloud.time_s is None else -sweep.cloud.time_s
        previous = [s for s in reversed(self.history)
                    if s.ns < sweep.ns and sweep.ns - s.ns <= MAX_SWEEP_SPAN_NS]
        parts = [key]
        if not self.src.global_poses or not previous:
            parts += [remove_close(key, p.remove_close)] * p.sweeps
        else:
            for i in select_sweeps(len(previous), p.sweeps, "nearest"):
                s = previous[int(i)]
                assert s.cloud is not None
                pts = remove_close(s.cloud.points.copy(), p.remove_close)
                m = self._sensor2lidar(sweep, s.frame_id, s.ns)
                pts[:, :3] = pts[:, :3] @ m[:3, :3].T + m[:3, 3]
                lag = sweep.ns / 1e9 - s.ns / 1e9
                pts[:, 4] = lag if s.cloud.time_s is None else lag - s.cloud.time_s[
                    remove_close_mask(s.cloud.points, p.remove_close)]
                parts.append(pts)
        return np.concatenate(parts, axis=0)[:, :p.num_features]


def remove_close_mask(points: np.ndarray, radius: float) -> np.ndarray:
    """The rows ``readers.remove_close`` keeps."""
    return ~((np.abs(points[:, 0]) < radius) & (np.abs(points[:, 1]) < radius))
