"""Evidence of accuracy: nuScenes detection metrics through nuscenes-devkit (``nuscenes_eval``),
sensor ablations (``ablation``) and the per-stage parity of a deploy package against the
reference (``compare``, imported on its own: it needs PyTorch)."""

from bevdeploy.eval.nuscenes_eval import (
    EvalResult,
    evaluate,
    evaluate_predictor,
    evaluate_submission,
)

__all__ = ["EvalResult", "evaluate", "evaluate_predictor", "evaluate_submission"]
