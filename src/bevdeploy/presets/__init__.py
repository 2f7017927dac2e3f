"""Named model configurations: one typed dataclass tree, YAML round-trip, validation.

A preset is data. Every shape and range the rest of the code needs (camera count and order,
image size, BEV size, point features, voxel grid, head geometry) is read from here, so a rig
with another camera count, resolution or a rectangular BEV grid is a preset edit and a
re-export, never a code change.

Values of ``nuscenes-resnet50`` are CUDA-BEVFusion's ResNet50 model
(docs/reference.md#cuda-bevfusion-configuration); ``nuscenes-swint`` is the official mit-han-lab
BEVFusion-Base (docs/reference.md); ``tiny`` keeps every module type but shrinks everything so that
a full forward runs on 2 CPU cores in well under a second (tests, CI, the demo).

Layout: ``sensors`` (cameras, points, voxels), ``network`` (one dataclass per module),
``preset`` (``Preset``: derived shapes, validation, YAML), ``plain`` (dataclasses ↔ YAML data),
``registry`` (the built-in presets and ``get_preset``). Import from ``bevdeploy.presets``.
"""

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
from bevdeploy.presets.registry import PRESETS, get_preset, list_presets
from bevdeploy.presets.sensors import (
    NUSCENES_CAMERAS,
    NUSCENES_CLASSES,
    CameraConfig,
    PointsConfig,
    VoxelConfig,
)

__all__ = [
    "NUSCENES_CAMERAS", "NUSCENES_CLASSES", "PRESETS", "BackboneConfig", "CameraConfig",
    "DecoderConfig", "FuserConfig", "HeadConfig", "LidarEncoderConfig", "ModelConfig",
    "NeckConfig", "PointsConfig", "Preset", "VTransformConfig", "VoxelConfig", "get_preset",
    "list_presets",
]
