"""The data contracts that carry everything: ``Calibration``, ``Frame``, ``GroundTruth``,
``Detections``.

They are plain dataclasses over numpy arrays with no torch in sight, so the deploy runtime can
use them on a machine without PyTorch. Derived matrices (``lidar2camera``, ``lidar2image``, the
image augmentation) are computed from the stored ones, never stored twice.
The box convention is stated once, in ``bevdeploy.data.boxes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bevdeploy.data.boxes import BOX_FIELDS, to_mmdet3d_legacy
from bevdeploy.errors import InputError


def _finite(a: np.ndarray, source: str, fld: str) -> None:
    if not np.all(np.isfinite(a)):
        raise InputError("contains NaN or Inf", path=source, field=fld)


# Max |R·Rᵀ − I| of an accepted rotation: float32 round trips (~1e-7) pass with a wide margin,
# a scaled or sheared matrix (a calibration bug) does not.
ROTATION_TOL = 1e-3


def _rigid(m: np.ndarray, source: str, fld: str, tol: float = ROTATION_TOL) -> None:
    """A 4×4 rigid transform: finite, last row (0,0,0,1), orthonormal rotation with det +1
    (a reflection, det −1, is a mirrored axis in the calibration, not a pose)."""
    if m.shape != (4, 4):
        raise InputError(f"expected a 4x4 matrix, got shape {m.shape}", path=source, field=fld)
    _finite(m, source, fld)
    if not np.allclose(m[3], (0, 0, 0, 1), atol=1e-6):
        raise InputError(f"last row must be (0, 0, 0, 1), got {m[3].tolist()}", path=source, field=fld)
    r = m[:3, :3].astype(np.float64)
    err = np.abs(r @ r.T - np.eye(3)).max()
    if err > tol or np.linalg.det(r) < 0:
        raise InputError(f"rotation is not orthonormal with det +1 (|RRᵀ−I| = {err:.2e}, "
                         f"det = {np.linalg.det(r):.3f})", path=source, field=fld)


@dataclass
class Calibration:
    """Per-camera intrinsics and extrinsics, plus the poses needed for evaluation.

    ``camera2lidar`` is T_lidar←cam (p_lidar = R·p_cam + t), already including the ego motion
    between the camera and LiDAR captures (as nuScenes' ``sensor2lidar``). ``intrinsics`` are
    in pixels of the raw image.
    """

    camera_names: tuple[str, ...]
    intrinsics: np.ndarray  # (N, 3, 3)
    camera2lidar: np.ndarray  # (N, 4, 4)
    lidar2ego: np.ndarray = field(default_factory=lambda: np.eye(4))  # (4, 4)
    ego2global: np.ndarray = field(default_factory=lambda: np.eye(4))  # (4, 4)

    @property
    def num_cameras(self) -> int:
        return len(self.camera_names)

    def lidar2camera(self) -> np.ndarray:
        """(N, 4, 4) inverse of ``camera2lidar``: rotation Rᵀ, translation −Rᵀt."""
        r = self.camera2lidar[:, :3, :3].astype(np.float64)
        t = self.camera2lidar[:, :3, 3].astype(np.float64)
        out = np.tile(np.eye(4), (self.num_cameras, 1, 1))
        out[:, :3, :3] = r.transpose(0, 2, 1)
        out[:, :3, 3] = -np.einsum("nji,nj->ni", r, t)
        return out

    def lidar2global(self) -> np.ndarray:
        return self.ego2global.astype(np.float64) @ self.lidar2ego.astype(np.float64)

    def validate(self, source: str = "<calibration>") -> "Calibration":
        """Refuse calibration the geometry would silently turn into wrong boxes: non-finite
        values, singular intrinsics or non-positive focal lengths, and transforms that are not
        rigid (rotation off orthonormal by more than ``ROTATION_TOL``, or det −1)."""
        n = self.num_cameras
        if self.intrinsics.shape != (n, 3, 3):
            raise InputError(f"expected ({n}, 3, 3), got {self.intrinsics.shape}",
                             path=source, field="intrinsics")
        if self.camera2lidar.shape != (n, 4, 4):
            raise InputError(f"expected ({n}, 4, 4), got {self.camera2lidar.shape}",
                             path=source, field="camera2lidar")
        for i, name in enumerate(self.camera_names):
            k = self.intrinsics[i]
            _finite(k, source, f"{name}.intrinsics")
            if abs(np.linalg.det(k.astype(np.float64))) < 1e-9 or k[0, 0] <= 0 or k[1, 1] <= 0:
                raise InputError("singular intrinsics (focal lengths must be positive)",
                                 path=source, field=f"{name}.intrinsics")
            _rigid(self.camera2lidar[i], source, f"{name}.camera2lidar")
        _rigid(self.lidar2ego, source, "lidar2ego")
        _rigid(self.ego2global, source, "ego2global")
        return self


@dataclass
class GroundTruth:
    """Annotated boxes of a frame, in the bevdeploy box convention (LiDAR frame)."""

    boxes: np.ndarray  # (K, 9) [x, y, z, l, w, h, yaw, vx, vy]
    names: np.ndarray  # (K,) detection class name, or "ignore" for non-detection categories
    num_lidar_pts: np.ndarray  # (K,) int
    tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def labels(self, classes: tuple[str, ...]) -> np.ndarray:
        """Class index per box, −1 for names not in ``classes``."""
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index.get(str(n), -1) for n in self.names], dtype=np.int64)


@dataclass
class Frame:
    """One synchronized sample, everything in the LiDAR frame of the key sweep.

    ``images`` are raw camera images in the preset's camera order (N×H×W×3 uint8 RGB);
    ``points`` are P×F float32 (x, y, z, intensity, time lag in seconds for F = 5).
    ``dropped`` names the cameras the frame has no data for (camera → why: a missing image, an
    absent calibration, ``eval --drop-camera``); their image is zeros and every detector gives
    them zero depth weights, so they add exactly nothing to the camera BEV (``present``).
    """

    images: np.ndarray
    points: np.ndarray
    calib: Calibration
    token: str = ""
    timestamp: int = 0  # µs, of the key LiDAR sweep
    gt: GroundTruth | None = None
    source: str = ""  # where it came from, for error messages
    dropped: dict[str, str] = field(default_factory=dict)

    @property
    def present(self) -> np.ndarray:
        """(N,) bool in camera order: False for a dropped camera."""
        return np.array([name not in self.dropped for name in self.calib.camera_names],
                        dtype=bool)

    def validate(self, num_features: int | None = None) -> "Frame":
        src = self.source or self.token or "<frame>"
        n = self.calib.num_cameras
        if self.images.ndim != 4 or self.images.shape[0] != n or self.images.shape[3] != 3:
            raise InputError(f"expected ({n}, H, W, 3) images for cameras "
                             f"{list(self.calib.camera_names)}, got {self.images.shape}",
                             path=src, field="images")
        if self.images.dtype != np.uint8:
            raise InputError(f"expected uint8 images, got {self.images.dtype}", path=src,
                             field="images")
        if self.images.shape[1] == 0 or self.images.shape[2] == 0:
            raise InputError(f"empty images {self.images.shape}", path=src, field="images")
        if self.points.ndim != 2 or (num_features and self.points.shape[1] != num_features):
            raise InputError(f"expected (P, {num_features or 'F'}) points, got {self.points.shape}",
                             path=src, field="points")
        if not np.issubdtype(self.points.dtype, np.floating):
            raise InputError(f"expected floating-point points, got {self.points.dtype}",
                             path=src, field="points")
        _finite(self.points, src, "points")
        unknown = sorted(set(self.dropped) - set(self.calib.camera_names))
        if unknown:
            raise InputError(f"dropped camera(s) {unknown} are not among "
                             f"{list(self.calib.camera_names)}", path=src, field="dropped")
        self.calib.validate(src)
        return self


@dataclass
class Detections:
    """K detected boxes in the bevdeploy convention (``bevdeploy.data.boxes``)."""

    boxes: np.ndarray  # (K, 9) float32
    scores: np.ndarray  # (K,) float32
    labels: np.ndarray  # (K,) int64, index into ``class_names``
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 9)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not (len(self.boxes) == len(self.scores) == len(self.labels)):
            raise ValueError("boxes, scores and labels must have the same length")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls, class_names: tuple[str, ...]) -> "Detections":
        return cls(np.zeros((0, 9)), np.zeros(0), np.zeros(0), class_names)

    def filter(self, mask: np.ndarray) -> "Detections":
        return Detections(self.boxes[mask], self.scores[mask], self.labels[mask], self.class_names)

    def sorted(self) -> "Detections":
        return self.filter(np.argsort(-self.scores, kind="stable"))

    def names(self) -> list[str]:
        return [self.class_names[i] for i in self.labels]

    def to_cuda_bevfusion(self) -> np.ndarray:
        """(K, 11) ``[x, y, z, w, l, h, yaw, vx, vy, label, score]`` as CUDA-BEVFusion's Python
        binding returns it (z at the bottom, mmdet3d-legacy yaw)."""
        legacy = to_mmdet3d_legacy(self.boxes, z_is_bottom=True)
        return np.concatenate([legacy, self.labels[:, None].astype(np.float32),
                               self.scores[:, None]], axis=1).astype(np.float32)

    def to_dict(self) -> dict:
        """JSON-ready: one dict per box with named fields."""
        return {"fields": list(BOX_FIELDS), "boxes": [
            {"name": self.class_names[int(lbl)], "score": float(s),
             **{k: float(v) for k, v in zip(BOX_FIELDS, box)}}
            for box, s, lbl in zip(self.boxes, self.scores, self.labels)]}
