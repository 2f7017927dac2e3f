"""Training of BEVFusion presets on nuScenes-format data (the shipped ``tiny`` weights come from
here): targets, losses, cached data and the CPU training loop."""

from bevdeploy.train.trainer import TrainConfig, train

__all__ = ["TrainConfig", "train"]
