"""Train a BEVFusion preset from scratch on a nuScenes-format dataset (CPU).

The recipe is the reference's (docs/reference.md#training-settings) scaled to a small model on two
CPU cores: AdamW with weight decay 0.01, linear warm-up from 1/3 of the rate then cosine annealing
to ``min_lr_ratio``, gradient clipping at L2 norm 35, the TransFusion losses and targets of
``bevdeploy.train.losses`` / ``targets``. Deviations, each needed to learn from scratch in minutes
rather than from pretrained weights in GPU-days, are recorded in the checkpoint meta:

* the camera ResNet's BatchNorm statistics are trained (``norm_eval = False``; mmdet freezes
  them because the reference starts from ImageNet statistics, which a scratch model lacks);
* the heatmap classifiers' biases start at −2.19 (prior probability 0.1, CenterNet's focal-loss
  initialisation) so the first steps are not swamped by the loss of 4096 background cells;
* a larger learning rate (the reference's 2e-4 is for batch 32 from pretrained weights).

A run is bounded by ``epochs`` (reproducible: the schedule is a function of the iteration) or
by ``minutes`` of wall time (the cosine then follows elapsed time, so the iteration count and
the exact weights depend on the machine's speed).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.errors import ConfigError
from bevdeploy.io import atomic_write, output_dir
from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.model.checkpoint import save_checkpoint
from bevdeploy.presets import Preset, get_preset
from bevdeploy.train.data import (
    Augmentation,
    TrainSample,
    cache_frames,
    load_sample,
    make_batch,
)
from bevdeploy.train.losses import LossWeights, transfusion_loss
from bevdeploy.train.sparse_cpu import cpu_sparse_training
from bevdeploy.train.targets import MatchCosts, build_targets

log = logging.getLogger("bevdeploy.train")

HEATMAP_PRIOR_BIAS = -2.19  # log(0.1 / 0.9): every heatmap cell starts at probability 0.1
CHECKPOINT_NAME = "checkpoint.pth"
LOG_NAME = "train_log.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a run; exactly one of ``epochs`` and ``minutes`` is set."""

    epochs: int | None = None
    minutes: float | None = None
    seed: int = 0
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_iters: int = 100
    warmup_ratio: float = 1.0 / 3.0
    min_lr_ratio: float = 1e-3
    grad_clip: float = 35.0
    augmentation: Augmentation | None = field(default_factory=Augmentation)
    log_every: int = 10

    def validate(self) -> TrainConfig:
        if (self.epochs is None) == (self.minutes is None):
            raise ConfigError("give exactly one of epochs and minutes", field="epochs")
        if (self.epochs is not None and self.epochs < 1) or (
                self.minutes is not None and not self.minutes > 0):
            raise ConfigError("epochs must be >= 1 and minutes > 0", field="epochs")
        if self.batch_size < 1 or self.lr <= 0 or self.warmup_iters < 0 or self.grad_clip <= 0:
            raise ConfigError("batch_size >= 1, lr > 0, warmup_iters >= 0 and grad_clip > 0 are "
                              "required", field="train")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_factor(iteration: int, progress: float, cfg: TrainConfig) -> float:
    """Multiplier of the base rate: cosine from 1 to ``min_lr_ratio`` over ``progress`` ∈ [0, 1],
    times mmcv's linear warm-up (from ``warmup_ratio`` to 1 over ``warmup_iters``)."""
    progress = min(max(progress, 0.0), 1.0)
    cosine = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if iteration < cfg.warmup_iters:
        cosine *= 1 - (1 - iteration / cfg.warmup_iters) * (1 - cfg.warmup_ratio)
    return cosine


def build_training_model(preset: Preset) -> BEVFusion:
    """A fresh model set up for training from scratch (see the module docstring)."""
    model = BEVFusion(preset)
    backbone = model.encoders["camera"]["backbone"]
    if hasattr(backbone, "norm_eval"):
        backbone.norm_eval = False
    head = model.heads["object"]
    with torch.no_grad():
        head.heatmap_head[-1].bias.fill_(HEATMAP_PRIOR_BIAS)
        for heads in head.prediction_heads:
            heads["heatmap"][-1].bias.fill_(HEATMAP_PRIOR_BIAS)
    return model


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases and norm parameters (1-D) get no weight decay."""
    return param.ndim <= 1 or name.endswith(".bias")


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, plain = [], []
    for name, param in model.named_parameters():
        (plain if _no_decay(name, param) else decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": plain, "weight_decay": 0.0}], lr=cfg.lr)


class _Budget:
    """Progress of the run in [0, 1] by iterations (epochs) or wall time (minutes)."""

    def __init__(self, cfg: TrainConfig, iters_per_epoch: int) -> None:
        self.total_iters = cfg.epochs * iters_per_epoch if cfg.epochs else None
        self.seconds = cfg.minutes * 60.0 if cfg.minutes else None
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def progress(self, iteration: int) -> float:
        if self.total_iters is not None:
            return iteration / self.total_iters
        return self.elapsed / self.seconds

    def done(self, iteration: int) -> bool:
        return self.progress(iteration) >= 1.0


def train(preset: Preset | str, data_root: str | Path, out: str | Path, *,
          epochs: int | None = None, minutes: float | None = None, seed: int = 0,
          version: str = "v1.0-mini", split: str = "mini_train",
          config: TrainConfig | None = None, cache_dir: str | Path | None = None,
          progress: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Train ``preset`` on ``split`` of the dataset at ``data_root``; return the checkpoint path.

    Writes to ``out``: ``checkpoint.pth`` (replaced atomically after every epoch and at the end,
    loadable with ``bevdeploy.model.checkpoint.load_checkpoint``; its meta holds the config,
    the data, the iteration count and the time), ``train_log.jsonl`` (one line of losses per
    logged step) and ``train_config.json``. Preprocessed frames are cached in ``cache_dir``
    (default ``out/cache``). ``epochs``, ``minutes`` and ``seed`` override ``config``.
    ``progress`` gets every logged record (the lines of ``train_log.jsonl``, plus the planned
    iteration count ``iters`` when epochs are given) as it is written.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    cfg = replace(config or TrainConfig(), seed=seed,
                  **({"epochs": epochs, "minutes": None} if epochs is not None else {}),
                  **({"minutes": minutes, "epochs": None} if minutes is not None else {}))
    cfg.validate()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    frames = NuScenesLoader(data_root, version=version, split=split, preset=preset)
    out = output_dir(out)  # after the dataset opened: a typo in --data leaves no empty run
    dataset = f"{Path(data_root).resolve()}:{version}:{split}"
    paths = cache_frames(frames, preset, cache_dir or out / "cache", dataset=dataset)
    samples = [load_sample(p) for p in paths]
    data_meta = {"root": str(Path(data_root).resolve()), "version": version, "split": split,
                 "frames": len(samples), "gt_boxes": int(sum(len(s.boxes) for s in samples))}
    synth_marker = Path(data_root) / "bevdeploy_synth.json"
    if synth_marker.is_file():
        data_meta["synthetic"] = json.loads(synth_marker.read_text())
    atomic_write(out / "train_config.json", json.dumps(
        {"preset": preset.name, "train": cfg.to_dict(), "data": data_meta}, indent=1).encode())

    model = build_training_model(preset)
    with cpu_sparse_training():
        iterations, elapsed = _run(model, samples, preset, cfg, rng, out, progress)
    meta = {"train": cfg.to_dict(), "data": data_meta, "iterations": iterations,
            "train_seconds": round(elapsed, 1), "norm_eval": False,
            "heatmap_prior_bias": HEATMAP_PRIOR_BIAS}
    return save_checkpoint(model, out / CHECKPOINT_NAME, meta)


def _run(model: BEVFusion, samples: list[TrainSample], preset: Preset, cfg: TrainConfig,
         rng: np.random.Generator, out: Path,
         progress: Callable[[dict[str, Any]], None] | None = None) -> tuple[int, float]:
    """The optimisation loop; returns (iterations, seconds)."""
    coder = model.heads["object"].bbox_coder
    optimizer = _optimizer(model, cfg)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    iters_per_epoch = max(len(samples) // cfg.batch_size, 1)
    budget = _Budget(cfg, iters_per_epoch)
    model.train()
    iteration, epoch = 0, 0
    with open(out / LOG_NAME, "w", encoding="utf-8") as log_file:
        while not budget.done(iteration):
            order = rng.permutation(len(samples))
            for start in range(0, iters_per_epoch * cfg.batch_size, cfg.batch_size):
                if budget.done(iteration):
                    break
                factor = lr_factor(iteration, budget.progress(iteration), cfg)
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * factor
                batch = make_batch([samples[i] for i in order[start:start + cfg.batch_size]],
                                   preset, rng, cfg.augmentation)
                outputs = model(batch.inputs)
                targets = build_targets(outputs, batch.gt_boxes, batch.gt_labels, preset, coder,
                                        MatchCosts())
                losses = transfusion_loss(outputs, targets, LossWeights())
                optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                iteration += 1
                if iteration % cfg.log_every == 0 or iteration == 1:
                    record = {"iter": iteration, "epoch": epoch,
                              "lr": optimizer.param_groups[0]["lr"],
                              **{k: round(float(v.detach()), 5) for k, v in losses.items()},
                              "grad_norm": round(float(grad_norm), 3),
                              "num_pos": targets.num_pos,
                              "matched_iou": round(targets.mean_iou, 4),
                              "elapsed_s": round(budget.elapsed, 1)}
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                    if progress is not None:
                        progress({**record, "iters": budget.total_iters})
                    log.info("iter %d epoch %d loss %.4f (heatmap %.4f cls %.4f bbox %.4f) "
                             "iou %.3f lr %.2e %.0fs", iteration, epoch, record["loss"],
                             record["loss_heatmap"], record["loss_cls"], record["loss_bbox"],
                             record["matched_iou"], record["lr"], record["elapsed_s"])
            epoch += 1
            save_checkpoint(model, out / CHECKPOINT_NAME,
                            {"train": cfg.to_dict(), "epoch": epoch, "iterations": iteration,
                             "partial": True})
    return iteration, budget.elapsed
