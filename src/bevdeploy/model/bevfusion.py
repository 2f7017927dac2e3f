"""The assembled reference BEVFusion (camera + LiDAR → TransFusion boxes), checkpoint-compatible.

The module tree mirrors mit-han-lab's ``BEVFusion.__init__`` (nested ``nn.ModuleDict``s), so
``state_dict()`` keys equal the official checkpoints' keys (docs/reference.md#checkpoint-layout): ::

    encoders.camera.{backbone, neck, vtransform}   encoders.lidar.{voxelize, backbone}
    fuser    decoder.{backbone, neck}    heads.object

Everything is sized from the ``Preset``; this file only wires the stages in the reference's
order and turns ``Frame`` objects into ``Detections``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.model.camera import build_camera_backbone, build_camera_neck, build_vtransform
from bevdeploy.model.decoder import build_decoder_backbone, build_decoder_neck
from bevdeploy.model.fuser import build_fuser
from bevdeploy.model.inputs import ModelBatch, collate
from bevdeploy.model.lidar import build_sparse_encoder, build_voxelizer
from bevdeploy.model.transfusion import build_head
from bevdeploy.presets import Preset


class BEVFusion(nn.Module):
    """Camera + LiDAR BEVFusion with the official module names.

    ``forward`` returns the head's raw outputs (the tensors the deploy path compares against);
    ``predict`` runs the whole test-time pipeline on ``Frame`` objects.
    """

    def __init__(self, preset: Preset) -> None:
        super().__init__()
        self.preset = preset
        self.encoders = nn.ModuleDict({
            "camera": nn.ModuleDict({
                "backbone": build_camera_backbone(preset),
                "neck": build_camera_neck(preset),
                "vtransform": build_vtransform(preset),
            }),
            "lidar": nn.ModuleDict({
                "voxelize": build_voxelizer(preset),
                "backbone": build_sparse_encoder(preset),
            }),
        })
        self.fuser = build_fuser(preset)
        self.decoder = nn.ModuleDict({
            "backbone": build_decoder_backbone(preset),
            "neck": build_decoder_neck(preset),
        })
        self.heads = nn.ModuleDict({"object": build_head(preset)})

    # ---- branches ----
    def extract_camera_features(self, batch: ModelBatch) -> Tensor:
        """Images → camera BEV ``(B, C, X, Y)``: backbone and neck on the B·N views, neck
        output 0 only (docs/reference.md#camera-branch), then the depth-aware view transform."""
        camera = self.encoders["camera"]
        b, n, c, h, w = batch.img.shape
        levels = camera["neck"](camera["backbone"](batch.img.reshape(b * n, c, h, w)))
        feat = levels[0]
        feat = feat.reshape(b, n, *feat.shape[1:])
        return camera["vtransform"](feat, batch.points, batch.camera2lidar,
                                    batch.camera_intrinsics, batch.img_aug_matrix,
                                    batch.lidar_aug_matrix, batch.lidar2image,
                                    present=batch.camera_present)

    def extract_lidar_features(self, points: Sequence[Tensor]) -> Tensor:
        """Points → LiDAR BEV ``(B, C·Z, X, Y)``: hard voxelization (mean), sparse encoder.

        The batch size is the number of clouds, not the reference's ``coords[-1, 0] + 1``,
        which undercounts when the last cloud has no voxel.
        """
        lidar = self.encoders["lidar"]
        feats, coords, _ = lidar["voxelize"](points)
        return lidar["backbone"](feats, coords, len(points))

    # ---- whole network ----
    def forward(self, batch: ModelBatch) -> dict[str, Tensor]:
        """``ModelBatch`` → the head's raw output dict (see ``TransFusionHead.forward``).

        Order of work as the reference: camera features, LiDAR features, the fuser on
        ``[camera, lidar]``, SECOND → SECONDFPN → head. (The reference's training-mode quirk
        of shifting the points in place inside the depth map is not reproduced.)
        """
        camera_bev = self.extract_camera_features(batch)
        lidar_bev = self.extract_lidar_features(batch.points)
        fused = self.fuser([camera_bev, lidar_bev])
        middle = self.decoder["neck"](self.decoder["backbone"](fused))
        return self.heads["object"](middle[0])

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def predict_batch(self, frames: Sequence[Frame], *, fp16_points: bool = False
                      ) -> list[Detections]:
        """Test-time inference on B ≥ 1 frames → one ``Detections`` per frame.

        Runs in eval mode under ``torch.inference_mode`` and restores the previous mode, so a
        model being trained can be probed without disturbing its BatchNorm statistics.
        ``fp16_points`` rounds the points through float16 first, as the published numbers did
        (docs/reference.md#conventions).
        """
        batch = collate(frames, self.preset, fp16_points=fp16_points).to(self.device)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                return self.heads["object"].decode(self(batch))
        finally:
            self.train(was_training)

    def predict(self, frame: Frame, *, fp16_points: bool = False) -> Detections:
        """One frame → its ``Detections`` (boxes in the bevdeploy convention)."""
        return self.predict_batch([frame], fp16_points=fp16_points)[0]
