"""Sensor files → arrays: LiDAR point files, camera images, and multi-sweep aggregation.

Every reader turns a bad file into an ``InputError`` that names the file and the field at fault
(a fleet job failing on frame 4,031 must say which file to look at), never a numpy or PIL
traceback (an unreadable file — no permission, a directory, a truncated JPEG — included).
Multi-sweep aggregation lives here because it is LiDAR reading with a rule set
(docs/reference.md#lidar-points), shared by the nuScenes loader and the info-file loader, and usable
with any rig that can give each previous sweep's pose relative to the key sweep.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pypcd4 import PointCloud

from bevdeploy.data.pcd_header import check_pcd_header
from bevdeploy.errors import InputError, excerpt, os_reason

log = logging.getLogger(__name__)

NonFinitePolicy = Literal["drop", "error"]
SweepPolicy = Literal["nearest", "random"]

NUSCENES_COLUMNS = 5  # nuScenes .pcd.bin: x, y, z, intensity, ring index
KITTI_COLUMNS = 4  # KITTI .bin: x, y, z, reflectance
_PCD_TIME_FIELDS = ("time_lag", "time")  # seconds relative to the key sweep
# No LiDAR sees 10 km: a coordinate beyond this is a wrong unit (mm), a wrong record layout
# (float64 read as float32) or a sensor glitch, and is treated like a NaN row.
MAX_ABS_COORD_M = 1e4
# An 8K camera has 33 MP; a larger header is a decompression bomb, refused before decoding.
MAX_IMAGE_PIXELS = 64_000_000


@contextmanager
def _reading(path: Path, field: str) -> Iterator[None]:
    """Turn an operating-system failure while reading ``path`` into an ``InputError``."""
    try:
        yield
    except OSError as exc:
        raise InputError(f"cannot read the file: {os_reason(exc)}", path=path,
                         field=field) from None


# ----------------------------------------------------------------------------------- points


def read_points(path: str | Path, num_features: int | None = None, *, columns: int | None = None,
                nonfinite: NonFinitePolicy = "drop") -> np.ndarray:
    """Read a LiDAR point file into a ``(P, F)`` float32 array.

    Formats, by suffix:

    * ``.pcd.bin`` — nuScenes: raw little-endian float32 records of 5 columns;
    * ``.bin`` — KITTI: 4 columns, unless ``columns`` says otherwise (the record width of a raw
      file cannot be inferred, so it must be explicit or implied by the suffix);
    * ``.pcd`` — PCL, through ``pypcd4``: fields ``x, y, z, intensity`` and, when present, a
      float ``time_lag`` or ``time`` field (seconds relative to the key sweep) as column 5;
    * ``.npy`` — a plain numeric array, loaded with ``allow_pickle=False``.

    ``nonfinite`` is the policy for invalid rows — a NaN or Inf in any column, or a coordinate
    beyond ``MAX_ABS_COORD_M``: ``"drop"`` removes them and logs how many, ``"error"`` raises.
    Either way a file whose rows are *all* invalid is an error (a wrong layout or unit, not an
    empty scan); an empty file is a valid empty cloud. With ``num_features=5`` a 4-column file
    gets a zero time-lag column (a single sweep has no lag); any other width mismatch is an
    error.
    """
    p = Path(path)
    name = p.name.lower()
    if not p.is_file():
        raise InputError("point file not found", path=p, field="points")
    with _reading(p, "points"):
        if name.endswith(".pcd.bin") or name.endswith(".bin"):
            width = columns or (NUSCENES_COLUMNS if name.endswith(".pcd.bin") else KITTI_COLUMNS)
            points = _read_raw_float32(p, width)
        elif name.endswith(".pcd"):
            points = _read_pcd(p, columns)
        elif name.endswith(".npy"):
            points = _read_npy(p, columns)
        else:
            raise InputError(f"unknown point file format {p.suffix!r}; expected .pcd.bin "
                             "(nuScenes), .bin (KITTI), .pcd or .npy", path=p, field="format")
    points = _apply_nonfinite_policy(points, nonfinite, p)
    return _match_features(points, num_features, p)


def _read_raw_float32(path: Path, columns: int) -> np.ndarray:
    if columns < 1:
        raise InputError(f"columns must be positive, got {columns}", path=path, field="columns")
    size = path.stat().st_size
    record = 4 * columns
    if size % record:
        raise InputError(f"{size} bytes is not a multiple of the {columns}-column float32 record "
                         f"({record} bytes): wrong column count or a truncated file",
                         path=path, field="size")
    return np.fromfile(path, dtype="<f4").reshape(-1, columns).astype(np.float32, copy=False)


def _read_pcd(path: Path, columns: int | None) -> np.ndarray:
    declared = check_pcd_header(path)  # before pypcd4 allocates what the header declares
    try:
        with warnings.catch_warnings():  # an ASCII file with zero points is a valid empty cloud
            warnings.filterwarnings("ignore", message="loadtxt: input contained no data")
            cloud = PointCloud.from_path(path)
    except OSError:
        raise
    except Exception as exc:  # pypcd4 raises bare ValueError/KeyError/struct errors on bad headers
        raise InputError(f"not a readable PCD file: {excerpt(exc)}", path=path,
                         field="header") from None
    if cloud.pc_data.size != declared:  # an ASCII payload of another length
        raise InputError(f"the header declares {declared:,} points but the data holds "
                         f"{cloud.pc_data.size:,}", path=path, field="points")
    fields = list(cloud.fields)
    wanted = ["x", "y", "z", "intensity"]
    missing = [f for f in wanted if f not in fields]
    if missing:
        raise InputError(f"missing field(s) {missing}; the file has {fields}", path=path,
                         field="fields")
    wanted += [f for f in _PCD_TIME_FIELDS if f in fields][:1]
    if columns is not None and columns != len(wanted):
        raise InputError(f"columns={columns} was requested but the file provides {len(wanted)} "
                         f"usable fields {wanted}", path=path, field="columns")
    try:
        return np.ascontiguousarray(cloud.numpy(wanted), dtype=np.float32)
    except (ValueError, TypeError) as exc:  # a declared size that the data does not fill
        raise InputError(f"the point data does not match the header: {exc}", path=path,
                         field="data") from None


def _read_npy(path: Path, columns: int | None) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:  # pickles, bad headers, truncation
        raise InputError(f"not a plain .npy array: {exc}", path=path, field="format") from None
    if not isinstance(array, np.ndarray):  # an .npz archive behind an .npy name
        array.close()
        raise InputError("not a plain .npy array (an .npz archive?)", path=path, field="format")
    kind = array.dtype
    if kind.fields is not None or not np.issubdtype(kind, np.number) \
            or np.issubdtype(kind, np.complexfloating):
        raise InputError(f"expected a real numeric array, got dtype {array.dtype}", path=path,
                         field="dtype")
    if array.ndim == 1 and columns:
        if array.size % columns:
            raise InputError(f"{array.size} values are not a multiple of {columns} columns",
                             path=path, field="size")
        array = array.reshape(-1, columns)
    if array.ndim != 2:
        raise InputError(f"expected a (P, F) array, got shape {array.shape}", path=path,
                         field="shape")
    if columns is not None and array.shape[1] != columns:
        raise InputError(f"expected {columns} columns, got {array.shape[1]}", path=path,
                         field="columns")
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes Inf: an invalid row
        return np.ascontiguousarray(array, dtype=np.float32)


def _apply_nonfinite_policy(points: np.ndarray, policy: NonFinitePolicy, path: Path) -> np.ndarray:
    if policy not in ("drop", "error"):
        raise ValueError(f"nonfinite must be 'drop' or 'error', got {policy!r}")
    finite = np.isfinite(points).all(axis=1)
    with np.errstate(invalid="ignore"):
        valid = finite & (np.abs(points[:, :3]) <= MAX_ABS_COORD_M).all(axis=1)
    total = points.shape[0]
    bad = int(total - np.count_nonzero(valid))
    if not bad:
        return points
    why = (f"contain NaN or Inf or a coordinate beyond {MAX_ABS_COORD_M:g} m "
           f"({total - np.count_nonzero(finite)} non-finite)")
    if bad == total:
        raise InputError(f"all {total} rows {why}: a wrong column count, dtype or unit, not a "
                         "LiDAR scan", path=path, field="points")
    if policy == "error":
        raise InputError(f"{bad} of {total} rows {why}", path=path, field="points")
    log.warning("%s: dropped %d of %d rows that %s", path, bad, total, why)
    return points[valid]


def _match_features(points: np.ndarray, num_features: int | None, path: Path) -> np.ndarray:
    have = points.shape[1]
    if num_features is None or num_features == have:
        return points
    if num_features == 5 and have == 4:
        return np.concatenate([points, np.zeros((points.shape[0], 1), np.float32)], axis=1)
    raise InputError(f"the file has {have} columns but {num_features} features were requested "
                     "(only 4 → 5, appending a zero time lag, is converted)", path=path,
                     field="columns")


# ----------------------------------------------------------------------------------- sweeps


@dataclass(frozen=True)
class Sweep:
    """A previous LiDAR sweep as the aggregation needs it.

    ``sensor2lidar`` is the 4×4 T_key←sweep mapping the sweep's LiDAR frame to the key sweep's
    LiDAR frame, computed through the global frame with each sweep's own ego pose (nuScenes
    info files store it as ``sensor2lidar_rotation/translation``). ``timestamp`` is in µs.
    """

    path: Path
    sensor2lidar: np.ndarray
    timestamp: int


def select_sweeps(available: int, wanted: int, policy: SweepPolicy = "nearest",
                  rng: np.random.RandomState | None = None) -> np.ndarray:
    """Indices of the sweeps to use out of ``available`` (most recent first).

    All of them when there are at most ``wanted``. Otherwise ``"nearest"`` takes the ``wanted``
    most recent (the reference's ``test_mode=True``), and ``"random"`` draws ``wanted`` without
    replacement with ``rng.choice`` — the reference's behaviour at test time, since its pipeline
    does not set ``test_mode`` (docs/reference.md#lidar-points). A legacy ``RandomState`` is used so
    that a state seeded like ``np.random.seed`` draws exactly what the reference's
    ``np.random.choice`` would.
    """
    if available <= wanted:
        return np.arange(available)
    if policy == "nearest":
        return np.arange(wanted)
    if policy == "random":
        if rng is None:
            raise ValueError("sweep_policy 'random' needs an rng")
        return rng.choice(available, wanted, replace=False)
    raise ValueError(f"sweep_policy must be 'nearest' or 'random', got {policy!r}")


def remove_close(points: np.ndarray, radius: float) -> np.ndarray:
    """Drop points with ``|x| < radius`` **and** ``|y| < radius`` (a square, as the reference's
    ``_remove_close``): returns from the ego vehicle's own body."""
    close = (np.abs(points[:, 0]) < radius) & (np.abs(points[:, 1]) < radius)
    return points[~close]


def read_multisweep(key_path: str | Path, key_timestamp: int, sweeps: Sequence[Sweep], *,
                    num_sweeps: int, policy: SweepPolicy = "nearest",
                    rng: np.random.RandomState | None = None, remove_close_radius: float = 1.0,
                    pad_empty_sweeps: bool = True, num_features: int = 5,
                    nonfinite: NonFinitePolicy = "drop") -> np.ndarray:
    """Key sweep + up to ``num_sweeps`` previous sweeps → ``(P, num_features)`` float32 points,
    exactly as the reference's ``LoadPointsFromMultiSweeps`` (docs/reference.md#lidar-points).

    * Key sweep: file order, column 5 (the ring index in nuScenes files) set to 0.
    * Sweeps, in ``select_sweeps`` order: close points removed in the sweep's own frame, xyz
      mapped to the key LiDAR frame by ``sensor2lidar``, column 5 = (t_key − t_sweep)/1e6 s.
    * ``pad_empty_sweeps`` (the reference's setting): when the frame has no previous sweep at
      all, the key sweep (close points removed, lag 0) is appended ``num_sweeps`` times, so the
      voxel point budget fills as in training.

    No range filter is applied; the model/runtime owns the preset's range.
    """
    key = read_points(key_path, NUSCENES_COLUMNS, nonfinite=nonfinite)
    key[:, 4] = 0.0
    parts = [key]
    if pad_empty_sweeps and not sweeps:
        parts += [remove_close(key, remove_close_radius)] * num_sweeps
    else:
        for i in select_sweeps(len(sweeps), num_sweeps, policy, rng):
            sweep = sweeps[int(i)]
            pts = remove_close(read_points(sweep.path, NUSCENES_COLUMNS, nonfinite=nonfinite),
                               remove_close_radius)
            m = np.asarray(sweep.sensor2lidar, dtype=np.float64)
            pts[:, :3] = pts[:, :3] @ m[:3, :3].T + m[:3, 3]
            # Seconds subtracted in float64 as the reference does (not µs then /1e6), so the
            # float32 lags match it bit for bit.
            pts[:, 4] = key_timestamp / 1e6 - sweep.timestamp / 1e6
            parts.append(pts)
    return np.concatenate(parts, axis=0)[:, :num_features]


# ----------------------------------------------------------------------------------- images


def read_image(path: str | Path, *, camera: str = "",
               expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file → ``(H, W, 3)`` uint8 RGB, loaded with PIL as the reference does.

    The size the header declares is checked before anything is decoded: it must be
    ``expected_size`` (H, W) when given, and at most ``MAX_IMAGE_PIXELS`` pixels in any case
    (PIL's bomb warning, raised as an error, refuses what its own header check sees). A
    missing file, an unreadable or truncated one, another size and a decompression bomb are
    ``InputError``s naming the camera.
    """
    p = Path(path)
    who = f"camera {camera}: " if camera else ""
    fld = camera or "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                width, height = img.size  # from the header: nothing is decoded yet
                if expected_size is not None and (height, width) != tuple(expected_size):
                    raise InputError(f"{who}image is {height}×{width} (H×W) but "
                                     f"{expected_size[0]}×{expected_size[1]} is expected (the "
                                     "preset's raw size)", path=p, field=fld)
                if width * height > MAX_IMAGE_PIXELS:
                    raise InputError(f"{who}image declares {width}×{height} pixels, more than "
                                     f"{MAX_IMAGE_PIXELS:,}", path=p, field=fld)
                return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise InputError(f"{who}image file not found", path=p, field=fld) from None
    except (UnidentifiedImageError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, OSError) as exc:
        raise InputError(f"{who}not a readable image ({excerpt(exc)})", path=p,
                         field=fld) from None


def read_images(paths: Sequence[str | Path], cameras: Sequence[str],
                expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """One image per camera → ``(N, H, W, 3)`` uint8 in the given camera order.

    All images must share one size, and ``expected_size`` (H, W) when given. The policy for
    another size is to **refuse, never resize**: the preprocessing derives its resize and crop
    from the preset's raw size, and the intrinsics are in raw-image pixels — resizing an image
    whose calibration was made at another resolution would feed the network a wrongly cropped
    view with wrongly projected depth, i.e. plausible wrong boxes instead of an error.
    """
    images = [read_image(p, camera=c, expected_size=expected_size)
              for p, c in zip(paths, cameras, strict=True)]
    want = expected_size or images[0].shape[:2]
    for img, p, c in zip(images, paths, cameras):
        if img.shape[:2] != tuple(want):
            raise InputError(f"camera {c}: image is {img.shape[0]}×{img.shape[1]} (H×W) but "
                             f"{want[0]}×{want[1]} is expected (the preset's raw size)",
                             path=p, field=c)
    return np.stack(images)


# ----------------------------------------------------------------------------------- writing
