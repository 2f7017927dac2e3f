"""The network part of a preset: one frozen dataclass per module of BEVFusion."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from bevdeploy.vocabulary import cell_count


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
            if not all(_is_padding(pad) for pad in pads):  # typed Any: checked here
                raise ValueError(f"stage {i}: a padding is an integer >= 0 or three of them, "
                                 f"got {list(pads)}")
        if self.encoder_channels[-1][-1] != self.output_channels:
            raise ValueError("the last stage must end at output_channels")


def _is_padding(pad: Any) -> bool:
    """An integer >= 0 (all axes) or an (x, y, z) triple of them."""
    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    return count(pad) or (isinstance(pad, (tuple, list)) and len(pad) == 3
                          and all(count(v) for v in pad))


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
    # What ``infer`` and ``demo`` report and draw by default (``--score-threshold`` overrides,
    # ``--keep-all`` reports every proposal): the decode above keeps every proposal because
    # nuScenes' mAP integrates the whole score range, but a user reading boxes wants the ones
    # the model believes in. Recorded in detections.json with the boxes it selected.
    report_threshold: float = 0.3
    # Classes whose heatmap is not local-max suppressed (nuScenes: pedestrian, traffic_cone).
    no_suppression_classes: tuple[str, ...] = ("pedestrian", "traffic_cone")

    def validate(self) -> None:
        if self.hidden_channel % self.num_heads:
            raise ValueError(f"hidden_channel {self.hidden_channel} is not divisible by "
                             f"num_heads {self.num_heads}")
        if not 0.0 <= self.report_threshold <= 1.0:
            raise ValueError(f"report_threshold {self.report_threshold} is not a score in [0, 1]")
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
