"""Words on screen before the long silent parts: a first run's kernel compilation.

A first frame that takes tens of seconds with nothing printed looks like a hang; the frame
loop's own progress cannot say why that frame is slow. ``say_if_compiling`` prints one line
when numba's cache lacks any CPU kernel (``runtime.kernels.cpu.jit_cache``), before the frames.
``frame_progress`` shows the frames of a loop that is not a ``FrameLoop`` (INT8 calibration)
the way ``FrameLoop`` does: a progress bar on a terminal, one line per frame otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape


def say_if_compiling(console: Console, backend: str | None) -> bool:
    """Print the first-run notice when the CPU runtime (``backend`` ``onnxruntime``, or
    ``None``: a package's default) will compile kernels; returns whether it did."""
    if backend not in (None, "onnxruntime"):
        return False
    from bevdeploy.runtime.kernels.cpu.jit_cache import uncached_kernels

    missing = uncached_kernels()
    if missing:
        console.print(f"compiling CPU kernels (first run only: {len(missing)} numba kernels, "
                      "tens of seconds on two cores; cached for later runs) …", highlight=False)
    return bool(missing)


@contextmanager
def frame_progress(console: Console, description: str
                   ) -> Iterator[Callable[[int, int, str], None]]:
    """A callback ``(done, total, name)`` to call after each frame: it advances a rich
    progress bar on a terminal, or prints ``description: frame done/total (name) in N ms``."""
    last = [time.perf_counter()]
    if not console.is_terminal:
        def say(done: int, total: int, name: str) -> None:
            now = time.perf_counter()
            console.print(f"{escape(description)}: frame {done}/{total} ({escape(name)}) in "
                          f"{(now - last[0]) * 1e3:.0f} ms", highlight=False, soft_wrap=True)
            last[0] = now
        yield say
        return
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def advance(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total)
        yield advance
