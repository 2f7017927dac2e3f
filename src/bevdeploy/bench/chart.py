"""The bench as a picture: one stacked bar per variant, one segment per stage.

A table of medians answers "how fast"; a stacked bar answers "where does the time go" at a
glance, and shows side by side how the reference, the packages and the schedules spend it.
Each segment is a stage's median time; a black tick marks the variant's median end-to-end
total. Under a schedule that overlaps stages (branches, frames) the segments add up to more
than the total, and the tick shows by how much; in the sequential schedule the gap between
the bar's end and the tick is the time outside the stages. A dotted black tick marks the
variant's floor (``bench.roofline``) where it has one: the distance between the two ticks is
what is left to gain at this machine's measured peaks.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

from bevdeploy.bench.report import STAGE_ORDER, BenchReport
from bevdeploy.bench.roofline import Floor
from bevdeploy.io import atomic_file


def _stages(report: BenchReport) -> list[str]:
    present = {k for r in report.results for k in r.stages}
    return [s for s in STAGE_ORDER if s in present] + sorted(present - set(STAGE_ORDER))


def latency_chart(report: BenchReport, path: str | Path) -> Path:
    """Write the stacked per-stage latency chart of ``report`` as a PNG at ``path``."""
    stages = _stages(report)
    colors = colormaps["tab20"].colors
    labels = [f"{r.variant.label}\n{r.precision}" for r in report.results]
    fig = Figure(figsize=(9.0, max(3.0, 1.0 + 0.75 * len(labels))), dpi=100)
    ax = fig.add_subplot()
    labelled: set[str] = set()
    for i, result in enumerate(report.results):
        left = 0.0
        for j, stage in enumerate(stages):
            stat = result.stages.get(stage)
            if stat is None:
                continue
            ax.barh(i, stat.median_ms, left=left, color=colors[j % len(colors)],
                    label=None if stage in labelled else stage)
            labelled.add(stage)
            left += stat.median_ms
        total = result.total.median_ms
        ax.plot([total, total], [i - 0.42, i + 0.42], color="black", linewidth=2)
        floor = report.floor(result)
        text = f"{total:.0f} ms"
        if isinstance(floor, Floor):
            ax.plot([floor.total_ms] * 2, [i - 0.42, i + 0.42], color="black", linewidth=2,
                    linestyle=":")
            text += f" ({floor.ratio:.2f}× floor)"
        ax.text(max(left, total) * 1.01, i, text, va="center", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("median ms per frame (segments: stages; black tick: end-to-end total; "
                  "dotted tick: the floor at this machine's peaks)")
    ax.set_title(f"bevdeploy bench: {report.frames} frames after {report.warmup} warm-up, "
                 f"{report.threads} threads", fontsize=9)
    ax.set_xlim(0, max(max(sum(s.median_ms for s in r.stages.values()), r.total.median_ms)
                       for r in report.results) * 1.3)
    handles, names = ax.get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda k: stages.index(names[k]))  # pipeline order
    ax.legend([handles[k] for k in order], [names[k] for k in order], fontsize=7,
              loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    out = Path(path)
    with atomic_file(out) as handle:
        fig.savefig(handle, format="png", bbox_inches="tight")
    return out
