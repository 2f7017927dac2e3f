"""``bevdeploy bench``: the report's structure and arithmetic on a real tiny run (the timings
themselves are not asserted, only that they are sane), the statistics, and the refusals.

The CLI run measures two variants (the trained tiny package under ``sequential`` and the
PyTorch reference), each in its own process, on 2 frames after 1 warm-up frame.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from bevdeploy.cli import app
from bevdeploy.errors import ConfigError
from bevdeploy.bench import (DENSE_MODULES, ISA_FEATURES, BenchReport, FrameSource, Stat,
                             Variant, VariantResult, plan_variants, run_bench)

REL = 1e-9  # ratios are recomputed from the reported numbers: equal up to rounding


@pytest.fixture(scope="module")
def bench_run(trained_tiny_package, synthetic_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    result = CliRunner().invoke(app, [
        "bench", "--package", str(trained_tiny_package), "--frames", "2", "--warmup", "1",
        "--threads", "2", "--data", str(synthetic_world), "--json", str(out),
        "--peak-seconds", "0", "--chart", str(out.parent.parent / "chart" / "latency.png")],
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
    cpu = data["machine"]["cpu"]
    assert cpu["microarchitecture"] and set(cpu["isa"]) <= set(ISA_FEATURES)
    assert f"({cpu['microarchitecture']}:" in result.output
    assert set(data["total_includes"]) == {"deploy", "reference"}
    assert [v["reference"] for v in data["variants"]] == [True, False]
    for text in ("roofline", "floor", "peak rates measured", "BLAS: openblas"):
        assert text in result.output


def test_bench_measures_the_peaks_and_floors_the_deployed_variant(bench_run):
    data = json.loads(bench_run[1].read_text())
    peaks = data["machine"]["peaks"]
    for key in ("numpy fp32", "scipy fp32", "onnxruntime fp32", "onnxruntime int8"):
        assert peaks["peak_gflops"][key] > 0
    assert data["machine"]["gemm_gflops"] == peaks["peak_gflops"]["numpy fp32"]
    assert any(lib["internal_api"] == "openblas" for lib in data["machine"]["blas"])
    assert data["scn_macs"]["tiny"] > 0
    reference, deployed = data["variants"]
    assert reference["engine"] == "torch" and "reason" in reference["floor"]
    floor = deployed["floor"]
    assert deployed["engine"] == "onnxruntime"
    assert deployed["module_precisions"] == dict.fromkeys(DENSE_MODULES, "fp32")
    terms = {t["part"]: t for t in floor["terms"]}
    macs = data["dense_macs"]["tiny"]
    mixes = data["mac_mixes"][deployed["package"]]
    ort_fp32 = {kind: max(r["gflops"] for r in peaks["rates"] if (
        r["engine"], r["precision"], r["kind"]) == ("onnxruntime", "fp32", kind))
        for kind in ("conv", "matmul")}
    assert set(mixes["head.bbox"]) == {"conv float", "matmul float"}  # convs and the decoder
    for module in DENSE_MODULES:
        assert sum(mixes[module].values()) == pytest.approx(1.0, rel=REL)
        seconds = sum(share * 2 * macs[module] / (ort_fp32[key.split()[0]] * 1e9)
                      for key, share in mixes[module].items())
        assert terms[module]["floor_ms"] == pytest.approx(1e3 * seconds, rel=REL)
        assert terms[module]["measured_ms"] == deployed["stages"][module]["median_ms"]
    assert terms["scn"]["floor_ms"] == pytest.approx(
        2e3 * data["scn_macs"]["tiny"] / (peaks["peak_gflops"]["scipy fp32"] * 1e9), rel=REL)
    kernels = [s for s in deployed["stages"] if s not in {*DENSE_MODULES, "scn"}]
    assert terms["kernels"]["floor_ms"] == pytest.approx(
        sum(deployed["stages"][s]["median_ms"] for s in kernels), rel=REL)
    assert floor["floor_ms"] == pytest.approx(sum(t["floor_ms"] for t in terms.values()),
                                              rel=REL)
    assert floor["ratio"] == pytest.approx(deployed["total"]["median_ms"] / floor["floor_ms"],
                                           rel=REL)


def test_bench_draws_the_stacked_latency_chart(bench_run):
    result, out = bench_run
    chart = out.parent.parent / "chart" / "latency.png"
    assert f"chart: {chart}" in result.output.replace("\n", "")
    with Image.open(chart) as img:
        assert img.format == "PNG" and img.size[0] > 600
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
    colours = {tuple(c) for c in pixels[::7]}
    assert len(colours) > 12  # the stage segments of two variants, not a blank figure


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


def test_a_package_directory_in_a_label_is_printed_not_read_as_markup():
    from rich.console import Console

    ref = Variant("tiny · torch · eager", "tiny", "p", "torch", "eager", 2)
    mine = Variant("tiny [pkg-int8] · onnxruntime · sequential", "tiny", "p", "onnxruntime",
                   "sequential", 2)
    report = BenchReport(results=[_result(ref, [400.0, 300.0, 500.0], 1.2),
                                  _result(mine, [100.0, 80.0, 120.0], 0.3)],
                         source=FrameSource("/d [x]"), frames=3, warmup=1, threads=2,
                         gemm_gflops=100.0, dense_macs={"tiny": dict.fromkeys(DENSE_MODULES,
                                                                              10**9)})
    console = Console(width=250, record=True)
    console.print(report.table())
    console.print(report.dense_table())
    text = console.export_text()
    assert text.count("tiny [pkg-int8]") == 2 and "/d [x]" in text


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


# ------------------------------------------------------------------ GPU backends and configs


def test_plan_multiplies_each_gpu_backend_by_its_configs(trained_tiny_package):
    from bevdeploy.bench.runner import _variant_precision
    from bevdeploy.package import load_package

    variants = plan_variants([trained_tiny_package], backends=["onnxruntime", "torch-cuda"],
                             schedules=["sequential", "frames"], threads=2, reference=True,
                             checkpoint=None, precision=None,
                             gpu_configs=["fp32", "graph+streams+fp16"])
    assert [(v.label, v.schedule, v.gpu_config) for v in variants] == [
        ("tiny · torch · eager", "eager", None),
        ("tiny · onnxruntime · sequential", "sequential", None),
        ("tiny · onnxruntime · frames", "frames", None),
        ("tiny · torch-cuda · fp32", "cuda", "fp32"),
        ("tiny · torch-cuda · fp16+graph+streams", "cuda", "fp16+graph+streams")]
    pkg = load_package(trained_tiny_package)
    assert [_variant_precision(v, pkg) for v in variants[2:]] == [
        "fp32", "fp32", "fp16 (from fp32 ONNX)"]


def test_the_ladders_add_one_switch_per_step(trained_tiny_package):
    variants = plan_variants([trained_tiny_package], backends=["torch-cuda", "tensorrt"],
                             schedules=["sequential"], threads=2, reference=False,
                             checkpoint=None, precision=None, gpu_ladder=True)
    assert [(v.backend, v.label.split(" · ")[-1], v.gpu_config) for v in variants] == [
        ("torch-cuda", "fp32+host", "fp32+host"),
        ("torch-cuda", "fp32", "fp32"), ("torch-cuda", "fp16", "fp16"),
        ("torch-cuda", "fp16+cl", "fp16+cl"), ("torch-cuda", "fp16+cl+graph", "fp16+cl+graph"),
        ("torch-cuda", "fp16+cl+graph+streams", "fp16+cl+graph+streams"),
        ("tensorrt", "engine+host", "fp32+host"),
        ("tensorrt", "engine", "fp32"), ("tensorrt", "engine+graph", "fp32+graph"),
        ("tensorrt", "engine+graph+streams", "fp32+graph+streams")]


@pytest.mark.parametrize("changes, field, says", [
    (dict(backends=["onnxruntime"], gpu_configs=["fp16"]), "--gpu-config", "names none"),
    (dict(backends=["onnxruntime"], gpu_ladder=True), "--gpu-config", "names none"),
    (dict(gpu_configs=["fp16"], gpu_ladder=True), "--gpu-ladder", "not both"),
    (dict(gpu_configs=["fp16+cl", "cl+fp16"]), "--gpu-config", "repeat one"),
    (dict(gpu_configs=["fp16+turbo"]), "--gpu-config", "unknown token 'turbo'"),
    (dict(backends=["tensorrt"], gpu_configs=["fp16+graph"]), "--gpu-config", "drop ['fp16']"),
    (dict(schedules=["frames"]), "--schedule", "runs under the CUDA schedule"),
])
def test_plan_refuses_gpu_configs_that_cannot_apply(trained_tiny_package, changes, field, says):
    kwargs = {"backends": ["torch-cuda"], "schedules": ["sequential"], "threads": 2,
              "reference": False, "checkpoint": None, "precision": None, **changes}
    with pytest.raises(ConfigError) as err:
        plan_variants([trained_tiny_package], **kwargs)
    assert err.value.field == field and says in str(err.value)


def test_the_json_carries_the_gpu_config():
    gpu = Variant("tiny · torch-cuda · fp16+graph", "tiny", "p", "torch-cuda", "cuda", 2,
                  gpu_config="fp16+graph")
    cpu = Variant("tiny · onnxruntime · sequential", "tiny", "p", "onnxruntime", "sequential", 2)
    report = BenchReport(results=[_result(cpu, [10.0], 0.01), _result(gpu, [5.0], 0.005)],
                         source=FrameSource("/d"), frames=1, warmup=0, threads=2,
                         gemm_gflops=100.0)
    assert [v["gpu_config"] for v in report.to_dict()["variants"]] == [None, "fp16+graph"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is usable here")
def test_without_cuda_a_gpu_variant_is_refused_before_anything_is_measured(
        trained_tiny_package, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, [
        "bench", "--package", str(trained_tiny_package), "--backend", "torch-cuda",
        "--gpu-config", "fp16+graph+streams", "--frames", "2", "--data", str(tmp_path / "none"),
        "--json", str(out)], terminal_width=200)
    assert result.exit_code == 2, result.output
    assert "tiny · torch-cuda · fp16+graph+streams needs CUDA: " in result.output
    assert "[--backend]" in result.output
    assert "measuring" not in result.output and "counting" not in result.output
    assert not out.exists()
    with pytest.raises(ConfigError, match="needs CUDA"):  # the library entry point, too
        run_bench(plan_variants([trained_tiny_package], backends=["torch-cuda"],
                                schedules=["sequential"], threads=2, reference=True,
                                checkpoint=None, precision=None),
                  FrameSource(str(tmp_path / "none")), frames=2, warmup=0, threads=2,
                  progress=pytest.fail)


@pytest.mark.gpu
def test_bench_runs_torch_cuda_with_all_switches_on_a_gpu(trained_tiny_package, synthetic_world,
                                                          tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, [
        "bench", "--package", str(trained_tiny_package), "--backend", "torch-cuda",
        "--gpu-config", "fp16+graph+streams", "--no-reference", "--frames", "2", "--warmup", "1",
        "--threads", "2", "--data", str(synthetic_world), "--json", str(out)],
        catch_exceptions=False, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "tiny · torch-cuda · fp16+graph+streams" in result.output
    (variant,) = json.loads(out.read_text())["variants"]
    assert variant["backend"] == "torch-cuda" and variant["schedule"] == "cuda"
    assert variant["gpu_config"] == "fp16+graph+streams"
    assert variant["precision"] == "fp16 (from fp32 ONNX)"
    assert len(variant["samples_ms"]["total"]) == 2
    assert {"camera.backbone", "bevpool", "scn", "fuser", "head.bbox"} <= set(variant["stages"])
    assert all(s["median_ms"] > 0 for s in variant["stages"].values())


def test_the_reference_device_labels_the_reference_and_cuda_is_checked_first(
        trained_tiny_package, tmp_path):
    plan = dict(backends=["onnxruntime"], schedules=["sequential"], threads=2, reference=True,
                checkpoint=None, precision=None)
    reference = plan_variants([trained_tiny_package], reference_device="cuda", **plan)[0]
    assert reference.is_reference and reference.schedule == "eager-cuda"
    assert reference.label == "tiny · torch · eager-cuda"
    with pytest.raises(ConfigError, match="expected cpu or cuda") as err:
        plan_variants([trained_tiny_package], reference_device="gpu", **plan)
    assert err.value.field == "--reference-device"
    if not torch.cuda.is_available():
        result = CliRunner().invoke(app, [
            "bench", "--package", str(trained_tiny_package), "--reference-device", "cuda",
            "--data", str(tmp_path / "none")], terminal_width=200)
        assert result.exit_code == 2, result.output
        assert "tiny · torch · eager-cuda needs CUDA: " in result.output


@pytest.mark.gpu
def test_bench_times_the_reference_on_the_gpu(trained_tiny_package, synthetic_world, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, [
        "bench", "--package", str(trained_tiny_package), "--backend", "torch-cuda",
        "--reference-device", "cuda", "--frames", "2", "--warmup", "1", "--threads", "2",
        "--data", str(synthetic_world), "--json", str(out)],
        catch_exceptions=False, terminal_width=200)
    assert result.exit_code == 0, result.output
    reference, deployed = json.loads(out.read_text())["variants"]
    assert reference["schedule"] == "eager-cuda" and " on " in reference["weights"]
    assert deployed["speedup_vs_reference"] is not None


# ------------------------------------------------------------------ CPU backends: openvino, auto


def test_plan_runs_openvino_at_each_inference_precision_and_resolves_auto(trained_tiny_package):
    pytest.importorskip("openvino")
    from bevdeploy.package import load_package
    from bevdeploy.runtime.backends.auto import choose_for_package
    from bevdeploy.runtime.backends.openvino import bf16_unavailable_reason

    plan = dict(schedules=["sequential"], threads=2, reference=False, checkpoint=None,
                precision=None)
    variants = plan_variants([trained_tiny_package], backends=["onnxruntime", "openvino", "auto"],
                             inference_precisions=["fp32"], **plan)
    choice = choose_for_package(load_package(trained_tiny_package))
    assert [(v.label, v.backend, v.inference_precision, v.choice) for v in variants] == [
        ("tiny · onnxruntime · sequential", "onnxruntime", "fp32", None),
        ("tiny · openvino · sequential", "openvino", "fp32", None),
        (f"tiny · auto→{choice.backend} · sequential", choice.backend, "fp32", choice.reason)]
    if bf16_unavailable_reason() is not None:
        with pytest.raises(ConfigError) as err:
            plan_variants([trained_tiny_package], backends=["openvino"],
                          inference_precisions=["bf16"], **plan)
        assert err.value.field == "--inference-precision"
    else:  # onnxruntime runs once, openvino at both precisions
        variants = plan_variants([trained_tiny_package], backends=["onnxruntime", "openvino"],
                                 inference_precisions=["fp32", "bf16"], **plan)
        assert [(v.backend, v.inference_precision) for v in variants] == [
            ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")]
        assert variants[2].label == "tiny · openvino bf16 · sequential"
    for changes, says in ((dict(backends=["onnxruntime"], inference_precisions=["bf16"]),
                           "computes at fp32 only"),
                          (dict(backends=["openvino"], inference_precisions=["fp8"]),
                           "unknown inference precision 'fp8'")):
        with pytest.raises(ConfigError, match=says) as err:
            plan_variants([trained_tiny_package], **plan, **changes)
        assert err.value.field == "--inference-precision"


def test_the_precision_a_module_computes_in_follows_the_inference_precision(
        trained_tiny_package):
    from bevdeploy.bench.runner import _computed_precisions, _variant_precision
    from bevdeploy.package import load_package

    pkg = load_package(trained_tiny_package)
    bf16 = Variant("tiny · openvino bf16 · sequential", "tiny", str(trained_tiny_package),
                   "openvino", "sequential", 2, inference_precision="bf16")
    assert _computed_precisions(bf16, pkg) == dict.fromkeys(DENSE_MODULES, "bf16")
    assert _variant_precision(bf16, pkg) == "fp32, bf16 inference"
    reference = Variant("tiny · torch · eager", "tiny", str(trained_tiny_package), "torch",
                        "eager", 2)
    assert _computed_precisions(reference, pkg) == dict.fromkeys(DENSE_MODULES, "fp32")
