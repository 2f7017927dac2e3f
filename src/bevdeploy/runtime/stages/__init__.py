"""The runtime's stages, CUDA-BEVFusion style (docs/architecture.md#stages): one small class per
step that runs outside the ONNX graphs, each with a parameter dataclass built from the package
(``Params.from_package(pkg)``) and one ``run``.

Camera branch: ``normalize`` → ``depth`` → [camera.backbone] → ``geometry`` (cached per
calibration) → ``bevpool`` → [camera.vtransform]. LiDAR branch: ``voxelize`` (range filter +
hard voxelization) → ``scn``. After [fuser] and [head.bbox]: ``decode``.
"""

from bevdeploy.runtime.stages.bevpool import BevPoolParams, BevPoolStage
from bevdeploy.runtime.stages.decode import DecodeParams, DecodeStage
from bevdeploy.runtime.stages.depth import DepthParams, DepthStage
from bevdeploy.runtime.stages.geometry import GeometryParams, GeometryStage
from bevdeploy.runtime.stages.normalize import NormalizeParams, NormalizeStage
from bevdeploy.runtime.stages.scn import ScnParams, ScnStage
from bevdeploy.runtime.stages.voxelize import VoxelizeParams, Voxels, VoxelizeStage

__all__ = [
    "BevPoolParams", "BevPoolStage", "DecodeParams", "DecodeStage", "DepthParams", "DepthStage",
    "GeometryParams", "GeometryStage", "NormalizeParams", "NormalizeStage", "ScnParams",
    "ScnStage", "VoxelizeParams", "Voxels", "VoxelizeStage",
]
