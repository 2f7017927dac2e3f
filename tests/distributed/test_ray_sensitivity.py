"""``optimize --int8 --sensitivity --sensitivity-map --ray``: the groups' mAP probes scored by
the workers of the session's two-node cluster (``conftest.py``), against the same run in one
process.

The trained tiny package is calibrated on 2 mini_train frames of the fresh world and scored on
3 of its mini_val frames; only the fuser's blocks are probed. What is shown: the sensitivity
map over Ray (every group's mAP and drop, the FP32 and all-INT8 mAP, the ranking) equals the
single-process one exactly, with one worker per node and the model bytes per probe recorded; a
worker killed while it holds probes is replaced and the scores are still exactly the
single-process ones, the retries recorded; ``--ray`` without ``--sensitivity-map`` is refused.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

ray = pytest.importorskip("ray")

from bevdeploy.cli import app  # noqa: E402
from bevdeploy.distributed import RayOptions, connect  # noqa: E402
from bevdeploy.distributed.probe import RayMapProbe  # noqa: E402
from bevdeploy.optimize.sensitivity import MapProbe, eval_frames  # noqa: E402
from bevdeploy.package import load_package  # noqa: E402

runner = CliRunner()


def _optimize(package: Path, world: Path, out: Path, *ray_args: str) -> tuple[dict[str, Any],
                                                                               str, float]:
    """``bevdeploy optimize`` with the map probes; the sensitivity.json, output, seconds."""
    t0 = time.perf_counter()
    result = runner.invoke(app, [
        "optimize", str(package), "--out", str(out), "--int8", "--calib", str(world),
        "--calib-frames", "2", "--sensitivity", "--sensitivity-map", "--sensitivity-frames",
        "3", "--sensitivity-module", "fuser", *ray_args])
    assert result.exit_code == 0, result.output
    seconds = time.perf_counter() - t0
    return json.loads((out / "sensitivity.json").read_text()), result.output, seconds


def test_the_sensitivity_map_over_ray_equals_one_process(
        cluster: Any, trained_tiny_package: Path, fresh_val_world: Path, tmp_path: Path) -> None:
    one, _, t_one = _optimize(trained_tiny_package, fresh_val_world, tmp_path / "one")
    two, output, t_two = _optimize(trained_tiny_package, fresh_val_world, tmp_path / "ray",
                                   "--ray", cluster.address, "--workers", "2")
    assert not ray.is_initialized()  # the command disconnected
    assert len(one["groups"]) >= 3 and one["fp32_map"] > 0.1
    assert two["groups"] == one["groups"]  # every group's mAP, drop and cosine, in rank order
    assert [g["group"] for g in two["groups"]] == [g["group"] for g in one["groups"]]
    assert (two["fp32_map"], two["int8_map"]) == (one["fp32_map"], one["int8_map"])
    record = two["evaluation"].pop("ray")
    assert two == one
    assert len({h.split(" node ")[1] for h in record["worker_hosts"]}) == 2  # one per node
    assert record["retries"] == [] and record["probes"] == len(one["groups"]) + 1  # + all-INT8
    fuser = load_package(trained_tiny_package).path("fuser").stat().st_size
    assert 0.5 * fuser < record["model_bytes_per_probe"] <= record["model_bytes_max"]
    assert "model bytes per probe through the object store" in " ".join(output.split())
    print(f"sensitivity map, {len(one['groups'])} fuser groups: one process {t_one:.1f} s, "
          f"2 Ray workers {t_two:.1f} s; {record['model_bytes_per_probe']:,} bytes per probe")


def _scaled(model: onnx.ModelProto, factor: float) -> onnx.ModelProto:
    """``model`` with every initializer multiplied by ``factor`` (a swap that moves the mAP)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        array = numpy_helper.to_array(init)
        if np.issubdtype(array.dtype, np.floating):
            init.CopyFrom(numpy_helper.from_array((array * factor).astype(array.dtype),
                                                  init.name))
    return out


def test_a_killed_worker_has_its_probes_rescored_and_the_scores_are_the_same(
        cluster: Any, trained_tiny_package: Path, fresh_val_world: Path) -> None:
    pkg = load_package(trained_tiny_package)
    frames = eval_frames(pkg, fresh_val_world, version="v1.0-mini", split="mini_val", frames=2,
                         calibrated=())
    fuser = onnx.load(str(pkg.path("fuser")))
    swaps = [{"fuser": _scaled(fuser, f)} for f in (1.0, 0.0, 0.9, 1.1)] + [{}]
    local = MapProbe(pkg, frames, threads=1)
    expected = list(local.scores(swaps))
    assert len(set(expected)) >= 3  # the swaps really score differently

    options = RayOptions(cluster.address, workers=2)
    with connect(options), RayMapProbe(pkg, frames, options) as probe:
        victim = probe.pids[0]

        def killing() -> Iterator[dict[str, onnx.ModelProto]]:
            for i, swap in enumerate(swaps):
                if i == 2:  # probes 0 and 1 are on workers 0 and 1
                    os.kill(victim, signal.SIGKILL)
                yield swap

        assert probe.fp32_map == local.fp32_map
        assert list(probe.scores(killing())) == expected
        assert 0 not in probe.workers and len(probe.workers) == 2  # replaced
        retries = probe.describe()["ray"]["retries"]
    assert retries and all(r["worker"] == 0 and r["attempt"] == 1 for r in retries), retries


def test_ray_without_the_map_probes_is_refused(trained_tiny_package: Path,
                                               fresh_val_world: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["optimize", str(trained_tiny_package), "--out",
                                 str(tmp_path / "out"), "--int8", "--calib", str(fresh_val_world),
                                 "--sensitivity", "--ray", "local"])
    assert result.exit_code == 2
    assert "[--ray]" in result.output and "--sensitivity-map" in result.output
    assert not (tmp_path / "out").exists()
