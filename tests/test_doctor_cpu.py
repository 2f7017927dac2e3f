"""``doctor`` names the CPU, its usable cores and the instruction sets that decide INT8 and BF16
speed, and says what they imply (bevdeploy.doctor.cpu_checks)."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from bevdeploy import doctor
from bevdeploy.bench import measure
from bevdeploy.cli import app


def test_doctor_shows_this_cpu() -> None:
    result = CliRunner().invoke(app, ["doctor"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    cpu = measure.cpu_identity()
    rows = {c.name: c for c in doctor.cpu_checks()}
    assert f"{len(os.sched_getaffinity(0))} of {os.cpu_count()} cores usable" in rows["cpu"].detail
    assert rows["cpu isa"].detail.split() == cpu["isa"] or not cpu["isa"]
    has_vnni = bool(set(cpu["isa"]) & {"avx512vnni", "avxvnni", "amx-int8"})
    assert rows["int8 on this cpu"].ok == has_vnni
    for name in ("cpu", "cpu isa", "int8 on this cpu", "bf16 on this cpu"):
        assert name in result.output


@pytest.mark.parametrize("isa, int8_ok, says", [
    (["avx2", "fma"], False, "INT8 may be no faster than FP32"),
    (["avx2", "fma", "avx512f", "avx512vnni"], True, "VNNI"),
    (["avx2", "fma", "avx512f", "avx512vnni", "avx512bf16", "amx-int8"], True, "AMX"),
])
def test_int8_implication_follows_the_isa(monkeypatch, isa, int8_ok, says) -> None:
    monkeypatch.setattr(measure, "cpu_identity",
                        lambda: {"model": "Test CPU", "microarchitecture": "test", "isa": isa})
    rows = {c.name: c for c in doctor.cpu_checks()}
    assert rows["int8 on this cpu"].ok is int8_ok and says in rows["int8 on this cpu"].detail
    assert rows["cpu isa"].detail == " ".join(isa)
    assert rows["bf16 on this cpu"].ok is ("avx512bf16" in isa)
