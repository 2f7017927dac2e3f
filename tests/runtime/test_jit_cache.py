"""A first run says that it compiles the CPU kernels (runtime/kernels/cpu/jit_cache.py,
cli/_progress.py): numba's cache is asked per kernel, so the notice appears exactly when a
kernel is not compiled yet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import importlib, io, json
import numpy as np
from rich.console import Console
from bevdeploy.cli._progress import say_if_compiling
from bevdeploy.runtime.kernels.cpu import jit_cache
out = io.StringIO()
before = jit_cache.uncached_kernels()
said = say_if_compiling(Console(file=out), None)
quiet = say_if_compiling(Console(file=out), "torch")
geometry = importlib.import_module("bevdeploy.runtime.kernels.cpu.geometry")
geometry._group_by_cell(np.array([0, 2, 2], np.int64), 3)  # compiles and caches one kernel
print(json.dumps({"before": before, "after": jit_cache.uncached_kernels(), "said": said,
                  "quiet": quiet, "text": out.getvalue()}))
"""


def test_uncached_kernels_follow_numbas_cache(tmp_path: Path) -> None:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}  # an empty cache: a first run
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert "geometry._group_by_cell" in seen["before"] and "bevpool._bev_pool" in seen["before"]
    assert set(seen["after"]) == set(seen["before"]) - {"geometry._group_by_cell"}
    assert seen["said"] and not seen["quiet"]
    assert f"compiling CPU kernels (first run only: {len(seen['before'])} numba kernels" \
        in seen["text"].replace("\n", " ")
