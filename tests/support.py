"""Helpers shared by several test modules (importable because pytest's ``pythonpath`` holds
``tests``): model states that make comparisons meaningful, and package copies with a known
defect."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from bevdeploy.data.frame import Frame
from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.model.inputs import collate
from bevdeploy.package import MANIFEST_NAME, sha256_file


def randomize_bn(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics, so that folding changes every weight and bias."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=gen) * 0.2)


def tiny_sparse_encoder() -> torch.nn.Module:
    """The tiny preset's sparse encoder, seeded, with non-trivial BN statistics, in eval mode."""
    from bevdeploy.model.lidar import build_sparse_encoder
    from bevdeploy.presets import get_preset

    torch.manual_seed(0)
    model = build_sparse_encoder(get_preset("tiny"))
    randomize_bn(model, seed=1)
    return model.eval()


def calibrate_batchnorm(model: BEVFusion, frame: Frame) -> None:
    """Set every BatchNorm's running statistics to those of ``frame``.

    With seeded random weights the activations shrink towards zero by the head, the heatmap
    is flat to float precision and the top-k proposals are decided by rounding noise; one
    training-mode forward with cumulative averaging gives statistics under which the boxes
    are confident and comparisons between backends mean something.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(collate([frame], model.preset))
    model.eval()


def copy_with_fuser_weight(package: Path, out: Path, value: float | None) -> Path:
    """A copy of ``package`` whose fuser's first convolution has one weight changed (to ``value``,
    or to ten times the tensor's largest magnitude when None), re-hashed into the manifest so
    that it loads."""
    shutil.copytree(package, out)
    path = out / "fuser.onnx"
    model = onnx.load(str(path))
    inits = {init.name: init for init in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = numpy_helper.to_array(inits[conv.input[1]]).copy()
    weight.flat[0] = 10.0 * np.abs(weight).max() if value is None else value
    inits[conv.input[1]].CopyFrom(numpy_helper.from_array(weight, conv.input[1]))
    onnx.save(model, str(path))
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["modules"]["fuser"].update(sha256=sha256_file(path), size=path.stat().st_size)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return out


# mmdetection3d 1.x names, written out from projects/BEVFusion (bevfusion.py, transformer.py)
# and mmcv's MultiheadAttention / FFN / DetrTransformerDecoderLayer.
_MMDET3D_PREFIXES = {
    "encoders.camera.backbone.": "img_backbone.", "encoders.camera.neck.": "img_neck.",
    "encoders.camera.vtransform.": "view_transform.",
    "encoders.lidar.backbone.": "pts_middle_encoder.", "fuser.": "fusion_layer.",
    "decoder.backbone.": "pts_backbone.", "decoder.neck.": "pts_neck.",
    "heads.object.": "bbox_head.",
}
_MMDET3D_LAYER_PARTS = {
    "self_attn.": "self_attn.attn.", "multihead_attn.": "cross_attn.attn.",
    "linear1.": "ffn.layers.0.0.", "linear2.": "ffn.layers.1.",
    "norm1.": "norms.0.", "norm2.": "norms.1.", "norm3.": "norms.2.",
}


def to_mmdet3d_names(key: str) -> str:
    """A mit state-dict key under its mmdetection3d 1.x name."""
    for mit, mm in _MMDET3D_PREFIXES.items():
        if key.startswith(mit):
            key = mm + key[len(mit):]
            break
    parts = key.split(".")
    if key.startswith("bbox_head.decoder.") and len(parts) > 3:
        rest = ".".join(parts[3:])
        for mit, mm in _MMDET3D_LAYER_PARTS.items():
            if rest.startswith(mit):
                return ".".join(parts[:3]) + "." + mm + rest[len(mit):]
    return key
