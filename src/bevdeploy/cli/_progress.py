"""Words on screen before the long silent parts: a first run's kernel compilation.

A first frame that takes tens of seconds with nothing printed looks like a hang; the frame
loop's own progress cannot say why that frame is slow. ``say_if_compiling`` prints one line
when numba's cache lacks any CPU kernel (``runtime.kernels.cpu.jit_cache``), before the frames.
"""

from __future__ import annotations

from rich.console import Console


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
