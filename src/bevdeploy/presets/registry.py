"""The built-in presets and the one lookup (``get_preset``): by name or by YAML path."""

from __future__ import annotations

import typing
from dataclasses import replace
from pathlib import Path
from typing import Any

from bevdeploy.errors import ConfigError
from bevdeploy.presets.network import (
    BackboneConfig,
    DecoderConfig,
    FuserConfig,
    HeadConfig,
    LidarEncoderConfig,
    ModelConfig,
    NeckConfig,
    VTransformConfig,
)
from bevdeploy.presets.preset import Preset
from bevdeploy.presets.sensors import CameraConfig, PointsConfig, VoxelConfig


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
