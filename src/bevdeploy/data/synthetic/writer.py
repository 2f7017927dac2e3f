"""Write the simulated world as a nuScenes ``v1.0-mini`` dataset: tables, point clouds, images,
map masks.

The output is what ``nuscenes.nuscenes.NuScenes(version="v1.0-mini", dataroot=out)`` loads
unchanged and ``DetectionEval`` evaluates on the ``mini_train`` / ``mini_val`` splits:

* ``samples/LIDAR_TOP/*.pcd.bin`` key sweeps and ``sweeps/LIDAR_TOP/*.pcd.bin`` the 9 sweeps
  before each key frame (20 Hz), 5 float32 columns ``x, y, z, intensity, ring`` in the sensor
  frame; ``samples/CAM_*/*.jpg`` at key frames, each camera triggered when the spinning LiDAR
  crosses its optical axis, i.e. a few tens of milliseconds before the key sweep's timestamp;
* every sample_data with its own ego pose, so calibration through the global frame includes
  the ego motion between captures, as in nuScenes;
* ``sample_annotation`` in the global frame with ``num_lidar_pts`` counted in the key sweep
  (points inside the annotated box), visibility measured from the camera renders and the
  devkit's attributes.

Tokens are hashes of the seed and the record's identity and nothing else reads a clock or the
environment, so the same arguments give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bevdeploy.io import staged_dir
from bevdeploy import __version__
from bevdeploy.data.boxes import points_in_boxes
from bevdeploy.data.synthetic.camera import render
from bevdeploy.data.synthetic.lidar import scan
from bevdeploy.data.synthetic.preset_rig import cameras_to_json
from bevdeploy.data.synthetic.rig import CAMERAS, LIDAR, CameraSpec, quaternion_wxyz, yaw_matrix
from bevdeploy.data.synthetic.world import (
    DRIVABLE_HALF_WIDTH, GROUND_REFLECTIVITY, MAP_MARGIN, MAX_SCENES, NEIGHBOURHOOD_HALF_WIDTH,
    PRIORS, SAMPLE_INTERVAL_US, SWEEP_INTERVAL_US, SWEEPS_PER_SAMPLE, SceneSim, build_world)
from bevdeploy.errors import ConfigError, DatasetError

VERSION = "v1.0-mini"
MARKER = "bevdeploy_synth.json"  # written at the root; only such directories are overwritten
MAP_RESOLUTION = 0.1  # metres per pixel, the devkit's native map resolution
JPEG_QUALITY = 90
MAX_DENSITY = 4.0
_EPOCH_US = 1_533_081_600_000_000  # 2018-08-01 00:00 UTC, near the nuScenes recordings

ATTRIBUTES: dict[str, str] = {
    "vehicle.moving": "Vehicle is moving.",
    "vehicle.stopped": "Vehicle, with a driver/rider in/on it, is currently stationary but has "
                       "an intent to move.",
    "vehicle.parked": "Vehicle is stationary (usually for longer duration) with no immediate "
                      "intent to move.",
    "cycle.with_rider": "There is a rider on the bicycle or motorcycle.",
    "cycle.without_rider": "There is NO rider on the bicycle or motorcycle.",
    "pedestrian.sitting_lying_down": "The human is sitting or lying down.",
    "pedestrian.standing": "The human is standing.",
    "pedestrian.moving": "The human is moving.",
}
# (token, level, description); tokens "1".."4" are the ones nuScenes uses.
VISIBILITY: tuple[tuple[str, str, str, float], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%", 0.4),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%", 0.6),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%", 0.8),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%", float("inf")),
)


def write_world(out: str | Path, scenes: int = 2, samples: int = 10, seed: int = 0,
                density: float = 1.0, overwrite: bool = False,
                cameras: Sequence[CameraSpec] = CAMERAS) -> Path:
    """Simulate and write a synthetic nuScenes ``v1.0-mini`` dataset to ``out``.

    ``scenes`` (1..10) are named after the devkit's mini splits, alternating ``mini_train`` and
    ``mini_val``; each has ``samples`` key frames 0.5 s apart. ``density`` scales the LiDAR's
    azimuth resolution (1.0 ≈ 30k points per sweep). The dataset is assembled in a temporary
    directory next to ``out`` and renamed into place at the end, so ``out`` is never
    half-written. An existing ``out`` is refused unless ``overwrite``, and even then only if it
    is empty or was written by this function. ``cameras`` are the rig's (default nuScenes'
    six, ``preset_rig.synth_rig`` for a preset's); any other rig is recorded in the marker
    file. Returns the absolute path of the dataset.
    """
    out = Path(os.path.abspath(out))  # lexical: '..' resolved, a symlinked out not followed
    _check_arguments(out, scenes, samples, seed, density)
    cameras = _check_cameras(out, cameras)
    world = build_world(seed, scenes, samples)
    _check_target(out, overwrite)
    with staged_dir(out, cannot="cannot write the dataset") as staging:
        _write(staging, world, seed, density, cameras)
        marker: dict[str, object] = {
            "generator": "bevdeploy.data.synthetic", "bevdeploy": __version__, "version": VERSION,
            "scenes": scenes, "samples": samples, "seed": seed, "density": density}
        if cameras != CAMERAS:  # the default world's marker stays as it always was
            marker["cameras"] = cameras_to_json(cameras)
        (staging / MARKER).write_text(json.dumps(marker, indent=1))
    return out


def _check_arguments(out: Path, scenes: int, samples: int, seed: int, density: float) -> None:
    if not isinstance(scenes, int) or not 1 <= scenes <= MAX_SCENES:
        raise ConfigError(f"the v1.0-mini splits name {MAX_SCENES} scenes, so 1..{MAX_SCENES} "
                          f"scenes can be written; got {scenes!r}", path=out, field="scenes")
    if not isinstance(samples, int) or samples < 2:
        raise ConfigError(f"a scene needs at least 2 samples (velocities are finite differences "
                          f"between key frames), got {samples!r}", path=out, field="samples")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}", path=out,
                          field="seed")
    if not (isinstance(density, (int, float)) and 0 < density <= MAX_DENSITY):
        raise ConfigError(f"density must be in (0, {MAX_DENSITY}], got {density!r}", path=out,
                          field="density")


def _check_cameras(out: Path, cameras: Sequence[CameraSpec]) -> tuple[CameraSpec, ...]:
    """At least one camera, unique names that make folder and file names, one LiDAR name."""
    cameras = tuple(cameras)
    names = [c.name for c in cameras]
    bad = [n for n in names if not n or not all(ch.isalnum() or ch in "_-" for ch in n)
           or n == LIDAR.name]
    if not cameras or bad or len(set(names)) != len(names):
        raise ConfigError(f"a rig needs one or more uniquely named cameras (letters, digits, "
                          f"_ and -; not {LIDAR.name}), got {names}", path=out, field="cameras")
    return cameras


def _check_target(out: Path, overwrite: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise DatasetError("already exists; pass --overwrite to replace it", path=out)
    check_replaceable(out)


def check_replaceable(out: Path) -> None:
    """Refuse to replace anything but an empty directory or a synthetic world, even with
    ``--overwrite``: a mistyped ``--out`` must not delete a user's directory."""
    if not out.is_dir() or out.is_symlink() or (any(out.iterdir())
                                                 and not (out / MARKER).is_file()):
        raise DatasetError(f"refusing to overwrite: not an empty directory nor a synthetic world "
                           f"(no {MARKER})", path=out)


def _token(seed: int, *parts: object) -> str:
    """32 hex digits, a function of the seed and the record's identity only."""
    key = "/".join(str(p) for p in ("bevdeploy-synth", seed, *parts))
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def _yaw_quaternion(yaw: float) -> list[float]:
    return quaternion_wxyz(yaw_matrix(yaw))


def _floats(a: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(a).reshape(-1)]


def camera_trigger_offset_us(cam: CameraSpec) -> int:
    """When ``cam`` is exposed relative to the LiDAR sweep's timestamp (µs, ≤ 0).

    The sweep's timestamp marks the end of a revolution that starts and ends facing backwards
    and turns clockwise seen from above; a camera fires when the beam crosses its optical axis.
    """
    fraction = ((180.0 - cam.yaw_deg) % 360.0) / 360.0
    return -int(round((1.0 - fraction) * SWEEP_INTERVAL_US))


def visibility_token(fraction: float) -> str:
    """nuScenes visibility bin of a visible fraction in [0, 1]."""
    for token, _level, _description, upper in VISIBILITY:
        if fraction < upper:
            return token
    raise AssertionError("unreachable: the last bin is unbounded")


def _annotation_point_counts(points: np.ndarray, boxes_global: np.ndarray,
                             lidar2global: np.ndarray) -> np.ndarray:
    """(K,) points of a sweep (sensor frame) inside each annotated box (global frame)."""
    global2lidar = np.linalg.inv(lidar2global)
    boxes = boxes_global[:, :7].copy()
    boxes[:, :3] = boxes_global[:, :3] @ global2lidar[:3, :3].T + global2lidar[:3, 3]
    boxes[:, 6] -= np.arctan2(lidar2global[1, 0], lidar2global[0, 0])
    return points_in_boxes(points[:, :3], boxes).sum(axis=0)


class _Tables:
    """The thirteen devkit tables, filled record by record."""

    names = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map",
             "sample", "sample_annotation", "sample_data", "scene", "sensor", "visibility")

    def __init__(self) -> None:
        self.rows: dict[str, list[dict]] = {name: [] for name in self.names}

    def add(self, table: str, **record: object) -> None:
        self.rows[table].append(record)

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, rows in self.rows.items():
            (folder / f"{name}.json").write_text(json.dumps(rows, indent=1))


def _write(root: Path, world: list[SceneSim], seed: int, density: float,
           cameras: tuple[CameraSpec, ...]) -> None:
    tables = _Tables()
    for channel in [c.name for c in cameras] + [LIDAR.name]:
        modality = "lidar" if channel == LIDAR.name else "camera"
        tables.add("sensor", token=_token(seed, "sensor", channel), channel=channel,
                   modality=modality)
    for cls, prior in PRIORS.items():
        tables.add("category", token=_token(seed, "category", prior.category),
                   name=prior.category, description=f"Synthetic {cls.replace('_', ' ')}.")
    for name, description in ATTRIBUTES.items():
        tables.add("attribute", token=_token(seed, "attribute", name), name=name,
                   description=description)
    for token, level, description, _upper in VISIBILITY:
        tables.add("visibility", token=token, level=level, description=description)
    for folder in [f"samples/{c.name}" for c in cameras] + [f"samples/{LIDAR.name}",
                                                           f"sweeps/{LIDAR.name}", "maps"]:
        (root / folder).mkdir(parents=True)
    for sim in world:
        _SceneWriter(root, sim, seed, tables, cameras).write(density)
    tables.write(root / VERSION)


class _SceneWriter:
    """Files and records of one scene: log, map, calibration, samples, sensor data, annotations.

    Time ``t`` (seconds, relative to the first key frame, as the simulation uses it) and
    timestamps (µs, as the tables store them) convert through ``base_us``.
    """

    def __init__(self, root: Path, sim: SceneSim, seed: int, tables: _Tables,
                 cameras: tuple[CameraSpec, ...]) -> None:
        self.root, self.sim, self.seed, self.tables = root, sim, seed, tables
        self.cameras = cameras
        self.base_us = _EPOCH_US + (seed % 1000) * 86_400_000_000 + sim.index * 3_600_000_000
        when = datetime.fromtimestamp(self.base_us // 1_000_000, tz=timezone.utc)
        self.date = f"{when:%Y-%m-%d}"
        self.logfile = f"n900-{when:%Y-%m-%d-%H-%M-%S}+0000"
        self.samples = [self.token("sample", k) for k in range(sim.samples)]

    def token(self, *parts: object) -> str:
        return _token(self.seed, self.sim.index, *parts)

    def write(self, density: float) -> None:
        self._log_and_map()
        self._calibration()
        for k, token in enumerate(self.samples):
            self.tables.add("sample", token=token,
                            timestamp=self.base_us + k * SAMPLE_INTERVAL_US,
                            prev=self.samples[k - 1] if k > 0 else "",
                            next=self.samples[k + 1] if k + 1 < len(self.samples) else "",
                            scene_token=self.token("scene"))
        counts = self._lidar(density)
        visible = self._cameras()
        self._annotations(counts, visible)
        sim = self.sim
        self.tables.add("scene", token=self.token("scene"), log_token=self.token("log"),
                        nbr_samples=sim.samples, first_sample_token=self.samples[0],
                        last_sample_token=self.samples[-1], name=sim.name,
                        description=f"Synthetic street, {len(sim.actors)} actors, ego at "
                                    f"{sim.ego.speed:.1f} m/s (bevdeploy seed {self.seed}).")

    def _log_and_map(self) -> None:
        """One log per scene, with a drivable-surface mask (lanes and parking strips) at the
        devkit's native 0.1 m resolution."""
        log_token, map_token = self.token("log"), self.token("map")
        self.tables.add("log", token=log_token, logfile=self.logfile, vehicle="n900",
                        date_captured=self.date, location="synthetic")
        road = self.sim.road
        extent = road.corners(NEIGHBOURHOOD_HALF_WIDTH).max(axis=0) + MAP_MARGIN
        width, height = (int(np.ceil(v / MAP_RESOLUTION)) for v in extent)
        drivable = road.corners(DRIVABLE_HALF_WIDTH) / MAP_RESOLUTION
        mask = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask).polygon([(x, height - y) for x, y in drivable], fill=255)
        filename = f"maps/{map_token}.png"
        mask.save(self.root / filename)
        self.tables.add("map", token=map_token, log_tokens=[log_token],
                        category="semantic_prior", filename=filename)

    def _calibration(self) -> None:
        for cam in self.cameras:
            self.tables.add("calibrated_sensor", token=self.token("calibrated_sensor", cam.name),
                            sensor_token=_token(self.seed, "sensor", cam.name),
                            translation=_floats(cam.translation),
                            rotation=quaternion_wxyz(cam.rotation),
                            camera_intrinsic=[_floats(row) for row in cam.intrinsics])
        self.tables.add("calibrated_sensor", token=self.token("calibrated_sensor", LIDAR.name),
                        sensor_token=_token(self.seed, "sensor", LIDAR.name),
                        translation=_floats(LIDAR.translation),
                        rotation=quaternion_wxyz(LIDAR.rotation), camera_intrinsic=[])

    def _time(self, t_us: int) -> float:
        return (t_us - self.base_us) * 1e-6

    def _sample_data(self, channel: str, chain: list[tuple[str, int, int, str, bool]],
                     size: tuple[int, int], fileformat: str) -> None:
        """Records (and ego poses) of one sensor's chain of (token, timestamp, sample index,
        filename, is key frame), linked prev/next in time."""
        for i, (token, t_us, k, filename, key) in enumerate(chain):
            pose = self.sim.ego.pose(self._time(t_us))
            self.tables.add("ego_pose", token=token, timestamp=t_us,
                            rotation=_yaw_quaternion(self.sim.road.heading),
                            translation=_floats(pose[:3, 3]))
            self.tables.add("sample_data", token=token, sample_token=self.samples[k],
                            ego_pose_token=token,
                            calibrated_sensor_token=self.token("calibrated_sensor", channel),
                            timestamp=t_us, fileformat=fileformat, is_key_frame=key,
                            height=size[1], width=size[0], filename=filename,
                            prev=chain[i - 1][0] if i > 0 else "",
                            next=chain[i + 1][0] if i + 1 < len(chain) else "")

    def _lidar(self, density: float) -> np.ndarray:
        """Write every sweep (9 before each key frame, the first one included); returns the
        (samples, K) number of key-sweep points inside each annotated box."""
        sim, actors = self.sim, self.sim.actors
        azimuth_steps = max(1, int(round(LIDAR.azimuth_steps * density)))
        counts = np.zeros((sim.samples, len(actors)), dtype=np.int64)
        chain = []
        first = -(SWEEPS_PER_SAMPLE - 1)
        for j in range(first, (sim.samples - 1) * SWEEPS_PER_SAMPLE + 1):
            t_us = self.base_us + j * SWEEP_INTERVAL_US
            t = self._time(t_us)
            lidar2global = sim.ego.pose(t) @ LIDAR.lidar2ego
            rng = np.random.default_rng([self.seed, sim.index, j - first])
            points = scan(LIDAR, lidar2global, actors.bodies(t), actors.reflectivity,
                          GROUND_REFLECTIVITY, azimuth_steps, rng)
            key = j >= 0 and j % SWEEPS_PER_SAMPLE == 0
            k = max(0, -(-j // SWEEPS_PER_SAMPLE))  # the sample this sweep leads up to
            folder = "samples" if key else "sweeps"
            filename = f"{folder}/{LIDAR.name}/{self.logfile}__{LIDAR.name}__{t_us}.pcd.bin"
            points.tofile(self.root / filename)
            if key and len(actors):
                counts[k] = _annotation_point_counts(points, actors.boxes(t), lidar2global)
            chain.append((self.token("sample_data", LIDAR.name, j), t_us, k, filename, key))
        self._sample_data(LIDAR.name, chain, (0, 0), "pcd")
        return counts

    def _cameras(self) -> np.ndarray:
        """Render every camera at every key frame; returns the (samples, K) visible fraction
        of each actor: pixels seen / pixels it would cover unoccluded, over all views."""
        sim, actors = self.sim, self.sim.actors
        seen = np.zeros((sim.samples, len(actors)))
        whole = np.zeros((sim.samples, len(actors)))
        for cam in self.cameras:
            chain = []
            for k in range(sim.samples):
                t_us = self.base_us + k * SAMPLE_INTERVAL_US + camera_trigger_offset_us(cam)
                t = self._time(t_us)
                view = render(cam, sim.ego.pose(t) @ cam.camera2ego, actors.bodies(t),
                              actors.colour, sim.sun)
                seen[k] += view.visible_pixels()
                whole[k] += view.silhouette
                filename = f"samples/{cam.name}/{self.logfile}__{cam.name}__{t_us}.jpg"
                Image.fromarray(view.image).save(self.root / filename, quality=JPEG_QUALITY)
                chain.append((self.token("sample_data", cam.name, k), t_us, k, filename, True))
            self._sample_data(cam.name, chain, (cam.width, cam.height), "jpg")
        return np.divide(seen, whole, out=np.zeros_like(seen), where=whole > 0)

    def _annotations(self, counts: np.ndarray, visible: np.ndarray) -> None:
        sim, actors = self.sim, self.sim.actors
        boxes = [actors.boxes(float(t)) for t in sim.key_times]
        for a, cls in enumerate(actors.classes):
            anns = [self.token("sample_annotation", a, k) for k in range(sim.samples)]
            attribute = actors.attributes[a]
            attribute_tokens = [] if attribute is None else [
                _token(self.seed, "attribute", attribute)]
            self.tables.add("instance", token=self.token("instance", a),
                            category_token=_token(self.seed, "category", PRIORS[cls].category),
                            nbr_annotations=sim.samples, first_annotation_token=anns[0],
                            last_annotation_token=anns[-1])
            for k, token in enumerate(anns):
                box = boxes[k][a]
                self.tables.add(
                    "sample_annotation", token=token, sample_token=self.samples[k],
                    instance_token=self.token("instance", a),
                    visibility_token=visibility_token(float(visible[k, a])),
                    attribute_tokens=attribute_tokens, translation=_floats(box[0:3]),
                    size=_floats(box[[4, 3, 5]]), rotation=_yaw_quaternion(float(box[6])),
                    prev=anns[k - 1] if k > 0 else "",
                    next=anns[k + 1] if k + 1 < len(anns) else "",
                    num_lidar_pts=int(counts[k, a]), num_radar_pts=0)
