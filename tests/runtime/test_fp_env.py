"""runtime.fp_env: subnormals flushed inside the runtime's blocks, the caller's mode kept
outside them (a library must not change how its caller's thread computes)."""

from __future__ import annotations

import platform
import threading

import numpy as np
import pytest

from bevdeploy.runtime.fp_env import callers_fp_env, flush_subnormals

X86_64 = platform.machine().lower() in ("x86_64", "amd64")


def tiny_value() -> float:
    """1e-40 (a float32 subnormal) times one: 1e-40, or 0.0 where subnormals are flushed."""
    return float((np.array([1e-40], dtype=np.float32) * np.float32(1.0))[0])


@pytest.mark.skipif(not X86_64, reason="the flush bits are x86-64's MXCSR")
def test_flush_subnormals_flushes_inside_and_restores_after() -> None:
    assert tiny_value() > 0.0
    with flush_subnormals():
        assert tiny_value() == 0.0
        with flush_subnormals():  # nested: still flushing, and the outer mode comes back
            assert tiny_value() == 0.0
        assert tiny_value() == 0.0
    assert tiny_value() > 0.0


@pytest.mark.skipif(not X86_64, reason="the flush bits are x86-64's MXCSR")
def test_callers_fp_env_undoes_what_a_runtime_leaves_on_the_calling_thread() -> None:
    """OpenVINO with its subnormal flush on sets the mode on the compiling thread and leaves it
    there (shown first, in a thread of its own); inside ``callers_fp_env`` the caller keeps
    its mode."""
    ov = pytest.importorskip("openvino")
    from bevdeploy.bench.peak_graphs import Sizes, problem_graphs

    problem = next(p for p in problem_graphs(Sizes()) if p.precision == "fp32")
    config = {"INFERENCE_PRECISION_HINT": "f32", "CPU_DENORMALS_OPTIMIZATION": True}

    def compile_model() -> None:
        ov.Core().compile_model(ov.Core().read_model(model=problem.model, weights=b""), "CPU",
                                config)

    def bare() -> None:
        compile_model()
        seen.append(tiny_value())

    seen: list[float] = []
    leaking = threading.Thread(target=bare)
    leaking.start()
    leaking.join()
    assert seen == [0.0]  # the runtime does leave its mode behind
    with callers_fp_env():
        compile_model()
    assert tiny_value() > 0.0


@pytest.mark.skipif(not X86_64, reason="the flush bits are x86-64's MXCSR")
def test_the_mode_is_per_thread() -> None:
    seen = []
    with flush_subnormals():
        worker = threading.Thread(target=lambda: seen.append(tiny_value()))
        worker.start()
        worker.join()
    # a thread started elsewhere keeps its own mode (Linux copies the creator's at start, so
    # this thread, started while flushing, shows that a later restore here does not touch it)
    assert seen == [0.0] and tiny_value() > 0.0
