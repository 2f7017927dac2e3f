"""nuScenes → ``Frame`` through ``nuscenes-devkit``, and detections → nuScenes submissions.

The loading path goes through a ``SampleRecord``: exactly what the reference's info converter
(mit-han-lab ``tools/data_converter/nuscenes_converter.py``) stores per sample — sensor files,
poses, ``sensor2lidar`` transforms, previous sweeps, annotations. ``NuScenesLoader`` builds
records from the devkit tables, ``bevdeploy.data.infos.InfoLoader`` from an info ``.pkl``, and both
turn them into Frames with the same code (``RecordFrames``), so the two paths cannot drift.

Conventions (docs/reference.md#conventions, #input-pipeline): everything is in the key sweep's LiDAR
frame; ``camera2lidar`` goes through the global frame with the camera's own ego pose (as
``obtain_sensor2top``), so the ego motion between the camera and LiDAR captures is included; GT
boxes use the bevdeploy box convention (``bevdeploy.data.boxes``).
"""

from __future__ import annotations

import functools
import json
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.detection.constants import DETECTION_NAMES
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.data_classes import Box
from nuscenes.utils.splits import create_splits_scenes
from pyquaternion import Quaternion

from bevdeploy.data.camera_dropout import (CameraDropout, load_camera_images,
                                           placeholder_calibration)
from bevdeploy.data.frame import Calibration, Detections, Frame, GroundTruth
from bevdeploy.data.readers import SweepPolicy, Sweep, read_multisweep
from bevdeploy.errors import ConfigError, DatasetError, InputError
from bevdeploy.io import atomic_write
from bevdeploy.presets import Preset, get_preset

LIDAR_CHANNEL = "LIDAR_TOP"
MAX_SWEEPS = 10  # sweeps kept per sample by the reference's info converter (``max_sweeps``)
EVAL_CONFIG = "detection_cvpr_2019"
ROTATION_ATOL = 1e-3  # the orthonormality tolerance of ``Calibration.validate``


# ----------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Pose:
    """A rigid transform as nuScenes stores it: translation (m), rotation quaternion (w, x, y, z)."""

    translation: tuple[float, float, float]
    rotation: tuple[float, float, float, float]

    @classmethod
    def from_table(cls, record: Mapping[str, Any]) -> "Pose":
        """From a ``calibrated_sensor`` or ``ego_pose`` row."""
        return cls(tuple(map(float, record["translation"])), tuple(map(float, record["rotation"])))

    def matrix(self) -> np.ndarray:
        """4×4 float64 homogeneous matrix."""
        m = np.eye(4)
        m[:3, :3] = Quaternion(self.rotation).rotation_matrix
        m[:3, 3] = self.translation
        return m


def sensor2lidar(sensor2ego: Pose, sensor_ego2global: Pose, lidar2ego: Pose,
                 key_ego2global: Pose) -> np.ndarray:
    """T_lidar←sensor (4×4) through the global frame: sensor → ego (at the sensor's capture) →
    global → ego (at the key LiDAR capture) → LiDAR. The same chain as the reference's
    ``obtain_sensor2top``, used for cameras and for previous LiDAR sweeps."""
    key_lidar2global = key_ego2global.matrix() @ lidar2ego.matrix()
    return np.linalg.inv(key_lidar2global) @ sensor_ego2global.matrix() @ sensor2ego.matrix()


@dataclass
class SensorRecord:
    """One ``sample_data`` (a camera image or a LiDAR sweep) as the info file stores it."""

    token: str
    path: Path
    timestamp: int  # µs
    sensor2ego: Pose
    ego2global: Pose  # the ego pose at this sensor's capture
    sensor2lidar: np.ndarray  # (4, 4) T_keylidar←sensor
    intrinsics: np.ndarray | None = None  # (3, 3), cameras only

    def as_sweep(self) -> Sweep:
        return Sweep(self.path, self.sensor2lidar, self.timestamp)


@dataclass
class Annotations:
    """A sample's annotations in the key LiDAR frame, as raw as the info converter keeps them.

    ``boxes`` follow the bevdeploy convention; their velocity is NaN where the devkit cannot
    estimate one (a lone annotation). ``names`` are detection names, or the raw category name
    for categories outside the detection classes (the converter's ``NameMapping`` behaviour).
    """

    boxes: np.ndarray  # (K, 9) float32
    names: np.ndarray  # (K,) str
    num_lidar_pts: np.ndarray  # (K,) int64
    num_radar_pts: np.ndarray  # (K,) int64
    tokens: np.ndarray  # (K,) str; sample_annotation tokens

    def ground_truth(self) -> GroundTruth:
        """The Frame's GT: a NaN velocity becomes 0 (as mmdet3d's ``get_ann_info``), a name
        outside the detection classes becomes ``"ignore"``."""
        boxes = self.boxes.copy()
        boxes[:, 7:9] = np.nan_to_num(boxes[:, 7:9], nan=0.0)
        detection = set(DETECTION_NAMES)
        names = np.array([n if n in detection else "ignore" for n in self.names.tolist()],
                         dtype=object)
        return GroundTruth(boxes=boxes, names=names,
                           num_lidar_pts=self.num_lidar_pts.astype(np.int64),
                           tokens=self.tokens.astype(object))


@dataclass
class SampleRecord:
    """Everything a Frame is built from: one key frame with its cameras and previous sweeps."""

    token: str
    timestamp: int  # µs, the sample's (= the key LiDAR sweep's) timestamp
    location: str
    lidar: SensorRecord  # the key sweep; ``sensor2lidar`` is the identity
    cameras: dict[str, SensorRecord]
    sweeps: list[SensorRecord]  # previous LiDAR sweeps, most recent first
    annotations: Annotations | None
    source: str  # where the record came from, for error messages


# ----------------------------------------------------------------------------------- frames


class RecordFrames(ABC, Sequence[Frame]):
    """A sequence of Frames built from ``SampleRecord``s with the sweep rules of
    docs/reference.md#lidar-points.

    ``sweeps`` previous sweeps (default: the preset's) are aggregated; ``sweep_policy`` picks
    them when more are available: ``"nearest"`` (default) takes the most recent, deterministic;
    ``"random"`` reproduces the reference's random choice, seeded per sample from ``seed`` and
    the sample token so a frame does not depend on access order. ``pad_empty_sweeps`` (default
    on, as the reference's config) repeats the key sweep for a frame without previous sweeps.
    ``dropout`` says what a camera without a record or a readable image does
    (``data.camera_dropout``: refused by default).
    """

    version: str

    def __init__(self, preset: Preset | str, *, sweeps: int | None = None,
                 sweep_policy: SweepPolicy = "nearest", seed: int = 0,
                 pad_empty_sweeps: bool = True, with_gt: bool = True,
                 dropout: CameraDropout = CameraDropout()) -> None:
        self.preset = get_preset(preset) if isinstance(preset, str) else preset
        self.dropout = dropout.checked(self.preset.cameras.names)
        self.sweeps = self.preset.points.sweeps if sweeps is None else sweeps
        if self.sweeps < 0:
            raise ConfigError(f"must be >= 0, got {self.sweeps}", field="sweeps")
        if sweep_policy not in ("nearest", "random"):
            raise ConfigError(f"must be 'nearest' or 'random', got {sweep_policy!r}",
                              field="sweep_policy")
        self.sweep_policy = sweep_policy
        self.seed = seed
        self.pad_empty_sweeps = pad_empty_sweeps
        self.with_gt = with_gt

    @property
    @abstractmethod
    def sample_tokens(self) -> tuple[str, ...]:
        """Sample tokens in frame order (time order, as mmdet3d's ``NuScenesDataset``)."""

    @abstractmethod
    def record(self, index: int) -> SampleRecord:
        """The record of frame ``index``."""

    def __len__(self) -> int:
        return len(self.sample_tokens)

    def __getitem__(self, index: int) -> Frame:  # type: ignore[override]
        return self.frame(self.record(range(len(self))[index]))

    def __iter__(self) -> Iterator[Frame]:
        return (self[i] for i in range(len(self)))

    def frame(self, rec: SampleRecord) -> Frame:
        """Read a record's images and points and assemble its Frame."""
        names, raw_size = self.preset.cameras.names, self.preset.cameras.raw_size
        missing = [c for c in names if c not in rec.cameras]
        if missing and not self.dropout.tolerant:
            raise DatasetError(f"sample {rec.token} has no camera(s) {missing} of the preset "
                               f"(it has {sorted(rec.cameras)})", path=rec.source, field="cams")
        images, dropped = load_camera_images(
            {c: r.path for c, r in rec.cameras.items()}, names, raw_size, self.dropout,
            absent={c: "no calibration: the sample has no record of this camera"
                    for c in missing})
        k0, c2l0 = placeholder_calibration(raw_size)
        cams = [rec.cameras.get(c) for c in names]
        rng = None
        if self.sweep_policy == "random":
            rng = np.random.RandomState([self.seed, zlib.crc32(rec.token.encode())])
        points = read_multisweep(
            rec.lidar.path, rec.timestamp, [s.as_sweep() for s in rec.sweeps],
            num_sweeps=self.sweeps, policy=self.sweep_policy, rng=rng,
            remove_close_radius=self.preset.points.remove_close,
            pad_empty_sweeps=self.pad_empty_sweeps, num_features=self.preset.points.num_features)
        calib = Calibration(
            camera_names=tuple(names),
            intrinsics=np.stack([k0 if c is None else c.intrinsics
                                 for c in cams]).astype(np.float64),
            camera2lidar=np.stack([c2l0 if c is None else c.sensor2lidar
                                   for c in cams]).astype(np.float64),
            lidar2ego=rec.lidar.sensor2ego.matrix(),
            ego2global=rec.lidar.ego2global.matrix())
        gt = (rec.annotations.ground_truth()
              if self.with_gt and rec.annotations is not None else None)
        frame = Frame(images=images, points=points, calib=calib, token=rec.token,
                      timestamp=rec.timestamp, gt=gt, source=rec.source, dropped=dropped)
        return frame.validate(self.preset.points.num_features)


class ListedFrames(RecordFrames):
    """``RecordFrames`` over records read up front (an info file of either format), kept in
    time order as mmdet3d's datasets are; a subclass hands them over once with ``_keep``."""

    def _keep(self, records: Iterable[SampleRecord]) -> None:
        self._records = sorted(records, key=lambda r: r.timestamp)
        self._tokens = tuple(r.token for r in self._records)

    @property
    def sample_tokens(self) -> tuple[str, ...]:
        return self._tokens

    def record(self, index: int) -> SampleRecord:
        return self._records[index]


class NuScenesLoader(RecordFrames):
    """Frames of one split of a nuScenes-format dataset, read through ``nuscenes-devkit``.

    ``split`` is a devkit split name (``nuscenes.utils.splits``: train, val, test, mini_train,
    mini_val, ...) or ``"all"``. Images come in the preset's camera order at raw size; points are
    the key sweep plus previous sweeps (``RecordFrames``), with no range filter (the model and
    runtime apply the preset's).
    """

    def __init__(self, dataroot: str | Path, version: str = "v1.0-trainval", split: str = "val",
                 *, preset: Preset | str, sweeps: int | None = None,
                 sweep_policy: SweepPolicy = "nearest", seed: int = 0, with_gt: bool = True,
                 pad_empty_sweeps: bool = True, max_sweeps: int = MAX_SWEEPS,
                 dropout: CameraDropout = CameraDropout()) -> None:
        super().__init__(preset, sweeps=sweeps, sweep_policy=sweep_policy, seed=seed,
                         pad_empty_sweeps=pad_empty_sweeps, with_gt=with_gt, dropout=dropout)
        if self.sweeps > max_sweeps:
            raise ConfigError(f"{self.sweeps} sweeps asked for but only max_sweeps={max_sweeps} "
                              "previous sweeps are collected per sample; raise max_sweeps",
                              field="sweeps")
        self.max_sweeps = max_sweeps
        self.dataroot = Path(dataroot)
        self.version = version
        self.split = split
        self.nusc = open_devkit(self.dataroot, version)
        self._tokens = self._split_tokens(split)

    @property
    def sample_tokens(self) -> tuple[str, ...]:
        return self._tokens

    def _split_tokens(self, split: str) -> tuple[str, ...]:
        splits = create_splits_scenes()
        if split != "all" and split not in splits:
            raise DatasetError(f"unknown split {split!r}; known: {sorted(splits) + ['all']}",
                               path=self.dataroot, field="split")
        present = {s["name"]: s["token"] for s in self.nusc.scene}
        names = list(present) if split == "all" else [n for n in splits[split] if n in present]
        if not names:
            raise DatasetError(f"no scene of split {split!r} in {self.version} (its scenes: "
                               f"{sorted(present)[:10]}{' ...' if len(present) > 10 else ''})",
                               path=self.dataroot, field="split")
        scene_tokens = {present[n] for n in names}
        samples = [s for s in self.nusc.sample if s["scene_token"] in scene_tokens]
        return tuple(s["token"] for s in sorted(samples, key=lambda s: s["timestamp"]))

    def record(self, index: int) -> SampleRecord:
        nusc = self.nusc
        sample = nusc.get("sample", self._tokens[index])
        source = f"{self.dataroot / self.version} sample {sample['token']}"
        channels = [LIDAR_CHANNEL, *self.preset.cameras.names]
        if self.dropout.tolerant:  # a camera without a record is dropped by ``frame``
            channels = [LIDAR_CHANNEL]
        missing = [c for c in channels if c not in sample["data"]]
        if missing:
            raise DatasetError(f"sample {sample['token']} has no sample_data for {missing}",
                               path=self.dataroot / self.version, field="sample.data")
        lidar_sd = nusc.get("sample_data", sample["data"][LIDAR_CHANNEL])
        lidar2ego = Pose.from_table(nusc.get("calibrated_sensor",
                                             lidar_sd["calibrated_sensor_token"]))
        key_pose = Pose.from_table(nusc.get("ego_pose", lidar_sd["ego_pose_token"]))

        def sensor(sd: Mapping[str, Any], camera: bool) -> SensorRecord:
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            s2e = Pose.from_table(cs)
            e2g = Pose.from_table(nusc.get("ego_pose", sd["ego_pose_token"]))
            return SensorRecord(
                token=sd["token"], path=Path(nusc.get_sample_data_path(sd["token"])),
                timestamp=int(sd["timestamp"]), sensor2ego=s2e, ego2global=e2g,
                sensor2lidar=sensor2lidar(s2e, e2g, lidar2ego, key_pose),
                intrinsics=np.asarray(cs["camera_intrinsic"], np.float64) if camera else None)

        sweeps, sd = [], lidar_sd
        while len(sweeps) < self.max_sweeps and sd["prev"]:
            sd = nusc.get("sample_data", sd["prev"])
            sweeps.append(sensor(sd, camera=False))
        scene = nusc.get("scene", sample["scene_token"])
        return SampleRecord(
            token=sample["token"], timestamp=int(sample["timestamp"]),
            location=nusc.get("log", scene["log_token"])["location"],
            lidar=sensor(lidar_sd, camera=False),
            cameras={c: sensor(nusc.get("sample_data", sample["data"][c]), camera=True)
                     for c in self.preset.cameras.names if c in sample["data"]},
            sweeps=sweeps, annotations=self._annotations(sample, lidar_sd["token"], lidar2ego,
                                                         key_pose),
            source=source)

    def _annotations(self, sample: Mapping[str, Any], lidar_token: str, lidar2ego: Pose,
                     key_pose: Pose) -> Annotations:
        """Boxes in the key LiDAR frame via the devkit (``get_sample_data``), velocities from
        ``box_velocity`` (global) rotated into the LiDAR frame, as the info converter does."""
        tokens = list(sample["anns"])
        _, boxes, _ = self.nusc.get_sample_data(lidar_token, selected_anntokens=tokens)
        anns = [self.nusc.get("sample_annotation", t) for t in tokens]
        global2lidar = (key_pose.matrix()[:3, :3] @ lidar2ego.matrix()[:3, :3]).T
        out = np.zeros((len(boxes), 9), np.float64)
        for i, (box, token) in enumerate(zip(boxes, tokens)):
            w, l, h = box.wlh
            out[i, :7] = (*box.center, l, w, h, box.orientation.yaw_pitch_roll[0])
            velocity = self.nusc.box_velocity(token)
            out[i, 7:9] = (global2lidar @ np.array([velocity[0], velocity[1], 0.0]))[:2]
        names = [category_to_detection_name(a["category_name"]) or a["category_name"]
                 for a in anns]
        return Annotations(
            boxes=out.astype(np.float32), names=np.array(names, dtype=str).reshape(-1),
            num_lidar_pts=np.array([a["num_lidar_pts"] for a in anns], np.int64),
            num_radar_pts=np.array([a["num_radar_pts"] for a in anns], np.int64),
            tokens=np.array(tokens, dtype=str).reshape(-1))


def open_devkit(dataroot: Path, version: str) -> NuScenes:
    """``NuScenes(version, dataroot)`` with the devkit's asserts and KeyErrors turned into a
    ``DatasetError`` that says which directory or table is wrong."""
    if not dataroot.is_dir():
        raise DatasetError("dataset directory not found", path=dataroot, field="dataroot")
    if not (dataroot / version).is_dir():
        found = sorted(p.name for p in dataroot.iterdir() if p.name.startswith("v1.0"))
        raise DatasetError(f"no table directory for version {version!r} (found: {found})",
                           path=dataroot, field="version")
    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except (AssertionError, FileNotFoundError, KeyError, json.JSONDecodeError) as exc:
        raise DatasetError(f"nuscenes-devkit cannot load the tables: {exc!r}",
                           path=dataroot / version, field="tables") from None


# ----------------------------------------------------------------------------------- submission

# mmdet3d's heuristic (``NuScenesDataset._format_bbox``, docs/reference.md#box-convention): a box
# faster than 0.2 m/s gets the "moving" attribute of its kind; a slower one "standing"/"stopped"
# where the reference says so; everything else the class default.
_DEFAULT_ATTRIBUTE = {
    "car": "vehicle.parked", "pedestrian": "pedestrian.moving", "trailer": "vehicle.parked",
    "truck": "vehicle.parked", "bus": "vehicle.moving", "motorcycle": "cycle.without_rider",
    "construction_vehicle": "vehicle.parked", "bicycle": "cycle.without_rider", "barrier": "",
    "traffic_cone": "",
}
_MOVING_ATTRIBUTE = {
    **{c: "vehicle.moving" for c in ("car", "construction_vehicle", "bus", "truck", "trailer")},
    "bicycle": "cycle.with_rider", "motorcycle": "cycle.with_rider",
}
_STILL_ATTRIBUTE = {"pedestrian": "pedestrian.standing", "bus": "vehicle.stopped"}
MOVING_SPEED = 0.2  # m/s

DEFAULT_META = {"use_camera": True, "use_lidar": True, "use_radar": False, "use_map": False,
                "use_external": False}


def attribute_name(detection_name: str, speed: float) -> str:
    """The nuScenes attribute mmdet3d assigns to a detection of this class and speed (m/s)."""
    table = _MOVING_ATTRIBUTE if speed > MOVING_SPEED else _STILL_ATTRIBUTE
    return table.get(detection_name, _DEFAULT_ATTRIBUTE[detection_name])


@functools.lru_cache(maxsize=1)
def class_ranges() -> dict[str, float]:
    """Per-class evaluation radius (m, ego-frame BEV) of the devkit's ``detection_cvpr_2019``."""
    return dict(config_factory(EVAL_CONFIG).class_range)


def _rotation(m: np.ndarray) -> Quaternion:
    return Quaternion(matrix=np.asarray(m, np.float64)[:3, :3], atol=ROTATION_ATOL).normalised


def detections_to_nuscenes(dets: Detections, calib: Calibration,
                           sample_token: str) -> list[dict[str, Any]]:
    """Detections (key LiDAR frame) → nuScenes submission boxes (global frame).

    As mmdet3d's ``output_to_nusc_box`` + ``lidar_nusc_box_to_global``: each box is moved to the
    ego frame by ``lidar2ego``, dropped when its BEV distance from the ego exceeds the devkit's
    class range, then moved to the global frame by ``ego2global``; the velocity (vx, vy, 0) is
    rotated along. One deliberate difference: the translation is the box's true centre, where
    the reference reports ``z + h/2`` (its z quirk, docs/reference.md#z-quirk); nuScenes
    metrics ignore z.
    """
    ranges = class_ranges()
    unknown = sorted({dets.class_names[i] for i in dets.labels} - ranges.keys())
    if unknown:
        raise InputError(f"sample {sample_token}: classes {unknown} are not nuScenes detection "
                         f"classes ({sorted(ranges)})", field="class_names")
    l2e, e2g = _rotation(calib.lidar2ego), _rotation(calib.ego2global)
    l2e_t = np.asarray(calib.lidar2ego, np.float64)[:3, 3]
    e2g_t = np.asarray(calib.ego2global, np.float64)[:3, 3]
    out = []
    for b, score, label in zip(dets.boxes.astype(np.float64), dets.scores, dets.labels):
        name = dets.class_names[int(label)]
        box = Box(center=b[0:3], size=[b[4], b[3], b[5]],
                  orientation=Quaternion(axis=[0.0, 0.0, 1.0], radians=float(b[6])),
                  velocity=(b[7], b[8], 0.0))
        box.rotate(l2e)
        box.translate(l2e_t)
        if np.linalg.norm(box.center[:2]) > ranges[name]:
            continue
        box.rotate(e2g)
        box.translate(e2g_t)
        out.append({
            "sample_token": sample_token,
            "translation": [float(v) for v in box.center],
            "size": [float(v) for v in box.wlh],
            "rotation": [float(v) for v in box.orientation.elements],
            "velocity": [float(v) for v in box.velocity[:2]],
            "detection_name": name,
            "detection_score": float(score),
            "attribute_name": attribute_name(name, float(np.linalg.norm(box.velocity[:2]))),
        })
    return out


def write_submission(path: str | Path, results: Mapping[str, list[dict[str, Any]]],
                     meta: Mapping[str, bool] | None = None) -> Path:
    """Write a nuScenes detection submission ``{"meta": ..., "results": {token: boxes}}``
    atomically; ``meta`` defaults to BEVFusion's modality (camera + LiDAR)."""
    doc = {"meta": dict(DEFAULT_META if meta is None else meta), "results": dict(results)}
    return atomic_write(path, json.dumps(doc).encode())
