"""Evaluation: nuScenes detection metrics through nuscenes-devkit (``nuscenes_eval``) and
sensor ablations (``ablation``)."""

from bevdeploy.eval.nuscenes_eval import (
    EvalResult,
    evaluate,
    evaluate_predictor,
    evaluate_submission,
)

__all__ = ["EvalResult", "evaluate", "evaluate_predictor", "evaluate_submission"]
