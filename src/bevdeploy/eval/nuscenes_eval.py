"""nuScenes detection metrics (mAP, NDS, TP errors, per-class AP) through nuscenes-devkit.

Scoring is the devkit's own: its loaders, its ``filter_eval_boxes`` (class ranges, boxes
without LiDAR/radar points, bike racks), its ``accumulate`` / ``calc_ap`` / ``calc_tp`` in
``DetectionEval.evaluate`` under the ``detection_cvpr_2019`` configuration. Two things are
added around it:

* **Subsets.** ``DetectionEval`` insists that a submission covers every sample of the split;
  here a submission may cover any subset of the split's samples, and the ground truth is
  restricted to the same samples (``EvalResult.full_split`` says which case it was).
* **Present-class mAP.** The devkit averages AP over all ten classes, scoring 0 for a class
  without any ground truth. A small split (the synthetic ``mini_val``) may lack some classes,
  so the mean over the classes that have ground truth after filtering is reported beside it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nuscenes.eval.common.config import config_factory
from nuscenes.eval.common.data_classes import EvalBoxes
from nuscenes.eval.common.loaders import (
    add_center_dist,
    filter_eval_boxes,
    get_samples_of_scenes,
    load_gt_of_sample_tokens,
)
from nuscenes.eval.detection.constants import TP_METRICS
from nuscenes.eval.detection.data_classes import DetectionBox, DetectionConfig
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.splits import get_scenes_of_split
from rich.table import Table

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.data.nuscenes import (
    EVAL_CONFIG,
    open_devkit,
    detections_to_nuscenes,
    write_submission,
)
from bevdeploy.errors import DatasetError, InputError
from bevdeploy.io import atomic_write
from bevdeploy.eval.plots import PLOTS_DIR

SUBMISSION_NAME = "results_nusc.json"
METRICS_NAME = "metrics.json"
TP_LABELS = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE",
             "vel_err": "mAVE", "attr_err": "mAAE"}


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: the devkit's undefined errors (e.g. a cone's orientation) become null."""
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass
class EvalResult:
    """The metrics of one evaluation; ``present_map`` is the mean AP over ``present_classes``."""

    mean_ap: float
    nds: float
    tp_errors: dict[str, float]  # devkit mean TP errors, keys of TP_METRICS
    class_ap: dict[str, float]  # AP averaged over the distance thresholds
    class_ap_by_distance: dict[str, dict[str, float]]  # class → {threshold (m): AP}
    class_tp_errors: dict[str, dict[str, float]]
    gt_counts: dict[str, int]  # ground-truth boxes per class after the devkit's filters
    present_classes: tuple[str, ...]
    present_map: float
    num_samples: int
    split: str
    version: str
    full_split: bool
    submission: str
    run: dict[str, Any] | None = None  # the frame loop's record (``FrameLoop.to_dict``)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; undefined (NaN) errors become ``None``."""
        def clean(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            if isinstance(value, float):
                return _finite_or_none(value)
            return value
        return clean(asdict(self))

    def write_json(self, path: str | Path) -> Path:
        return atomic_write(path, json.dumps(self.to_dict(), indent=1).encode())

    def table(self) -> Table:
        """Per-class AP and TP errors, then the summary rows (rich)."""
        return self._table(narrow=False)

    def narrow_table(self) -> Table:
        """``table()`` for an 80-column terminal: the compact style, no cell folded."""
        return self._table(narrow=True)

    def _table(self, *, narrow: bool) -> Table:
        from bevdeploy.tables import compact_table

        scope = "full split" if self.full_split else f"{self.num_samples} samples of the split"
        title = f"nuScenes detection, {self.version} {self.split} ({scope})"
        table = compact_table(title) if narrow else Table(title=title)
        table.add_column("class", no_wrap=narrow)
        table.add_column("GT", justify="right")
        table.add_column("AP", justify="right")
        for metric in TP_METRICS:
            table.add_column(TP_LABELS[metric].removeprefix("m"), justify="right")

        def fmt(value: float) -> str:
            return "n/a" if not math.isfinite(value) else f"{value:.3f}"

        for cls, ap in self.class_ap.items():
            table.add_row(cls, str(self.gt_counts.get(cls, 0)), fmt(ap),
                          *(fmt(self.class_tp_errors[cls][m]) for m in TP_METRICS),
                          style=None if cls in self.present_classes else "dim")
        table.add_section()
        table.add_row("mAP (all classes)", "", fmt(self.mean_ap),
                      *(fmt(self.tp_errors[m]) for m in TP_METRICS))
        table.add_row(f"mAP ({len(self.present_classes)} present classes)", "",
                      fmt(self.present_map))
        table.add_row("NDS", "", fmt(self.nds))
        return table


class _LoadedEval(DetectionEval):
    """``DetectionEval.evaluate`` on boxes that are already loaded and filtered (its
    constructor would load the whole split and refuse a subset)."""

    def __init__(self, config: DetectionConfig, gt_boxes: EvalBoxes,
                 pred_boxes: EvalBoxes) -> None:
        self.cfg = config
        self.gt_boxes = gt_boxes
        self.pred_boxes = pred_boxes
        self.sample_tokens = gt_boxes.sample_tokens
        self.verbose = False


def split_sample_tokens(nusc: NuScenes, split: str, source: str | Path) -> list[str]:
    """Sample tokens of a devkit split (predefined, or custom through the dataset's
    ``splits.json``) that exist in the loaded tables."""
    try:
        scenes = get_scenes_of_split(split, nusc)
    except (AssertionError, FileNotFoundError, KeyError, ValueError) as exc:
        raise DatasetError(f"unknown split {split!r}: {exc}", path=source, field="split") from None
    tokens = get_samples_of_scenes(scenes, nusc)
    if not tokens:
        raise DatasetError(f"no sample of split {split!r} in this dataset", path=source,
                           field="split")
    return tokens


def _read_predictions(path: Path, max_boxes: int) -> dict[str, list[dict[str, Any]]]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("submission file not found", path=path) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc}", path=path) from None
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, dict):
        raise InputError("expected {'meta': ..., 'results': {sample_token: [boxes]}}", path=path,
                         field="results")
    for token, boxes in results.items():
        if not isinstance(boxes, list) or len(boxes) > max_boxes:
            raise InputError(f"sample {token}: expected a list of at most {max_boxes} boxes",
                             path=path, field="results")
    return results


def _filtered(nusc: NuScenes, boxes: EvalBoxes, config: DetectionConfig) -> EvalBoxes:
    """The devkit's centre distance and filters (which cannot handle a set without boxes)."""
    boxes = add_center_dist(nusc, boxes)
    if not any(boxes.boxes.values()):
        return boxes
    return filter_eval_boxes(nusc, boxes, config.class_range, verbose=False)


def evaluate_submission(submission: str | Path, dataroot: str | Path, *,
                        version: str = "v1.0-trainval", split: str = "val",
                        plot_dir: str | Path | None = None) -> EvalResult:
    """Score a nuScenes submission JSON against the split's ground truth; with ``plot_dir``,
    write the devkit's PR / TP-error figures and a per-class AP chart there
    (``eval.plots.write_eval_plots``).

    The submission's samples must all belong to ``split``; when they are a subset, ground truth
    is restricted to them.
    """
    path = Path(submission)
    nusc = open_devkit(Path(dataroot), version)
    config = config_factory(EVAL_CONFIG)
    results = _read_predictions(path, config.max_boxes_per_sample)
    split_tokens = split_sample_tokens(nusc, split, dataroot)
    outside = sorted(set(results) - set(split_tokens))
    if outside:
        raise InputError(f"{len(outside)} sample(s) are not in split {split!r} of {version}, "
                         f"e.g. {outside[0]}", path=path, field="results")
    if not results:
        raise InputError("the submission has no samples", path=path, field="results")
    tokens = [t for t in split_tokens if t in results]
    try:
        predictions = EvalBoxes.deserialize({t: results[t] for t in tokens}, DetectionBox)
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"malformed box: {exc!r}", path=path, field="results") from None
    with contextlib.redirect_stderr(io.StringIO()):  # the devkit's progress bar
        gt = _filtered(nusc, load_gt_of_sample_tokens(nusc, tokens, DetectionBox, verbose=False),
                       config)
    metrics, md_list = _LoadedEval(config, gt, _filtered(nusc, predictions, config)).evaluate()

    gt_counts = {c: 0 for c in config.class_names}
    for box in gt.all:
        gt_counts[box.detection_name] += 1
    present = tuple(c for c in config.class_names if gt_counts[c] > 0)
    class_ap = {c: float(v) for c, v in metrics.mean_dist_aps.items()}
    result = EvalResult(
        mean_ap=float(metrics.mean_ap),
        nds=float(metrics.nd_score),
        tp_errors={m: float(v) for m, v in metrics.tp_errors.items()},
        class_ap=class_ap,
        class_ap_by_distance={c: {str(d): float(metrics.get_label_ap(c, d))
                                  for d in config.dist_ths} for c in config.class_names},
        class_tp_errors={c: {m: float(metrics.get_label_tp(c, m)) for m in TP_METRICS}
                         for c in config.class_names},
        gt_counts=gt_counts,
        present_classes=present,
        present_map=(sum(class_ap[c] for c in present) / len(present)) if present
        else float("nan"),
        num_samples=len(tokens),
        split=split,
        version=version,
        full_split=len(tokens) == len(split_tokens),
        submission=str(path),
    )
    if plot_dir is not None:
        from bevdeploy.eval.plots import write_eval_plots

        write_eval_plots(md_list, metrics, config, result, plot_dir)
    return result


def evaluate(results: Iterable[tuple[Frame, Detections]], dataroot: str | Path, out_dir: str
             | Path, *, version: str = "v1.0-trainval", split: str = "val") -> EvalResult:
    """Convert (frame, detections) pairs into a submission, score it, write both.

    Writes ``out_dir/results_nusc.json`` (the submission, global frame) and
    ``out_dir/metrics.json`` (``EvalResult.to_dict``). Frames need their ``token`` (a sample of
    ``split``) and their calibration, which places the boxes in the global frame. A run of
    the frame loop scores through the ``sinks.Metrics`` sink instead, which records the run.
    """
    submission = {}
    for frame, dets in results:
        submission[sample_token(frame)] = detections_to_nuscenes(dets, frame.calib, frame.token)
    return score(submission, dataroot, out_dir, version=version, split=split)


def sample_token(frame: Frame) -> str:
    """The frame's sample token, which scoring needs (an ``InputError`` when it has none)."""
    if not frame.token:
        raise InputError("frame has no sample token", path=frame.source or "<frame>",
                         field="token")
    return frame.token


def score(submission: Mapping[str, list[dict[str, Any]]], dataroot: str | Path,
          out_dir: str | Path, *, version: str, split: str,
          run: Mapping[str, Any] | None = None, final_dir: str | Path | None = None,
          plots: bool = False) -> EvalResult:
    """Write ``submission`` (sample token → global-frame boxes) as ``out_dir/results_nusc.json``,
    score it against ``split`` and write ``out_dir/metrics.json`` with ``run`` (the frame
    loop's record: which frames failed and why) stored as ``run``. ``final_dir`` is where
    ``out_dir`` ends up when it is a staging directory (``io.OutputDir``): metrics.json records
    the submission's final path, not the staging one that is gone after the swap."""
    out = Path(out_dir)
    path = write_submission(out / SUBMISSION_NAME, submission)
    result = evaluate_submission(path, dataroot, version=version, split=split,
                                 plot_dir=out / PLOTS_DIR if plots else None)
    if final_dir is not None:
        result.submission = str(Path(final_dir) / SUBMISSION_NAME)
    if run is not None:
        result.run = dict(run)
    result.write_json(out / METRICS_NAME)
    return result


def evaluate_predictor(predict: Callable[[Frame], Detections], frames: Iterable[Frame],
                       dataroot: str | Path, out_dir: str | Path, *,
                       version: str = "v1.0-trainval", split: str = "val") -> EvalResult:
    """``evaluate`` with detections from ``predict`` (any backend: the torch model's
    ``predict``, the deploy runtime's ``Pipeline.run``, ...), one frame at a time."""
    return evaluate(((frame, predict(frame)) for frame in frames), dataroot, out_dir,
                    version=version, split=split)
