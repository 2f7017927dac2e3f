"""``bevdeploy bench``: the report's structure and arithmetic on a real tiny run (the timings
themselves are not asserted, only that they are sane), the statistics, and the refusals.

The CLI run measures two variants (the trained tiny package under ``sequential`` and the
PyTorch reference), each in its own process, on 2 frames after 1 warm-up frame.
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from bevdeploy.cli import app
from bevdeploy.errors import ConfigError
from bevdeploy.eval.bench import (DENSE_MODULES, BenchReport, FrameSource, Stat, Variant,
                                  VariantResult, plan_variants)

REL = 1e-9  # ratios are recomputed from the reported numbers: equal up to rounding


@pytest.fixture(scope="module")
def bench_run(trained_tiny_package, synthetic_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    result = CliRunner().invoke(app, [
        "bench", "--package", str(trained_tiny_package), "--frames", "2", "--warmup", "1",
        "--threads", "2", "--data", str(synthetic_world), "--json", str(out)],
        catch_exceptions=False, terminal_width=200)
    return result, out


def test_bench_prints_the_table_and_writes_json(bench_run):
    result, out = bench_run
    assert result.exit_code == 0, result.output
    for text in ("tiny · torch · eager", "tiny · onnxruntime · sequential", "total",
                 "frames/s", "peak RSS", "deploy total:", "reference total:", "GFLOP/s"):
        assert text in result.output
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left
    data = json.loads(out.read_text())
    assert data["frames"]["timed"] == 2 and data["frames"]["warmup"] == 1
    assert data["machine"]["threads"] == 2 and data["machine"]["gemm_gflops"] > 0
    assert set(data["total_includes"]) == {"deploy", "reference"}
    assert [v["reference"] for v in data["variants"]] == [True, False]


def test_bench_numbers_are_sane_and_ratios_follow_from_them(bench_run):
    data = json.loads(bench_run[1].read_text())
    reference, deployed = data["variants"]
    for v in data["variants"]:
        assert len(v["samples_ms"]["total"]) == 2
        for stat in [v["total"], *v["stages"].values()]:
            assert 0 < stat["median_ms"] <= stat["p90_ms"]
        assert max(s["median_ms"] for s in v["stages"].values()) <= v["total"]["p90_ms"]
        assert v["frames_per_s"] == pytest.approx(2 / v["wall_s"], rel=REL)
        assert v["peak_rss_mb"] > v["baseline_rss_mb"] > 0
        assert v["variant_rss_mb"] == pytest.approx(v["peak_rss_mb"] - v["baseline_rss_mb"])
    assert set(deployed["stages"]) == {"points", "voxelize", "scn", "normalize", "depth",
                                       "geometry", "camera.backbone", "bevpool",
                                       "camera.vtransform", "fuser", "head.bbox", "decode"}
    assert set(reference["stages"]) == set(deployed["stages"]) - {"points"}
    assert deployed["precision"] == "fp32" and reference["weights"] == "tiny.pth"
    assert 0 <= deployed["geometry_computed_frames"] <= 2

    speedup = deployed["speedup_vs_reference"]
    assert speedup["latency"] == pytest.approx(
        reference["total"]["median_ms"] / deployed["total"]["median_ms"], rel=REL)
    assert speedup["throughput"] == pytest.approx(
        deployed["frames_per_s"] / reference["frames_per_s"], rel=REL)
    for stage, ratio in speedup["stages"].items():
        assert ratio == pytest.approx(reference["stages"][stage]["median_ms"]
                                      / deployed["stages"][stage]["median_ms"], rel=REL)
    assert reference["speedup_vs_reference"] is None

    macs = data["dense_macs"]["tiny"]
    assert set(macs) == set(DENSE_MODULES) and all(m > 0 for m in macs.values())
    for v in data["variants"]:
        for module, rate in v["dense_gflops"].items():
            seconds = v["stages"][module]["median_ms"] / 1e3
            assert rate == pytest.approx(2 * macs[module] / seconds / 1e9, rel=REL)


def test_stat_is_the_median_and_interpolated_p90():
    stat = Stat.of([5.0, 1.0, 3.0, 2.0, 4.0, 100.0])
    assert stat.median_ms == 3.5
    assert stat.p90_ms == pytest.approx(52.5)  # halfway from 5 to 100 (rank 4.5 of 0..5)
    with pytest.raises(ValueError):
        Stat.of([])


def _result(variant: Variant, totals: list[float], wall_s: float) -> VariantResult:
    samples = {"fuser": [t / 2 for t in totals], "total": totals}
    return VariantResult(variant=variant, precision="fp32", weights="w", samples=samples,
                         wall_s=wall_s, frames=len(totals), distinct_frames=len(totals),
                         peak_rss_mb=900.0, baseline_rss_mb=300.0, geometry_computed=None)


def test_ratios_compare_each_package_with_the_reference_of_its_own_preset():
    ref = Variant("tiny ref", "tiny", "p", "torch", "eager", 2)
    fast = Variant("tiny ort", "tiny", "p", "onnxruntime", "sequential", 2)
    other = Variant("r50 ort", "nuscenes-resnet50", "q", "onnxruntime", "frames", 2)
    report = BenchReport(results=[_result(ref, [400.0, 300.0, 500.0], 1.2),
                                  _result(fast, [100.0, 80.0, 120.0], 0.3),
                                  _result(other, [900.0, 1000.0, 1100.0], 3.0)],
                         source=FrameSource("/d"), frames=3, warmup=1, threads=2,
                         gemm_gflops=100.0, dense_macs={"tiny": {"fuser": 10**9}})
    speedup = report.speedups(report.results[1])
    assert speedup["latency"] == pytest.approx(400 / 100)
    assert speedup["throughput"] == pytest.approx((3 / 0.3) / (3 / 1.2))
    assert speedup["stages"] == {"fuser": pytest.approx(200 / 50)}
    assert report.speedups(report.results[2]) is None  # no nuscenes-resnet50 reference
    assert report.gflops(report.results[1]) == {"fuser": pytest.approx(2 / 0.05)}
    assert report.gflops(report.results[2]) == {}


def test_plan_refuses_unknown_names_and_the_wrong_precision(trained_tiny_package, tmp_path):
    common = dict(threads=2, reference=True, checkpoint=None, precision=None)
    for changes, field in ((dict(schedules=["nope"]), "--schedule"),
                           (dict(backends=["nope"]), "--backend"),
                           (dict(precision="int8"), "--precision")):
        kwargs = {"backends": ["onnxruntime"], "schedules": ["sequential"], **common, **changes}
        with pytest.raises(ConfigError) as err:
            plan_variants([trained_tiny_package], **kwargs)
        assert err.value.field == field
    with pytest.raises(ConfigError) as err:
        plan_variants([trained_tiny_package] * 2, backends=["onnxruntime"],
                      schedules=["sequential"], **common)
    assert err.value.field == "--package"
    copy = shutil.copytree(trained_tiny_package, tmp_path / "tiny-copy")
    variants = plan_variants([trained_tiny_package, copy], backends=["onnxruntime"],
                             schedules=["sequential", "frames"], **common)
    assert [v.is_reference for v in variants] == [True, False, False, False, False]
    assert len({v.label for v in variants}) == 5  # one reference for the one preset
    assert all(v.threads == 2 and v.preset == "tiny" for v in variants)
