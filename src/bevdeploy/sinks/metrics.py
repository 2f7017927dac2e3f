"""nuScenes metrics of a run (``eval``): the devkit's mAP/NDS over the frames that finished."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.eval.nuscenes_eval import METRICS_NAME, SUBMISSION_NAME, EvalResult, score
from bevdeploy.sinks.base import RunRecord, ended_early
from bevdeploy.sinks.detections import Submission


class Metrics:
    """Scores the run against ``split`` of the dataset at ``dataroot`` when it closes, writing
    ``results_nusc.json`` and ``metrics.json`` (with the run record) into ``out_dir``;
    ``final_dir``, when ``out_dir`` is a staging directory, is where the files will lie.

    A metric covers the whole run or nothing: a run stopped by an error or interrupted writes
    neither file (a run whose failed frames the policy skipped is scored on the rest, and its
    record lists them)."""

    def __init__(self, dataroot: str | Path, out_dir: str | Path, *, version: str,
                 split: str, final_dir: str | Path | None = None, plots: bool = False) -> None:
        self.dataroot = Path(dataroot)
        self.out_dir = Path(out_dir)
        self.final_dir = final_dir  # where out_dir is moved after the run (a staging dir)
        self.version = version
        self.split = split
        self.plots = plots  # eval.plots: the devkit's figures into out_dir/plots
        self.submission = Submission(self.out_dir / SUBMISSION_NAME)
        self.result: EvalResult | None = None

    def write(self, frame: Frame, detections: Detections, timings: Mapping[str, float]) -> None:
        self.submission.write(frame, detections, timings)

    def close(self, run: RunRecord) -> list[Path]:
        if ended_early(run):
            return []
        self.result = score(self.submission.results, self.dataroot, self.out_dir,
                            version=self.version, split=self.split, run=run,
                            final_dir=self.final_dir, plots=self.plots)
        return [self.out_dir / SUBMISSION_NAME, self.out_dir / METRICS_NAME]
