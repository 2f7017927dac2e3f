"""The README's Python example runs as printed (on the session's package and world)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_api_example_runs(trained_tiny_package, synthetic_world, tmp_path):
    section = README.read_text().split("## Layout and Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    demo = tmp_path / "out" / "demo"
    demo.mkdir(parents=True)
    (demo / "package").symlink_to(trained_tiny_package, target_is_directory=True)
    (demo / "world").symlink_to(synthetic_world, target_is_directory=True)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    count, rest = result.stdout.split(" boxes in ")
    assert int(count) > 0 and rest.strip().endswith("ms")
