"""Hostile inputs, round two: bombs refused before they allocate (each run as a real
``bevdeploy`` child process whose peak RSS and wall time are measured with ``os.wait4``),
manifest numbers bounded by the memory they imply, packages that cannot reach outside
themselves, and outputs with one writer that are replaced whole.

Every CLI case asserts the exit code, exactly one ``error (`` line naming the culprit, and no
traceback. Inputs are private copies; the shared fixtures stay intact.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from bevdeploy.cli import app
from bevdeploy.package import MANIFEST_NAME, runtime_parameters, sha256_file
from bevdeploy.presets import Preset

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
           "CAM_BACK_RIGHT")
MAX_RSS_MB = 500
MAX_WALL_S = 10.0


# Runs the command given after it and, at exit, copies /proc/self/status (VmHWM: the peak RSS of
# this process image, reset by exec; ``wait4``'s ru_maxrss would include the forking pytest's).
_MEASURED = """
import atexit, runpy, sys
status = sys.argv.pop(1)
def record():
    with open('/proc/self/status') as src, open(status, 'w') as dst:
        dst.write(src.read())
atexit.register(record)
kind, target = sys.argv[1], sys.argv[2]
sys.argv = [target, *sys.argv[3:]]
if kind == '-m':
    runpy.run_module(target, run_name='__main__', alter_sys=True)
else:
    exec(compile(target, '<child>', 'exec'), {'__name__': '__main__'})
"""


def _child(args: list[str], tmp: Path) -> tuple[int, str, float, float]:
    """Run ``args`` (``-m module ...`` or ``-c code``) in a fresh Python; (exit code, stderr +
    stdout, peak RSS MB of that process, wall s)."""
    status = tmp / "child.status"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURED, str(status), *args],
                          capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t0
    peak_kb = next(int(line.split()[1]) for line in status.read_text().splitlines()
                   if line.startswith("VmHWM:"))
    return proc.returncode, proc.stderr + proc.stdout, peak_kb / 1024, wall


def _cli(*args: str) -> list[str]:
    return ["-m", "bevdeploy.cli", *args]


def _assert_refused(code: int, output: str, want: int, *culprits: str) -> None:
    assert code == want, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error (")]
    assert len(errors) == 1, output
    for culprit in culprits:
        assert culprit in errors[0], errors[0]
    assert len(errors[0]) < 1000  # values are quoted in short excerpts


def _assert_bounded(rss_mb: float, wall_s: float) -> None:
    assert rss_mb < MAX_RSS_MB, f"peak RSS {rss_mb:.0f} MB"
    assert wall_s < MAX_WALL_S, f"wall {wall_s:.1f} s"


def _infer_files(frame_files: Path, tmp: Path, **replace: Path) -> list[str]:
    src = Path(shutil.copytree(frame_files, tmp / "in"))
    images = [str(replace.get(c, src / f"{c}.jpg")) for c in CAMERAS]
    return ["infer", "--package", "{pkg}", "--out", str(tmp / "out"),
            "--pcd", str(replace.get("pcd", src / "points.pcd.bin")),
            "--calib", str(replace.get("calib", src / "rig.yaml")), "--images", *images]


def _billion_laughs(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- bombs


@pytest.mark.parametrize("field", ["classes", "checkpoint"])
def test_preset_alias_bomb_is_refused_in_bounded_memory(tmp_path, field):
    """2.7 KB of aliases standing for 9⁹ strings in ``classes`` or ``checkpoint``."""
    path = tmp_path / "bomb.yaml"
    path.write_text(f"{_billion_laughs()}\n{field}: *l8\n")
    code, output, rss, wall = _child(_cli("presets", "show", str(path)), tmp_path)
    _assert_refused(code, output, 2, "bomb.yaml", "100,000 values, aliases expanded")
    _assert_bounded(rss, wall)


def test_calibration_with_a_million_cameras_is_refused_by_its_size(frame_files, tiny_package,
                                                                   tmp_path):
    rig = tmp_path / "huge.yaml"
    camera = "{intrinsics: [[1,0,0],[0,1,0],[0,0,1]], camera2lidar: [[1,0,0,0],[0,1,0,0]]}"
    with rig.open("w") as f:
        f.write("cameras:\n")
        for i in range(60_000):  # 6 MB: past the bound without writing the attacker's 437 MB
            f.write(f"  CAM_{i}: {camera}\n")
    args = [a.replace("{pkg}", str(tiny_package)) for a in
            _infer_files(frame_files, tmp_path, calib=rig)]
    code, output, rss, wall = _child(_cli(*args), tmp_path)
    _assert_refused(code, output, 3, "huge.yaml", "[file]", "larger than 4 MiB")
    _assert_bounded(rss, wall)


def _png_header_bomb(path: Path, side: int) -> None:
    """A valid PNG of ``side``×``side`` black RGB pixels, compressed as it streams (164 KB for
    13000²), never held in memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * side)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8,
                                                                         2, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_six_decompression_bombs_are_refused_from_their_headers(frame_files, tiny_package,
                                                                tmp_path):
    bombs = {}
    for camera in CAMERAS:
        bombs[camera] = tmp_path / f"{camera}.png"
        if camera == CAMERAS[0]:
            _png_header_bomb(bombs[camera], 13000)
        else:
            shutil.copy(bombs[CAMERAS[0]], bombs[camera])
    assert bombs[CAMERAS[0]].stat().st_size < 600_000
    args = [a.replace("{pkg}", str(tiny_package)) for a in
            _infer_files(frame_files, tmp_path, **bombs)]
    code, output, rss, wall = _child(_cli(*args), tmp_path)
    _assert_refused(code, output, 3, "CAM_FRONT.png", "[CAM_FRONT]", "13000×13000")
    _assert_bounded(rss, wall)


def test_info_pickle_with_shared_references_is_refused_before_arrays(tmp_path):
    """1.5 KB whose ``gt_names`` nest one list nine levels deep: the library refuses it with a
    DatasetError (no command reads info files yet, so the child calls ``load_infos``)."""
    names: list = ["car"] * 10
    for _ in range(8):
        names = [names] * 10
    path = tmp_path / "infos.pkl"
    path.write_bytes(pickle.dumps({"infos": [{"gt_names": names}], "metadata": {}}, protocol=4))
    assert path.stat().st_size < 2000
    script = ("from bevdeploy.data.infos import load_infos\n"
              "from bevdeploy.errors import DatasetError\n"
              "try:\n    load_infos(%r)\n"
              "except DatasetError as exc:\n    print('error (DatasetError):', exc)\n"
              "    raise SystemExit(exc.exit_code)\n" % str(path))
    code, output, rss, wall = _child(["-c", script], tmp_path)
    _assert_refused(code, output, 4, "infos.pkl", "[file]", "referenced over and over")
    _assert_bounded(rss, wall)


def _package(tiny_package: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(tiny_package, tmp / "pkg"))


def _edit_manifest(pkg: Path, edit) -> None:
    manifest = json.loads((pkg / MANIFEST_NAME).read_text())
    edit(manifest)
    (pkg / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_manifest_with_a_million_camera_names_is_refused_by_its_size(tiny_package, tmp_path):
    pkg = _package(tiny_package, tmp_path)
    _edit_manifest(pkg, lambda m: m["preset"]["cameras"].update(
        names=[f"CAM_{i}" for i in range(10**6)]))
    code, output, rss, wall = _child(_cli("inspect", str(pkg)), tmp_path)
    _assert_refused(code, output, 6, MANIFEST_NAME, "larger than 4 MiB")
    _assert_bounded(rss, wall)


def test_manifest_with_thousands_of_cameras_is_refused_by_count(tiny_package, tmp_path):
    pkg = _package(tiny_package, tmp_path)
    _edit_manifest(pkg, lambda m: m["preset"]["cameras"].update(
        names=[f"CAM_{i}" for i in range(5000)]))
    code, output, rss, wall = _child(_cli("inspect", str(pkg)), tmp_path)
    _assert_refused(code, output, 6, "[preset.cameras.names]", "5,000 entries", "at most 64")
    _assert_bounded(rss, wall)


@pytest.mark.parametrize("section, key, value, field", [
    ("voxel", "max_voxels", 10**12, "preset.voxel.max_voxels"),
    ("points", "max_points", 10**15, "preset.points.max_points"),
    ("head", "num_proposals", 10**9, "preset.model.head.num_proposals"),
])
def test_manifest_numbers_beyond_the_memory_budget_are_refused(tiny_package, tmp_path, section,
                                                               key, value, field):
    """The field and the derived blocks changed together (a careful attacker): only the
    memory bound can refuse it."""
    pkg = _package(tiny_package, tmp_path)

    def edit(m: dict) -> None:
        part = m["preset"]["model"]["head"] if section == "head" else m["preset"][section]
        part[key] = value
        m.update(json.loads(json.dumps(runtime_parameters(Preset.from_dict(m["preset"])))))
    _edit_manifest(pkg, edit)
    result = CliRunner().invoke(app, ["inspect", str(pkg)], catch_exceptions=False)
    _assert_refused(result.exit_code, result.output, 6, f"[{field}]", "GiB budget")


def test_pcd_declaring_more_points_than_it_holds_is_refused(frame_files, tiny_package, tmp_path):
    pcd = tmp_path / "lie.pcd"
    header = ("# .PCD v0.7\nVERSION 0.7\nFIELDS x y z intensity\nSIZE 4 4 4 4\nTYPE F F F F\n"
              "COUNT 1 1 1 1\nWIDTH 580000000000000000\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\n"
              "POINTS 580000000000000000\nDATA binary\n")
    pcd.write_bytes(header.encode() + struct.pack("<4f", 1.0, 2.0, 0.5, 10.0))
    args = [a.replace("{pkg}", str(tiny_package)) for a in
            _infer_files(frame_files, tmp_path, pcd=pcd)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    _assert_refused(result.exit_code, result.output, 3, "lie.pcd", "[points]",
                    "580,000,000,000,000,000 points")


# ---------------------------------------------------------------------------- closed packages


def _rehash(pkg: Path, module: str, path: Path) -> None:
    _edit_manifest(pkg, lambda m: m["modules"][module].update(sha256=sha256_file(path),
                                                              size=path.stat().st_size))


def test_a_module_file_that_is_a_symlink_is_refused(tiny_package, tmp_path):
    pkg = _package(tiny_package, tmp_path)
    outside = tmp_path / "outside.onnx"
    shutil.move(pkg / "fuser.onnx", outside)
    (pkg / "fuser.onnx").symlink_to(outside)
    _rehash(pkg, "fuser", outside)  # the hash matches: only the link gives it away
    result = CliRunner().invoke(app, ["inspect", str(pkg)], catch_exceptions=False)
    _assert_refused(result.exit_code, result.output, 6, "fuser.onnx", "[modules.fuser.file]",
                    "symbolic link")


def test_a_module_file_hard_linked_elsewhere_is_refused(tiny_package, tmp_path):
    pkg = _package(tiny_package, tmp_path)
    os.link(pkg / "fuser.onnx", tmp_path / "elsewhere.onnx")
    result = CliRunner().invoke(app, ["inspect", str(pkg)], catch_exceptions=False)
    _assert_refused(result.exit_code, result.output, 6, "fuser.onnx", "hard-linked 2 times")


def test_a_module_that_is_a_fifo_is_refused_without_blocking(tiny_package, tmp_path):
    pkg = _package(tiny_package, tmp_path)
    (pkg / "fuser.onnx").unlink()
    os.mkfifo(pkg / "fuser.onnx")
    result = CliRunner().invoke(app, ["inspect", str(pkg)], catch_exceptions=False)
    _assert_refused(result.exit_code, result.output, 6, "fuser.onnx", "not a regular file")


@pytest.mark.parametrize("module", ["lidar.backbone", "fuser"])
def test_external_data_outside_the_package_is_a_package_error(tiny_package, frame_files,
                                                              tmp_path, module):
    """The SCN file (once exit 70) and a dense graph alike: exit 6, before any runtime opens
    the file."""
    pkg = _package(tiny_package, tmp_path)
    path = pkg / json.loads((pkg / MANIFEST_NAME).read_text())["modules"][module]["file"]
    model = onnx.load(str(path))
    tensor = next(t for t in model.graph.initializer if t.raw_data)
    (tmp_path / "outside.bin").write_bytes(tensor.raw_data)
    length = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for k, v in {"location": "../outside.bin", "offset": "0", "length": str(length)}.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))
    _rehash(pkg, module, path)
    args = [a.replace("{pkg}", str(pkg)) for a in _infer_files(frame_files, tmp_path)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    _assert_refused(result.exit_code, result.output, 6, path.name, f"[modules.{module}.file]",
                    "outside the package", "../outside.bin")


# ---------------------------------------------------------------------------------- outputs


def test_a_second_infer_on_the_same_out_is_refused_and_sigterm_keeps_the_finished_frames(
        tiny_package, synthetic_world, tmp_path):
    """Run A writes ``out``; run B on the same ``--out`` is refused with the lock holder named
    while A runs; then SIGTERM ends A like Ctrl-C: exit 143, one line, detections.json holding
    exactly the frames that finished, marked terminated."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bevdeploy.cli", "infer", "--package", str(tiny_package),
         "--data", str(synthetic_world), "--split", "all", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if " done in " in line:
                break
        assert any(" done in " in line for line in seen), "".join(seen)
        second = CliRunner().invoke(app, ["infer", "--package", str(tiny_package), "--data",
                                          str(synthetic_world), "--split", "mini_val", "--out",
                                          str(out), "--overwrite"], catch_exceptions=False)
        _assert_refused(second.exit_code, second.output, 9, "[--out]",
                        "another process is writing", f"pid {proc.pid}")
        proc.terminate()  # SIGTERM
        t0 = time.perf_counter()
        stdout, stderr = proc.communicate(timeout=30)
        exit_s = time.perf_counter() - t0
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert exit_s < 10.0
    assert "Traceback" not in stderr + stdout
    assert [line for line in stderr.splitlines() if line.startswith("terminated")] == [
        "terminated: SIGTERM"]
    written = json.loads((out / "detections.json").read_text())
    run = written["run"]
    assert run["status"] == "terminated" and 1 <= run["frames_done"] < run["frames_total"]
    assert len(written["frames"]) == run["frames_done"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_an_existing_out_is_refused_without_overwrite_and_replaced_whole_with_it(
        tiny_package, frame_files, tmp_path):
    args = [a.replace("{pkg}", str(tiny_package)) for a in _infer_files(frame_files, tmp_path)]
    out = tmp_path / "out"
    first = CliRunner().invoke(app, [*args, "--render"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    pictures = sorted((out / "render").iterdir())
    assert pictures
    again = CliRunner().invoke(app, args, catch_exceptions=False)
    _assert_refused(again.exit_code, again.output, 9, "[--out]", "already exists",
                    "--overwrite")
    assert sorted((out / "render").iterdir()) == pictures  # the refused run changed nothing
    replaced = CliRunner().invoke(app, [*args, "--overwrite"], catch_exceptions=False)
    assert replaced.exit_code == 0, replaced.output
    assert not (out / "render").exists()  # no stale picture of the first run
    assert json.loads((out / "detections.json").read_text())["run"]["status"] == "complete"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == [
        ".out.lock"]
