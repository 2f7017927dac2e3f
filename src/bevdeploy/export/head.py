"""The ``head.bbox.onnx`` graph: TransFusion up to the per-query class scores.

The graph holds everything up to and including the score product ``sigmoid(class logits) ×
heatmap score × one-hot(query class)`` (docs/reference.md#onnx-modules, #post-processing); the box
decode, threshold and range filter stay in the ``decode`` kernel. The forward is the reference
head's (``bevdeploy.model.transfusion.TransFusionHead.forward``) rewritten for a static batch-1
graph that TensorRT parses without plugins:

* the one-hot is a ``Gather`` of rows of a constant identity matrix, not ``OneHot``;
* the proposals come from ``TopK`` (the reference's own choice too), and the class / cell split
  is a truncating integer ``Div`` and a ``Sub`` (indices are non-negative), not ``Mod``;
* per-query gathers are ``Gather`` on the flattened BEV axis (batch 1), not ``GatherElements``
  over an expanded index;
* the local max is the head's own ``local_max`` (``Where`` between the padded 3×3 max-pool and
  the raw heatmap, so unsuppressed classes compare with themselves);
* ``nn.LayerNorm`` exports as the standard ``LayerNormalization`` (opset 17), not NVIDIA's
  ``nv::CustomLayerNormalization`` plugin.

The cross-attention key positions are input-independent, so constant folding bakes
``cross_posembed(bev_pos)`` into one initializer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bevdeploy.export.onnx_utils import DenseGraph, float_spec
from bevdeploy.model.transfusion import REGRESSION_HEADS
from bevdeploy.presets import Preset
from bevdeploy.vocabulary import HEAD_OUTPUT_SOURCES



class HeadGraph(nn.Module):
    """``middle (1, Cm, X, Y)`` → ``score (1,K,P)``, ``rot (1,2,P)``, ``dim (1,3,P)``,
    ``reg (1,2,P)``, ``height (1,1,P)``, ``vel (1,2,P)`` of the last decoder layer."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("classes_eye", torch.eye(head.num_classes), persistent=False)

    def forward(self, middle: Tensor) -> tuple[Tensor, ...]:
        head = self.head
        lidar_feat = head.shared_conv(middle)
        feat_flat = lidar_feat.flatten(2)  # (1, C, X·Y)
        heatmap = head.local_max(head.heatmap_head(lidar_feat).sigmoid()).flatten(2)
        num_cells = heatmap.shape[-1]
        top = heatmap.flatten(1).topk(head.num_proposals, dim=1).indices[0]  # (P,)
        labels = torch.div(top, num_cells, rounding_mode="trunc")
        cells = top - labels * num_cells

        one_hot = self.classes_eye.index_select(0, labels).t()[None]  # (1, K, P)
        query_feat = feat_flat.index_select(2, cells) + head.class_encoding(one_hot)
        bev_pos = head.bev_pos
        query_pos = bev_pos.index_select(1, cells)  # (1, P, 2)

        result: dict[str, Tensor] = {}
        for layer, heads in zip(head.decoder, head.prediction_heads):
            query_feat = layer(query_feat, feat_flat, query_pos, bev_pos)
            result = heads(query_feat)
            result["center"] = result["center"] + query_pos.permute(0, 2, 1)
            query_pos = result["center"].permute(0, 2, 1)

        query_heatmap_score = heatmap.index_select(2, cells)  # (1, K, P)
        result["heatmap"] = result["heatmap"].sigmoid() * query_heatmap_score * one_hot
        return tuple(result[key] for _, key in HEAD_OUTPUT_SOURCES)


def head_graph(model: nn.Module, preset: Preset) -> DenseGraph:
    """The ``head.bbox`` graph of ``model`` (a ``BEVFusion``), shapes from ``preset``."""
    x, y = preset.bev_size
    p = preset.model.head.num_proposals
    channels = {**dict(REGRESSION_HEADS), "heatmap": preset.num_classes}
    return DenseGraph(
        name="head.bbox",
        module=HeadGraph(model.heads["object"]),
        inputs=(float_spec("middle", (1, preset.model.decoder.middle_channels, x, y)),),
        outputs=tuple(float_spec(name, (1, channels[key], p)) for name, key in HEAD_OUTPUT_SOURCES),
    )
