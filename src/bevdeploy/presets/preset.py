"""``Preset``: the whole configuration of one model and its sensors, its derived shapes, its
cross-module validation and its YAML round trip."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from bevdeploy.errors import ConfigError
from bevdeploy.io import atomic_write
from bevdeploy.presets.network import ModelConfig
from bevdeploy.presets.plain import from_plain, to_plain
from bevdeploy.presets.sensors import NUSCENES_CLASSES, CameraConfig, PointsConfig, VoxelConfig
from bevdeploy.safe_yaml import load_yaml_file
from bevdeploy.vocabulary import cell_count


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


@dataclass(frozen=True)
class Preset:
    """Everything the toolkit needs to know about one model and its sensors."""

    name: str
    classes: tuple[str, ...] = NUSCENES_CLASSES
    cameras: CameraConfig = field(default_factory=CameraConfig)
    points: PointsConfig = field(default_factory=PointsConfig)
    voxel: VoxelConfig = field(default_factory=VoxelConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # Default weights: a path, or a path relative to the package's ``assets/`` folder for the
    # weights bevdeploy ships (see ``checkpoint_path``).
    checkpoint: str | None = None

    @property
    def checkpoint_path(self) -> Path | None:
        """The default checkpoint as a path: absolute or cwd-relative if it exists as given,
        else resolved inside the installed ``bevdeploy/assets/`` folder."""
        if self.checkpoint is None:
            return None
        given = Path(self.checkpoint)
        if given.is_absolute() or given.exists():
            return given
        return Path(__file__).resolve().parents[1] / "assets" / given

    # ---- derived shapes (one place) ----
    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Voxel grid (X, Y, Z) = range / voxel size."""
        r, v = self.points.point_cloud_range, self.voxel.voxel_size
        return (cell_count(r[0], r[3], v[0]), cell_count(r[1], r[4], v[1]), cell_count(r[2], r[5], v[2]))

    @property
    def sparse_shape(self) -> tuple[int, int, int]:
        """SparseEncoder input shape (X, Y, Z + 1), the SECOND convention."""
        x, y, z = self.grid_size
        return (x, y, z + 1)

    @property
    def feature_size(self) -> tuple[int, int]:
        """(h, w) of the camera feature map fed to the view transform (backbone level 0)."""
        stride = self.model.backbone.out_strides[0]
        return (self.cameras.image_size[0] // stride, self.cameras.image_size[1] // stride)

    @property
    def lidar_encoder_shapes(self) -> list[tuple[int, int, int]]:
        """Spatial shape after the input conv and after every stage + conv_out."""
        shape = self.sparse_shape
        shapes = [shape]
        enc = self.model.lidar_encoder
        for i, pads in enumerate(enc.encoder_paddings):
            if i == len(enc.encoder_paddings) - 1:
                break  # the last stage has no strided conv
            pad = pads[-1]
            pad3 = tuple(pad) if isinstance(pad, (tuple, list)) else (pad,) * 3
            shape = tuple(_conv_out(s, 3, 2, p) for s, p in zip(shape, pad3))
            shapes.append(shape)
        x, y, z = shape
        shapes.append((x, y, _conv_out(z, 3, 2, 0)))  # conv_out: k (1,1,3), s (1,1,2), p 0
        return shapes

    @property
    def lidar_bev_channels(self) -> int:
        return self.model.lidar_encoder.output_channels * self.lidar_encoder_shapes[-1][2]

    @property
    def bev_size(self) -> tuple[int, int]:
        """(X, Y) of every fused BEV map (camera after downsample = LiDAR = head grid)."""
        x, y, _ = self.lidar_encoder_shapes[-1]
        return (x, y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def validate(self) -> "Preset":
        """Check every field and every cross-module shape; raise ConfigError naming the field."""
        parts = {"cameras": self.cameras, "points": self.points, "voxel": self.voxel,
                 **{f"model.{f.name}": getattr(self.model, f.name) for f in fields(self.model)}}
        for path, part in parts.items():
            if hasattr(part, "validate"):
                try:
                    part.validate()
                except ValueError as exc:
                    raise ConfigError(str(exc), path=self.name, field=path) from None

        def check(cond: bool, fld: str, msg: str) -> None:
            if not cond:
                raise ConfigError(msg, path=self.name, field=fld)

        check(bool(self.classes) and len(set(self.classes)) == len(self.classes), "classes",
              "classes must be a non-empty list of unique names")
        head = self.model.head
        unknown = set(head.no_suppression_classes) - set(self.classes)
        check(not unknown, "model.head.no_suppression_classes", f"unknown classes {sorted(unknown)}")
        try:
            grid = self.grid_size
        except ValueError as exc:
            raise ConfigError(f"voxel_size does not fit point_cloud_range: {exc}",
                              path=self.name, field="voxel.voxel_size") from None
        shapes = self.lidar_encoder_shapes
        check(all(min(s) >= 1 for s in shapes), "model.lidar_encoder",
              f"the sparse encoder shrinks the grid {self.sparse_shape} to nothing: {shapes}")
        stride = grid[0] // shapes[-1][0]
        check(head.out_size_factor == stride and grid[0] == stride * shapes[-1][0]
              and grid[1] == stride * shapes[-1][1], "model.head.out_size_factor",
              f"out_size_factor {head.out_size_factor} must equal the LiDAR encoder stride "
              f"(grid {grid[:2]} → BEV {shapes[-1][:2]})")
        vt = self.model.vtransform
        r = self.points.point_cloud_range
        check(math.isclose(vt.xbound[0], r[0]) and math.isclose(vt.xbound[1], r[3])
              and math.isclose(vt.ybound[0], r[1]) and math.isclose(vt.ybound[1], r[4]),
              "model.vtransform.xbound",
              f"the camera BEV bounds {vt.xbound[:2]}×{vt.ybound[:2]} must cover the same area as "
              f"point_cloud_range {list(r)}")
        check(vt.out_bev_size == self.bev_size, "model.vtransform",
              f"camera BEV {vt.out_bev_size} must equal LiDAR BEV {self.bev_size}")
        img = self.cameras.image_size
        strides = self.model.backbone.out_strides
        check(all(img[0] % s == 0 and img[1] % s == 0 for s in strides), "cameras.image_size",
              f"image_size {img} must be divisible by every backbone stride {strides}")
        check(self.model.vtransform.out_channels > 0 and self.model.neck.out_channels > 0,
              "model", "channel counts must be positive")
        return self

    # ---- serialisation ----
    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            atomic_write(path, text.encode())
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<dict>") -> "Preset":
        return from_plain(cls, data, source, "").validate()

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Preset":
        p = Path(path)
        data = load_yaml_file(p, ConfigError)
        if not isinstance(data, dict):
            raise ConfigError("expected a mapping at the top level", path=p)
        return cls.from_dict(data, source=str(p))
