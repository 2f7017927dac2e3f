"""``bevdeploy optimize --sensitivity --sensitivity-map``: each INT8 group's mAP on held-out
frames, scored by nuscenes-devkit through the FP32 pipeline with only that group quantized.

The tiny package (shipped weights) is calibrated on the 3 mini_train frames of the session's
synthetic world and scored on its 3 mini_val frames (8 asked for: the whole split); only the
fuser's blocks are probed, which keeps the module's fixture at ~12 s on 2 cores. The numbers
are checked against ``bevdeploy eval`` run independently on the same frames.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from bevdeploy.cli import app
from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.errors import ConfigError
from bevdeploy.optimize import OptimizeOptions, optimize_package
from bevdeploy.optimize.int8 import Int8Options, excluded_nodes
from bevdeploy.optimize.sensitivity import (
    EvalSource, GroupSensitivity, MapProbe, eval_frames, layer_groups, rank,
)
from bevdeploy.package import load_package
from bevdeploy.presets import get_preset

TINY = get_preset("tiny")
SHIPPED = TINY.checkpoint_path
pytestmark = pytest.mark.skipif(SHIPPED is None or not SHIPPED.is_file(),
                                reason="no shipped tiny weights")
cli = CliRunner()


@pytest.fixture(scope="module")
def map_result(tiny_package: Path, calib_source, tmp_path_factory: pytest.TempPathFactory):
    options = OptimizeOptions(int8=Int8Options(), calib=calib_source, sensitivity="block",
                              sensitivity_map=EvalSource(frames=8),
                              sensitivity_modules=("fuser",))
    return optimize_package(tiny_package, tmp_path_factory.mktemp("map") / "pkg", options)


def _eval_map(package: Path, data: Path, out: Path) -> float:
    """The devkit mAP ``bevdeploy eval`` writes for ``package`` on the whole mini_val split."""
    result = cli.invoke(app, ["eval", "--package", str(package), "--data", str(data),
                              "--split", "mini_val", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())["mean_ap"]


def test_baseline_and_all_int8_map_equal_bevdeploy_eval_on_the_same_frames(
        map_result, tiny_package, synthetic_world, tmp_path):
    report = map_result.sensitivity
    loader = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val", preset=TINY)
    assert report.evaluation["sample_tokens"] == list(loader.sample_tokens)  # 3 < 8: all
    assert report.evaluation["split"] == "mini_val" and report.evaluation["frames"] == 3
    fp32 = _eval_map(tiny_package, synthetic_world, tmp_path / "fp32")
    assert fp32 > 0.1  # a real detector on these frames, so mAP differences mean something
    assert math.isclose(report.fp32_map, fp32, rel_tol=0, abs_tol=1e-9)
    # the written package quantizes the three modules (the head's convolutions); the all-INT8
    # probe swapped in the same graphs
    assert load_package(map_result.root).module("head.bbox").precision == "int8"
    int8 = _eval_map(map_result.root, synthetic_world, tmp_path / "int8")
    assert math.isclose(report.int8_map, int8, rel_tol=0, abs_tol=1e-9)
    assert fp32 - int8 <= 0.01  # the INT8 target: mAP loss <= 0.01, head convolutions INT8


def test_every_fuser_group_is_scored_and_ranked_by_map_drop(map_result, tiny_package):
    report = map_result.sensitivity
    fuser = onnx.load(str(load_package(tiny_package).path("fuser")))
    kept = excluded_nodes(fuser, "fuser", Int8Options().excludes)
    expected = layer_groups(fuser, "block", skip=kept)
    assert len(expected) >= 3
    assert sorted(g.group for g in report.groups) == sorted(expected)
    assert set(report.full) == {"fuser"}
    for g in report.groups:
        assert g.map is not None and math.isfinite(g.map) and 0.0 <= g.map <= 1.0, g
        assert g.map_drop == report.fp32_map - g.map
    keys = [(-g.map_drop, g.cosine) for g in report.groups]
    assert keys == sorted(keys)
    assert 0.0 <= report.int8_map <= 1.0

    saved = json.loads((map_result.root / "sensitivity.json").read_text())
    assert saved["ranked_by"] == "map_drop, cosine"
    assert saved["fp32_map"] == report.fp32_map and saved["int8_map"] == report.int8_map
    assert saved["evaluation"]["sample_tokens"] == report.evaluation["sample_tokens"]
    assert [(g["group"], g["map"], g["map_drop"]) for g in saved["groups"]] == \
        [(g.group, g.map, g.map_drop) for g in report.groups]
    columns = [c.header for c in report.table().columns]
    assert "mAP" in columns and "mAP drop" in columns and "exclude with" in columns


def test_rank_orders_by_map_drop_then_cosine_and_overflow_first():
    """Where cosine and mAP disagree, the mAP drop decides; without mAP the cosine does."""
    def group(name: str, cosine: float, drop: float | None) -> GroupSensitivity:
        return GroupSensitivity("fuser", name, (name,), cosine, 0.01, (f"fuser:{name}",),
                                None if drop is None else 0.5 - drop, drop)

    scored = [group("a", 0.990, 0.0), group("b", 0.999, 0.05), group("c", float("nan"), 0.0),
              group("d", 0.995, 0.05)]
    report = rank("layer", 3, {"fuser": 0.99}, scored, fp32_map=0.5, int8_map=0.4,
                  evaluation={"split": "mini_val", "frames": 2, "sample_tokens": ["x", "y"]})
    assert [g.group for g in report.groups] == ["c", "d", "b", "a"]
    assert report.worst(2) == ["fuser:c", "fuser:d"]
    assert "ranked by mAP drop on 2 mini_val frames" in str(report.table().title)
    unscored = [group(g.group, g.cosine, None) for g in scored]
    report = rank("layer", 3, {"fuser": 0.99}, unscored)
    assert [g.group for g in report.groups] == ["c", "a", "d", "b"]
    assert report.to_dict()["fp32_map"] is None and report.ranked_by == "cosine"
    assert "mAP" not in [c.header for c in report.table().columns]


def test_a_swapped_runner_changes_the_score_and_is_put_back(tiny_package, synthetic_world):
    """A fuser whose weights are all zero makes the detector blind (mAP ~0); the next score
    without swaps is the FP32 mAP again, on the pipeline's original runner object."""
    pkg = load_package(tiny_package)
    frames = eval_frames(pkg, synthetic_world, version="v1.0-mini", split="mini_val", frames=2,
                         calibrated=())
    probe = MapProbe(pkg, frames)
    assert probe.fp32_map > 0.1
    original = probe.pipeline.runners["fuser"]
    blind = onnx.load(str(pkg.path("fuser")))
    for init in blind.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)),
                                              init.name))
    assert probe.score({"fuser": blind}) < probe.fp32_map - 0.1
    assert probe.pipeline.runners["fuser"] is original
    assert probe.score({}) == probe.fp32_map


def test_calibration_frames_and_bad_options_are_refused(tiny_package, calib_source,
                                                        synthetic_world, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="shares 3 sample") as info:
        optimize_package(tiny_package, out, OptimizeOptions(
            int8=Int8Options(), calib=calib_source, sensitivity="block",
            sensitivity_map=EvalSource(split="mini_train")))
    assert info.value.field == "sensitivity_split"
    assert not out.exists()
    with pytest.raises(ConfigError, match="not quantized"):
        OptimizeOptions(int8=Int8Options(), calib=calib_source, sensitivity="block",
                        sensitivity_modules=("camera.vtransform",)).check()
    with pytest.raises(ConfigError, match="not quantized"):  # the head left out of INT8
        OptimizeOptions(int8=Int8Options(modules=("camera.backbone", "fuser")),
                        calib=calib_source, sensitivity="block",
                        sensitivity_modules=("head.bbox",)).check()
    with pytest.raises(ConfigError, match=">= 1"):
        EvalSource(frames=0)
    result = cli.invoke(app, ["optimize", str(tiny_package), "--out", str(out), "--int8",
                              "--calib", str(synthetic_world), "--sensitivity-map"])
    assert result.exit_code == 2
    assert "--sensitivity-map" in result.output and "--sensitivity too" in result.output
    assert not out.exists()
