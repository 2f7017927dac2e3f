"""Exporters: the five deploy modules of a BEVFusion model, written as ONNX files."""
