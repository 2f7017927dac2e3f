"""TransFusionHead, inference path (docs/reference.md#transfusion-head, #head-forward; items
8–10 of #reference-quirks).

Names follow the reference's state-dict keys (``shared_conv``, ``heatmap_head``,
``class_encoding``, ``decoder.i``, ``prediction_heads.i``). The attention modules are
``torch.nn.MultiheadAttention``: the reference's custom class has the same parameters
(``in_proj_weight``, ``in_proj_bias``, ``out_proj``) and the same maths, sequence-first.

Quirks reproduced on purpose, because the checkpoint was trained with them:

* ``shared_conv`` has a bias and no norm or activation;
* the class-wise local-max "NMS" zeroes the heatmap border of every suppressed class, and
  classes in ``no_suppression_classes`` (nuScenes: pedestrian, traffic_cone) skip it entirely;
* the decoder adds the positional embedding to the attention **values** as well as the keys;
* BEV positions are cell centres ``(ix + 0.5, iy + 0.5)`` in (X, Y) layout, and the predicted
  ``center`` is an offset from the query's position.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bevdeploy.data.frame import Detections
from bevdeploy.errors import InputError
from bevdeploy.model.bbox_coder import TransFusionBBoxCoder
from bevdeploy.presets import HeadConfig, Preset

DROPOUT = 0.1  # training only; eval is a no-op
BN_MOMENTUM = 0.1  # the head's ``bn_momentum``; BN eps stays at the 1e-5 default
REGRESSION_HEADS: tuple[tuple[str, int], ...] = (
    ("center", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2))


class ConvBNReLU(nn.Module):
    """mmcv ``ConvModule`` (conv without bias → BN → ReLU) with its key names ``conv``/``bn``."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d,
                 bn: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


class PositionEmbeddingLearned(nn.Module):
    """(B, N, 2) BEV positions → (B, C, N) embeddings through a 2-layer 1×1 conv MLP."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.position_embedding_head = nn.Sequential(
            nn.Conv1d(in_channels, channels, 1),
            nn.BatchNorm1d(channels, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv1d(channels, channels, 1),
        )

    def forward(self, positions: Tensor) -> Tensor:
        return self.position_embedding_head(positions.transpose(1, 2))


class TransformerDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention over the queries, cross-attention to the BEV
    features, FFN. Both attentions add the positional embedding to query, key **and value**."""

    def __init__(self, channels: int, num_heads: int, ffn_channels: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(channels, num_heads, dropout=DROPOUT)
        self.multihead_attn = nn.MultiheadAttention(channels, num_heads, dropout=DROPOUT)
        self.linear1 = nn.Linear(channels, ffn_channels)
        self.dropout = nn.Dropout(DROPOUT)
        self.linear2 = nn.Linear(ffn_channels, channels)
        self.norm1 = nn.LayerNorm(channels)
        self.norm2 = nn.LayerNorm(channels)
        self.norm3 = nn.LayerNorm(channels)
        self.dropout1 = nn.Dropout(DROPOUT)
        self.dropout2 = nn.Dropout(DROPOUT)
        self.dropout3 = nn.Dropout(DROPOUT)
        self.self_posembed = PositionEmbeddingLearned(2, channels)
        self.cross_posembed = PositionEmbeddingLearned(2, channels)

    def forward(self, query: Tensor, key: Tensor, query_pos: Tensor, key_pos: Tensor) -> Tensor:
        """``query (B, C, Pq)``, ``key (B, C, Pk)``, positions ``(B, P, 2)`` → ``(B, C, Pq)``."""
        query_embed = self.self_posembed(query_pos).permute(2, 0, 1)  # (Pq, B, C)
        key_embed = self.cross_posembed(key_pos).permute(2, 0, 1)  # (Pk, B, C)
        q = query.permute(2, 0, 1)
        k = key.permute(2, 0, 1) + key_embed

        q_pos = q + query_embed
        attended = self.self_attn(q_pos, q_pos, q_pos, need_weights=False)[0]
        q = self.norm1(q + self.dropout1(attended))

        attended = self.multihead_attn(q + query_embed, k, k, need_weights=False)[0]
        q = self.norm2(q + self.dropout2(attended))

        ffn = self.linear2(self.dropout(F.relu(self.linear1(q))))
        q = self.norm3(q + self.dropout3(ffn))
        return q.permute(1, 2, 0)


class PredictionHeads(nn.ModuleDict):
    """mmdet3d ``FFN``: one small 1×1-conv head per output (``<name>.0`` ConvBNReLU, ``<name>.1``
    Conv1d with bias), applied to the (B, C, P) query features; insertion order is the key order."""

    def __init__(self, in_channels: int, head_channels: int,
                 outputs: Sequence[tuple[str, int]]) -> None:
        super().__init__()
        for name, out_channels in outputs:
            self[name] = nn.Sequential(
                ConvBNReLU(nn.Conv1d(in_channels, head_channels, 1, bias=False),
                           nn.BatchNorm1d(head_channels, momentum=BN_MOMENTUM)),
                nn.Conv1d(head_channels, out_channels, 1),
            )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {name: head(x) for name, head in self.items()}


def bev_positions(size_x: int, size_y: int) -> Tensor:
    """(1, X·Y, 2) cell centres ``(ix + 0.5, iy + 0.5)``, flat index ``ix·Y + iy``."""
    ix, iy = torch.meshgrid(torch.arange(size_x, dtype=torch.float32),
                            torch.arange(size_y, dtype=torch.float32), indexing="ij")
    return torch.stack([ix, iy], dim=-1).reshape(1, size_x * size_y, 2) + 0.5


class TransFusionHead(nn.Module):
    """BEV features (B, C_in, X, Y) → proposals with boxes, class logits and heatmap scores."""

    def __init__(self, cfg: HeadConfig, in_channels: int, classes: Sequence[str],
                 bev_size: tuple[int, int], bbox_coder: TransFusionBBoxCoder) -> None:
        super().__init__()
        num_classes = len(classes)
        hidden = cfg.hidden_channel
        self.num_classes = num_classes
        self.num_proposals = cfg.num_proposals
        self.bev_size = (int(bev_size[0]), int(bev_size[1]))
        self.bbox_coder = bbox_coder

        self.shared_conv = nn.Conv2d(in_channels, hidden, 3, padding=1, bias=True)
        self.heatmap_head = nn.Sequential(
            ConvBNReLU(nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
                       nn.BatchNorm2d(hidden, momentum=BN_MOMENTUM)),
            nn.Conv2d(hidden, num_classes, 3, padding=1, bias=True),
        )
        self.class_encoding = nn.Conv1d(num_classes, hidden, 1)
        self.decoder = nn.ModuleList(
            TransformerDecoderLayer(hidden, cfg.num_heads, cfg.ffn_channel)
            for _ in range(cfg.num_decoder_layers))
        outputs = (*REGRESSION_HEADS, ("heatmap", num_classes))
        self.prediction_heads = nn.ModuleList(
            PredictionHeads(hidden, cfg.head_conv, outputs)
            for _ in range(cfg.num_decoder_layers))

        # Not in the reference state dict: non-persistent buffers follow .to(device) only.
        self.register_buffer("bev_pos", bev_positions(*self.bev_size), persistent=False)
        suppressed = torch.tensor([c not in cfg.no_suppression_classes for c in classes])
        self.register_buffer("suppressed", suppressed, persistent=False)

    def local_max(self, heatmap: Tensor) -> Tensor:
        """Keep a cell's score only where it is its class's 3×3 local maximum.

        The reference pools without padding and writes the result into a zero map's interior,
        so the one-cell border never survives for suppressed classes; zero-padding the pooled
        map is the same thing. Unsuppressed classes compare with themselves (always kept).
        """
        pooled = F.pad(F.max_pool2d(heatmap, kernel_size=3, stride=1, padding=0), (1, 1, 1, 1))
        local_max = torch.where(self.suppressed[None, :, None, None], pooled, heatmap)
        return heatmap * (heatmap == local_max)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``x (B, C_in, X, Y)`` → dict of ``center (B,2,P)`` (BEV cells), ``height (B,1,P)``,
        ``dim (B,3,P)`` (log w, l, h), ``rot (B,2,P)`` (sin, cos), ``vel (B,2,P)``, ``heatmap
        (B,K,P)`` logits (of the last decoder layer), ``query_heatmap_score (B,K,P)``,
        ``query_labels (B,P)``, ``dense_heatmap (B,K,X,Y)``."""
        if x.ndim != 4 or tuple(x.shape[2:]) != self.bev_size:
            raise InputError(f"expected (B, C, {self.bev_size[0]}, {self.bev_size[1]}) BEV "
                             f"features, got {tuple(x.shape)}", field="head.inputs")
        batch = x.shape[0]
        lidar_feat = self.shared_conv(x)
        feat_flat = lidar_feat.flatten(2)  # (B, C, X·Y)
        bev_pos = self.bev_pos.expand(batch, -1, -1)

        dense_heatmap = self.heatmap_head(lidar_feat)
        heatmap = self.local_max(dense_heatmap.detach().sigmoid()).flatten(2)  # (B, K, X·Y)
        num_cells = heatmap.shape[-1]
        top = heatmap.flatten(1).topk(self.num_proposals, dim=1).indices
        labels = torch.div(top, num_cells, rounding_mode="floor")
        cells = top % num_cells

        query_feat = feat_flat.gather(2, cells[:, None, :].expand(-1, feat_flat.shape[1], -1))
        one_hot = F.one_hot(labels, self.num_classes).permute(0, 2, 1).to(query_feat.dtype)
        query_feat = query_feat + self.class_encoding(one_hot)
        query_pos = bev_pos.gather(1, cells[:, :, None].expand(-1, -1, 2))

        result: dict[str, Tensor] = {}
        for layer, heads in zip(self.decoder, self.prediction_heads):
            query_feat = layer(query_feat, feat_flat, query_pos, bev_pos)
            result = heads(query_feat)
            result["center"] = result["center"] + query_pos.permute(0, 2, 1)
            query_pos = result["center"].detach().permute(0, 2, 1)

        result["query_heatmap_score"] = heatmap.gather(
            2, cells[:, None, :].expand(-1, self.num_classes, -1))
        result["query_labels"] = labels
        result["dense_heatmap"] = dense_heatmap
        return result

    def decode(self, outputs: dict[str, Tensor]) -> list[Detections]:
        """Forward outputs → one ``Detections`` per batch item (no NMS; see the box coder).

        score = sigmoid(class logits) · heatmap score · one-hot(query class), so only the
        proposal's own class can score.
        """
        one_hot = F.one_hot(outputs["query_labels"], self.num_classes).permute(0, 2, 1)
        scores = outputs["heatmap"].sigmoid() * outputs["query_heatmap_score"] * one_hot
        return self.bbox_coder.decode(scores, outputs["rot"], outputs["dim"], outputs["center"],
                                      outputs["height"], outputs["vel"])


def build_head(preset: Preset) -> TransFusionHead:
    """The preset's head: input = SECONDFPN channels, grid = the fused BEV size."""
    return TransFusionHead(preset.model.head, preset.model.decoder.middle_channels,
                           preset.classes, preset.bev_size, TransFusionBBoxCoder(preset))
