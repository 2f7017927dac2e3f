"""Marker policy for the whole suite.

``slow`` cases run only with ``--runslow``; ``gpu`` cases only where a CUDA device is usable;
``tensorrt`` cases only where ``tensorrt`` imports. Each skip says why, so a green run on a
CPU-only CI machine is honest about what it did not exercise.
"""

from __future__ import annotations

import importlib.util

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow (full-size models, long runs)")


def _cuda_usable() -> str | None:
    """None when a CUDA device is usable, else the reason it is not."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    return None if torch.cuda.is_available() else "no CUDA device is usable"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--runslow")
    cuda_reason = None
    if any("gpu" in item.keywords for item in items):
        cuda_reason = _cuda_usable()
    trt_missing = importlib.util.find_spec("tensorrt") is None
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with --runslow"))
        if "gpu" in item.keywords and cuda_reason:
            item.add_marker(pytest.mark.skip(reason=f"gpu: {cuda_reason}"))
        if "tensorrt" in item.keywords and trt_missing:
            item.add_marker(pytest.mark.skip(reason="tensorrt: the tensorrt module does not import"))
