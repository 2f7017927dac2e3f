"""bevdeploy: BEVFusion from checkpoint to verified deployment."""

__version__ = "0.1.0"
