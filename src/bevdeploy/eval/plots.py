"""The pictures of an evaluation: what the numbers in metrics.json look like.

mAP and NDS are averages; where a model loses them shows in the curves. ``write_eval_plots``
has nuscenes-devkit render its own figures from the evaluation's metric data (the summary of
PR and TP-error curves, and per present class its PR curve over the four distance thresholds
and its TP-error curves), so they are the figures nuScenes users know, and adds one bar chart
of AP per class with the number of ground-truth boxes behind each (a class without ground truth
has AP 0 by the devkit's definition, not because the model failed on it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from matplotlib.figure import Figure

from bevdeploy.io import atomic_file

if TYPE_CHECKING:
    from nuscenes.eval.detection.data_classes import (DetectionConfig,
                                                      DetectionMetricDataList, DetectionMetrics)

PLOTS_DIR = "plots"


class Scores(Protocol):
    """What the chart reads of an ``eval.nuscenes_eval.EvalResult`` (named structurally, so
    this module and the evaluation that calls it do not import each other)."""

    mean_ap: float
    nds: float
    present_map: float
    class_ap: Mapping[str, float]
    gt_counts: Mapping[str, int]
    present_classes: tuple[str, ...]
    num_samples: int
    split: str


def write_eval_plots(md_list: DetectionMetricDataList, metrics: DetectionMetrics,
                     config: DetectionConfig, result: Scores, out_dir: str | Path
                     ) -> list[Path]:
    """Write the devkit's figures and the per-class AP chart into ``out_dir``; returns them."""
    import matplotlib.pyplot as plt
    from nuscenes.eval.detection.render import class_pr_curve, class_tp_curve, summary_plot

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "summary.png"]
    summary_plot(md_list, metrics, config.min_precision, config.min_recall, config.dist_th_tp,
                 savepath=str(written[0]))
    for name in result.present_classes:
        pr, tp = out / f"{name}_pr.png", out / f"{name}_tp.png"
        class_pr_curve(md_list, metrics, name, config.min_precision, config.min_recall,
                       savepath=str(pr))
        class_tp_curve(md_list, metrics, name, config.min_recall, config.dist_th_tp,
                       savepath=str(tp))
        written += [pr, tp]
    plt.close("all")  # the devkit draws with pyplot; nothing of it stays open
    written.append(class_ap_chart(result, out / "class_ap.png"))
    return written


def class_ap_chart(result: Scores, path: str | Path) -> Path:
    """A horizontal bar per class: AP (mean over the distance thresholds), labelled with the
    value and the class's ground-truth count; classes without ground truth greyed."""
    names = list(result.class_ap)
    fig = Figure(figsize=(7.0, 0.35 * len(names) + 1.2), dpi=100)
    ax = fig.add_subplot()
    colors = ["tab:blue" if result.gt_counts.get(n, 0) else "lightgrey" for n in names]
    ax.barh(names, [result.class_ap[n] for n in names], color=colors)
    for i, name in enumerate(names):
        ax.text(result.class_ap[name] + 0.01, i, f"{result.class_ap[name]:.3f} "
                f"(GT {result.gt_counts.get(name, 0)})", va="center", fontsize=8)
    ax.set_xlim(0.0, 1.15)
    ax.invert_yaxis()
    ax.set_xlabel("AP (mean over 0.5, 1, 2, 4 m)")
    ax.set_title(f"mAP {result.mean_ap:.3f} (present classes {result.present_map:.3f}), "
                 f"NDS {result.nds:.3f}; {result.num_samples} samples of {result.split}",
                 fontsize=9)
    fig.tight_layout()
    out = Path(path)
    with atomic_file(out) as handle:
        fig.savefig(handle, format="png")
    return out
