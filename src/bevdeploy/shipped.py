"""Deploy packages that ship inside bevdeploy, so the main job needs no PyTorch.

The runtime is torch-free, but a package has to be exported once from the weights, which needs
the ``[export]`` extra (PyTorch, spconv: gigabytes on a machine that resolves the CUDA build).
For a preset whose weights ship (``tiny``), the package ``export --preset tiny`` writes ships
too, in ``assets/packages/<preset>/``, and ``demo`` copies it instead of exporting.

A shipped package is used only when it is what an export would write now: its manifest names
the preset as it is defined today and the SHA-256 of the checkpoint that ships with it. The
test ``tests/test_shipped.py`` exports the preset and compares module by module, byte for
byte, so a change of the model, the exporter or the weights cannot leave a stale copy behind;
regenerate with::

    bevdeploy export --preset tiny --out src/bevdeploy/assets/packages/tiny --overwrite

and delete the output lock ``export`` leaves beside it (``assets/packages/.tiny.lock``), which
``package-data`` would otherwise ship.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from bevdeploy.errors import PackageError
from bevdeploy.io import staged_dir
from bevdeploy.package import load_package, sha256_file
from bevdeploy.presets import Preset


def shipped_package_dir(preset_name: str) -> Path:
    """Where the package of ``preset_name`` ships (it may not exist)."""
    return Path(str(resources.files("bevdeploy").joinpath("assets", "packages", preset_name)))


def shipped_package(preset: Preset) -> Path | None:
    """The shipped package of ``preset`` when one exists and matches it exactly (same preset,
    same checkpoint file by SHA-256, every module file verified); else ``None``."""
    path = shipped_package_dir(preset.name)
    checkpoint = preset.checkpoint_path
    if checkpoint is None or not (path / "manifest.json").is_file() or not checkpoint.is_file():
        return None
    try:
        pkg = load_package(path)
    except PackageError:
        return None
    recorded = pkg.manifest.checkpoint or {}
    if pkg.preset != preset or recorded.get("sha256") != sha256_file(checkpoint):
        return None
    return path


def install_shipped(source: Path, out: Path) -> Path:
    """Copy the shipped package ``source`` to ``out`` atomically (staging directory, then
    rename); returns ``out``."""
    with staged_dir(out, cannot="cannot copy the shipped package") as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
    return out
