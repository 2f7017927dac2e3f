"""The CLI's error policy itself: one documented exit code per error class, one line per error
(printed verbatim, whatever brackets the path holds), exit 70 for a bug with the traceback
under ``--debug``, exit 130 for Ctrl-C outside a frame loop."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import bevdeploy.presets
from bevdeploy.cli import app
from bevdeploy.errors import (EXIT_CODE_HELP, EXIT_CODES, INTERNAL_EXIT, INTERRUPTED_EXIT,
                              PARTIAL_EXIT, BevDeployError, InputError)

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_exit_code_is_documented_in_help_and_readme():
    codes = sorted({*EXIT_CODES.values(), PARTIAL_EXIT, INTERNAL_EXIT, INTERRUPTED_EXIT})
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)  # one code per class
    help_text = CliRunner().invoke(app, ["--help"]).output
    readme = README.read_text()
    for code in codes:
        assert re.search(rf"\b{code} ", EXIT_CODE_HELP), code
        assert f"| {code} |" in readme, f"exit code {code} missing from the README table"
    assert "Exit codes:" in help_text and "130 interrupted" in " ".join(help_text.split())


def test_an_error_message_is_printed_verbatim_in_one_line(tmp_path):
    weird = tmp_path / "rig [/x] [bold].yaml"  # rich would read these as markup
    result = CliRunner().invoke(app, ["presets", "show", str(weird)], catch_exceptions=False)
    assert result.exit_code == 2
    assert result.output.strip() == f"error (ConfigError): {weird}: file not found"


def _explode(*args, **kwargs):
    raise ZeroDivisionError("a bug")


def test_a_bug_exits_70_in_one_line_and_shows_its_traceback_under_debug(monkeypatch):
    monkeypatch.setattr(bevdeploy.presets, "get_preset", _explode)
    result = CliRunner().invoke(app, ["presets", "show", "tiny"], catch_exceptions=False)
    assert result.exit_code == INTERNAL_EXIT
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("internal error (ZeroDivisionError): a bug")
    assert "--debug" in lines[0]

    result = CliRunner().invoke(app, ["--debug", "presets", "show", "tiny"])
    assert isinstance(result.exception, ZeroDivisionError)  # raised through, with traceback


def test_notes_added_on_the_way_up_stay_on_the_error_line(monkeypatch):
    """``Pipeline.run_stream`` names the failing frame in a note; the CLI must print it."""
    def bad_frame(*args, **kwargs):
        error = InputError("3 floats per point, expected 5", path="s.pcd.bin", field="points")
        error.add_note("while processing frame 7 of the stream (s.pcd.bin)")
        raise error

    monkeypatch.setattr(bevdeploy.presets, "get_preset", bad_frame)
    result = CliRunner().invoke(app, ["presets", "show", "tiny"], catch_exceptions=False)
    assert result.exit_code == InputError.exit_code
    assert result.output.strip() == ("error (InputError): s.pcd.bin [points]: 3 floats per point, "
                                     "expected 5 (while processing frame 7 of the stream "
                                     "(s.pcd.bin))")


def test_ctrl_c_outside_a_frame_loop_exits_130_in_one_line(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bevdeploy.presets, "get_preset", interrupted)
    result = CliRunner().invoke(app, ["presets", "show", "tiny"], catch_exceptions=False)
    assert result.exit_code == INTERRUPTED_EXIT
    assert result.output.strip() == "interrupted: Ctrl-C"


@pytest.mark.parametrize("cls", sorted(EXIT_CODES, key=lambda c: c.exit_code))
def test_each_class_names_file_and_field(cls: type[BevDeployError]):
    err = cls("expected 3 columns", path="/data/x.bin", field="columns")
    assert str(err) == "/data/x.bin [columns]: expected 3 columns"
    assert EXIT_CODES[cls] == cls.exit_code
