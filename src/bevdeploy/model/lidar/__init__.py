"""LiDAR branch of the reference model: hard voxelization and the spconv-2 sparse encoder."""

from bevdeploy.model.lidar.sparse_encoder import (SparseBasicBlock, SparseEncoder,
                                                  build_sparse_encoder)
from bevdeploy.model.lidar.voxelize import Voxelization, build_voxelizer, voxelize_points

__all__ = ["SparseBasicBlock", "SparseEncoder", "Voxelization", "build_sparse_encoder",
           "build_voxelizer", "voxelize_points"]
