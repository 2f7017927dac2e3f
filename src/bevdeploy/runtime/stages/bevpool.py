"""Stage ``bevpool``: depth weights × camera features summed into the camera BEV grid.

The lift (outer product of each pixel's depth distribution with its feature vector) is fused
into the reduction, interval by interval of the geometry plan, so the N·D·h·w·C frustum tensor
is never built (docs/reference.md#bev-pool-kernel). The output ``(1, C·nz, nx, ny)`` is
``camera.vtransform``'s ``feat_in``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bevdeploy.errors import InputError
from bevdeploy.package import DeployPackage, runtime_parameters
from bevdeploy.runtime.kernels import kernels_for


@dataclass(frozen=True)
class BevPoolParams:
    """Shapes the pooling joins: ``camera.backbone``'s outputs and the BEV grid."""

    num_cameras: int
    depth_bins: int
    feature_size: tuple[int, int]  # (h, w)
    channels: int  # C
    bev_pool_size: tuple[int, int, int]  # (nx, ny, nz)

    @classmethod
    def from_package(cls, pkg: DeployPackage) -> "BevPoolParams":
        g = runtime_parameters(pkg.preset)["geometry"]
        return cls(num_cameras=g["num_cameras"], depth_bins=g["depth_bins"],
                   feature_size=tuple(g["feature_size"]), channels=g["camera_channels"],
                   bev_pool_size=tuple(g["bev_pool_size"]))


class BevPoolStage:
    """``run(depth_weights (N, D, h, w), feats (N, h, w, C) NHWC, plan) → (1, C·nz, nx, ny)``:
    numpy arrays and a ``BevPoolPlan`` on the host (``device=None``), tensors and the
    geometry stage's device plan on a torch device."""

    name = "bevpool"

    def __init__(self, params: BevPoolParams, *, device: str | None = None) -> None:
        self.params = params
        self.device = device
        self._kernels = kernels_for(device)

    def run(self, depth_weights: Any, feats: Any, plan: Any, *, out: Any = None) -> Any:
        """Pool one frame, into ``out`` when given (a buffer the caller reuses across frames).
        The shapes are checked, on both devices, because stages are also driven one by one
        (parity tools feed them the reference's tensors), not only by the pipeline."""
        p = self.params
        h, w = p.feature_size
        expected = {"depth_weights": (depth_weights, (p.num_cameras, p.depth_bins, h, w)),
                    "feats": (feats, (p.num_cameras, h, w, p.channels))}
        for name, (array, want) in expected.items():
            if array.shape != want:
                raise InputError(f"expected shape {want}, got {array.shape}",
                                 field=f"bevpool.{name}")
        if tuple(plan.bev_size) != p.bev_pool_size:
            raise InputError(f"the plan is for a {tuple(plan.bev_size)} grid, the package pools "
                             f"into {p.bev_pool_size}", field="bevpool.plan")
        return self._kernels.bev_pool(depth_weights, feats, plan, out=out)
