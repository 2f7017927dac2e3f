"""The camera branch of BEVFusion: backbone (ResNet or Swin-T), GeneralizedLSSFPN neck and the
DepthLSSTransform view transform, each built from a validated preset."""

from __future__ import annotations

from torch import nn

from bevdeploy.model.camera.depth_lss import DepthLSSTransform, build_vtransform
from bevdeploy.model.camera.lss_fpn import GeneralizedLSSFPN, build_camera_neck
from bevdeploy.model.camera.resnet import ResNet
from bevdeploy.model.camera.swin import SwinTransformer
from bevdeploy.presets import Preset

__all__ = [
    "DepthLSSTransform", "GeneralizedLSSFPN", "ResNet", "SwinTransformer",
    "build_camera_backbone", "build_camera_neck", "build_vtransform",
]


def build_camera_backbone(preset: Preset) -> nn.Module:
    """ResNet or Swin-T per ``model.backbone.type``; ``forward`` returns one NCHW map per
    entry of ``out_indices`` (channels ``backbone.out_channels``, strides ``out_strides``)."""
    cfg = preset.model.backbone
    if cfg.type == "resnet":
        return ResNet(depth=cfg.depth, base_channels=cfg.base_channels,
                      out_indices=cfg.out_indices)
    return SwinTransformer(embed_dims=cfg.embed_dims, depths=cfg.depths, num_heads=cfg.num_heads,
                           window_size=cfg.window_size, mlp_ratio=cfg.mlp_ratio,
                           patch_size=cfg.patch_size, out_indices=cfg.out_indices)
