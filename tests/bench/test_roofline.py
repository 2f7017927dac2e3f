"""The roofline of ``bench`` (bench.roofline, BenchReport.floor): a variant's floor is each
dense module's MACs at the peak of its precision on its engine, plus the SCN's MACs at the
SCN BLAS's SGEMM peak, plus the kernels' measured medians; its ratio is the median total
over that floor. Checked on a constructed report with round numbers, and in its JSON."""

from __future__ import annotations

import json

import pytest

from bevdeploy.bench import BenchReport, FrameSource, Variant, VariantResult
from bevdeploy.bench.peaks import PeakRate, Peaks

GMAC = 10**9


def _peak(engine: str, precision: str, gflops: float, kind: str = "matmul") -> PeakRate:
    ms = 2 * GMAC / (gflops * 1e9) * 1e3  # one GMAC problem at this rate
    return PeakRate(engine, precision, kind, f"{kind} problem", GMAC, ms, ms, 3)


PEAKS = Peaks(rates=[_peak("numpy", "fp32", 400.0), _peak("scipy", "fp32", 200.0),
                     _peak("onnxruntime", "fp32", 100.0), _peak("onnxruntime", "int8", 400.0),
                     _peak("onnxruntime", "int8", 250.0, "conv"),  # slower: not the peak
                     _peak("openvino", "fp32", 100.0)],
              skipped={"openvino bf16": "no BF16 here"})

STAGES_MS = {"points": 2.0, "voxelize": 8.0, "scn": 50.0, "normalize": 5.0,
             "camera.backbone": 60.0, "bevpool": 10.0, "camera.vtransform": 8.0, "fuser": 30.0,
             "head.bbox": 20.0, "decode": 5.0}
MACS = {"camera.backbone": 2 * GMAC, "camera.vtransform": GMAC // 2, "fuser": GMAC,
        "head.bbox": GMAC // 2}


def _result(backend: str, precisions: dict[str, str], total_ms: float) -> VariantResult:
    variant = Variant(f"tiny · {backend} · sequential", "tiny", "p", backend, "sequential", 2)
    samples = {k: [v] * 3 for k, v in STAGES_MS.items()}
    return VariantResult(variant=variant, precision="x", weights="w",
                         samples={**samples, "total": [total_ms] * 3}, wall_s=0.6, frames=3,
                         distinct_frames=3, peak_rss_mb=900.0, baseline_rss_mb=300.0,
                         geometry_computed=1, engine=backend, module_precisions=precisions)


def _report(*results: VariantResult) -> BenchReport:
    return BenchReport(results=list(results), source=FrameSource("/d"), frames=3, warmup=1,
                       threads=2, gemm_gflops=400.0, dense_macs={"tiny": MACS},
                       scn_macs={"tiny": 3 * GMAC}, peaks=PEAKS,
                       blas=[{"internal_api": "openblas", "architecture": "SkylakeX"}],
                       isa_overrides={})


INT8 = {"camera.backbone": "int8", "camera.vtransform": "fp32", "fuser": "int8",
        "head.bbox": "int8"}


def test_the_floor_is_macs_at_the_peak_of_each_precision_plus_the_kernels() -> None:
    result = _result("onnxruntime", INT8, total_ms=250.0)
    floor = _report(result).floor(result)
    terms = {t.part: t for t in floor.terms}
    # 2 FLOPs per MAC: 2 GMAC at 400 GOP/s (INT8 peak = the faster problem) is 10 ms
    assert terms["camera.backbone"].floor_ms == pytest.approx(10.0)
    assert terms["camera.backbone"].peak_gflops == pytest.approx(400.0)
    assert terms["camera.vtransform"].floor_ms == pytest.approx(10.0)  # 0.5 GMAC at 100 fp32
    assert terms["fuser"].floor_ms == pytest.approx(5.0)
    assert terms["head.bbox"].floor_ms == pytest.approx(2.5)
    assert terms["scn"].floor_ms == pytest.approx(30.0)  # 3 GMAC at scipy's 200 GFLOP/s
    assert (terms["scn"].engine, terms["scn"].precision) == ("scipy", "fp32")
    # kernels: points, voxelize, normalize, bevpool, decode, as measured
    assert terms["kernels"].floor_ms == terms["kernels"].measured_ms == pytest.approx(30.0)
    assert floor.total_ms == pytest.approx(10 + 10 + 5 + 2.5 + 30 + 30)
    assert floor.ratio == pytest.approx(250.0 / 87.5)
    assert terms["camera.backbone"].ratio == pytest.approx(60.0 / 10.0)


def test_the_engine_picks_its_own_peaks_and_a_missing_one_is_a_reason() -> None:
    fp32 = dict.fromkeys(MACS, "fp32")
    ov = _result("openvino", fp32, total_ms=300.0)
    assert _report(ov).floor(ov).total_ms == pytest.approx(40 + 10 + 20 + 10 + 30 + 30)
    bf16 = _result("openvino", {**fp32, "fuser": "bf16"}, total_ms=300.0)
    assert _report(bf16).floor(bf16) == "no openvino bf16 peak was measured (fuser)"
    reference = _result("torch", fp32, total_ms=900.0)
    assert _report(reference).floor(reference) == "no peak of torch was measured"
    bare = BenchReport(results=[ov], source=FrameSource("/d"), frames=3, warmup=1, threads=2,
                       gemm_gflops=400.0, dense_macs={"tiny": MACS})
    assert bare.floor(ov) == "the peaks were not measured"


def test_at_bf16_the_scn_wide_convs_are_priced_at_openvinos_bf16_matmul_peak() -> None:
    """BF16 inference precision runs the SCN's wide convs through OpenVINO (runtime.scn.bf16):
    their MACs at its BF16 MatMul peak, the others at SciPy's SGEMM peak; at FP32 nothing
    changes, and a missing BF16 peak is a reason, not a floor at the wrong rate."""
    bf16_peaks = Peaks(rates=[*PEAKS.rates, _peak("openvino", "bf16", 1000.0)])
    fp32 = dict.fromkeys(MACS, "fp32")
    variant = Variant("tiny · openvino · sequential", "tiny", "p", "openvino", "sequential", 2,
                      inference_precision="bf16")
    samples = {k: [v] * 3 for k, v in STAGES_MS.items()}
    result = VariantResult(variant=variant, precision="x", weights="w",
                           samples={**samples, "total": [200.0] * 3}, wall_s=0.6, frames=3,
                           distinct_frames=3, peak_rss_mb=900.0, baseline_rss_mb=300.0,
                           geometry_computed=1, engine="openvino",
                           module_precisions=dict.fromkeys(MACS, "bf16"))
    report = BenchReport(results=[result], source=FrameSource("/d"), frames=3, warmup=1,
                         threads=2, gemm_gflops=400.0, dense_macs={"tiny": MACS},
                         scn_macs={"tiny": 3 * GMAC}, scn_bf16_macs={"tiny": 2 * GMAC},
                         peaks=bf16_peaks)
    scn = {t.part: t for t in report.floor(result).terms}["scn"]
    # 1 GMAC at scipy's 200 GFLOP/s (10 ms) + 2 GMAC at OpenVINO BF16's 1000 (4 ms)
    assert scn.floor_ms == pytest.approx(14.0)
    assert scn.engine == "scipy + openvino" and scn.precision == "bf16 67% + fp32"
    plain = _result("openvino", fp32, total_ms=300.0)
    report.results = [plain]
    assert {t.part: t for t in report.floor(plain).terms}["scn"].floor_ms == pytest.approx(30.0)
    report.results = [result]
    report.peaks = Peaks(rates=[*PEAKS.rates, _peak("openvino", "bf16", 1000.0, "conv")])
    assert report.floor(result) == ("no openvino bf16 MatMul peak was measured (the SCN's "
                                    "BF16 convs)")


def test_the_json_carries_peaks_floors_and_the_blas(tmp_path) -> None:
    int8 = _result("onnxruntime", INT8, total_ms=250.0)
    reference = _result("torch", dict.fromkeys(MACS, "fp32"), total_ms=900.0)
    data = json.loads(_report(reference, int8).write_json(tmp_path / "b.json").read_text())
    machine = data["machine"]
    assert machine["peaks"]["peak_gflops"]["onnxruntime int8"] == pytest.approx(400.0)
    assert machine["peaks"]["skipped"] == {"openvino bf16": "no BF16 here"}
    assert len(machine["peaks"]["rates"]) == len(PEAKS.rates)
    assert machine["blas"][0]["architecture"] == "SkylakeX"
    assert machine["isa_overrides"] == {}
    assert data["scn_macs"] == {"tiny": 3 * GMAC} and "floor =" in data["floor"]
    ref, mine = data["variants"]
    assert ref["floor"] == {"reason": "no peak of torch was measured"}
    assert mine["engine"] == "onnxruntime" and mine["module_precisions"] == INT8
    assert mine["floor"]["floor_ms"] == pytest.approx(87.5)
    assert mine["floor"]["ratio"] == pytest.approx(250.0 / 87.5)
    assert [t["part"] for t in mine["floor"]["terms"]] == [
        "camera.backbone", "camera.vtransform", "fuser", "head.bbox", "scn", "kernels"]


def test_the_tables_show_the_floor_and_the_peaks() -> None:
    from rich.console import Console

    report = _report(_result("torch", dict.fromkeys(MACS, "fp32"), total_ms=900.0),
                     _result("onnxruntime", INT8, total_ms=250.0))
    console = Console(width=80, record=True, color_system=None)
    for table in report.narrow_tables():
        console.print(table)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "87.5 (2.86×)" in text  # the int8 variant's floor and ratio; the reference has "—"
    assert "\nscn " in text and "30.0 (1.7×)" in text  # 50 ms measured over a 30 ms floor
    assert "onnxruntime  int8" in text and "skipped openvino bf16: no BF16 here" in text
    assert "BLAS: openblas" in text


def test_a_module_is_floored_by_its_mix_of_layer_kinds_and_precisions() -> None:
    result = _result("onnxruntime", INT8, total_ms=250.0)
    report = _report(result)
    report.mac_mixes = {"p": {
        "head.bbox": {"conv int8": 0.5, "matmul float": 0.5},
        "fuser": {"conv int8": 1.0},
        "camera.backbone": None,  # shapes unknown: all at int8's better problem
        "camera.vtransform": {"conv float": 1.0}}}
    terms = {t.part: t for t in report.floor(result).terms}
    # head: 0.25 GMAC of INT8 convs at the INT8 Conv peak 250 (2 ms) + 0.25 GMAC of float
    # MatMul at fp32 100 (5 ms)
    assert terms["head.bbox"].floor_ms == pytest.approx(2.0 + 5.0)
    assert terms["head.bbox"].precision == "int8 50% + fp32 50%"
    assert terms["head.bbox"].peak_gflops == pytest.approx(2 * 0.5 / 7e-3)
    assert terms["fuser"].floor_ms == pytest.approx(8.0)  # 1 GMAC at the INT8 Conv 250
    assert terms["fuser"].precision == "int8"
    assert terms["camera.backbone"].floor_ms == pytest.approx(10.0)  # 2 GMAC at 400
    # fp32 has no Conv problem here: its better problem (the MatMul) floors it
    assert terms["camera.vtransform"].floor_ms == pytest.approx(10.0)


def test_the_mix_is_read_from_the_graph(tmp_path, trained_tiny_package) -> None:
    from bevdeploy.bench.graph_macs import mac_mix
    from bevdeploy.bench.peak_graphs import Sizes, problem_graphs

    mixes = {}
    for problem in problem_graphs(Sizes(n=32, channels=4, hw=8, layers=2)):
        path = tmp_path / f"{problem.kind}-{problem.precision}.onnx"
        path.write_bytes(problem.model)
        mixes[problem.kind, problem.precision] = mac_mix(path)
    assert mixes == {("matmul", "fp32"): {"matmul float": 1.0},
                     ("conv", "fp32"): {"conv float": 1.0},
                     ("matmul", "int8"): {"matmul int8": 1.0},
                     ("conv", "int8"): {"conv int8": 1.0}}
    head = mac_mix(trained_tiny_package / "head.bbox.onnx")  # convs and the decoder's products
    assert set(head) == {"conv float", "matmul float"} and sum(head.values()) == pytest.approx(1)
