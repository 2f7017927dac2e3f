"""The LiDAR sparse backbone (the SCN file, ``lidar.backbone.xyz.onnx``) without spconv.

``plan``: the graph's layers as executable steps (conv epilogues and ScatterDense layouts
fused) and the one step interpreter. ``numpy_executor.ScnExecutor`` runs it on the CPU with
the numba rulebook and gather-GEMM kernels; ``torch_executor.TorchScnExecutor`` runs it on any
torch device (the GPU schedule's SCN), importing torch, so it is not imported here.
"""

from bevdeploy.runtime.scn.numpy_executor import ScnExecutor
from bevdeploy.runtime.scn.plan import ScnPlan, plan_steps

__all__ = ["ScnExecutor", "ScnPlan", "plan_steps"]
