"""The pipeline's schedules: ``sequential``, ``branches`` and ``frames`` compute the same
detections bit for bit; the frame pipeline keeps order, propagates a failing frame's error with
the frame named, and stops its worker when a frame fails or the consumer stops early; every
kernel releases the GIL, which the concurrent schedules rely on.

Exact equality is the right bar: every schedule runs the same kernels and ONNX sessions on the
same inputs, and nothing sums across threads (numba kernels partition their outputs, the
sessions' intra-op pools do not depend on which Python thread calls them), so no float is
summed in a different order.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import threading
from dataclasses import replace

import numpy as np
import pytest
from numba.core.registry import CPUDispatcher

from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.errors import ConfigError, DatasetError, InputError
from bevdeploy.runtime import kernels
from bevdeploy.runtime.pipeline import Pipeline
from bevdeploy.runtime.schedules import SCHEDULES, STREAM_DEPTH
from bevdeploy.runtime.stages import DecodeStage, VoxelizeStage

FRAMES = 5  # the 3 samples of mini_val, cycled: consecutive frames always differ


@pytest.fixture(scope="module")
def frames(synthetic_world):
    loader = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val",
                            preset="tiny")
    distinct = [loader[i] for i in range(len(loader))]
    return [distinct[i % len(distinct)] for i in range(FRAMES)]


@pytest.fixture(scope="module")
def pipelines(trained_tiny_package):
    made = {name: Pipeline(trained_tiny_package, threads=2, schedule=name) for name in SCHEDULES}
    yield made
    for pipeline in made.values():
        pipeline.close()


def _frames_workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "bevdeploy-frames"]


def test_all_schedules_give_identical_detections(pipelines, frames):
    expected = list(pipelines["sequential"].run_stream(frames))
    assert all(len(d) > 0 for d in expected)  # real boxes, not empty lists compared
    assert len({d.scores.tobytes() for d in expected[:3]}) == 3  # the frames differ
    # run_stream of sequential and branches is run() per frame; that of frames is pipelined,
    # and its run() (one frame, nothing to overlap) is a path of its own
    results = {"branches": list(pipelines["branches"].run_stream(frames)),
               "frames": list(pipelines["frames"].run_stream(frames)),
               "frames, one at a time": [pipelines["frames"].run(f) for f in frames[:2]]}
    for name, got in results.items():
        assert len(got) == (2 if "one" in name else len(expected))
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a.boxes, b.boxes, err_msg=name)
            np.testing.assert_array_equal(a.scores, b.scores, err_msg=name)
            np.testing.assert_array_equal(a.labels, b.labels, err_msg=name)


@pytest.mark.parametrize("schedule", ["branches", "frames"])
def test_concurrent_schedules_time_every_stage(pipelines, frames, schedule):
    pipeline = pipelines[schedule]
    for _ in pipeline.run_stream(frames[:3]):
        t = pipeline.last_timings
        assert {"points", "voxelize", "scn", "normalize", "camera.backbone", "fuser",
                "decode", "total"} <= set(t)
        assert all(v >= 0 for v in t.values())
        assert max(v for k, v in t.items() if k != "total") <= t["total"]


def test_a_bad_frame_ends_the_stream_naming_it_and_the_worker_exits(pipelines, frames):
    bad = replace(frames[2], images=np.ascontiguousarray(frames[2].images[:, :800]))
    stream = pipelines["frames"].run_stream([frames[0], frames[1], bad, frames[3]])
    got = [next(stream), next(stream)]
    with pytest.raises(InputError) as err:
        next(stream)
    assert err.value.field == "images"
    assert any("frame 2 of the stream" in note for note in err.value.__notes__)
    assert len(got) == 2 and not _frames_workers()


def test_a_failing_loader_is_reported_with_the_frame_it_was_loading(pipelines, frames):
    def loader():
        yield frames[0]
        raise DatasetError("sample record missing", path="v1.0-mini/sample.json",
                           field="token")

    stream = pipelines["frames"].run_stream(loader())
    assert len(next(stream)) > 0
    with pytest.raises(DatasetError) as err:
        next(stream)
    assert any("frame 1 of the stream (while loading it)" in n for n in err.value.__notes__)
    assert not _frames_workers()


def test_an_error_on_the_consumer_side_stops_the_worker(trained_tiny_package, frames):
    with Pipeline(trained_tiny_package, threads=2, schedule="frames") as pipeline:
        pipeline.decode = DecodeStage(replace(pipeline.decode.params, out_size_factor=0))
        with pytest.raises(InputError) as err:
            list(pipeline.run_stream(frames))
        assert err.value.field == "out_size_factor"
        assert any("frame 0 of the stream" in note for note in err.value.__notes__)
    assert not _frames_workers()


def test_stopping_early_stops_the_worker_without_draining_the_source(pipelines, frames):
    pulled = []

    def endless():
        while True:
            pulled.append(len(pulled))
            yield frames[len(pulled) % len(frames)]

    stream = pipelines["frames"].run_stream(endless())
    assert len(next(stream)) > 0
    stream.close()
    assert not _frames_workers()
    # pulled: the one yielded and at most STREAM_DEPTH the worker prepared ahead of it
    assert len(pulled) <= 1 + STREAM_DEPTH


def test_a_failing_lidar_branch_fails_the_frame_and_the_pipeline_runs_on(trained_tiny_package,
                                                                         frames):
    with Pipeline(trained_tiny_package, threads=2, schedule="branches") as pipeline:
        good = pipeline.voxelize
        params = good.params
        pipeline.voxelize = VoxelizeStage(replace(params, voxel_size=params.voxel_size * 0))
        with pytest.raises(InputError) as err:
            pipeline.run(frames[0])
        assert err.value.field == "voxel_size"
        pipeline.voxelize = good
        assert len(pipeline.run(frames[0])) > 0


def test_schedules_are_chosen_by_name(trained_tiny_package):
    with pytest.raises(ConfigError) as err:
        Pipeline(trained_tiny_package, schedule="pipelined")
    assert err.value.field == "schedule"


def test_every_kernel_releases_the_gil():
    """The concurrent schedules overlap Python threads only where compiled code runs without
    the GIL: a numba function compiled without ``nogil`` holds it for its whole run."""
    dispatchers = []
    for info in pkgutil.iter_modules(kernels.cpu.__path__):
        module = importlib.import_module(f"{kernels.cpu.__name__}.{info.name}")
        dispatchers += [(info.name, name, obj) for name, obj in vars(module).items()
                        if isinstance(obj, CPUDispatcher) and obj.__module__ == module.__name__
                        and obj.targetoptions.get("inline", "never") == "never"]
    assert len(dispatchers) >= 12
    holding = [f"{m}.{n}" for m, n, d in dispatchers if not d.targetoptions.get("nogil")]
    assert holding == []


@pytest.mark.parametrize("exported, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_wait_passively_unless_the_user_chose(exported, expected):
    """numba's OpenMP layer reads the policy when it loads; importing the kernels sets the
    default (see kernels/cpu/__init__.py) without overriding what the user exported."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if exported is not None:
        env["OMP_WAIT_POLICY"] = exported
    done = subprocess.run([sys.executable, "-c", "import os, bevdeploy.runtime.kernels; "
                           "print(os.environ['OMP_WAIT_POLICY'])"], env=env, check=True,
                          capture_output=True, text=True)
    assert done.stdout.strip() == expected
