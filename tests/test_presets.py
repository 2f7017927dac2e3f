"""Presets: spec values, derived shapes, YAML round-trip and validation errors."""

from __future__ import annotations

import dataclasses

import pytest

from bevdeploy.errors import ConfigError
from bevdeploy.presets import Preset, get_preset, list_presets


def test_registry_has_the_three_presets():
    assert list_presets() == ["nuscenes-resnet50", "nuscenes-swint", "tiny"]


def test_resnet50_matches_cuda_bevfusion_shapes():
    """docs/reference.md#cuda-bevfusion-configuration and #tensor-walk-through."""
    p = get_preset("nuscenes-resnet50")
    assert p.cameras.num_cameras == 6
    assert p.cameras.image_size == (256, 704)
    assert p.cameras.resized_size == (432, 768)
    assert p.cameras.crop_offset == (176, 32)
    assert p.grid_size == (1440, 1440, 40)
    assert p.sparse_shape == (1440, 1440, 41)
    assert p.lidar_encoder_shapes == [(1440, 1440, 41), (720, 720, 21), (360, 360, 11),
                                      (180, 180, 5), (180, 180, 2)]
    assert p.lidar_bev_channels == 256
    assert p.bev_size == (180, 180)
    assert p.feature_size == (32, 88)
    assert p.model.vtransform.depth_bins == 118
    assert p.model.vtransform.bev_size == (360, 360, 1)
    assert p.model.backbone.out_channels == (512, 1024, 2048)
    assert p.model.decoder.middle_channels == 512
    assert p.model.head.num_proposals == 200


def test_swint_differs_only_in_backbone():
    a, b = get_preset("nuscenes-resnet50"), get_preset("nuscenes-swint")
    assert b.model.backbone.out_channels == (192, 384, 768)
    assert dataclasses.replace(b, name=a.name, model=dataclasses.replace(
        b.model, backbone=a.model.backbone)) == a


@pytest.mark.parametrize("name", ["nuscenes-resnet50", "nuscenes-swint", "tiny"])
def test_yaml_round_trip(name, tmp_path):
    p = get_preset(name)
    path = tmp_path / f"{name}.yaml"
    p.to_yaml(path)
    q = Preset.from_yaml(path)
    assert q == p
    assert get_preset(path) == p


def test_tiny_is_small():
    p = get_preset("tiny")
    assert p.bev_size == (64, 64)
    assert p.cameras.crop_offset == (16, 0)
    assert p.lidar_encoder_shapes[-1] == (64, 64, 2)


def _edit(name: str, path: list[str], value):
    data = get_preset(name).to_dict()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


@pytest.mark.parametrize("path,value,field,needle", [
    (["voxel", "voxel_size"], [0.07, 0.075, 0.2], "voxel.voxel_size", "does not divide"),
    (["model", "vtransform", "dbound"], [1.0, 60.0, 0.7], "model.vtransform", "dbound"),
    (["cameras", "image_size"], [250, 704], "cameras.image_size", "divisible"),
    (["cameras", "image_size"], [512, 1600], "cameras", "does not fit"),
    (["points", "num_features"], 7, "points", "num_features"),
    (["model", "head", "num_heads"], 7, "model.head", "divisible"),
    (["model", "vtransform", "xbound"], [-50.0, 50.0, 0.5], "model.vtransform.xbound", "same area"),
    (["model", "head", "out_size_factor"], 4, "model.head.out_size_factor", "stride"),
    (["model", "backbone", "type"], "vgg", "model.backbone.type", "must be one of"),
    (["points", "point_cloud_range"], [54, -54, -5, -54, 54, 3], "points", "min < max"),
])
def test_impossible_values_are_clear_errors(path, value, field, needle):
    data = _edit("nuscenes-resnet50", path, value)
    with pytest.raises(ConfigError) as exc:
        Preset.from_dict(data)
    msg = str(exc.value)
    assert field in msg and needle in msg, msg


def test_unknown_field_is_named():
    data = _edit("tiny", ["model", "head", "num_propsals"], 100)
    with pytest.raises(ConfigError, match=r"model\.head.*unknown field.*num_propsals"):
        Preset.from_dict(data)


def test_wrong_type_is_named():
    data = _edit("tiny", ["voxel", "max_points"], "ten")
    with pytest.raises(ConfigError, match=r"voxel\.max_points.*integer"):
        Preset.from_dict(data)


def test_a_collapsing_sparse_encoder_is_refused():
    # 21 z cells shrink 21 → 11 → 6 → 2 → 0 through the encoder's strides.
    data = _edit("tiny", ["voxel", "voxel_size"], [0.2, 0.2, 0.4])
    with pytest.raises(ConfigError, match="shrinks the grid"):
        Preset.from_dict(data)


def test_rectangular_bev_grid_is_a_preset_edit():
    data = _edit("tiny", ["points", "point_cloud_range"], [-51.2, -25.6, -5.0, 51.2, 25.6, 3.0])
    data["model"]["vtransform"]["ybound"] = [-25.6, 25.6, 0.8]
    p = Preset.from_dict(data)
    assert p.bev_size == (64, 32)
    assert p.model.vtransform.out_bev_size == (64, 32)


def test_bad_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        Preset.from_yaml(path)
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("resnet-9000")
