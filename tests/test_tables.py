"""Every table of compare, inspect, optimize and bench fits an 80-column terminal (COLUMNS=80)
and stays readable there: full stage and module names, whole numbers, notes below the table
(bevdeploy.tables); --wide prints the full tables unfolded."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from bevdeploy.bench import BenchReport, FrameSource, Variant, VariantResult
from bevdeploy.eval.compare import STAGES
from bevdeploy.presets import get_preset
from bevdeploy.tables import print_report
from bevdeploy.vocabulary import DENSE_MODULES, MODULE_FILES

WIDTH = 80


def _cli(*args: str) -> str:
    """Run ``bevdeploy ARGS`` as a user would, in a terminal of WIDTH columns; its stdout."""
    env = {**os.environ, "COLUMNS": str(WIDTH), "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-m", "bevdeploy.cli", *args], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _assert_fits(text: str) -> None:
    long = [line for line in text.splitlines() if len(line) > WIDTH]
    assert not long, "\n".join(long)
    assert not re.search(r"…[\s│┃]", text)  # no cell cut short to fit (rich's ellipsis)


def test_inspect_fits_80_columns_and_wide_shows_everything(trained_tiny_package: Path) -> None:
    text = _cli("inspect", str(trained_tiny_package))
    _assert_fits(text)
    for name in MODULE_FILES:
        assert f"\n{name} " in text  # each module row, its name whole
    assert "1×6×3×128×256" in text and "cam.bb = camera.backbone" in text
    wide = _cli("inspect", str(trained_tiny_package), "--wide")
    assert max(len(line) for line in wide.splitlines()) > WIDTH
    assert "camera.backbone.onnx" in wide  # the file column, left out of the narrow table


def test_compare_fits_80_columns(trained_tiny_package: Path, synthetic_world: Path) -> None:
    checkpoint = get_preset("tiny").checkpoint_path
    text = _cli("compare", "--package", str(trained_tiny_package), "--data",
                str(synthetic_world), "--frames", "1", "--checkpoint", str(checkpoint))
    _assert_fits(text)
    for stage in STAGES:
        assert f"\n{stage.name} " in text
    assert "PASS" in text and "\n[1] " in text  # the notes, numbered below the table


def test_optimize_fits_80_columns(trained_tiny_package: Path, tmp_path: Path) -> None:
    text = _cli("optimize", str(trained_tiny_package), "--out", str(tmp_path / "fp16"),
                "--fp16")
    _assert_fits(text)
    for module in DENSE_MODULES:
        assert f"\n{module} " in text and "fp32→fp16" in text
    assert re.search(r"\n\[\d\] kept FP32: run by bevdeploy's sparse-conv executor", text)


def _result(variant: Variant, totals: list[float]) -> VariantResult:
    stages = {"voxelize": 0.05, "scn": 0.3, "camera.backbone": 0.2, "bevpool": 0.02,
              "fuser": 0.2, "head.bbox": 0.1, "decode": 0.01}
    samples = {k: [t * f for t in totals] for k, f in stages.items()}
    return VariantResult(variant=variant, precision="int8" if "int8" in variant.label else "fp32",
                         weights="tiny.pth", samples={**samples, "total": totals},
                         wall_s=sum(totals) / 1000, frames=len(totals),
                         distinct_frames=len(totals), peak_rss_mb=1234.0, baseline_rss_mb=300.0,
                         geometry_computed=1)


def test_bench_tables_fit_80_columns() -> None:
    variants = [Variant("tiny · torch · eager", "tiny", "p", "torch", "eager", 2),
                Variant("tiny · onnxruntime · sequential", "tiny", "p", "onnxruntime",
                        "sequential", 2),
                Variant("tiny [pkg-int8] · onnxruntime · branches", "tiny", "q", "onnxruntime",
                        "branches", 2)]
    report = BenchReport(results=[_result(v, [t, t * 1.1, t * 0.9]) for v, t in
                                  zip(variants, (1400.0, 310.0, 250.0))],
                         source=FrameSource("/data/a-long-dataset-directory-name"), frames=3,
                         warmup=1, threads=2, gemm_gflops=120.0,
                         dense_macs={"tiny": dict.fromkeys(DENSE_MODULES, 2 * 10**9)})
    out = io.StringIO()
    console = Console(file=out, width=WIDTH, color_system=None)
    for table in report.narrow_tables():
        print_report(console, table)
    text = out.getvalue()
    _assert_fits(text)
    for stage in ("camera.backbone", "head.bbox", "total", "frames/s", "peak RSS MB"):
        assert f"\n{stage} " in text
    assert "4.5×" in text and "5.6×" in text  # 1400 / 310 and 1400 / 250 on the total
    assert "80 (67%)" in text  # fuser: 2 × 2 GMAC in 0.2 × 250 ms = 80 GFLOP/s of 120
