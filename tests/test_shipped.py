"""The deploy package that ships in ``assets/packages/tiny`` is what ``export --preset tiny``
writes from the shipped weights, module by module and byte for byte (bevdeploy.shipped), so the
torch-free main job runs exactly the model a user would export."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from bevdeploy.package import load_package
from bevdeploy.presets import get_preset
from bevdeploy.shipped import install_shipped, shipped_package, shipped_package_dir

REGENERATE = ("bevdeploy export --preset tiny --out src/bevdeploy/assets/packages/tiny "
              "--overwrite, then delete src/bevdeploy/assets/packages/.tiny.lock")
UNRECORDED = ("created_utc", "versions")  # when and with which library versions it was written


def _manifest(path: Path) -> dict:
    doc = json.loads((path / "manifest.json").read_text())
    return {k: v for k, v in doc.items() if k not in UNRECORDED}


def test_shipped_package_equals_a_fresh_export(trained_tiny_package: Path) -> None:
    shipped = shipped_package_dir("tiny")
    assert (shipped / "manifest.json").is_file(), f"no shipped package; run: {REGENERATE}"
    assert _manifest(shipped) == _manifest(trained_tiny_package), \
        f"the shipped manifest is stale; run: {REGENERATE}"
    files = sorted(p.name for p in trained_tiny_package.iterdir())
    assert sorted(p.name for p in shipped.iterdir()) == files
    for name in files:
        if name != "manifest.json":
            assert (shipped / name).read_bytes() == (trained_tiny_package / name).read_bytes(), \
                f"{name} differs from a fresh export; run: {REGENERATE}"


def test_nothing_but_packages_ships_beside_them() -> None:
    folder = shipped_package_dir("tiny").parent
    assert [p.name for p in folder.iterdir()] == ["tiny"], f"stray files; see: {REGENERATE}"


def test_shipped_package_is_used_only_for_the_preset_it_was_exported_from() -> None:
    tiny = get_preset("tiny")
    assert shipped_package(tiny) == shipped_package_dir("tiny")
    other_head = replace(tiny.model.head, report_threshold=0.5)
    assert shipped_package(replace(tiny, model=replace(tiny.model, head=other_head))) is None
    assert shipped_package(replace(tiny, checkpoint=None)) is None
    assert shipped_package(get_preset("nuscenes-resnet50")) is None


def test_install_shipped_copies_a_verified_package(tmp_path: Path) -> None:
    out = install_shipped(shipped_package_dir("tiny"), tmp_path / "pkg")
    assert load_package(out).preset == get_preset("tiny")  # every file's SHA-256 verified
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left

