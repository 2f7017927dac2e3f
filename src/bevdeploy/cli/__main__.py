"""``python -m bevdeploy.cli``: the same command line as the ``bevdeploy`` script."""

from bevdeploy.cli import main

main()
