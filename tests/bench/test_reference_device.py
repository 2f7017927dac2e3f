"""The eager reference's sparse encoder through ``TorchScnEncoder`` (what ``bench
--reference-device cuda`` runs where spconv has no CUDA build) equals spconv's, checked on the
CPU where both run: same model, same frame, the LiDAR BEV and the detections."""

from __future__ import annotations

import pytest
import torch

from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.errors import InputError
from bevdeploy.eval.compare import Tolerances, box_failures, match_boxes
from bevdeploy.bench.reference_device import TorchScnEncoder, reference_on
from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.model.checkpoint import load_checkpoint
from bevdeploy.model.inputs import collate
from bevdeploy.presets import get_preset

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def model() -> BEVFusion:
    torch.manual_seed(0)
    model = BEVFusion(TINY)
    load_checkpoint(model, TINY.checkpoint_path)
    return model.eval()


def test_the_torch_scn_encoder_equals_spconv(model, synthetic_world):
    loader = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val", preset=TINY)
    batch = collate([loader[0], loader[1]], TINY)  # two samples: the batch is split per sample
    lidar = model.encoders["lidar"]
    with torch.inference_mode():
        feats, coords, _ = lidar["voxelize"](batch.points)
        want = lidar["backbone"](feats, coords, 2)
        got = TorchScnEncoder(lidar["backbone"], TINY, torch.device("cpu"))(feats, coords, 2)
    assert got.shape == want.shape and float(want.abs().max()) > 0
    # float32 both ways, sums in another order: 1e-5 of the scale
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
    with pytest.raises(InputError, match=r"\(M, 4\) coords"):
        TorchScnEncoder(lidar["backbone"], TINY, torch.device("cpu"))(feats, coords[:, 1:], 1)


def test_on_the_cpu_the_reference_keeps_spconv(model):
    assert reference_on(model, TINY, torch.device("cpu")) == "spconv"
    assert not isinstance(model.encoders["lidar"]["backbone"], TorchScnEncoder)


@pytest.mark.gpu
def test_on_cuda_the_reference_runs_and_equals_the_cpu_one(synthetic_world):
    loader = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val", preset=TINY)
    frame = loader[0]
    cpu = BEVFusion(TINY)
    load_checkpoint(cpu, TINY.checkpoint_path)
    gpu = BEVFusion(TINY)
    load_checkpoint(gpu, TINY.checkpoint_path)
    how = reference_on(gpu.eval(), TINY, torch.device("cuda"))
    assert how.startswith(("spconv (CUDA)", "SCN on bevdeploy's torch executor"))
    want, got = cpu.predict(frame), gpu.predict(frame)
    tol = Tolerances.for_precision("fp32")
    metrics, _ = match_boxes(want, got, tol)
    assert metrics.judged_reference >= 10 and not box_failures(metrics, tol)
