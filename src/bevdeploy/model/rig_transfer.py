"""Weights that move between rigs: what differs between the rig a checkpoint was trained for
and the target preset's, told in one warning.

The camera branch shares its weights over the cameras (the backbone, neck and depthnet run on
each image alone; BEV pooling sums over them), so nothing learned depends on the camera count;
the image size and the BEV range change the *derived* buffers (frustum, dx, bx, nx: rebuilt from
the target preset, never loaded, docs/reference.md#checkpoint-layout) and the accuracy, not the
learned shapes. A BEV grid of another size changes no convolution either. So a checkpoint loads
into any rig whose learned tensors have its shapes, and the user hears, once, what changed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bevdeploy.presets import Preset


def derived_difference(value: Tensor, current: Tensor) -> str | None:
    """How a checkpoint's derived buffer differs from the target preset's, or None when it
    agrees (to float32 rounding of the grid constants)."""
    if value.shape != current.shape:
        return f"shape {tuple(value.shape)} → {tuple(current.shape)}"
    if torch.allclose(value.double(), current.double(), rtol=1e-5, atol=1e-4):
        return None
    diff = (value.double() - current.double()).abs().max().item()
    return f"max |Δ| = {diff:.4g}"


def _source_preset(meta: dict[str, Any]) -> Preset | None:
    """The built-in preset a bevdeploy checkpoint names in its meta, if any."""
    from bevdeploy.presets import get_preset, list_presets

    name = meta.get("preset")
    if not isinstance(name, str) or name not in list_presets():
        return None
    return get_preset(name)


def rig_changes(meta: dict[str, Any], target: Preset,
                rebuilt: list[tuple[str, str]]) -> list[str]:
    """What differs from the checkpoint's rig: the preset fields when the checkpoint names a
    built-in preset, else the derived buffers that were rebuilt."""
    source = _source_preset(meta)
    if source is None:
        return [f"{key.rsplit('.', 1)[1]} {how}" for key, how in rebuilt]
    s, t = source, target
    fields = [
        ("cameras", list(s.cameras.names), list(t.cameras.names)),
        ("raw_size", list(s.cameras.raw_size), list(t.cameras.raw_size)),
        ("image_size", list(s.cameras.image_size), list(t.cameras.image_size)),
        ("resize", s.cameras.resize, t.cameras.resize),
        ("xbound", list(s.model.vtransform.xbound), list(t.model.vtransform.xbound)),
        ("ybound", list(s.model.vtransform.ybound), list(t.model.vtransform.ybound)),
        ("dbound", list(s.model.vtransform.dbound), list(t.model.vtransform.dbound)),
        ("point_cloud_range", list(s.points.point_cloud_range),
         list(t.points.point_cloud_range)),
    ]
    return [f"{name} {a} → {b}" for name, a, b in fields if a != b]


def rig_warning(meta: dict[str, Any], target: Preset, rebuilt: list[tuple[str, str]]) -> str | None:
    """The one warning of a load into another rig, or None when nothing changed."""
    changes = rig_changes(meta, target, rebuilt)
    if not changes and not rebuilt:
        return None
    origin = meta.get("preset", "the checkpoint's rig")
    return (f"weights of {origin} moved to rig {target.name}: " + "; ".join(changes or ["-"])
            + ". Derived buffers (frustum, BEV grid constants) are rebuilt from the preset; "
            "learned weights load unchanged, accuracy on the new rig is not measured")
