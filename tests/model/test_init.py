"""The random initialisation of packages without weights gives distinct proposal scores, so that
FP32 ``compare`` of an untrained package passes (it failed on tied top-k proposals before)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.export.writer import export_package
from bevdeploy.eval.compare import compare
from bevdeploy.model.factory import create_model
from bevdeploy.model.inputs import collate
from bevdeploy.presets import get_preset

# The 101 best heatmap cells of a frame must be distinct and the top-k boundary (the last kept
# proposal vs the best one left out) at least this far apart: two orders of magnitude above
# the FP32 deployed heatmap's error (~1e-7 .. 1e-6 absolute, compare's report).
BOUNDARY_GAP_MIN = 1e-4
LOGIT_MAX = 8.0  # sigmoid(8) = 0.99966: anything far above saturates float32 into ties


def _untrained(name: str):
    return dataclasses.replace(get_preset(name), checkpoint=None)


def test_untrained_tiny_proposals_are_distinct(synthetic_world: Path) -> None:
    preset = _untrained("tiny")
    model, weights = create_model(preset)
    assert weights.random
    loader = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val",
                            preset=preset)
    head = model.heads["object"]
    for index in range(2):
        with torch.no_grad():
            logits = model(collate([loader[index]], preset))["dense_heatmap"]
        ranked = head.local_max(logits.sigmoid()).flatten().double()
        top = ranked.topk(preset.model.head.num_proposals + 1).values
        assert torch.unique(top).numel() == top.numel()
        assert float(top[-2] - top[-1]) >= BOUNDARY_GAP_MIN
        assert float(logits.max()) < LOGIT_MAX


def test_untrained_init_is_reproducible() -> None:
    """Two builds give the same weights bit for bit (the exporter's and compare's reference)."""
    preset = _untrained("tiny")
    a = create_model(preset)[0].state_dict()
    b = create_model(preset)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _compare_untrained(preset, world: Path, out: Path) -> None:
    from bevdeploy.data.sources import DatasetSource

    package = export_package(preset, None, out)
    source = DatasetSource(world, preset, limit=2)
    report = compare(package, None, (source[i] for i in range(len(source))))
    assert report.passed, report.failed_stages


def test_compare_passes_on_untrained_tiny(synthetic_world: Path, tmp_path: Path) -> None:
    _compare_untrained(_untrained("tiny"), synthetic_world, tmp_path / "package")


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured: proposals now pair, but head.height and the "
                   "boxes (BEV IoU 0.961 < 0.99) still fail on nuscenes-resnet50 (issue #17 open)")
def test_compare_passes_on_untrained_resnet50(synthetic_world: Path, tmp_path: Path) -> None:
    _compare_untrained(_untrained("nuscenes-resnet50"), synthetic_world, tmp_path / "package")
