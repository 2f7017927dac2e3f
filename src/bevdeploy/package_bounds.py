"""Upper bounds on what a package's manifest may ask for, checked before anything is sized by it.

A manifest is data from whoever sent the package; its numbers size the runtime's buffers. A
hand-edited ``max_voxels`` of 1e12 or ``num_proposals`` of 1e9 is accepted by the preset's own
checks (positive integers) and then allocates until the machine dies. So:

* ``read_manifest`` reads at most ``MAX_MANIFEST_BYTES`` (a manifest is ~30 KB; 10⁶ camera names
  are 11 MB and took 34 s and 1.4 GB to refuse);
* ``check_counts`` bounds the lists whose length drives per-element work (cameras, classes)
  on the raw JSON, before the preset is built from it;
* ``check_memory`` sums the buffers the runtime allocates from the preset's counts and sizes
  (``memory_terms``: points, voxels, images, camera features and depth, BEV maps, the head's
  heatmap and proposals) and refuses a package needing more than ``MEMORY_BUDGET_BYTES``,
  naming the field of the largest term and the figure. Every count or size field enters a
  term, so each has an upper bound derived from the memory it implies.
"""

from __future__ import annotations

from math import prod
from pathlib import Path
from typing import Any

from bevdeploy.errors import PackageError
from bevdeploy.presets import Preset

MAX_MANIFEST_BYTES = 4 << 20
MAX_CAMERAS = 64
MAX_CLASSES = 1024
MEMORY_BUDGET_BYTES = 16 << 30  # about 70× what nuscenes-resnet50 needs (0.23 GiB)
_F32 = 4


def read_manifest(path: Path) -> bytes:
    """The manifest's bytes, refused beyond ``MAX_MANIFEST_BYTES`` without reading further."""
    with path.open("rb") as handle:
        raw = handle.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise PackageError(f"larger than {MAX_MANIFEST_BYTES >> 20} MiB: not a manifest "
                           "bevdeploy writes", path=path, field="<root>")
    return raw


def check_counts(data: Any, source: Path) -> None:
    """Refuse camera and class lists beyond ``MAX_CAMERAS`` / ``MAX_CLASSES`` in the raw
    manifest (top level and embedded preset), before per-element work starts."""
    preset = data.get("preset") if isinstance(data, dict) else None
    cameras = preset.get("cameras") if isinstance(preset, dict) else None
    lists = {"cameras": (data.get("cameras"), MAX_CAMERAS),
             "classes": (data.get("classes"), MAX_CLASSES),
             "preset.cameras.names": (cameras.get("names") if isinstance(cameras, dict)
                                      else None, MAX_CAMERAS),
             "preset.classes": (preset.get("classes") if isinstance(preset, dict) else None,
                                MAX_CLASSES)}
    for field, (value, limit) in lists.items():
        if isinstance(value, list) and len(value) > limit:
            raise PackageError(f"{len(value):,} entries; at most {limit} are supported",
                               path=source, field=field)


def memory_terms(preset: Preset) -> dict[str, int]:
    """Bytes of the runtime's largest buffers, keyed by the preset field(s) that size them."""
    cams, pts, vox = preset.cameras, preset.points, preset.voxel
    vt, head = preset.model.vtransform, preset.model.head
    n = cams.num_cameras
    depth_bins = vt.depth_bins
    fh, fw = preset.feature_size
    bx, by = preset.bev_size
    pool = prod(vt.bev_size)
    return {
        "points.max_points": pts.max_points * pts.num_features * _F32,
        "voxel.max_voxels": vox.max_voxels * (vox.max_points * pts.num_features * _F32 + 16),
        "cameras.raw_size": n * prod(cams.raw_size) * 3,
        "cameras.image_size": n * prod(cams.image_size) * 3 * _F32,
        "model.vtransform.dbound": n * depth_bins * fh * fw * (1 + 4) * _F32,  # depth, geometry
        "model.vtransform.out_channels": (n * fh * fw + pool) * vt.out_channels * _F32,
        "model.vtransform.xbound": pool * (vt.out_channels + 4) * _F32,
        "model.head.num_proposals": head.num_proposals * (preset.num_classes + head.hidden_channel
                                                          + 16) * _F32 * 4,
        # the BEV grid (range / voxel size): LiDAR BEV features and the class heatmap
        "voxel.voxel_size": bx * by * (preset.num_classes + preset.lidar_bev_channels) * _F32,
    }


def check_memory(preset: Preset, source: Path, budget: int = MEMORY_BUDGET_BYTES) -> None:
    """Refuse a preset whose buffers (``memory_terms``) need more than ``budget`` bytes."""
    terms = memory_terms(preset)
    total = sum(terms.values())
    if total > budget:
        field = max(terms, key=terms.__getitem__)
        raise PackageError(f"the package needs about {_gib(total)} of buffers, more than the "
                           f"{_gib(budget)} budget; {field} alone asks for {_gib(terms[field])}",
                           path=source, field=f"preset.{field}")


def _gib(n: int) -> str:
    return f"{n / (1 << 30):,.1f} GiB"
