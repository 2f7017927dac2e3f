"""The deployed FP32 package scores the same mAP as the PyTorch reference (issue: evidence).

Both run the shipped tiny weights on the same fresh synthetic mini_val frames and are scored by
nuscenes-devkit; the deployed path must reproduce the reference's mAP and NDS to 3 decimals.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bevdeploy.presets import get_preset

TINY = get_preset("tiny")
SHIPPED = TINY.checkpoint_path
SAMPLES = 8


@pytest.mark.skipif(SHIPPED is None or not SHIPPED.is_file(), reason="no shipped tiny weights")
def test_onnxruntime_fp32_matches_the_reference_map(fresh_val_world: Path,
                                                    tmp_path: Path) -> None:
    from bevdeploy.data.nuscenes import NuScenesLoader
    from bevdeploy.eval.nuscenes_eval import evaluate_predictor
    from bevdeploy.export.writer import export_package
    from bevdeploy.model.bevfusion import BEVFusion
    from bevdeploy.model.checkpoint import load_checkpoint
    from bevdeploy.runtime import Pipeline

    package = export_package(TINY, SHIPPED, tmp_path / "package")
    model = BEVFusion(TINY).eval()
    assert load_checkpoint(model, SHIPPED, strict=True).ok
    frames = list(NuScenesLoader(fresh_val_world, version="v1.0-mini", split="mini_val",
                                 preset=TINY))
    reference = evaluate_predictor(model.predict, frames, fresh_val_world, tmp_path / "torch",
                                   version="v1.0-mini", split="mini_val")
    deployed = evaluate_predictor(Pipeline(package).run, frames, fresh_val_world,
                                  tmp_path / "ort", version="v1.0-mini", split="mini_val")
    assert reference.present_map > 0.2, "the reference must detect something for this to mean much"
    assert round(deployed.mean_ap, 3) == round(reference.mean_ap, 3), (deployed.mean_ap,
                                                                       reference.mean_ap)
    assert round(deployed.present_map, 3) == round(reference.present_map, 3)
    assert round(deployed.nds, 3) == round(reference.nds, 3)
