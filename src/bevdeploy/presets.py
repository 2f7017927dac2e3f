"""Named model configurations: one typed dataclass tree, YAML round-trip, validation.

A preset is data. Every shape and range the rest of the code needs (camera count and order,
image size, BEV size, point features, voxel grid, head geometry) is read from here, so a rig
with another camera count, resolution or a rectangular BEV grid is a preset edit and a
re-export, never a code change.

Values of ``nuscenes-resnet50`` are CUDA-BEVFusion's ResNet50 model
(docs/reference.md#cuda-bevfusion-configuration); ``nuscenes-swint`` is the official mit-han-lab
BEVFusion-Base (docs/reference.md); ``tiny`` keeps every module type but shrinks everything so that
a full forward runs on 2 CPU cores in well under a second (tests, CI, the demo).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from bevdeploy.errors import ConfigError
from bevdeploy.io import atomic_write
from bevdeploy.safe_yaml import load_yaml_file
from bevdeploy.vocabulary import cell_count

NUSCENES_CLASSES: tuple[str, ...] = (
    "car", "truck", "construction_vehicle", "bus", "trailer",
    "barrier", "motorcycle", "bicycle", "pedestrian", "traffic_cone",
)
NUSCENES_CAMERAS: tuple[str, ...] = (
    "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT",
    "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT",
)


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


# --------------------------------------------------------------------------------------------
# Sensors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraConfig:
    """The camera rig and the test-time image transform (docs/reference.md#camera-input).

    The transform is: resize the raw image by ``resize`` (``int(W·r), int(H·r)``), then crop
    ``image_size`` from the bottom centre (``bottom_crop_pct`` of the resized height is cut
    from the bottom first, 0 for nuScenes).
    """

    names: tuple[str, ...] = NUSCENES_CAMERAS
    raw_size: tuple[int, int] = (900, 1600)  # (H, W) of the sensor images
    image_size: tuple[int, int] = (256, 704)  # (H, W) fed to the network
    resize: float = 0.48
    bottom_crop_pct: float = 0.0
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB, 0..255 scale
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    @property
    def num_cameras(self) -> int:
        return len(self.names)

    @property
    def resized_size(self) -> tuple[int, int]:
        """(H, W) after the resize, with the reference's ``int()`` truncation."""
        return int(self.raw_size[0] * self.resize), int(self.raw_size[1] * self.resize)

    @property
    def crop_offset(self) -> tuple[int, int]:
        """(top, left) of the crop in the resized image: bottom-centre, as ``ImageAug3D``."""
        rh, rw = self.resized_size
        h, w = self.image_size
        top = int((1.0 - self.bottom_crop_pct) * rh) - h
        left = int(max(0, rw - w) / 2)
        return top, left

    def validate(self) -> None:
        if not self.names:
            raise ValueError("at least one camera is needed")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"camera names must be unique, got {list(self.names)}")
        if min(self.raw_size) <= 0 or min(self.image_size) <= 0 or self.resize <= 0:
            raise ValueError("raw_size, image_size and resize must be positive")
        rh, rw = self.resized_size
        top, left = self.crop_offset
        if top < 0 or left < 0 or top + self.image_size[0] > rh or left + self.image_size[1] > rw:
            raise ValueError(
                f"image_size {self.image_size} does not fit in the resized image ({rh}, {rw}); "
                f"raise resize or shrink image_size")
        if not 0.0 <= self.bottom_crop_pct < 1.0:
            raise ValueError("bottom_crop_pct must be in [0, 1)")
        if min(self.std) <= 0:
            raise ValueError("std must be positive")


@dataclass(frozen=True)
class PointsConfig:
    """LiDAR input: features per point, range filter and multi-sweep aggregation
    (docs/reference.md#lidar-points)."""

    num_features: int = 5  # x, y, z, intensity, time lag (s)
    point_cloud_range: tuple[float, float, float, float, float, float] = (-54.0, -54.0, -5.0,
                                                                        54.0, 54.0, 3.0)
    sweeps: int = 9  # previous sweeps aggregated with the key sweep
    remove_close: float = 1.0  # sweeps only: drop |x| < r and |y| < r in the sweep's own frame
    max_points: int = 300_000  # the deploy path's point buffer (CUDA-BEVFusion's bound)

    def validate(self) -> None:
        if self.num_features not in (4, 5):
            raise ValueError(f"num_features must be 4 (x,y,z,intensity) or 5 (+time lag), "
                             f"got {self.num_features}")
        r = self.point_cloud_range
        if not all(math.isfinite(v) for v in r) or not (r[0] < r[3] and r[1] < r[4] and r[2] < r[5]):
            raise ValueError(f"point_cloud_range must be finite [xmin,ymin,zmin,xmax,ymax,zmax] "
                             f"with min < max, got {list(r)}")
        if self.sweeps < 0 or self.remove_close < 0 or self.max_points <= 0:
            raise ValueError("sweeps, remove_close must be >= 0 and max_points > 0")


@dataclass(frozen=True)
class VoxelConfig:
    """Hard voxelization parameters (docs/reference.md#voxelization): the mean of up to
    ``max_points`` per voxel."""

    voxel_size: tuple[float, float, float] = (0.075, 0.075, 0.2)
    max_points: int = 10
    max_voxels: int = 160_000  # test
    max_voxels_train: int = 120_000

    def validate(self) -> None:
        if min(self.voxel_size) <= 0 or self.max_points <= 0 or self.max_voxels <= 0:
            raise ValueError("voxel_size, max_points and max_voxels must be positive")


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneConfig:
    """Camera backbone: mmdet ``ResNet`` (depth 18/34/50/101) or ``SwinTransformer``."""

    type: Literal["resnet", "swin"] = "resnet"
    out_indices: tuple[int, ...] = (1, 2, 3)
    # ResNet
    depth: int = 50
    base_channels: int = 64
    # Swin
    embed_dims: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: int = 4
    patch_size: int = 4

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of each returned level."""
        if self.type == "resnet":
            expansion = 4 if self.depth >= 50 else 1
            return tuple(self.base_channels * 2 ** i * expansion for i in self.out_indices)
        return tuple(self.embed_dims * 2 ** i for i in self.out_indices)

    @property
    def out_strides(self) -> tuple[int, ...]:
        """Stride of each returned level relative to the input image."""
        return tuple(4 * 2 ** i for i in self.out_indices)

    def validate(self) -> None:
        if self.type not in ("resnet", "swin"):
            raise ValueError(f"type must be 'resnet' or 'swin', got {self.type!r}")
        if list(self.out_indices) != sorted(set(self.out_indices)) or not self.out_indices \
                or min(self.out_indices) < 0 or max(self.out_indices) > 3:
            raise ValueError(f"out_indices must be increasing stage indices in 0..3, "
                             f"got {list(self.out_indices)}")
        if self.type == "resnet":
            if self.depth not in (18, 34, 50, 101, 152):
                raise ValueError(f"ResNet depth must be 18/34/50/101/152, got {self.depth}")
            if self.base_channels <= 0:
                raise ValueError("base_channels must be positive")
        else:
            if len(self.depths) != 4 or len(self.num_heads) != 4:
                raise ValueError("Swin needs 4 stage depths and 4 head counts")
            for i, heads in enumerate(self.num_heads):
                if (self.embed_dims * 2 ** i) % heads:
                    raise ValueError(f"stage {i}: {self.embed_dims * 2 ** i} channels are not "
                                     f"divisible by {heads} heads")


@dataclass(frozen=True)
class NeckConfig:
    """GeneralizedLSSFPN (docs/reference.md#generalizedlssfpn-neck); only output 0 (the finest
    level) is used."""

    out_channels: int = 256


@dataclass(frozen=True)
class VTransformConfig:
    """DepthLSSTransform (docs/reference.md#depthlsstransform): depth bins, BEV bounds and the
    downsample stack."""

    out_channels: int = 80  # C, camera BEV channels
    xbound: tuple[float, float, float] = (-54.0, 54.0, 0.3)
    ybound: tuple[float, float, float] = (-54.0, 54.0, 0.3)
    zbound: tuple[float, float, float] = (-10.0, 10.0, 20.0)
    dbound: tuple[float, float, float] = (1.0, 60.0, 0.5)
    downsample: int = 2
    dtransform_channels: tuple[int, int, int] = (8, 32, 64)
    depthnet_channels: int = 256

    @property
    def depth_bins(self) -> int:
        return cell_count(*self.dbound)

    @property
    def bev_size(self) -> tuple[int, int, int]:
        """(nx, ny, nz) of the bev_pool grid."""
        return (cell_count(*self.xbound), cell_count(*self.ybound), cell_count(*self.zbound))

    @property
    def out_bev_size(self) -> tuple[int, int]:
        """(X, Y) of the camera BEV after ``downsample``."""
        nx, ny, _ = self.bev_size
        return (nx // self.downsample, ny // self.downsample)

    def validate(self) -> None:
        for name in ("xbound", "ybound", "zbound", "dbound"):
            try:
                cell_count(*getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        if self.dbound[0] <= 0:
            raise ValueError("dbound must start at a positive depth")
        nx, ny, _ = self.bev_size
        if self.downsample not in (1, 2) or nx % self.downsample or ny % self.downsample:
            raise ValueError(f"downsample must be 1 or 2 and divide the BEV size ({nx}, {ny})")


@dataclass(frozen=True)
class LidarEncoderConfig:
    """SparseEncoder (docs/reference.md#sparse-encoder); ``sparse_shape`` is derived from the
    voxel grid (z + 1)."""

    base_channels: int = 16
    output_channels: int = 128
    encoder_channels: tuple[tuple[int, ...], ...] = ((16, 16, 32), (32, 32, 64), (64, 64, 128),
                                                     (128, 128))
    # Only the strided convs' paddings matter; an int pads all axes, a triple pads (x, y, z).
    encoder_paddings: tuple[tuple[Any, ...], ...] = ((0, 0, 1), (0, 0, 1), (0, 0, (1, 1, 0)),
                                                     (0, 0))

    def validate(self) -> None:
        if len(self.encoder_channels) != len(self.encoder_paddings):
            raise ValueError("encoder_channels and encoder_paddings need one entry per stage")
        for i, (chans, pads) in enumerate(zip(self.encoder_channels, self.encoder_paddings)):
            if len(chans) != len(pads) or len(chans) < 1:
                raise ValueError(f"stage {i}: channels and paddings must have equal length")
        if self.encoder_channels[-1][-1] != self.output_channels:
            raise ValueError("the last stage must end at output_channels")


@dataclass(frozen=True)
class FuserConfig:
    """ConvFuser: concat [camera, lidar] → 3×3 conv → ``out_channels``."""

    out_channels: int = 256


@dataclass(frozen=True)
class DecoderConfig:
    """SECOND + SECONDFPN (docs/reference.md#second-and-secondfpn)."""

    out_channels: tuple[int, ...] = (128, 256)
    layer_nums: tuple[int, ...] = (5, 5)
    layer_strides: tuple[int, ...] = (1, 2)
    fpn_out_channels: tuple[int, ...] = (256, 256)
    upsample_strides: tuple[int, ...] = (1, 2)

    @property
    def middle_channels(self) -> int:
        return sum(self.fpn_out_channels)

    def validate(self) -> None:
        n = len(self.out_channels)
        if not (len(self.layer_nums) == len(self.layer_strides) == len(self.fpn_out_channels)
                == len(self.upsample_strides) == n) or n == 0:
            raise ValueError("decoder lists must all have one entry per level")
        total = 1
        for s, u in zip(self.layer_strides, self.upsample_strides):
            total *= s
            if total != u:
                raise ValueError(f"upsample_strides {list(self.upsample_strides)} must undo the "
                                 f"cumulative layer_strides {list(self.layer_strides)}")


@dataclass(frozen=True)
class HeadConfig:
    """TransFusionHead + box coder (docs/reference.md#transfusion-head)."""

    num_proposals: int = 200
    hidden_channel: int = 128
    num_heads: int = 8
    ffn_channel: int = 256
    num_decoder_layers: int = 1
    nms_kernel_size: int = 3
    head_conv: int = 64
    out_size_factor: int = 8
    post_center_range: tuple[float, float, float, float, float, float] = (-61.2, -61.2, -10.0,
                                                                        61.2, 61.2, 10.0)
    score_threshold: float = 0.0
    # Classes whose heatmap is not local-max suppressed (nuScenes: pedestrian, traffic_cone).
    no_suppression_classes: tuple[str, ...] = ("pedestrian", "traffic_cone")

    def validate(self) -> None:
        if self.hidden_channel % self.num_heads:
            raise ValueError(f"hidden_channel {self.hidden_channel} is not divisible by "
                             f"num_heads {self.num_heads}")
        if self.num_proposals <= 0 or self.num_decoder_layers < 1 or self.nms_kernel_size != 3:
            raise ValueError("num_proposals > 0, num_decoder_layers >= 1 and "
                             "nms_kernel_size == 3 are required")


@dataclass(frozen=True)
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    vtransform: VTransformConfig = field(default_factory=VTransformConfig)
    lidar_encoder: LidarEncoderConfig = field(default_factory=LidarEncoderConfig)
    fuser: FuserConfig = field(default_factory=FuserConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)


# --------------------------------------------------------------------------------------------
# The preset
# --------------------------------------------------------------------------------------------


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
        return Path(__file__).parent / "assets" / given

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
        return _to_plain(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            atomic_write(path, text.encode())
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<dict>") -> "Preset":
        return _from_plain(cls, data, source, "").validate()

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Preset":
        p = Path(path)
        data = load_yaml_file(p, ConfigError)
        if not isinstance(data, dict):
            raise ConfigError("expected a mapping at the top level", path=p)
        return cls.from_dict(data, source=str(p))


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_to_plain(v) for v in obj]
    return obj


def _from_plain(tp: Any, value: Any, source: str, path: str) -> Any:
    """Build ``tp`` from YAML data, refusing unknown fields and wrong types by dotted path."""
    def fail(msg: str) -> ConfigError:
        return ConfigError(msg, path=source, field=path or "<root>")

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        known = {f.name for f in fields(tp) if f.init}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown}; known: {sorted(known)}",
                              path=source, field=path or "<root>")
        kwargs = {k: _from_plain(hints[k], v, source, f"{path}.{k}" if path else k)
                  for k, v in value.items()}
        try:
            return tp(**kwargs)
        except TypeError as exc:
            raise fail(str(exc)) from None
    if tp is Any:
        return _freeze(value)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise fail(f"must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _from_plain(arg, value, source, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise fail(f"no type of {tp} accepts {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise fail(f"expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_plain(args[0], v, source, f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise fail(f"expected {len(args)} values, got {len(value)}")
        return tuple(_from_plain(a, v, source, f"{path}[{i}]")
                     for i, (a, v) in enumerate(zip(args, value)))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise fail(f"expected a string, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise fail(f"expected true/false, got {value!r}")
        return value
    raise fail(f"unsupported type {tp}")


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def _nuscenes_resnet50() -> Preset:
    return Preset(name="nuscenes-resnet50")


def _nuscenes_swint() -> Preset:
    return Preset(
        name="nuscenes-swint",
        model=ModelConfig(backbone=BackboneConfig(type="swin")),
    )


def _tiny() -> Preset:
    """Every module type of the full model, small enough for 2 CPU cores and CI.

    102.4 m × 102.4 m at 0.2 m voxels (512 × 512 × 40 → sparse shape 512 × 512 × 41, the same
    z chain 41 → 21 → 11 → 5 → 2 as nuScenes) gives a 64 × 64 BEV of 1.6 m cells; six
    128 × 256 images through a slim ResNet-18 give 16 × 32 features and 24 depth bins.
    """
    return Preset(
        name="tiny",
        checkpoint="weights/tiny.pth",  # trained on the synthetic world: assets/weights/tiny.json
        cameras=CameraConfig(image_size=(128, 256), resize=0.16),
        points=PointsConfig(point_cloud_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), sweeps=3,
                            max_points=200_000),
        voxel=VoxelConfig(voxel_size=(0.2, 0.2, 0.2), max_points=10, max_voxels=60_000,
                          max_voxels_train=60_000),
        model=ModelConfig(
            backbone=BackboneConfig(type="resnet", depth=18, base_channels=16),
            neck=NeckConfig(out_channels=64),
            vtransform=VTransformConfig(
                out_channels=32, xbound=(-51.2, 51.2, 0.8), ybound=(-51.2, 51.2, 0.8),
                zbound=(-10.0, 10.0, 20.0), dbound=(1.0, 49.0, 2.0), downsample=2,
                dtransform_channels=(8, 16, 32), depthnet_channels=64),
            lidar_encoder=LidarEncoderConfig(
                base_channels=8, output_channels=32,
                encoder_channels=((8, 8, 16), (16, 16, 32), (32, 32, 32), (32, 32)),
                encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, (1, 1, 0)), (0, 0))),
            fuser=FuserConfig(out_channels=64),
            decoder=DecoderConfig(out_channels=(64, 128), layer_nums=(3, 3), layer_strides=(1, 2),
                                  fpn_out_channels=(64, 64), upsample_strides=(1, 2)),
            head=HeadConfig(num_proposals=100, hidden_channel=64, num_heads=4, ffn_channel=128,
                            head_conv=32, out_size_factor=8),
        ),
    )


PRESETS: dict[str, typing.Callable[[], Preset]] = {
    "nuscenes-resnet50": _nuscenes_resnet50,
    "nuscenes-swint": _nuscenes_swint,
    "tiny": _tiny,
}


def get_preset(name_or_path: str | Path, **overrides: Any) -> Preset:
    """A registered preset by name, or a preset YAML file by path; validated.

    ``overrides`` replace top-level fields (e.g. ``checkpoint=...``).
    """
    key = str(name_or_path)
    if key in PRESETS:
        preset = PRESETS[key]()
    elif Path(key).suffix in (".yaml", ".yml") or Path(key).exists():
        preset = Preset.from_yaml(key)
    else:
        raise ConfigError(f"unknown preset; known: {sorted(PRESETS)} or a path to a YAML file",
                          path=key)
    if overrides:
        preset = replace(preset, **overrides)
    return preset.validate()


def list_presets() -> list[str]:
    return sorted(PRESETS)
