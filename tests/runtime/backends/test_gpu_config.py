"""``GpuConfig`` (the ``--gpu-config`` string: precision, ``cl``, ``graph``, ``streams``,
``host``) and
``Pipeline(runner_options=...)``, the way its switches reach the runners.

Parsing is plain logic. The wiring is checked on the trained tiny package with torch-cuda on the
CPU (``device="cpu"``): the runners the pipeline builds must carry exactly the given options.
That those runners' detections equal ONNX Runtime's is ``test_torch_cuda.py``'s
``test_pipeline_detections_equal_onnxruntime_on_cpu``, which builds its pipeline this way.
"""

from __future__ import annotations

import itertools
from dataclasses import fields

import onnxruntime as ort
import pytest
import torch

from bevdeploy.errors import ConfigError
from bevdeploy.runtime import Pipeline
from bevdeploy.runtime.backends import GpuOptions, RunnerOptions
from bevdeploy.runtime.backends.gpu import (GPU_LADDER, GPU_TOKENS, PRECISIONS, TENSORRT_LADDER,
                                            GpuConfig)


@pytest.mark.parametrize("text, expected", [
    ("fp32", GpuConfig()),
    ("fp16", GpuConfig(precision="fp16")),
    ("bf16+cl", GpuConfig(precision="bf16", channels_last=True)),
    ("graph", GpuConfig(cuda_graph=True)),
    ("fp16+graph+streams", GpuConfig(precision="fp16", cuda_graph=True, streams=True)),
    ("streams+cl+fp16+graph", GpuConfig("fp16", True, True, True)),  # any order
    ("host+bf16", GpuConfig(precision="bf16", host_kernels=True)),
    (" FP16 + Graph ", GpuConfig(precision="fp16", cuda_graph=True)),  # case, spaces
])
def test_parse_reads_every_token(text, expected):
    assert GpuConfig.parse(text) == expected


def test_the_label_is_canonical_and_parses_back():
    switches = ("cl", "graph", "streams", "host")
    seen = set()
    for precision in PRECISIONS:
        for on in itertools.chain.from_iterable(itertools.combinations(switches, k)
                                                for k in range(5)):
            config = GpuConfig.parse("+".join([*reversed(on), precision]))
            assert config.label == "+".join([precision, *on])
            assert GpuConfig.parse(config.label) == config
            seen.add(config)
    assert len(seen) == 3 * 16  # every combination is a distinct config
    assert [GpuConfig.parse(t).label for t in GPU_LADDER] == list(GPU_LADDER)
    assert [GpuConfig.parse(t).label for t in TENSORRT_LADDER] == [
        "fp32+host", "fp32", "fp32+graph", "fp32+graph+streams"]
    # each step of a ladder changes one switch, or the precision, of the step before
    for ladder in (GPU_LADDER, TENSORRT_LADDER):
        for before, after in itertools.pairwise(ladder):
            a, b = GpuConfig.parse(before), GpuConfig.parse(after)
            assert sum(getattr(a, f.name) != getattr(b, f.name) for f in fields(GpuConfig)) == 1


@pytest.mark.parametrize("text, names", [
    ("fp8", "unknown token 'fp8'"),
    ("fp16+graphs", "unknown token 'graphs'"),
    ("fp16++graph", "an empty token"),
    ("", "an empty token"),
    ("graph+graph", "repeats ['graph']"),
    ("fp16+bf16", "the precisions ['fp16', 'bf16']"),
    ("fp32+cl+fp16", "the precisions ['fp32', 'fp16']"),
])
def test_parse_refuses_bad_repeated_and_conflicting_tokens(text, names):
    with pytest.raises(ConfigError) as err:
        GpuConfig.parse(text)
    assert err.value.field == "--gpu-config"
    assert names in str(err.value)
    if "precisions" not in names:
        assert f"valid tokens: {', '.join(GPU_TOKENS)}" in str(err.value)


def test_the_config_becomes_runner_options_and_a_schedule():
    config = GpuConfig.parse("bf16+cl+graph")
    assert config.options(3) == GpuOptions(threads=3, device="cuda", precision="bf16",
                                           channels_last=True, cuda_graph=True)
    assert config.options(device="cpu").device == "cpu"
    # torch-cuda on the CPU (conversion checks) runs under the CPU's sequential schedule
    assert GpuConfig.parse("fp16").schedule("cpu") == "sequential"
    with pytest.raises(ConfigError, match="streams need a CUDA device"):
        GpuConfig.parse("streams").schedule("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is usable here")
def test_without_cuda_the_cuda_schedule_is_refused_with_the_reason():
    for text in ("fp32", "fp16+streams"):
        with pytest.raises(ConfigError, match="the cuda schedule needs CUDA: .+"):
            GpuConfig.parse(text).schedule()


def test_the_backend_check_refuses_cpu_backends_and_tensorrt_precision():
    for backend in ("onnxruntime", "torch"):
        with pytest.raises(ConfigError, match=f"not '{backend}'") as err:
            GpuConfig.parse("graph").check_backend(backend)
        assert err.value.field == "--gpu-config"
    for text, dropped in (("fp16", "['fp16']"), ("bf16+graph", "['bf16']"),
                          ("fp16+cl+streams", "['fp16', 'cl']"), ("cl", "['cl']")):
        with pytest.raises(ConfigError, match="fixed when `bevdeploy build` makes it") as err:
            GpuConfig.parse(text).check_backend("tensorrt")
        assert f"drop {dropped}" in str(err.value)
    for text in ("fp32", "graph+streams"):
        GpuConfig.parse(text).check_backend("tensorrt")
    for text in ("bf16+cl+graph+streams", "fp32"):
        GpuConfig.parse(text).check_backend("torch-cuda")
    assert GpuConfig.parse("graph+streams").describe("tensorrt") == "engine+graph+streams"
    assert GpuConfig.parse("fp16+graph").describe("torch-cuda") == "fp16+graph"


# ------------------------------------------------------------------ Pipeline(runner_options)


def test_runners_get_exactly_the_given_options(trained_tiny_package):
    config = GpuConfig.parse("bf16+cl")
    options = config.options(device="cpu")
    pipeline = Pipeline(trained_tiny_package, backend="torch-cuda", threads=1,
                        runner_options=options, schedule=config.schedule("cpu"))
    assert pipeline.threads == 1 and pipeline.scn.executor.threads == 1  # numba, SCN keep it
    for runner in pipeline.runners.values():
        assert runner.options is options
        assert runner.dtype == torch.bfloat16 and runner.device.type == "cpu"
        floats = [b for b in runner.module.buffers() if b.is_floating_point()]
        assert floats and all(b.dtype == torch.bfloat16 for b in floats)


def test_onnxruntime_sessions_follow_the_given_options(trained_tiny_package):
    pipeline = Pipeline(trained_tiny_package,
                        runner_options=RunnerOptions(threads=1, optimization="basic"))
    assert pipeline.threads is None  # the runners' threads do not bound the rest
    for runner in pipeline.runners.values():
        so = runner.session.get_session_options()
        assert so.intra_op_num_threads == 1
        assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


@pytest.mark.parametrize("kwargs, options, name", [
    (dict(threads=2), RunnerOptions(threads=1), "threads=2 contradicts runner_options.threads=1"),
    (dict(optimization="basic"), RunnerOptions(), "optimization='basic' contradicts"),
    (dict(spinning=True), GpuOptions(device="cpu"), "spinning=True contradicts"),
])
def test_contradicting_options_are_refused(trained_tiny_package, kwargs, options, name):
    with pytest.raises(ConfigError, match=name) as err:
        Pipeline(trained_tiny_package, runner_options=options, **kwargs)
    assert err.value.field == "runner_options"


def test_fp32_on_cuda_turns_tf32_off_for_the_process():
    """cuDNN's default on Ampere+ is TF32 for float32 convolutions (~1e-3 relative), which
    compare's FP32 limits cannot hold. The flags exist on CPU builds of torch too."""
    from bevdeploy.runtime.backends.gpu import ieee_fp32

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        ieee_fp32(torch.device("cpu"))  # nothing to do for the CPU
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        ieee_fp32(torch.device("cuda", 0))
        assert not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_the_default_schedule_is_the_cuda_one_for_a_gpu_backend_on_cuda(trained_tiny_package):
    from bevdeploy.runtime.pipeline import default_schedule
    from bevdeploy.runtime.schedules import sequential

    assert Pipeline(trained_tiny_package).schedule is sequential
    on_cpu = Pipeline(trained_tiny_package, backend="torch-cuda",
                      runner_options=GpuOptions(device="cpu"))
    assert on_cpu.schedule is sequential  # torch-cuda on the CPU: conversion checks
    assert default_schedule("onnxruntime", GpuOptions()) == "sequential"
    if torch.cuda.is_available():
        from bevdeploy.runtime.schedules import CudaSchedule

        schedule = default_schedule("torch-cuda", GpuOptions(precision="fp16"))
        assert isinstance(schedule, CudaSchedule) and schedule.streams
        assert schedule.scn_dtype == torch.float16 and not schedule.host_kernels
    else:
        with pytest.raises(ConfigError, match="needs CUDA"):
            default_schedule("torch-cuda", GpuOptions())
