"""Outputs appear whole or not at all: an export killed or starved of disk leaves the previous
package loadable and byte-identical with no staging directory; ``bevdeploy.io`` turns an
operating-system failure into an ``OutputError`` and leaves no temporary file."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bevdeploy.cli import app
from bevdeploy.errors import INTERRUPTED_EXIT, OutputError
from bevdeploy.export import writer
from bevdeploy.io import atomic_file, atomic_write, output_dir, staged_dir
from bevdeploy.package import load_package


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("failure, code, words", [
    (KeyboardInterrupt(), INTERRUPTED_EXIT, ["interrupted", "Ctrl-C"]),
    (OSError(errno.ENOSPC, "No space left on device"), OutputError.exit_code,
     ["[output]", "No space left on device"]),
], ids=["ctrl-c", "disk-full"])
def test_an_export_that_dies_midway_leaves_the_previous_package(tiny_package, tmp_path,
                                                                monkeypatch, failure, code,
                                                                words):
    pkg = Path(shutil.copytree(tiny_package, tmp_path / "pkg"))
    before = _tree(pkg)
    targets = []

    def dies_writing(graph, path, **kwargs):
        path.write_bytes(b"half a module")
        targets.append(path)
        raise failure

    monkeypatch.setattr(writer, "export_graph", dies_writing)
    result = CliRunner().invoke(app, ["export", "--out", str(pkg), "--overwrite"],
                                catch_exceptions=False)

    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert all(w in result.output for w in words), result.output
    assert targets and targets[0].parent != pkg  # the module was written to a staging dir...
    assert not targets[0].parent.exists()  # ...which is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pkg.lock", "pkg"]  # no staging,
    # no aside copy; the lock file stays by design (bevdeploy.io.OutputLock)
    assert _tree(pkg) == before
    load_package(pkg)


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = atomic_write(tmp_path / "result.json", b'{"v": 1}')
    with pytest.raises(OutputError) as err:
        with atomic_file(path) as handle:
            handle.write(b'{"v": 2, "trunc')
            raise OSError(errno.ENOSPC, "No space left on device")
    assert err.value.path == str(path) and err.value.field == "output"
    assert "No space left on device" in str(err.value)
    assert path.read_bytes() == b'{"v": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_staged_directory_appears_whole_or_leaves_the_previous_one(tmp_path):
    """``io.staged_dir`` (export, synth, the shipped-package copy): a full disk midway is one
    ``OutputError`` and any other error propagates; either way the previous directory stays
    byte-identical and no staging directory is left. A block that ends replaces it whole."""
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "old.onnx").write_bytes(b"previous")
    with pytest.raises(OutputError, match="cannot write the thing: .*No space left") as err:
        with staged_dir(out, cannot="cannot write the thing") as staging:
            (staging / "half.onnx").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert err.value.path == str(out) and err.value.field == "output"
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(out, cannot="cannot write the thing") as staging:
            (staging / "half.onnx").write_bytes(b"half")
            raise KeyboardInterrupt
    assert _tree(tmp_path) == {"pkg/old.onnx": b"previous"}
    with staged_dir(out, cannot="cannot write the thing") as staging:
        (staging / "new.onnx").write_bytes(b"new")
    assert _tree(tmp_path) == {"pkg/new.onnx": b"new"}


def test_an_output_path_that_cannot_be_written_names_the_blocker(tmp_path):
    folder = tmp_path / "detections.json"
    folder.mkdir()  # a directory where the file should go
    with pytest.raises(OutputError, match="cannot write") as err:
        atomic_write(folder, b"{}")
    assert err.value.path == str(folder)
    assert [p.name for p in tmp_path.iterdir()] == ["detections.json"]

    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    with pytest.raises(OutputError, match="blocker is a file, not a directory"):
        output_dir(blocker / "run")
    with pytest.raises(OutputError, match="blocker is a file, not a directory"):
        atomic_write(blocker / "run" / "x.json", b"{}")


def test_infer_into_a_file_exits_9_and_leaves_the_file(tiny_package, frame_files, tmp_path):
    out = tmp_path / "out"
    out.write_text("not a directory")
    names = load_package(tiny_package).preset.cameras.names
    result = CliRunner().invoke(app, [
        "infer", "--package", str(tiny_package), "--pcd", str(frame_files / "points.pcd.bin"),
        "--calib", str(frame_files / "rig.yaml"), "--out", str(out),
        "--images", *[str(frame_files / f"{n}.jpg") for n in names]], catch_exceptions=False)
    assert result.exit_code == OutputError.exit_code, result.output  # before any frame ran
    assert f"{out} is a file, not a directory" in result.output
    assert out.read_text() == "not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
