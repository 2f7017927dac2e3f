"""A package exported from an mmdetection3d-1.x-named checkpoint records ``box_convention:
mmdet3d-1.x`` and the load report, ``inspect`` shows both, and the runtime decodes its head in
that convention; format-1.0 manifests (``decode.box_dialect: mmdet3d-legacy``) load as ``mit``.

The two packages below hold the same weights (the shipped tiny checkpoint, once under its own
names, once under mmdetection3d's), so their head outputs are equal and their boxes must differ
exactly by the convention: same centre x, y; z up by h/2; l and w swapped; yaw ``−yaw − π/2``.
Tolerance: 1e-5 (float32 arithmetic of the two decodes).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from rich.console import Console

from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.errors import PackageError
from bevdeploy.export.inspect import package_tables
from bevdeploy.export.writer import export_package
from bevdeploy.model.checkpoint import read_checkpoint
from bevdeploy.package import MANIFEST_NAME, load_package
from bevdeploy.presets import get_preset
from bevdeploy.runtime import Pipeline
from bevdeploy.vocabulary import BOX_CONVENTION_MIT, BOX_CONVENTION_MMDET3D
from support import to_mmdet3d_names

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def mmdet3d_package(tmp_path_factory):
    root = tmp_path_factory.mktemp("mm3d")
    state = read_checkpoint(TINY.checkpoint_path).state_dict
    torch.save({"meta": {"dataset_meta": {"classes": list(TINY.classes)}},
                "state_dict": {to_mmdet3d_names(k): v for k, v in state.items()}},
               root / "bevfusion_mm3d.pth")
    return export_package(TINY, root / "bevfusion_mm3d.pth", root / "package")


def test_manifest_records_the_convention_and_the_load_report(mmdet3d_package,
                                                             trained_tiny_package):
    manifest = load_package(mmdet3d_package).manifest
    assert manifest.box_convention == BOX_CONVENTION_MMDET3D
    report = manifest.checkpoint_report
    assert report["source_format"] == "mmdet3d-1.x" and report["ok"]
    assert report["missing"] == [] and report["unexpected"] == []
    assert report["renamed"] >= report["loaded"] > 0  # every key renamed (derived buffers
    # are renamed but rebuilt from the preset, not loaded)
    assert report["path"] == "bevfusion_mm3d.pth"  # the file's name, not this machine's path
    assert any("mmdet3d>=1.0 boxes" in note for note in report["notes"])
    mit = load_package(trained_tiny_package).manifest
    assert mit.box_convention == BOX_CONVENTION_MIT
    assert mit.checkpoint_report["source_format"] == "mit"

    console = Console(width=200, record=True, color_system=None)
    for table in package_tables(load_package(mmdet3d_package)):
        console.print(table)
    text = console.export_text()
    assert "box convention" in text and "mmdet3d-1.x" in text
    assert "mmdet3d-1.x: " in text and " loaded, " in text  # the load report's line


def test_override_is_recorded(tmp_path):
    out = export_package(TINY, TINY.checkpoint_path, tmp_path / "pkg",
                         box_convention=BOX_CONVENTION_MMDET3D)
    assert load_package(out).manifest.box_convention == BOX_CONVENTION_MMDET3D


def test_runtime_decodes_in_the_manifest_convention(mmdet3d_package, trained_tiny_package,
                                                    synthetic_world):
    frame = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val",
                           preset=TINY)[0]
    with Pipeline(load_package(trained_tiny_package)) as mit_side, \
            Pipeline(load_package(mmdet3d_package)) as mm_side:
        mit = mit_side.run(frame)
        mm = mm_side.run(frame)
    assert len(mit.boxes) == len(mm.boxes) > 0
    np.testing.assert_array_equal(mm.scores, mit.scores)
    a, b = mit.boxes.astype(np.float64), mm.boxes.astype(np.float64)
    np.testing.assert_allclose(b[:, [0, 1, 7, 8]], a[:, [0, 1, 7, 8]], atol=1e-5)
    np.testing.assert_allclose(b[:, 2], a[:, 2] + a[:, 5] / 2, atol=1e-5)
    np.testing.assert_allclose(b[:, 3:6], a[:, [4, 3, 5]], atol=1e-5)
    dyaw = b[:, 6] - (-a[:, 6] - np.pi / 2)
    np.testing.assert_allclose(np.arctan2(np.sin(dyaw), np.cos(dyaw)), 0.0, atol=1e-5)


def test_format_1_0_manifest_loads_as_mit_and_a_bad_convention_is_refused(trained_tiny_package,
                                                                          tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained_tiny_package, old)
    data = json.loads((old / MANIFEST_NAME).read_text())
    del data["box_convention"], data["checkpoint_report"]
    data["format_version"] = "1.0"
    data["decode"] = {"box_dialect": "mmdet3d-legacy", **data["decode"]}
    (old / MANIFEST_NAME).write_text(json.dumps(data))
    assert load_package(old).manifest.box_convention == BOX_CONVENTION_MIT

    data["box_convention"] = "kitti"
    (old / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(PackageError, match="kitti") as info:
        load_package(old)
    assert info.value.field == "box_convention"
