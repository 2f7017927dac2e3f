"""The random initialisation of packages exported without weights: distinct proposal scores.

PyTorch's default initialisation (uniform weights scaled by ``1/sqrt(fan_in)``, small random
biases) shrinks the activations layer after layer, so by the head every empty BEV cell carries
the same value, set by the biases alone, and that value is the largest of the heatmap: the top-k
proposals are then exact ties (measured on the tiny preset: 5 distinct values among the 110 best
cells of a synthetic frame), their order is decided by each runtime's tie-breaking, and
``compare`` of an untrained package fails on proposals that are not a deployment error.

Trained weights give a peaked heatmap whose best cells are where the data is. ``distinct_init``
gets the same property without training:

* every convolution (dense and sparse) and linear layer draws N(0, 2/fan_in) (He), so the
  activations keep their scale through the depth of the network instead of vanishing;
* every bias is 0, and BatchNorm keeps its identity statistics: with no bias anywhere, the
  network is positively homogeneous, so an empty cell (all-zero input) stays exactly 0 and
  scores below any cell whose data pushes the logit up;
* the heatmap's last convolution gets the usual focal-loss prior bias −2.19 (sigmoid 0.1, the
  value TransFusion and CenterPoint start from) and a gain measured on a seeded noise frame
  (``calibrate_heatmap``), so the logits of the best cells sit a few units above the prior, in
  the steep part of the sigmoid rather than its flat, saturated top where float32 rounds
  neighbours together;
* the head's decoder gets unit-scale inputs, as trained weights give it: the shared conv's gain
  is measured on the same frame so that the head's features have a standard deviation of 1, and
  the positional embeddings' first layer is divided by the BEV grid's size, since He's law
  assumes unit-scale inputs and the positions are cell indices. Without this the residual
  depth of nuscenes-resnet50 leaves features of std ~150 (max ~8e3) and embeddings up to ~660,
  the attention logits reach 1e5..1e6 and the softmax turns into an argmax between keys whose
  logits differ by a few units: float32 rounding at that magnitude (spacing 0.06) then moves
  single proposals by 1e-3 of the scale (measured: the reference's own float32 forward against
  float64, head.height 2.7e-3, above FP32's 1e-3 limit), so no FP32 deployment could pass.

On the tiny preset's synthetic frames this gives 101 distinct values among the 101 best cells
and a top-k boundary gap of about 1e-4 (tests/model/test_init.py measures it); FP32 deployment
errors are three orders of magnitude smaller.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from spconv.pytorch.conv import SparseConvolution
from torch import nn

from bevdeploy.data.frame import Frame
from bevdeploy.data.synthetic.rig import preset_cameras, rig_calibration
from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.model.inputs import collate
from bevdeploy.presets import Preset

HEATMAP_PRIOR_BIAS = -2.19  # sigmoid⁻¹(0.1), the focal-loss prior

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear, SparseConvolution)


def _fan_in(module: nn.Module, weight: torch.Tensor) -> int:
    """Inputs each output sums over: every dimension but the output channels (dim 0; dim 1 of a
    transposed convolution)."""
    out_dim = 1 if isinstance(module, nn.ConvTranspose2d) else 0
    return max(1, weight.numel() // weight.shape[out_dim])


@torch.no_grad()
def distinct_init(model: BEVFusion) -> None:
    """Re-initialise ``model`` in place (from torch's current RNG) as the module docstring
    says, the heatmap's gain set by ``calibrate_heatmap``."""
    for module in model.modules():
        if isinstance(module, _WEIGHTED):
            module.weight.normal_(0.0, math.sqrt(2.0 / _fan_in(module, module.weight)))
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif isinstance(module, nn.MultiheadAttention):
            embed = module.in_proj_weight.shape[1]
            module.in_proj_weight.normal_(0.0, math.sqrt(1.0 / embed))
            if module.in_proj_bias is not None:
                module.in_proj_bias.zero_()
    head = model.heads["object"]
    head.heatmap_head[-1].bias.fill_(HEATMAP_PRIOR_BIAS)
    for layer in head.decoder:
        for embedding in (layer.self_posembed, layer.cross_posembed):
            embedding.position_embedding_head[0].weight.div_(max(head.bev_size))
    calibrate_heatmap(model)


PROBE_SEED = 0
PROBE_POINTS = 4_000
HEATMAP_LOGIT_STD = 0.1  # spread of the probe frame's heatmap logits that the gain aims at
HEAD_FEATURE_STD = 1.0  # spread of the probe frame's head features (shared conv output)


def probe_frame(preset: Preset) -> Frame:
    """A frame of noise in ``preset``'s shapes: uniform images, points uniform in the point
    cloud range, the cameras of ``data.synthetic.rig.preset_cameras``. Seeded, so every process
    builds the same one."""
    rng = np.random.default_rng(PROBE_SEED)
    cams = preset.cameras
    images = rng.integers(0, 256, (cams.num_cameras, *cams.raw_size, 3), dtype=np.uint8)
    low, high = np.asarray(preset.points.point_cloud_range).reshape(2, 3)
    points = np.zeros((PROBE_POINTS, preset.points.num_features), dtype=np.float32)
    points[:, :3] = rng.uniform(low, high, (PROBE_POINTS, 3))
    points[:, 3] = rng.uniform(0.0, 1.0, PROBE_POINTS)
    calib = rig_calibration(preset_cameras(cams.names, cams.raw_size))
    return Frame(images=images, points=points, calib=calib, token="probe")


@torch.no_grad()
def calibrate_heatmap(model: BEVFusion) -> tuple[float, float]:
    """Scale the head's shared convolution so that its features on ``probe_frame`` have the
    standard deviation ``HEAD_FEATURE_STD``, and the heatmap's last convolution so that the
    logits spread by ``HEATMAP_LOGIT_STD`` around the prior: the homogeneous network's scale
    depends on its depth and on the preset's shapes (measured: head features of std 0.8 on
    tiny, 154 on nuscenes-resnet50 with the same weight law), so no fixed gain fits every
    preset. One forward measures both: the path from the shared conv to the logits has no
    bias, so the logits scale with the shared conv's gain. Each gain is rounded to two
    significant digits, so that float summation order (thread counts) cannot change the
    weights. Returns the two gains."""
    head = model.heads["object"]
    conv = head.heatmap_head[-1]
    features: list[float] = []
    hook = head.shared_conv.register_forward_hook(
        lambda _module, _inputs, output: features.append(float(output.std())))
    was_training = model.training
    model.eval()
    batch = collate([probe_frame(model.preset)], model.preset)
    try:
        logits = model(batch)["dense_heatmap"] - conv.bias.view(1, -1, 1, 1)
    finally:
        hook.remove()
        model.train(was_training)
    feature_gain = _gain(HEAD_FEATURE_STD, features[0])
    head.shared_conv.weight.mul_(feature_gain)
    gain = _gain(HEATMAP_LOGIT_STD, float(logits.std()) * feature_gain)
    conv.weight.mul_(gain)
    return feature_gain, gain


def _gain(target: float, spread: float) -> float:
    """``target / spread`` to two significant digits (1 for a spread of 0)."""
    return 1.0 if spread == 0.0 else float(f"{target / spread:.2g}")
