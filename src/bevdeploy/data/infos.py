"""mmdetection3d / mit-han-lab BEVFusion info ``.pkl`` files: read them safely, write them.

The format is the one mit-han-lab's ``tools/data_converter/nuscenes_converter.py`` writes:
``{"infos": [info, ...], "metadata": {"version": ...}}`` where each ``info`` holds

* ``lidar_path``, ``token``, ``timestamp`` (µs), ``location``;
* ``lidar2ego_translation/rotation``, ``ego2global_translation/rotation`` (quaternions w, x, y, z);
* ``sweeps``: previous LiDAR sweeps, most recent first, each with ``data_path``, ``type``,
  ``sample_data_token``, ``sensor2ego_*``, ``ego2global_*``, ``timestamp`` and
  ``sensor2lidar_rotation`` (3×3) / ``sensor2lidar_translation`` (3,) such that
  ``p_lidar = R·p + t``;
* ``cams``: camera name → the same fields plus the 3×3 intrinsics. The converter at the commit
  CUDA-BEVFusion pins calls it ``camera_intrinsics``, later ones ``cam_intrinsic``; both are read,
  and both are written so either dataset class accepts our files;
* ``gt_boxes`` (N, 7) ``[x, y, z, w, l, h, yaw_legacy]`` (z = geometric centre, the reference's
  quirk), ``gt_names``, ``gt_velocity`` (N, 2, NaN where unknown), ``num_lidar_pts``,
  ``num_radar_pts``, ``valid_flag``.

We also write ``ann_tokens`` (the sample_annotation tokens; mmdet3d ignores unknown keys).

A pickle can run code on load, and info files travel between people, so they are read through
an unpickler that only resolves the globals plain containers and numpy arrays need; anything
else raises ``UnsafeFileError`` naming the global, before it is ever called.
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.core import multiarray, numeric

from bevdeploy.data.boxes import from_mmdet3d_legacy, to_mmdet3d_legacy
from bevdeploy.data.nuscenes import (Annotations, ListedFrames, Pose, RecordFrames, SampleRecord,
                                     SensorRecord)
from bevdeploy.data.readers import SweepPolicy
from bevdeploy.io import atomic_write
from bevdeploy.data.expansion import check_expansion, expansion_budget
from bevdeploy.errors import DatasetError, UnsafeFileError, excerpt
from bevdeploy.presets import Preset

PICKLE_PROTOCOL = 4  # readable by every Python 3 the reference environments use


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Protocol-2 pickles store ``bytes`` as ``_codecs.encode(str, "latin1")``; only that use of
    ``_codecs.encode`` is allowed."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, "latin1", errors)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    # Protocol < 3 pickles name the builtins module by its Python 2 name.
    **{(mod, "set"): set for mod in ("builtins", "__builtin__")},
    **{(mod, "frozenset"): frozenset for mod in ("builtins", "__builtin__")},
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # numpy 1.x and 2.x module names of the array / scalar reconstructors.
    **{(f"{mod}.multiarray", "_reconstruct"): multiarray._reconstruct
       for mod in ("numpy.core", "numpy._core")},
    **{(f"{mod}.multiarray", "scalar"): multiarray.scalar for mod in ("numpy.core", "numpy._core")},
    **{(f"{mod}.numeric", "_frombuffer"): numeric._frombuffer
       for mod in ("numpy.core", "numpy._core")},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeFileError(
                f"refused to load global {module}.{name}: info files may only hold plain "
                "containers and numpy arrays", path=self.source, field=f"{module}.{name}") from None


def unpickle_info_file(path: str | Path) -> Any:
    """Unpickle an info file of either format (this module's ``infos``, ``data.info_v2``'s
    ``data_list``) with the allow-list, and bound what it expands to before any reader builds
    an array from it."""
    p = Path(path)
    try:
        raw = p.read_bytes()  # in memory: a declared length beyond the file allocates nothing
        data = _RestrictedUnpickler(io.BytesIO(raw), p).load()
    except FileNotFoundError:
        raise DatasetError("info file not found", path=p, field="file") from None
    except UnsafeFileError:
        raise
    except Exception as exc:  # truncated or foreign pickles raise many types
        raise DatasetError(f"not a readable pickle: {excerpt(exc)}", path=p,
                           field="file") from None
    check_expansion(data, expansion_budget(len(raw)), path=p, error=DatasetError)
    return data


def load_infos(path: str | Path, data: Any = None) -> dict[str, Any]:
    """Unpickle an info file (or take ``data``, already unpickled from it) and check that it is
    the ``infos`` format."""
    p = Path(path)
    data = unpickle_info_file(p) if data is None else data
    if not isinstance(data, Mapping) or not isinstance(data.get("infos"), list):
        raise DatasetError("expected a mapping with an 'infos' list (the mmdet3d 0.x / "
                           "mit-han-lab format; mmdet3d >= 1.1 'data_list' files are another "
                           "format)", path=p, field="infos")
    return dict(data)


# ----------------------------------------------------------------------------------- reading


class _Fields:
    """Typed access to one info dict; every error names the file and the dotted field."""

    def __init__(self, data: Any, source: Path, where: str) -> None:
        if not isinstance(data, Mapping):
            raise DatasetError(f"expected a mapping, got {type(data).__name__}", path=source,
                               field=where)
        self.data, self.source, self.where = data, source, where

    def fail(self, key: str, msg: str) -> DatasetError:
        return DatasetError(msg, path=self.source, field=f"{self.where}.{key}")

    def raw(self, key: str) -> Any:
        if key not in self.data:
            raise self.fail(key, "missing")
        return self.data[key]

    def sub(self, key: str) -> "_Fields":
        return _Fields(self.raw(key), self.source, f"{self.where}.{key}")

    def text(self, key: str, default: str | None = None) -> str:
        if key not in self.data and default is not None:
            return default
        value = self.raw(key)
        if not isinstance(value, (str, Path)):
            raise self.fail(key, f"expected a string, got {type(value).__name__}")
        return str(value)

    def integer(self, key: str) -> int:
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise self.fail(key, f"expected an integer, got {excerpt(value)}")
        return int(value)

    def array(self, key: str, shape: tuple[int, ...] | None, *, finite: bool = True,
              dtype: type = np.float64) -> np.ndarray:
        try:
            a = np.asarray(self.raw(key), dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise self.fail(key, f"not a numeric array: {exc}") from None
        if shape is not None and (a.ndim != len(shape) or any(
                want not in (-1, have) for want, have in zip(shape, a.shape))):
            raise self.fail(key, f"expected shape {shape} (-1 = any), got {a.shape}")
        if finite and not np.isfinite(a).all():
            raise self.fail(key, "contains NaN or Inf")
        return a

    def pose(self, prefix: str) -> Pose:
        t = self.array(f"{prefix}_translation", (3,))
        q = self.array(f"{prefix}_rotation", (4,))
        if abs(np.linalg.norm(q) - 1.0) > 1e-3:
            raise self.fail(f"{prefix}_rotation",
                            f"not a unit quaternion (norm {np.linalg.norm(q):.4f})")
        return Pose(tuple(t.tolist()), tuple(q.tolist()))

    def sensor2lidar(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.array("sensor2lidar_rotation", (3, 3))
        m[:3, 3] = self.array("sensor2lidar_translation", (3,))
        return m


def _sensor(f: _Fields, resolve: Callable[[str], Path], camera: bool) -> SensorRecord:
    intrinsics = None
    if camera:
        key = "cam_intrinsic" if "cam_intrinsic" in f.data else "camera_intrinsics"
        intrinsics = f.array(key, (3, 3))
    return SensorRecord(
        token=f.text("sample_data_token", default=""), path=resolve(f.text("data_path")),
        timestamp=f.integer("timestamp"), sensor2ego=f.pose("sensor2ego"),
        ego2global=f.pose("ego2global"), sensor2lidar=f.sensor2lidar(), intrinsics=intrinsics)


def record_from_info(info: Mapping[str, Any], *, source: Path, where: str,
                     resolve: Callable[[str], Path]) -> SampleRecord:
    """One info dict → ``SampleRecord`` (the info's own ``sensor2lidar`` matrices are used)."""
    f = _Fields(info, source, where)
    sweeps = f.raw("sweeps")
    if not isinstance(sweeps, list):
        raise f.fail("sweeps", f"expected a list, got {type(sweeps).__name__}")
    cams = f.sub("cams")
    lidar2ego, ego2global = f.pose("lidar2ego"), f.pose("ego2global")
    timestamp = f.integer("timestamp")
    return SampleRecord(
        token=f.text("token"), timestamp=timestamp, location=f.text("location", default=""),
        lidar=SensorRecord(token="", path=resolve(f.text("lidar_path")), timestamp=timestamp,
                           sensor2ego=lidar2ego, ego2global=ego2global, sensor2lidar=np.eye(4)),
        cameras={str(name): _sensor(cams.sub(name), resolve, camera=True) for name in cams.data},
        sweeps=[_sensor(_Fields(s, source, f"{where}.sweeps[{i}]"), resolve, camera=False)
                for i, s in enumerate(sweeps)],
        annotations=_annotations(f) if "gt_boxes" in info else None,
        source=f"{source} {where}")


def _annotations(f: _Fields) -> Annotations:
    legacy = f.array("gt_boxes", (-1, 7))
    k = legacy.shape[0]
    velocity = f.array("gt_velocity", (k, 2), finite=False)
    names = np.asarray(f.raw("gt_names")).astype(str).reshape(-1)
    if names.shape != (k,):
        raise f.fail("gt_names", f"expected {k} names, got {names.shape[0]}")
    tokens = (np.asarray(f.raw("ann_tokens")).astype(str).reshape(-1) if "ann_tokens" in f.data
              else np.full(k, "", dtype=str))
    boxes = from_mmdet3d_legacy(np.concatenate([legacy, velocity], axis=1), z_is_bottom=False)
    return Annotations(
        boxes=boxes, names=names,
        num_lidar_pts=f.array("num_lidar_pts", (k,), dtype=np.int64),
        num_radar_pts=(f.array("num_radar_pts", (k,), dtype=np.int64)
                       if "num_radar_pts" in f.data else np.zeros(k, np.int64)),
        tokens=tokens)


class InfoLoader(ListedFrames):
    """Frames from an info ``.pkl``, with the same sweep rules as ``NuScenesLoader``.

    Paths in info files are as the converter wrote them (often relative to the directory it ran
    in). With ``dataroot`` every path is re-anchored there from its ``samples/`` or ``sweeps/``
    component, so a file converted elsewhere works; without it paths are used as stored.
    Frames come in time order, as mmdet3d's ``NuScenesDataset.load_annotations`` sorts them.
    """

    def __init__(self, pkl_path: str | Path, preset: Preset | str,
                 dataroot: str | Path | None = None, *, sweeps: int | None = None,
                 sweep_policy: SweepPolicy = "nearest", seed: int = 0, with_gt: bool = True,
                 pad_empty_sweeps: bool = True, data: Any = None) -> None:
        super().__init__(preset, sweeps=sweeps, sweep_policy=sweep_policy, seed=seed,
                         pad_empty_sweeps=pad_empty_sweeps, with_gt=with_gt)
        self.path = Path(pkl_path)
        self.dataroot = None if dataroot is None else Path(dataroot)
        data = load_infos(self.path, data)  # ``data``: unpickled already (data.info_files)
        metadata = data.get("metadata", {})
        self.version = str(metadata.get("version", "")) if isinstance(metadata, Mapping) else ""
        records = [record_from_info(info, source=self.path, where=f"infos[{i}]",
                                    resolve=self._resolve)
                   for i, info in enumerate(data["infos"])]
        self._keep(records)

    def _resolve(self, stored: str) -> Path:
        p = Path(stored)
        if self.dataroot is None:
            return p
        for anchor in ("samples", "sweeps"):
            if anchor in p.parts:
                return self.dataroot.joinpath(*p.parts[p.parts.index(anchor):])
        return p if p.is_absolute() else self.dataroot / p


# ----------------------------------------------------------------------------------- writing


def _pose_fields(prefix: str, pose: Pose) -> dict[str, list[float]]:
    return {f"{prefix}_translation": list(pose.translation),
            f"{prefix}_rotation": list(pose.rotation)}


def _sensor_info(s: SensorRecord, kind: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "data_path": str(s.path), "type": kind, "sample_data_token": s.token,
        **_pose_fields("sensor2ego", s.sensor2ego), **_pose_fields("ego2global", s.ego2global),
        "timestamp": s.timestamp,
        "sensor2lidar_rotation": np.asarray(s.sensor2lidar[:3, :3], np.float64),
        "sensor2lidar_translation": np.asarray(s.sensor2lidar[:3, 3], np.float64),
    }
    if s.intrinsics is not None:
        info["cam_intrinsic"] = info["camera_intrinsics"] = np.asarray(s.intrinsics, np.float64)
    return info


def info_from_record(rec: SampleRecord) -> dict[str, Any]:
    """``SampleRecord`` → one info dict in the converter's format (see the module docstring)."""
    info: dict[str, Any] = {
        "lidar_path": str(rec.lidar.path), "token": rec.token,
        "sweeps": [_sensor_info(s, "lidar") for s in rec.sweeps],
        "cams": {name: _sensor_info(c, name) for name, c in rec.cameras.items()},
        **_pose_fields("lidar2ego", rec.lidar.sensor2ego),
        **_pose_fields("ego2global", rec.lidar.ego2global),
        "timestamp": rec.timestamp, "location": rec.location,
    }
    a = rec.annotations
    if a is not None:
        legacy = to_mmdet3d_legacy(a.boxes, z_is_bottom=False)
        info.update(
            gt_boxes=legacy[:, :7].astype(np.float64), gt_names=a.names.astype(str),
            gt_velocity=a.boxes[:, 7:9].astype(np.float64),
            num_lidar_pts=a.num_lidar_pts.astype(np.int64),
            num_radar_pts=a.num_radar_pts.astype(np.int64),
            valid_flag=(a.num_lidar_pts + a.num_radar_pts) > 0,
            ann_tokens=a.tokens.astype(str))
    return info


def write_infos(path: str | Path, loader: RecordFrames) -> Path:
    """Write every sample of ``loader`` (typically a ``NuScenesLoader``) as an info ``.pkl``
    that mmdet3d / mit-han-lab BEVFusion and ``InfoLoader`` read; written atomically."""
    data = {"infos": [info_from_record(loader.record(i)) for i in range(len(loader))],
            "metadata": {"version": loader.version}}
    return atomic_write(path, pickle.dumps(data, protocol=PICKLE_PROTOCOL))
