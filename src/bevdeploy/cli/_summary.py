"""The demo's last screen: what ran, how well, how fast, and where to look.

A new user's first run ends here, so it fits one 80-column screen: frames and boxes (counted
the way the pictures count them), the accuracy on the demo's own world (nuscenes-devkit's mAP
and NDS over the frames that ran: a few frames of a synthetic world, a smoke test of the whole
chain rather than a benchmark), the median time of each stage after the first frame (which
pays for compiling the CPU kernels and the geometry plan), and the pictures' folder.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from bevdeploy.eval.nuscenes_eval import EvalResult
from bevdeploy.sinks import StageTimings


def print_demo_summary(console: Console, *, frames: int, boxes: str,
                       metrics: EvalResult | None, timings: StageTimings,
                       pictures: list[Path]) -> None:
    """Print the summary table (two columns, wrapped to the terminal)."""
    table = Table(title="demo summary", show_header=False, title_justify="left")
    table.add_column("item", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("frames", str(frames))
    table.add_row("boxes", boxes)
    if metrics is not None:
        table.add_row("accuracy", f"mAP {metrics.mean_ap:.3f} (classes present: "
                                  f"{metrics.present_map:.3f}), NDS {metrics.nds:.3f} on these "
                                  f"{frames} frame(s) of the demo world (nuscenes-devkit)")
    skip = 1 if len(timings.frames) > 1 else 0
    medians = timings.medians(skip)
    if medians:
        total = medians.pop("total", None)
        which = "after the first" if skip else "one frame"
        table.add_row(f"ms per stage ({which})",
                      " | ".join(f"{stage} {ms:.1f}" for stage, ms in medians.items()))
        if total is not None:
            table.add_row("ms per frame", f"{total:.1f} median"
                          + (f" (first frame {timings.frames[0]['total']:.0f}: compiling the "
                             "CPU kernels, cached for later runs)" if skip else ""))
    if pictures:
        table.add_row("pictures", f"{len(pictures)} PNG in {pictures[0].parent}")
    console.print(table)
