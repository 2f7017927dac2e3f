"""``--ray``: the frame loop's frames on a real two-node Ray cluster on this machine
(``ray.cluster_utils.Cluster``, one CPU per node, loopback only), against the same run in one
process. One cluster is shared by the session (``conftest.py``; starting one takes ~15 s).

What is shown: ``eval --ray`` scores exactly what one process scores (the devkit's metrics
and the submission equal); a worker killed mid-run (SIGKILL of its process) has its frames
retried on another and the detections are the same, the retry named in the run record; a
damaged frame is skipped under ``--on-error skip`` as in one process; a worker of another
bevdeploy version or package is refused by name; an unreachable address fails in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

# before Ray is imported: no usage report, and this node's address is 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray")

from bevdeploy import detector  # noqa: E402
from bevdeploy.cli import app  # noqa: E402
from bevdeploy.data.nuscenes import NuScenesLoader  # noqa: E402
from bevdeploy.data.sources import DatasetSource  # noqa: E402
from bevdeploy.distributed import (RayDetectorPool, RayOptions, WorkerFacts,  # noqa: E402
                                   connect)
from bevdeploy.errors import ConfigError, PackageError  # noqa: E402
from bevdeploy.frame_loop import run_frames  # noqa: E402
from bevdeploy.package import load_package  # noqa: E402
from bevdeploy.sinks import DetectionsJson  # noqa: E402

runner = CliRunner()


def _without(doc: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in keys}


def test_eval_over_ray_equals_one_process(cluster: Any, trained_tiny_package: Path,
                                          fresh_val_world: Path, tmp_path: Path) -> None:
    common = ["eval", "--package", str(trained_tiny_package), "--data", str(fresh_val_world)]
    one = runner.invoke(app, [*common, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    t0 = time.perf_counter()
    two = runner.invoke(app, [*common, "--out", str(tmp_path / "ray"), "--ray", cluster.address,
                              "--workers", "2"])
    assert two.exit_code == 0, two.output
    assert not ray.is_initialized()  # the command disconnected
    a = json.loads((tmp_path / "one" / "metrics.json").read_text())
    b = json.loads((tmp_path / "ray" / "metrics.json").read_text())
    assert a["num_samples"] == b["num_samples"] == 8
    assert _without(a, "run", "submission") == _without(b, "run", "submission")
    assert (json.loads((tmp_path / "one" / "results_nusc.json").read_text())
            == json.loads((tmp_path / "ray" / "results_nusc.json").read_text()))
    record = b["run"]
    assert _without(record, "ray") == a["run"]
    hosts = record["ray"]["worker_hosts"]
    assert len({h.split(" node ")[1] for h in hosts}) == 2, hosts  # one worker per node
    assert record["ray"]["retries"] == []
    assert 0 < record["ray"]["result_bytes_per_frame"] < 64 * 1024  # no sensor data came back
    print(f"eval --ray on 8 frames: {time.perf_counter() - t0:.1f} s, {record['ray']}")


class KillWorker:
    """A sink that SIGKILLs worker ``wid``'s process when the first frame arrives, while that
    worker still holds frames (the pool keeps 2 per worker in flight)."""

    def __init__(self, pool: RayDetectorPool, wid: int) -> None:
        self.pool, self.wid, self.killed = pool, wid, False

    def write(self, frame: Any, detections: Any, timings: Mapping[str, float]) -> None:
        if not self.killed:
            os.kill(self.pool.pids[self.wid], signal.SIGKILL)
            self.killed = True

    def close(self, run: Any) -> list[Path]:
        return []


def test_a_killed_worker_has_its_frames_retried_and_the_detections_are_the_same(
        cluster: Any, trained_tiny_package: Path, fresh_val_world: Path,
        tmp_path: Path) -> None:
    pkg = load_package(trained_tiny_package)
    source = DatasetSource(fresh_val_world, pkg.preset)
    with detector.open(pkg, threads=1) as local:
        run_frames(source, local, [DetectionsJson(tmp_path / "one.json", {})])
    options = RayOptions(cluster.address, workers=2)
    with connect(options), RayDetectorPool(source, trained_tiny_package, {"threads": 1},
                                           options) as pool:
        killer = KillWorker(pool, 0)
        loop, _ = run_frames(source, pool, [DetectionsJson(tmp_path / "ray.json", {}), killer])
        assert killer.killed and 0 not in pool.workers and len(pool.workers) == 2  # replaced
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "ray.json").read_text())
    assert loop.status == "complete" and two["run"]["frames_done"] == 8
    assert two["frames"] == one["frames"]
    retries = two["run"]["ray"]["retries"]
    assert retries and all(r["worker"] == 0 and r["attempt"] == 1 for r in retries), retries
    assert {r["frame"] for r in retries} <= set(one["frames"])


def test_a_damaged_frame_is_skipped_on_the_cluster_as_in_one_process(
        cluster: Any, trained_tiny_package: Path, synthetic_world: Path, tmp_path: Path) -> None:
    world = Path(shutil.copytree(synthetic_world, tmp_path / "world"))
    loader = NuScenesLoader(world, version="v1.0-mini", split="mini_val", preset="tiny")
    path = loader.record(1).lidar.path
    path.write_bytes(path.read_bytes()[:-3])
    common = ["infer", "--package", str(trained_tiny_package), "--data", str(world),
              "--on-error", "skip"]
    one = runner.invoke(app, [*common, "--out", str(tmp_path / "one")])
    two = runner.invoke(app, [*common, "--out", str(tmp_path / "ray"), "--ray", cluster.address])
    assert one.exit_code == two.exit_code == 8, (one.output, two.output)
    a = json.loads((tmp_path / "one" / "detections.json").read_text())
    b = json.loads((tmp_path / "ray" / "detections.json").read_text())
    assert b["frames"] == a["frames"] and len(a["frames"]) == len(loader) - 1
    assert _without(b["run"], "ray") == a["run"]
    assert [f["index"] for f in b["run"]["failures"]] == [1]
    assert path.name in b["run"]["failures"][0]["message"]


class CtrlC:
    """A sink that raises ``KeyboardInterrupt`` when frame ``at`` arrives (Ctrl-C mid-run)."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def write(self, frame: Any, detections: Any, timings: Mapping[str, float]) -> None:
        self.seen += 1
        if self.seen == self.at:
            raise KeyboardInterrupt

    def close(self, run: Any) -> list[Path]:
        return []


def test_ctrl_c_keeps_the_finished_frames_and_stops_the_workers(
        cluster: Any, trained_tiny_package: Path, fresh_val_world: Path, tmp_path: Path) -> None:
    pkg = load_package(trained_tiny_package)
    source = DatasetSource(fresh_val_world, pkg.preset)
    options = RayOptions(cluster.address, workers=2)
    with connect(options):
        pool = RayDetectorPool(source, trained_tiny_package, {"threads": 1}, options)
        actors = list(pool.workers.values())
        with pool:
            sink = DetectionsJson(tmp_path / "d.json", {})
            loop, _ = run_frames(source, pool, [sink, CtrlC(at=3)])
        assert not pool.workers
        for actor in actors:  # killed: their queued frames are cancelled
            with pytest.raises(ray.exceptions.RayActorError):
                ray.get(actor.facts.remote(), timeout=60)
    doc = json.loads((tmp_path / "d.json").read_text())
    assert loop.status == "interrupted" and doc["run"]["status"] == "interrupted"
    assert doc["run"]["frames_done"] == 2 and len(doc["frames"]) == 3  # the third was written
    assert list(doc["frames"]) == [source.label(i) for i in range(3)]  # in frame order


def test_bench_ray_measures_frames_per_second_and_bytes(cluster: Any, trained_tiny_package: Path,
                                                       fresh_val_world: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench-ray", "--package", str(trained_tiny_package), "--data",
                                 str(fresh_val_world), "--ray", cluster.address, "--workers", "2",
                                 "--limit", "4", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["workers"] for r in rows] == [0, 2] and all(r["frames"] == 4 for r in rows)
    assert all(r["frames_per_s"] > 0 for r in rows)
    assert rows[0]["result_bytes_per_frame"] is None and 0 < rows[1]["result_bytes_per_frame"]
    assert "frames/s" in result.output


@pytest.mark.parametrize("differs", ["version", "package"])
def test_a_worker_that_differs_from_the_driver_is_refused_by_name(
        cluster: Any, trained_tiny_package: Path, fresh_val_world: Path, differs: str) -> None:
    pkg = load_package(trained_tiny_package)
    source = DatasetSource(fresh_val_world, pkg.preset, limit=1)
    mine = WorkerFacts.of(trained_tiny_package)
    expected, error, words = {
        "version": (WorkerFacts("0.0.0-other", mine.package_sha256), ConfigError,
                    "runs bevdeploy 0.1.0, the driver 0.0.0-other"),
        "package": (WorkerFacts(mine.version, "0" * 64), PackageError,
                    f"manifest SHA-256 is {mine.package_sha256}")}[differs]
    options = RayOptions(cluster.address, workers=1)
    with connect(options), pytest.raises(error) as caught:
        RayDetectorPool(source, trained_tiny_package, {"threads": 1}, options, expected=expected)
    assert "worker 0 on " in str(caught.value) and words in str(caught.value)
    assert caught.value.field == "--ray"


def test_more_workers_than_the_cluster_holds_are_refused(cluster: Any, trained_tiny_package: Path,
                                                         fresh_val_world: Path,
                                                         tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--package", str(trained_tiny_package), "--data",
                                 str(fresh_val_world), "--out", str(tmp_path / "out"), "--ray",
                                 cluster.address, "--workers", "3"])
    assert result.exit_code == 2
    assert "[--workers]" in result.output and "need 3 CPUs" in result.output


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket closes


@pytest.mark.parametrize("args, words", [
    (["--ray", "127.0.0.1:{port}"], ["[--ray]", "cannot reach the Ray cluster at 127.0.0.1:{port}"]),
    (["--ray", "headnode"], ["[--ray]", "'headnode' is not a cluster address"]),
    (["--workers", "4"], ["[--ray]", "add --ray"]),
])
def test_bad_cluster_options_fail_fast_naming_them(trained_tiny_package: Path,
                                                   synthetic_world: Path, tmp_path: Path,
                                                   args: list[str], words: list[str]) -> None:
    port = _closed_port()
    t0 = time.perf_counter()
    result = runner.invoke(app, ["infer", "--package", str(trained_tiny_package), "--data",
                                 str(synthetic_world), "--out", str(tmp_path / "out"),
                                 *(a.format(port=port) for a in args)])
    assert time.perf_counter() - t0 < 30
    assert result.exit_code == 2, result.output
    for w in words:
        assert w.format(port=port) in result.output
    assert not (tmp_path / "out" / "detections.json").exists()
