"""One output-directory rule for every command that writes a directory (``bevdeploy.io``'s
``OutputDir`` through ``cli._app.claim_output``): a second writer is refused naming the lock's
holder, an existing non-empty output is refused unless ``--overwrite`` (the message names the
flag, never a Python argument), and ``--overwrite`` replaces it whole: no stale file of an
earlier run survives and no staging directory is left behind.

One test per command family (synth, the package commands, compare and train, demo), the lock
for each, and the path ``eval`` records in metrics.json.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bevdeploy.cli import app
from bevdeploy.package import load_package
from bevdeploy.presets import get_preset

SPLIT = "mini_val"
TINY_WORLD = ["--scenes", "1", "--samples", "2", "--density", "0.05"]


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args, catch_exceptions=False)


def _assert_refused(result, code: int, *culprits: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error (")]
    assert len(errors) == 1, result.output
    for culprit in culprits:
        assert culprit in errors[0], errors[0]
    assert "overwrite=" not in result.output  # a CLI flag is named, not a Python argument


def _occupied(out: Path) -> Path:
    """``out`` as an earlier run left it, with a file no new run writes."""
    out.mkdir(parents=True, exist_ok=True)
    stale = out / "stale.txt"
    stale.write_text("from an earlier run")
    return stale


def _leftovers(parent: Path) -> list[str]:
    """Staging or set-aside directories beside the outputs (the lock files stay by design)."""
    return sorted(p.name for p in parent.iterdir()
                  if p.name.endswith((".partial", ".old")))


# ---------------------------------------------------------------------------------- the lock


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """``tmp_path/out`` locked by another process (``io.OutputLock`` in a child): (out, pid)."""
    out = tmp_path / "out"
    code = ("import sys, time\nfrom bevdeploy.io import OutputLock\n"
            "lock = OutputLock(sys.argv[1])\nprint('locked', flush=True)\ntime.sleep(120)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        yield out, child.pid
    finally:
        child.kill()
        child.wait()


LOCKED_COMMANDS = {
    "synth": lambda ctx: ["synth", "--out", "{out}", *TINY_WORLD],
    "export": lambda ctx: ["export", "--out", "{out}"],
    "optimize": lambda ctx: ["optimize", ctx["package"], "--out", "{out}", "--simplify"],
    "build": lambda ctx: ["build", ctx["package"], "--precision", "fp16", "--out", "{out}"],
    "train": lambda ctx: ["train", "--data", ctx["world"], "--out", "{out}", "--epochs", "1"],
    "compare": lambda ctx: ["compare", "--package", ctx["package"], "--data", ctx["world"],
                            "--save", "{out}"],
    "demo": lambda ctx: ["demo", "--out", "{out}"],
}


@pytest.mark.parametrize("command", sorted(LOCKED_COMMANDS))
def test_a_second_writer_of_the_same_output_is_refused_naming_the_holder(
        command, held, tiny_package, synthetic_world):
    out, pid = held
    ctx = {"package": str(tiny_package), "world": str(synthetic_world)}
    args = [a.replace("{out}", str(out)) for a in LOCKED_COMMANDS[command](ctx)]
    flag = "--save" if command == "compare" else "--out"
    result = _invoke([*args, *(["--overwrite"] if command != "demo" else [])])
    _assert_refused(result, 9, f"[{flag}]", "another process is writing", f"pid {pid}")
    assert not out.exists() and _leftovers(out.parent) == []


# ---------------------------------------------------------------------------------- synth


def test_synth_refuses_an_existing_world_without_overwrite_and_replaces_it_whole(tmp_path):
    out = tmp_path / "world"
    assert _invoke(["synth", "--out", str(out), *TINY_WORLD]).exit_code == 0
    stale = _occupied(out)
    tables = sorted(p.name for p in (out / "v1.0-mini").iterdir())

    again = _invoke(["synth", "--out", str(out), *TINY_WORLD])
    _assert_refused(again, 9, str(out), "[--out]", "already exists; pass --overwrite")
    assert stale.exists()

    replaced = _invoke(["synth", "--out", str(out), *TINY_WORLD, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert not stale.exists()  # replaced whole, not written over
    assert sorted(p.name for p in (out / "v1.0-mini").iterdir()) == tables
    assert (out / "bevdeploy_synth.json").is_file()
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------- packages


@pytest.mark.parametrize("command", ["export", "optimize", "build"])
def test_package_commands_refuse_an_existing_out_without_overwrite(command, tiny_package,
                                                                   tmp_path):
    out = Path(shutil.copytree(tiny_package, tmp_path / "previous"))  # a previous package
    stale = _occupied(out)
    before = sorted(p.name for p in out.iterdir())
    args = {"export": ["export", "--out", str(out)],
            "optimize": ["optimize", str(tiny_package), "--out", str(out), "--simplify"],
            "build": ["build", str(tiny_package), "--precision", "fp16", "--out", str(out)]}
    result = _invoke(args[command])
    _assert_refused(result, 9, "previous", "[--out]", "already exists; pass --overwrite")
    assert sorted(p.name for p in out.iterdir()) == before and stale.exists()
    assert _leftovers(tmp_path) == []


def test_optimize_overwrite_replaces_a_previous_package_whole(tiny_package, tmp_path):
    out = Path(shutil.copytree(tiny_package, tmp_path / "previous"))
    stale = _occupied(out)
    result = _invoke(["optimize", str(tiny_package), "--out", str(out), "--simplify",
                      "--overwrite"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output.replace("\n", "")
    assert not stale.exists()
    assert load_package(out).manifest.modules  # verified: every hash of the new package
    assert _leftovers(tmp_path) == []


def test_optimize_refuses_its_own_source_as_out(tiny_package, tmp_path):
    src = Path(shutil.copytree(tiny_package, tmp_path / "pkg"))
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    result = _invoke(["optimize", str(src), "--out", str(src), "--simplify", "--overwrite"])
    _assert_refused(result, 2, "[--out]", "is the source package")
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


# ---------------------------------------------------------------------------------- evidence


def test_compare_save_is_refused_without_overwrite_and_replaced_whole(
        tiny_package, synthetic_world, tmp_path):
    save, report = tmp_path / "tensors", tmp_path / "report.json"
    stale = _occupied(save)
    args = ["compare", "--package", str(tiny_package), "--data", str(synthetic_world),
            "--checkpoint", str(get_preset("tiny").checkpoint_path), "--frames", "1",
            "--save", str(save), "--json", str(report)]
    _assert_refused(_invoke(args), 9, "tensors", "[--save]", "pass --overwrite")
    assert stale.exists() and not report.exists()

    result = _invoke([*args, "--overwrite"])
    assert result.exit_code in (0, 1), result.output  # passed or failed, the tensors are kept
    assert sorted(p.name for p in save.iterdir()) == ["frame_0000.npz"]
    saved = json.loads(report.read_text())["saved"]
    assert saved == [str(save.resolve() / "frame_0000.npz")]  # where the file lies now
    with np.load(saved[0]) as arrays:
        assert "boxes.deployed" in arrays.files
    assert _leftovers(tmp_path) == []


def test_train_is_refused_without_overwrite_and_replaced_whole_with_it(synthetic_world,
                                                                       tmp_path):
    out = tmp_path / "run"
    stale = _occupied(out)
    args = ["train", "--data", str(synthetic_world), "--out", str(out), "--epochs", "1"]
    _assert_refused(_invoke(args), 9, "run", "[--out]", "pass --overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["stale.txt"]

    result = _invoke([*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert f"checkpoint {out.resolve() / 'checkpoint.pth'}" in result.output.replace("\n", "")
    assert not stale.exists()
    assert {"checkpoint.pth", "train_log.jsonl", "train_config.json"} <= {
        p.name for p in out.iterdir()}
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------- demo


def test_demo_reuses_its_world_and_package_and_replaces_its_pictures_whole(
        tiny_package, synthetic_world, tmp_path):
    """The working directory is reused (no --overwrite needed), but render/ and eval/ are
    this run's alone: a picture of an earlier run does not survive."""
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "package").symlink_to(tiny_package, target_is_directory=True)
    (demo / "world").symlink_to(synthetic_world, target_is_directory=True)
    stale_picture = _occupied(demo / "render").with_name("frame_old_bev.png")
    stale_picture.write_bytes(b"an earlier run's picture")
    stale_metrics = _occupied(demo / "eval")

    result = _invoke(["demo", "--out", str(demo), "--frames", "1"])
    assert result.exit_code == 0, result.output
    assert "reusing the deploy package" in result.output
    pictures = sorted(p.name for p in (demo / "render").iterdir())
    assert pictures and all(p.endswith(".png") for p in pictures)
    assert "frame_old_bev.png" not in pictures and not stale_metrics.exists()
    metrics = json.loads((demo / "eval" / "metrics.json").read_text())
    assert metrics["submission"] == str(demo.resolve() / "eval" / "results_nusc.json")
    assert _leftovers(demo) == [] and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------- eval


def test_eval_records_the_submission_where_it_ends_up(tiny_package, synthetic_world, tmp_path):
    out = tmp_path / "eval"
    result = _invoke(["eval", "--package", str(tiny_package), "--data", str(synthetic_world),
                      "--split", SPLIT, "--limit", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    recorded = Path(json.loads((out / "metrics.json").read_text())["submission"])
    assert recorded == out.resolve() / "results_nusc.json"
    assert ".partial" not in str(recorded) and recorded.is_file()
