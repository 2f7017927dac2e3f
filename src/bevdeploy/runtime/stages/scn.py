"""Stage ``scn``: voxels → the LiDAR BEV map, through the sparse-conv executor.

The SCN file ``lidar.backbone.xyz.onnx`` is a container of custom sparse-conv nodes that no
ONNX backend runs (docs/reference.md#scn-onnx-format); ``ScnExecutor`` reads it and executes it with
rulebooks and gather-GEMM-scatter, the role libspconv plays for CUDA-BEVFusion. The output
``(1, C·Z, X, Y)`` is the fuser's ``lidar`` input. On a torch device the same graph runs on
``TorchScnExecutor`` in the given precision (GPU machines have torch but no spconv).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bevdeploy.package import DeployPackage
from bevdeploy.runtime.devices import Precision, float_dtype
from bevdeploy.runtime.scn import ScnExecutor
from bevdeploy.scn_format import read_scn
from bevdeploy.vocabulary import SCN_MODULE


@dataclass(frozen=True)
class ScnParams:
    """Where the SCN file is and the dense shape it produces."""

    path: Path
    output_shape: tuple[int, int, int, int]  # (1, C·Z, X, Y)

    @classmethod
    def from_package(cls, pkg: DeployPackage) -> "ScnParams":
        output = pkg.module(SCN_MODULE).outputs[0]
        return cls(path=pkg.path(SCN_MODULE), output_shape=tuple(int(d) for d in output.shape))


class ScnStage:
    """``run(feats (M, F), coords (M, 3) int32 xyz) → (1, C·Z, X, Y)``: float32 numpy arrays on
    the host (``device=None``: ``ScnExecutor`` on ``threads`` numba threads, its wide convs in
    BF16 through OpenVINO when ``precision`` is ``bf16``), tensors on a torch device
    (``TorchScnExecutor`` in ``precision``, its weights converted when the stage is built)."""

    name = "scn"

    def __init__(self, params: ScnParams, *, threads: int | None = None,
                 device: str | None = None, precision: Precision = "fp32") -> None:
        self.params = params
        self.device = device
        graph = read_scn(params.path)
        if device is None:
            self.executor: Any = ScnExecutor(graph, threads=threads, precision=precision)
        else:
            from bevdeploy.runtime.scn.torch_executor import TorchScnExecutor

            self.executor = TorchScnExecutor(graph, device=device, dtype=float_dtype(precision))

    def run(self, feats: Any, coords: Any) -> Any:
        return self.executor.run(feats, coords)
