"""``train`` end to end on the session's small synthetic world, and its argument checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bevdeploy.errors import ConfigError
from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.model.checkpoint import load_checkpoint, read_checkpoint
from bevdeploy.presets import get_preset
from bevdeploy.train import TrainConfig, train
from bevdeploy.train.trainer import build_training_model


def test_one_epoch_writes_a_loadable_checkpoint(synthetic_world: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    seen: list[dict] = []  # what `bevdeploy train` prints as it goes
    path = train("tiny", synthetic_world, tmp_path / "run", epochs=1, seed=3,
                 config=TrainConfig(batch_size=2, log_every=1), progress=seen.append)
    assert torch.get_num_threads() == threads
    assert path == tmp_path / "run" / "checkpoint.pth"
    report = load_checkpoint(BEVFusion(get_preset("tiny")), path, strict=True)
    assert report.ok
    meta = read_checkpoint(path).meta
    assert meta["train"]["epochs"] == 1 and meta["train"]["seed"] == 3
    assert meta["iterations"] == 1 and meta["norm_eval"] is False
    assert meta["data"]["split"] == "mini_train" and meta["data"]["frames"] == 3
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text()
           .splitlines()]
    assert log[0]["iter"] == 1 and log[0]["loss"] > 0
    assert [{k: v for k, v in r.items() if k != "iters"} for r in seen] == log
    assert [r["iters"] for r in seen] == [1]  # the planned iterations of one epoch
    assert len(list((tmp_path / "run" / "cache").glob("*.npz"))) == 3


def test_scratch_model_setup() -> None:
    model = build_training_model(get_preset("tiny")).train()
    assert model.encoders["camera"]["backbone"].bn1.training  # norm_eval off
    bias = model.heads["object"].heatmap_head[-1].bias
    assert torch.allclose(bias.sigmoid(), torch.full_like(bias, 0.1), atol=1e-3)


@pytest.mark.parametrize("kwargs", [{}, {"epochs": 1, "minutes": 1.0}, {"epochs": 0},
                                    {"epochs": 1, "batch_size": 0}])
def test_config_errors_name_the_field(kwargs: dict) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(**kwargs).validate()
    assert info.value.field in ("epochs", "train")
