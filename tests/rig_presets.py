"""Presets of rigs other than nuScenes', built from ``tiny`` (shared by the rig tests)."""

from __future__ import annotations

from typing import Any

from bevdeploy.presets import Preset, get_preset

FOUR_CAMERAS = ("CAM_FRONT", "CAM_LEFT", "CAM_RIGHT", "CAM_REAR")


def tiny_variant(name: str, **changes: Any) -> Preset:
    """``tiny`` with nested fields changed: ``cameras={...}``, ``points={...}``,
    ``vtransform={...}`` merge into those sections; ``checkpoint`` replaces it."""
    data = get_preset("tiny").to_dict()
    data["name"] = name
    for section in ("cameras", "points"):
        data[section].update(changes.pop(section, {}))
    data["model"]["vtransform"].update(changes.pop("vtransform", {}))
    data.update(changes)
    return Preset.from_dict(data, source=f"<{name}>").validate()


def four_camera_preset(**changes: Any) -> Preset:
    """4 cameras that are not nuScenes names, 1280×720 raw images, a 128×320 crop and a 2:1 BEV
    grid (±51.2 m × ±25.6 m), with tiny's weights file unless ``checkpoint`` says otherwise."""
    return tiny_variant(
        "tiny-4cam",
        cameras={"names": list(FOUR_CAMERAS), "raw_size": [720, 1280], "image_size": [128, 320],
                 "resize": 0.25},
        points={"point_cloud_range": [-51.2, -25.6, -5.0, 51.2, 25.6, 3.0]},
        vtransform={"ybound": [-25.6, 25.6, 0.8]}, **changes)
