"""The ``bevdeploy`` command line: one module per command group, each command a thin layer of
options over one library call (``bevdeploy.detector``, ``bevdeploy.frame_loop``, the sinks and
the tools of ``export``, ``optimize``, ``eval`` and ``bench``).

============  ===============================================================
``_app``      the Typer app, the error policy (one line and an exit code)
``_options``  the options several commands share, declared once
``data``      synth, demo
``run``       infer, eval
``bag``       bag info (and the bag glue of infer, eval, synth)
``rig``       rig from-nuscenes, from-info, check
``package``   export, optimize, build, inspect
``evidence``  compare, train
``bench``     bench, bench-kernels
``system``    presets, model-info, doctor
============  ===============================================================
"""

from bevdeploy.cli._app import app

# Importing a command module registers its commands; this order is the order of ``--help``.
from bevdeploy.cli import data, run, bag, rig, package, evidence, bench, system  # noqa: E402,F401  # isort: skip

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
