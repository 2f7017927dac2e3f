"""One table of bad inputs across the commands, each run through the real CLI.

Every case builds its damaged input in a fresh directory (copies of the shared fixtures, never
the fixtures themselves), runs ``bevdeploy ...`` and asserts three things:

* the exact exit code (``bevdeploy.errors``: 2 config, 3 input, 4 dataset, 5 unsafe file,
  6 package, 7 checkpoint, 9 output);
* the message names the culprit: the file name and/or the field, in one ``error`` line, with
  no traceback;
* nothing was left half-written: the case's directory — its inputs, the previous output
  (``out/previous.json``, or a previous package), and any would-be output — is byte-for-byte
  what it was before the run, with no temporary or staging leftovers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from bevdeploy.cli import app
from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.package import FORMAT_VERSION, MANIFEST_NAME, sha256_file

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
           "CAM_BACK_RIGHT")  # the tiny preset's order


@dataclass
class Ctx:
    """A case's sandbox: ``tmp`` (snapshotted), the shared read-only fixtures, and helpers
    that copy them into the sandbox."""

    tmp: Path
    package: Path
    frame: Path
    world: Path

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def inputs(self) -> Path:
        """A private copy of the good single-frame files."""
        dst = self.tmp / "in"
        if not dst.exists():
            shutil.copytree(self.frame, dst)
        return dst

    def infer(self, *, pcd: Path | None = None, calib: Path | None = None,
              images: list[Path] | None = None, package: Path | None = None) -> list[str]:
        """``infer`` on one frame from files, the good copies unless replaced."""
        src = self.inputs()
        images = images if images is not None else [src / f"{c}.jpg" for c in CAMERAS]
        return ["infer", "--package", str(package or self.package), "--out", str(self.out),
                "--pcd", str(pcd or src / "points.pcd.bin"), "--calib",
                str(calib or src / "rig.yaml"), "--images", *map(str, images)]

    def package_copy(self) -> Path:
        return Path(shutil.copytree(self.package, self.tmp / "pkg"))

    def world_copy(self) -> Path:
        return Path(shutil.copytree(self.world, self.tmp / "world"))

    def calib(self, edit: Callable[[dict], None]) -> tuple[list[str], Path]:
        """``infer`` args with the calibration YAML edited by ``edit``."""
        path = self.inputs() / "rig.yaml"
        doc = yaml.safe_load(path.read_text())
        edit(doc)
        path.write_text(yaml.safe_dump(doc))
        return self.infer(calib=path), path


@dataclass(frozen=True)
class Case:
    id: str
    code: int
    build: Callable[[Ctx], tuple[list[str], list[str]]]  # → (CLI args, culprits to name)

    def __repr__(self) -> str:
        return self.id


# ---------------------------------------------------------------------------------- points


def _points_file(ctx: Ctx, name: str, write: Callable[[Path, np.ndarray], None]
                 ) -> tuple[list[str], Path]:
    good = np.fromfile(ctx.inputs() / "points.pcd.bin", dtype="<f4").reshape(-1, 5)
    path = ctx.inputs() / name
    write(path, good)
    return ctx.infer(pcd=path), path


def truncated_points(ctx: Ctx):
    args, path = _points_file(ctx, "cut.pcd.bin",
                              lambda p, pts: p.write_bytes(pts.tobytes()[:-7]))
    return args, [path.name, "[size]", "not a multiple"]


def missing_points(ctx: Ctx):
    return ctx.infer(pcd=ctx.tmp / "nowhere.pcd.bin"), ["nowhere.pcd.bin", "[points]",
                                                        "not found"]


def unknown_point_format(ctx: Ctx):
    args, path = _points_file(ctx, "points.xyz", lambda p, pts: np.savetxt(p, pts))
    return args, [path.name, "[format]"]


def npy_needing_pickle(ctx: Ctx):
    args, path = _points_file(ctx, "objects.npy", lambda p, pts: np.save(
        p, np.array([{"x": 1.0}], dtype=object), allow_pickle=True))
    return args, [path.name, "[format]", "pickle"]


def npy_complex_dtype(ctx: Ctx):
    args, path = _points_file(ctx, "complex.npy", lambda p, pts: np.save(p, pts.astype(complex)))
    return args, [path.name, "[dtype]", "complex"]


def npy_three_dimensional(ctx: Ctx):
    args, path = _points_file(ctx, "cube.npy",
                              lambda p, pts: np.save(p, pts[:60].reshape(3, 4, 25)))
    return args, [path.name, "[shape]"]


def all_nan_points(ctx: Ctx):
    args, path = _points_file(ctx, "nan.pcd.bin",
                              lambda p, pts: np.full_like(pts, np.nan).tofile(p))
    return args, [path.name, "[points]", "all"]


def millimetre_points(ctx: Ctx):
    """A driver that writes millimetres: every coordinate beyond 10 km."""
    def write(p: Path, pts: np.ndarray) -> None:
        mm = pts.copy()
        mm[:, :3] = np.where(np.abs(mm[:, :3]) < 10.0, 1e4 + 1.0, mm[:, :3]) * 1000.0
        mm.tofile(p)
    args, path = _points_file(ctx, "mm.pcd.bin", write)
    return args, [path.name, "[points]", "10000 m"]


def garbage_pcd_header(ctx: Ctx):
    args, path = _points_file(ctx, "junk.pcd", lambda p, pts: p.write_bytes(b"VERSION ?\n\x00\xff"))
    return args, [path.name, "[header]"]


def pcd_without_intensity(ctx: Ctx):
    def write(p: Path, pts: np.ndarray) -> None:
        header = ("VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
                  f"WIDTH {len(pts)}\nHEIGHT 1\nPOINTS {len(pts)}\nDATA binary\n").encode()
        p.write_bytes(header + np.ascontiguousarray(pts[:, :3]).tobytes())
    args, path = _points_file(ctx, "xyz.pcd", write)
    return args, [path.name, "[fields]", "intensity"]


# ---------------------------------------------------------------------------------- images


def _image_args(ctx: Ctx, camera: str, write: Callable[[Path], None]) -> list[str]:
    src = ctx.inputs()
    target = src / f"{camera}.jpg"
    write(target)
    return ctx.infer(images=[src / f"{c}.jpg" for c in CAMERAS])


def missing_image(ctx: Ctx):
    return _image_args(ctx, "CAM_BACK", Path.unlink), ["CAM_BACK.jpg", "[CAM_BACK]", "not found"]


def truncated_jpeg(ctx: Ctx):
    args = _image_args(ctx, "CAM_FRONT",
                       lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 3]))
    return args, ["CAM_FRONT.jpg", "[CAM_FRONT]", "not a readable image"]


def text_as_image(ctx: Ctx):
    args = _image_args(ctx, "CAM_FRONT_RIGHT", lambda p: p.write_text("not a picture"))
    return args, ["CAM_FRONT_RIGHT.jpg", "[CAM_FRONT_RIGHT]", "not a readable image"]


def unreadable_image(ctx: Ctx):
    """A directory where the JPEG should be (root ignores permission bits, so no chmod)."""
    def replace(p: Path) -> None:
        p.unlink()
        p.mkdir()
    args = _image_args(ctx, "CAM_BACK_RIGHT", replace)
    return args, ["CAM_BACK_RIGHT.jpg", "[CAM_BACK_RIGHT]", "Is a directory"]


def image_of_another_size(ctx: Ctx):
    def shrink(p: Path) -> None:
        Image.open(p).resize((800, 450)).save(p)
    args = _image_args(ctx, "CAM_FRONT_LEFT", shrink)
    return args, ["CAM_FRONT_LEFT.jpg", "[CAM_FRONT_LEFT]", "450×800", "900×1600"]


def five_images_for_six_cameras(ctx: Ctx):
    """Images are matched to cameras by the camera name in the file name: the one left out
    is named."""
    src = ctx.inputs()
    return ctx.infer(images=[src / f"{c}.jpg" for c in CAMERAS[:5]]), [
        "[--images]", "no file for camera(s) ['CAM_BACK_RIGHT']"]


def five_unnamed_images_for_six_cameras(ctx: Ctx):
    """File names without a camera name are taken in order, so their count must match."""
    src = ctx.inputs()
    images = [Path(shutil.copy(src / f"{c}.jpg", src / f"image{i}.jpg"))
              for i, c in enumerate(CAMERAS[:5])]
    return ctx.infer(images=images), ["[--images]", "5 images given", "6 cameras"]


# ---------------------------------------------------------------------------------- calibration


def calib_missing_camera(ctx: Ctx):
    args, path = ctx.calib(lambda d: d["cameras"].pop("CAM_BACK"))
    return args, [path.name, "[cameras.CAM_BACK]", "missing"]


def calib_nan(ctx: Ctx):
    args, path = ctx.calib(lambda d: d["cameras"]["CAM_FRONT"]["intrinsics"][0]
                           .__setitem__(2, float("nan")))
    return args, [path.name, "[CAM_FRONT.intrinsics]", "NaN"]


def calib_singular_intrinsics(ctx: Ctx):
    args, path = ctx.calib(lambda d: d["cameras"]["CAM_FRONT"]["intrinsics"][0]
                           .__setitem__(0, 0.0))
    return args, [path.name, "[CAM_FRONT.intrinsics]", "singular"]


def calib_non_orthonormal(ctx: Ctx):
    def scale(d: dict) -> None:
        m = d["cameras"]["CAM_FRONT_RIGHT"]["camera2lidar"]
        for row in m[:3]:
            row[:3] = [1.01 * v for v in row[:3]]  # |R·Rᵀ − I| ≈ 0.02 > 1e-3
    args, path = ctx.calib(scale)
    return args, [path.name, "[CAM_FRONT_RIGHT.camera2lidar]", "orthonormal"]


def calib_reflection(ctx: Ctx):
    def mirror(d: dict) -> None:
        for row in d["cameras"]["CAM_BACK_LEFT"]["camera2lidar"][:3]:
            row[0] = -row[0]  # orthonormal, but det −1
    args, path = ctx.calib(mirror)
    return args, [path.name, "[CAM_BACK_LEFT.camera2lidar]", "det = -1"]


def calib_alias_bomb(ctx: Ctx):
    """Nested aliases that would expand to 10⁹ numbers: refused while the YAML is composed,
    once the aliases stand for more than 100,000 values (bevdeploy.safe_yaml)."""
    bomb = "&a0 [" + ", ".join(["1.0"] * 10) + "]"
    for i in range(1, 10):
        bomb = f"&a{i} [{bomb}, " + ", ".join([f"*a{i - 1}"] * 9) + "]"
    path = ctx.inputs() / "bomb.yaml"
    path.write_text(f"cameras:\n  CAM_FRONT: {{intrinsics: {bomb}, camera2lidar: *a9}}\n")
    return ctx.infer(calib=path), [path.name, "[file]", "100,000 values, aliases expanded"]


def calib_missing(ctx: Ctx):
    return ctx.infer(calib=ctx.tmp / "rig-nowhere.yaml"), ["rig-nowhere.yaml", "[file]",
                                                          "not found"]


# ---------------------------------------------------------------------------------- packages


def _rewrite_manifest(pkg: Path, edit: Callable[[dict], None]) -> None:
    manifest = json.loads((pkg / MANIFEST_NAME).read_text())
    edit(manifest)
    (pkg / MANIFEST_NAME).write_text(json.dumps(manifest))


def flipped_byte(ctx: Ctx):
    pkg = ctx.package_copy()
    data = bytearray((pkg / "fuser.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (pkg / "fuser.onnx").write_bytes(bytes(data))
    return ctx.infer(package=pkg), ["fuser.onnx", "[modules.fuser.sha256]"]


def missing_module_file(ctx: Ctx):
    pkg = ctx.package_copy()
    (pkg / "head.bbox.onnx").unlink()
    return ["inspect", str(pkg)], ["head.bbox.onnx", "[modules.head.bbox.file]", "missing"]


def newer_format(ctx: Ctx):
    pkg = ctx.package_copy()
    _rewrite_manifest(pkg, lambda m: m.update(format_version="2.0"))
    return ["inspect", str(pkg)], [MANIFEST_NAME, "[format_version]", "format 2.0",
                                   f"(format {FORMAT_VERSION})", "newer"]


def manifest_not_json(ctx: Ctx):
    pkg = ctx.package_copy()
    (pkg / MANIFEST_NAME).write_text('{"format_version": "1.0", ')
    return ["inspect", str(pkg)], [MANIFEST_NAME, "not valid JSON"]


def corrupt_onnx_with_matching_hash(ctx: Ctx):
    """The hash check passes (the manifest was re-hashed), ONNX Runtime cannot parse it."""
    pkg = ctx.package_copy()
    path = pkg / "camera.vtransform.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    _rewrite_manifest(pkg, lambda m: m["modules"]["camera.vtransform"].update(
        sha256=sha256_file(path), size=path.stat().st_size))
    return ctx.infer(package=pkg), ["camera.vtransform.onnx", "ONNX Runtime cannot load"]


def not_a_package(ctx: Ctx):
    empty = ctx.tmp / "empty"
    empty.mkdir()
    return (["compare", "--package", str(empty), "--data", str(ctx.world)],
            [MANIFEST_NAME, "not a bevdeploy package"])


# ---------------------------------------------------------------------------------- export


def export_over_a_user_directory(ctx: Ctx):
    mine = ctx.tmp / "my-photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    return ["export", "--out", str(mine)], ["my-photos", "[--out]", "already exists",
                                            "pass --overwrite"]


def export_overwrite_a_user_directory(ctx: Ctx):
    """Even --overwrite replaces only a previous package, never a user's directory."""
    args, _ = export_over_a_user_directory(ctx)
    return [*args, "--overwrite"], ["my-photos", "refusing to replace it"]


def garbage_checkpoint(ctx: Ctx):
    path = ctx.tmp / "garbage.pth"
    path.write_bytes(bytes(range(255, -1, -1)) * 16)  # no pickle opcode sequence
    return (["export", "--out", str(ctx.tmp / "pkg"), "--checkpoint", str(path)],
            [path.name, "not a readable torch checkpoint"])


def checkpoint_that_runs_code(ctx: Ctx):
    marker = ctx.tmp / "pwned"
    path = ctx.tmp / "evil.pth"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"state_dict": {"w": torch.ones(1)}, "meta": Evil()}, path)
    # the snapshot taken after build proves that no `pwned` file ever appears
    return (["export", "--out", str(ctx.tmp / "pkg"), "--checkpoint", str(path)],
            [path.name, "[pickle]", "refused", "system"])


def checkpoint_of_another_model(ctx: Ctx):
    path = ctx.tmp / "other.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.ones(8, 3, 3, 3)}}, path)
    return (["export", "--out", str(ctx.tmp / "pkg"), "--checkpoint", str(path)],
            [path.name, "does not fit the model"])


def preset_with_unknown_field(ctx: Ctx):
    path = ctx.tmp / "mine.yaml"
    from bevdeploy.presets import get_preset

    doc = get_preset("tiny").to_dict()
    doc["model"]["head"]["num_proposal"] = 10  # a typo of num_proposals
    path.write_text(yaml.safe_dump(doc))
    return (["export", "--out", str(ctx.tmp / "pkg"), "--preset", str(path)],
            [path.name, "[model.head]", "num_proposal"])


def preset_that_runs_code(ctx: Ctx):
    marker = ctx.tmp / "pwned"
    path = ctx.tmp / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    return ["presets", "show", str(path)], [path.name, "Python object"]


# ---------------------------------------------------------------------------------- the rest


def neither_data_nor_files(ctx: Ctx):
    return ["infer", "--package", str(ctx.package), "--out", str(ctx.out)], ["[--data]"]


def threads_beyond_the_machine(ctx: Ctx):
    return ctx.infer() + ["--threads", "4096"], ["[threads]", "4096"]


def unknown_on_error_policy(ctx: Ctx):
    return (["infer", "--package", str(ctx.package), "--data", str(ctx.world), "--out",
             str(ctx.out), "--on-error", "ignore"], ["--on-error", "ignore"])


def missing_dataset(ctx: Ctx):
    return (["infer", "--package", str(ctx.package), "--data", str(ctx.tmp / "no-world"),
             "--out", str(ctx.out)], ["no-world", "[dataroot]"])


def unknown_split(ctx: Ctx):
    return (["infer", "--package", str(ctx.package), "--data", str(ctx.world), "--split",
             "mini_tset", "--out", str(ctx.out)], ["[split]", "mini_tset"])


def eval_on_a_damaged_sample(ctx: Ctx):
    world = ctx.world_copy()
    loader = NuScenesLoader(world, version="v1.0-mini", split="mini_val", preset="tiny")
    path = loader.record(0).lidar.path
    path.write_bytes(path.read_bytes()[:-3])
    return (["eval", "--package", str(ctx.package), "--data", str(world), "--out",
             str(ctx.out)], [path.name, "[size]"])


def synth_too_many_scenes(ctx: Ctx):
    return ["synth", "--out", str(ctx.tmp / "w"), "--scenes", "11"], ["[scenes]", "11"]


def synth_over_a_user_directory(ctx: Ctx):
    return (["synth", "--out", str(ctx.out), "--scenes", "1", "--samples", "2"],
            [str(ctx.out), "[--out]", "already exists; pass --overwrite"])


def synth_overwrite_a_user_directory(ctx: Ctx):
    """Even --overwrite replaces only a synthetic world, never a user's directory."""
    args, _ = synth_over_a_user_directory(ctx)
    return [*args, "--overwrite"], [str(ctx.out), "refusing to overwrite", "bevdeploy_synth.json"]


def synth_under_a_file(ctx: Ctx):
    blocker = ctx.tmp / "blocker"
    blocker.write_text("a file, not a directory")
    return (["synth", "--out", str(blocker / "world"), "--scenes", "1", "--samples", "2",
             "--density", "0.05"], ["blocker", "[output]", "cannot write"])


def compare_unknown_precision(ctx: Ctx):
    return (["compare", "--package", str(ctx.package), "--data", str(ctx.world), "--precision",
             "int4"], ["[precision]", "int4"])


def presets_show_directory(ctx: Ctx):
    folder = ctx.tmp / "presets.yaml"
    folder.mkdir()
    return ["presets", "show", str(folder)], ["presets.yaml", "Is a directory"]


def model_info_invalid_yaml(ctx: Ctx):
    path = ctx.tmp / "broken.yaml"
    path.write_text("model: [unclosed\n")
    return ["model-info", "--preset", str(path)], [path.name, "not valid YAML"]


def train_without_budget(ctx: Ctx):
    return (["train", "--data", str(ctx.world), "--out", str(ctx.tmp / "run")],
            ["[--minutes]"])


def train_on_a_missing_dataset(ctx: Ctx):
    return (["train", "--data", str(ctx.tmp / "no-world"), "--out", str(ctx.tmp / "run"),
             "--epochs", "1"], ["no-world", "[dataroot]"])


def bench_kernels_unknown_preset(ctx: Ctx):
    return ["bench-kernels", "--preset", "resnet-9000"], ["resnet-9000", "unknown preset"]


def demo_unknown_preset(ctx: Ctx):
    return (["demo", "--preset", "resnet-9000", "--out", str(ctx.tmp / "demo")],
            ["resnet-9000", "unknown preset"])


CASES = [
    Case("points-size-not-a-multiple-of-the-record", 3, truncated_points),
    Case("points-file-missing", 3, missing_points),
    Case("points-unknown-format", 3, unknown_point_format),
    Case("points-npy-that-needs-pickle", 3, npy_needing_pickle),
    Case("points-npy-complex-dtype", 3, npy_complex_dtype),
    Case("points-npy-3d", 3, npy_three_dimensional),
    Case("points-all-nan", 3, all_nan_points),
    Case("points-in-millimetres", 3, millimetre_points),
    Case("points-pcd-garbage-header", 3, garbage_pcd_header),
    Case("points-pcd-without-intensity", 3, pcd_without_intensity),
    Case("image-missing", 3, missing_image),
    Case("image-truncated-jpeg", 3, truncated_jpeg),
    Case("image-not-an-image", 3, text_as_image),
    Case("image-unreadable", 3, unreadable_image),
    Case("image-wrong-size-for-the-preset", 3, image_of_another_size),
    Case("images-fewer-than-the-cameras", 3, five_images_for_six_cameras),
    Case("images-fewer-unnamed-than-the-cameras", 3, five_unnamed_images_for_six_cameras),
    Case("calib-camera-missing", 3, calib_missing_camera),
    Case("calib-nan", 3, calib_nan),
    Case("calib-singular-intrinsics", 3, calib_singular_intrinsics),
    Case("calib-rotation-not-orthonormal", 3, calib_non_orthonormal),
    Case("calib-rotation-det-minus-one", 3, calib_reflection),
    Case("calib-yaml-alias-bomb", 3, calib_alias_bomb),
    Case("calib-file-missing", 3, calib_missing),
    Case("package-flipped-byte", 6, flipped_byte),
    Case("package-module-file-missing", 6, missing_module_file),
    Case("package-newer-format-version", 6, newer_format),
    Case("package-manifest-not-json", 6, manifest_not_json),
    Case("package-onnx-corrupt-hash-matching", 6, corrupt_onnx_with_matching_hash),
    Case("package-not-a-package", 6, not_a_package),
    Case("export-over-a-user-directory", 9, export_over_a_user_directory),
    Case("export-overwrite-a-user-directory", 6, export_overwrite_a_user_directory),
    Case("export-garbage-checkpoint", 7, garbage_checkpoint),
    Case("export-checkpoint-that-runs-code", 5, checkpoint_that_runs_code),
    Case("export-checkpoint-of-another-model", 7, checkpoint_of_another_model),
    Case("export-preset-yaml-unknown-field", 2, preset_with_unknown_field),
    Case("presets-show-yaml-that-runs-code", 5, preset_that_runs_code),
    Case("infer-neither-data-nor-files", 2, neither_data_nor_files),
    Case("infer-threads-beyond-the-machine", 2, threads_beyond_the_machine),
    Case("infer-unknown-on-error-policy", 2, unknown_on_error_policy),
    Case("infer-dataset-missing", 4, missing_dataset),
    Case("infer-unknown-split", 4, unknown_split),
    Case("eval-damaged-sample-stops", 3, eval_on_a_damaged_sample),
    Case("synth-too-many-scenes", 2, synth_too_many_scenes),
    Case("synth-over-a-user-directory", 9, synth_over_a_user_directory),
    Case("synth-overwrite-a-user-directory", 4, synth_overwrite_a_user_directory),
    Case("synth-output-not-writable", 9, synth_under_a_file),
    Case("compare-unknown-precision", 2, compare_unknown_precision),
    Case("presets-show-a-directory", 2, presets_show_directory),
    Case("model-info-invalid-yaml", 2, model_info_invalid_yaml),
    Case("train-without-a-budget", 2, train_without_budget),
    Case("train-on-a-missing-dataset", 4, train_on_a_missing_dataset),
    Case("bench-kernels-unknown-preset", 2, bench_kernels_unknown_preset),
    Case("demo-unknown-preset", 2, demo_unknown_preset),
]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file (hidden ones included) and directory under ``root`` → content hash; an
    output's lock file (``.out.lock``, bevdeploy.io.OutputDir) stays by design and is skipped."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else
            hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if not (p.name.startswith(".") and p.name.endswith(".lock"))}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_with_its_code_names_the_culprit_and_writes_nothing(
        case: Case, tmp_path: Path, tiny_package: Path, frame_files: Path,
        synthetic_world: Path) -> None:
    ctx = Ctx(tmp_path, tiny_package, frame_files, synthetic_world)
    ctx.out.mkdir()
    (ctx.out / "previous.json").write_text('{"from": "the previous run"}')
    args, culprits = case.build(ctx)
    if args[0] in ("infer", "eval"):  # replacing is allowed, so the failure itself is tested:
        args = [*args, "--overwrite"]  # the previous output must survive it
    before = _snapshot(tmp_path)

    result = CliRunner().invoke(app, args, catch_exceptions=False)

    output = result.output
    assert result.exit_code == case.code, output
    assert "Traceback" not in output
    for culprit in culprits:
        assert culprit in output, f"{culprit!r} not named in:\n{output}"
    if case.code != 2 or "error (" in output:  # typer's own usage errors are a framed box
        error_lines = [line for line in output.splitlines() if line.startswith("error (")]
        assert len(error_lines) == 1, output
        assert all(c in error_lines[0] for c in culprits), error_lines[0]
    assert _snapshot(tmp_path) == before  # nothing written, nothing half-written, no leftovers
