"""Sensor data: the contracts (Frame, Calibration, Detections), readers, nuScenes loading and
the synthetic nuScenes-format world. Nothing here imports torch."""

from bevdeploy.data.frame import Calibration, Detections, Frame, GroundTruth

__all__ = ["Calibration", "Detections", "Frame", "GroundTruth"]
