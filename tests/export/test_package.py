"""The deploy package: manifest contents, hash verification, version refusal, atomic export,
``inspect`` and the torch-free loading path.

One ``tiny`` package is exported per module (from a saved checkpoint, so the checkpoint path
is exercised) and copied for every test that damages it.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from rich.console import Console

from bevdeploy.data.preprocess import img_aug_matrices
from bevdeploy.errors import PackageError
from bevdeploy.export import writer
from bevdeploy.export.inspect import print_package
from bevdeploy.export.onnx_utils import graph_io
from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.model.checkpoint import save_checkpoint
from bevdeploy.package import FORMAT_VERSION, MANIFEST_NAME, load_package
from bevdeploy.vocabulary import MODULE_FILES
from bevdeploy.presets import get_preset

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, BEVFusion]:
    """A checkpoint whose weights differ from the writer's seeded initialisation."""
    torch.manual_seed(123)
    model = BEVFusion(TINY).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(model, path)
    return path, model


@pytest.fixture(scope="module")
def package(checkpoint, tmp_path_factory) -> Path:
    return writer.export_package(TINY, checkpoint[0], tmp_path_factory.mktemp("pkg") / "tiny")


@pytest.fixture
def copy(package, tmp_path) -> Path:
    return Path(shutil.copytree(package, tmp_path / "tiny"))


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST_NAME).read_text())


def _rewrite_manifest(path: Path, edit) -> None:
    data = _manifest(path)
    edit(data)
    (path / MANIFEST_NAME).write_text(json.dumps(data))


# ---------------------------------------------------------------------------------- contents


def test_package_holds_the_five_files_with_matching_hashes(package):
    pkg = load_package(package)
    assert sorted(p.name for p in package.iterdir()) == sorted([*MODULE_FILES.values(),
                                                                MANIFEST_NAME])
    for name, file in MODULE_FILES.items():
        entry = pkg.module(name)
        data = (package / file).read_bytes()
        assert entry.file == file and entry.size == len(data)
        assert entry.sha256 == hashlib.sha256(data).hexdigest()


def test_manifest_shapes_are_what_shape_inference_gives(package):
    pkg = load_package(package)
    for name in ("camera.backbone", "camera.vtransform", "fuser", "head.bbox"):
        entry = pkg.module(name)
        model = onnx.shape_inference.infer_shapes(onnx.load(str(pkg.path(name))), strict_mode=True)
        inputs, outputs = graph_io(model)
        assert (inputs, outputs) == (entry.inputs, entry.outputs)
        assert entry.precision == "fp32" and entry.opset == 17
        assert sum(entry.ops.values()) == len(model.graph.node)
    scn = pkg.module("lidar.backbone")
    assert scn.outputs[0].shape == (1, TINY.lidar_bev_channels, *TINY.bev_size)


def test_manifest_records_preset_runtime_parameters_versions_and_checkpoint(package, checkpoint):
    data = _manifest(package)
    assert data["format_version"] == FORMAT_VERSION
    assert load_package(package).preset == TINY
    assert data["classes"] == list(TINY.classes) and data["cameras"] == list(TINY.cameras.names)
    np.testing.assert_array_equal(np.asarray(data["geometry"]["img_aug"], dtype=np.float32),
                                  img_aug_matrices(TINY.cameras))
    assert data["geometry"]["depth_bins"] == 24
    assert data["geometry"]["bev_pool_size"] == [128, 128, 1]
    assert data["voxelization"]["voxel_size"] == [0.2, 0.2, 0.2]
    assert data["voxelization"]["sparse_shape"] == [512, 512, 41]
    assert data["decode"]["out_size_factor"] == 8 and data["decode"]["pc_range"] == [-51.2, -51.2]
    assert data["decode"]["post_center_range"] == list(TINY.model.head.post_center_range)
    assert {"bevdeploy", "torch", "onnx", "spconv"} <= set(data["versions"])
    assert data["checkpoint"] == {
        "file": "tiny.pth", "sha256": hashlib.sha256(checkpoint[0].read_bytes()).hexdigest()}


def test_exported_weights_are_the_checkpoints(package, checkpoint):
    """The vtransform graph computes the checkpoint model's downsample, not another init."""
    model = checkpoint[1]
    spec = load_package(package).module("camera.vtransform").inputs[0]
    x = torch.randn(*spec.shape, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(package / "camera.vtransform.onnx"),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {spec.name: x.numpy()})[0]
    with torch.no_grad():
        ref = model.encoders["camera"]["vtransform"].downsample(x).numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


# ---------------------------------------------------------------------------------- refusals


def test_a_flipped_byte_is_refused_by_file_name(copy):
    path = copy / "fuser.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="SHA-256") as info:
        load_package(copy)
    assert info.value.path == str(path) and info.value.field == "modules.fuser.sha256"


def test_a_missing_file_is_refused_by_file_name(copy):
    (copy / "head.bbox.onnx").unlink()
    with pytest.raises(PackageError, match="missing") as info:
        load_package(copy)
    assert info.value.path == str(copy / "head.bbox.onnx")
    assert info.value.field == "modules.head.bbox.file"


def test_a_newer_major_format_is_refused_naming_both_versions(copy):
    _rewrite_manifest(copy, lambda d: d.update(format_version="2.0"))
    with pytest.raises(PackageError, match=r"2\.0.*" + FORMAT_VERSION.replace(".", r"\.")) as info:
        load_package(copy)
    assert info.value.field == "format_version"


def test_a_newer_minor_format_with_extra_keys_still_loads(copy):
    _rewrite_manifest(copy, lambda d: d.update(format_version="1.7", engines={}))
    assert load_package(copy).manifest.format_version == "1.7"


def test_runtime_parameters_that_disagree_with_the_preset_are_refused(copy):
    _rewrite_manifest(copy, lambda d: d["decode"].update(score_threshold=0.3))
    with pytest.raises(PackageError, match=r"disagrees.*expected 0\.0") as info:
        load_package(copy)
    assert info.value.field == "decode.score_threshold"


def test_a_module_file_outside_the_package_is_refused(copy):
    _rewrite_manifest(copy, lambda d: d["modules"]["fuser"].update(file="../fuser.onnx"))
    with pytest.raises(PackageError, match="plain name") as info:
        load_package(copy)
    assert info.value.field == "modules.fuser.file"


def test_a_directory_without_manifest_is_not_a_package(tmp_path):
    with pytest.raises(PackageError, match="manifest.json"):
        load_package(tmp_path)


# ---------------------------------------------------------------------------------- atomicity


def _leftovers(parent: Path, keep: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p != keep)


def test_a_failed_export_leaves_the_previous_package_and_no_temp_dirs(copy, monkeypatch):
    before = {p.name: p.read_bytes() for p in copy.iterdir()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("export killed")

    monkeypatch.setattr(writer, "export_scn", killed)
    with pytest.raises(KeyboardInterrupt):
        writer.export_package(TINY, None, copy)
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before
    assert _leftovers(copy.parent, copy) == []
    load_package(copy)


def test_a_new_export_replaces_the_previous_package(copy):
    assert _manifest(copy)["checkpoint"] is not None
    writer.export_package(TINY, None, copy)
    assert _manifest(copy)["checkpoint"] is None
    assert _leftovers(copy.parent, copy) == []
    load_package(copy)


def test_export_refuses_to_replace_a_directory_that_is_not_a_package(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(PackageError, match="not a previous package"):
        writer.export_package(TINY, None, out)
    assert (out / "holiday.jpg").read_bytes() == b"\xff\xd8"


# ---------------------------------------------------------------------------------- inspect


def test_inspect_prints_modules_shapes_and_tensorrt_status(package):
    out = io.StringIO()  # the unfolded tables (the narrow ones: tests/test_tables.py)
    print_package(package, console=Console(file=out, width=240), wide=True)
    text = out.getvalue()
    for name, file in MODULE_FILES.items():
        assert name in text and file in text
    assert text.count("parses") == 4 and "[1, 10, 100]" in text and "[6, 16, 32, 32]" in text
    assert "LayerNormalization" in text and "TopK" in text


def test_loading_and_inspecting_do_not_import_torch(package):
    code = ("import sys\n"
            "from bevdeploy.package import load_package\n"
            "from bevdeploy.export.inspect import print_package\n"
            f"load_package({str(package)!r}); print_package({str(package)!r})\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.slow
def test_nuscenes_resnet50_package_loads_with_the_reference_shapes(tmp_path):
    pkg = load_package(writer.export_package(get_preset("nuscenes-resnet50"), None,
                                             tmp_path / "r50"))
    assert pkg.module("camera.backbone").outputs[1].shape == (6, 32, 88, 80)
    assert pkg.module("lidar.backbone").outputs[0].shape == (1, 256, 180, 180)
    assert pkg.module("head.bbox").outputs[0].shape == (1, 10, 200)
    assert pkg.manifest.to_dict()["geometry"]["bev_pool_size"] == [360, 360, 1]
