"""Every table of compare, inspect, optimize (and its --sensitivity ranking), bench,
bench-kernels, model-info, eval, doctor and presets list fits an 80-column terminal
(COLUMNS=80) and stays readable there: full stage and module names, whole numbers, notes below
the table (bevdeploy.tables); --wide prints the full tables unfolded; --json carries the same
figures."""

from __future__ import annotations

import io
import json
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


def test_optimize_int8_sensitivity_fits_80_columns_and_calibration_shows_progress(
        trained_tiny_package: Path, synthetic_world: Path, tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": str(WIDTH)}
    result = subprocess.run([sys.executable, "-m", "bevdeploy.cli", "optimize",
                             str(trained_tiny_package), "--out", str(tmp_path / "int8"),
                             "--int8", "--calib", str(synthetic_world), "--calib-frames", "2",
                             "--sensitivity"], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    _assert_fits(text)
    assert ".partial" not in text  # the table names the package, not its staging directory
    assert "INT8 sensitivity" in text and re.search(r"\n 1  (cam\.bb|fuser|head) +/", text)
    assert "cam.bb = camera.backbone" in text and "ranked by cosine" in text
    assert re.search(r"\n\[\d+\] camera\.backbone:/", text)  # an --exclude pattern, in a note
    frames = re.findall(r"INT8 calibration: frame (\d)/2 \(\w+\) in \d+ ms", result.stderr)
    assert frames == ["1", "2"], result.stderr  # one line per frame off a terminal


def test_model_info_fits_80_columns_and_json_has_the_same_figures(tmp_path: Path) -> None:
    out = tmp_path / "info.json"
    text = _cli("model-info", "--preset", "tiny", "--json", str(out))
    _assert_fits(text)
    doc = json.loads(out.read_text())
    assert doc["preset"] == "tiny"
    for row in doc["modules"]:
        assert f"\n{row['name']} " in text and f"{row['macs'] / 1e9:.3f}" in text
        if row["detail"]:
            assert row["detail"] in text.replace("\n", " ")  # a note below the table
    assert f"{doc['total']['params'] / 1e6:.3f}" in text


def test_doctor_fits_80_columns_and_json_has_the_same_checks(tmp_path: Path) -> None:
    out = tmp_path / "doctor.json"
    text = _cli("doctor", "--json", str(out))
    _assert_fits(text)
    checks = json.loads(out.read_text())["checks"]
    assert checks and all(set(c) == {"name", "ok", "detail"} for c in checks)
    for c in checks:
        assert f"\n{c['name']} " in text
    wide = _cli("doctor", "--wide")
    assert all(c["detail"] in wide for c in checks)  # every detail in its row


def test_presets_list_fits_80_columns() -> None:
    from bevdeploy.presets import list_presets

    text = _cli("presets", "list")
    _assert_fits(text)
    for name in list_presets():
        assert f"\n{name} " in text


def test_inspect_json_is_the_verified_manifest(trained_tiny_package: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "manifest.json"
    _assert_fits(_cli("inspect", str(trained_tiny_package), "--json", str(out)))
    assert json.loads(out.read_text()) == json.loads(
        (trained_tiny_package / "manifest.json").read_text())


def _render(renderable: object) -> str:
    out = io.StringIO()
    print_report(Console(file=out, width=WIDTH, color_system=None), renderable)  # type: ignore
    return out.getvalue()


def test_bench_kernels_table_fits_80_columns() -> None:
    from bevdeploy.bench.kernels import KernelTiming, kernel_table

    rows = [KernelTiming("bev_pool", "6×118×32×88 weights × C=80 into a reused 80×180×180",
                         12.34, 13.5, 4.2, "310.0 MB at 74.0 GB/s copy", 310_000_000, 0),
            KernelTiming("voxelize", "350,000 points → 120,000 voxels", 8.1, 9.0, 0.5,
                         "22.4 MB at 74.0 GB/s copy", 22_400_000, 0)]
    scn = {"num_voxels": 120_000, "conv_macs": 9.6e10, "ours_median_s": 1.2, "floor_s": 0.8,
           "gemm_macs_per_s": 1.2e11, "spconv_1_thread_median_s": 3.0, "speedup_median": 2.5,
           "speedup_1_thread_cpu_median": 1.3, "cosine": 0.999999}
    text = _render(kernel_table(rows, scn, title="CPU kernels, nuscenes-resnet50 shapes, ms "
                                "(median of 10 after warm-up)"))
    _assert_fits(text)
    for kernel in ("bev_pool", "voxelize", "scn (ours)", "scn (spconv, 1 thread)"):
        assert f"\n{kernel} " in text
    assert "12.3" in text and "2.9" in text  # 12.34 ms, 2.9× its floor
    assert "\n[1] 6×118×32×88 weights" in text and "cosine 0.999999" in text


def test_eval_table_fits_80_columns() -> None:
    from nuscenes.eval.detection.constants import TP_METRICS

    from bevdeploy.eval.nuscenes_eval import EvalResult
    from bevdeploy.presets import NUSCENES_CLASSES

    errors = dict.fromkeys(TP_METRICS, 0.25)
    result = EvalResult(mean_ap=0.4321, nds=0.5, tp_errors=errors,
                        class_ap=dict.fromkeys(NUSCENES_CLASSES, 0.4321),
                        class_ap_by_distance={}, class_tp_errors={
                            c: dict(errors) for c in NUSCENES_CLASSES},
                        gt_counts=dict.fromkeys(NUSCENES_CLASSES, 1234),
                        present_classes=NUSCENES_CLASSES, present_map=0.4321, num_samples=81,
                        split="mini_val", version="v1.0-mini", full_split=True,
                        submission="results_nusc.json")
    text = _render(result.narrow_table())
    _assert_fits(text)
    for cls in NUSCENES_CLASSES:
        assert f"\n{cls} " in text
    assert f"\nmAP ({len(NUSCENES_CLASSES)} present classes) " in text and "\nNDS " in text
    assert max(len(line) for line in _render(result.table()).splitlines()) > 0
