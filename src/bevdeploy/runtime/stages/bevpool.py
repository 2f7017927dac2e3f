"""Stage ``bevpool``: depth weights × camera features summed into the camera BEV grid.

The lift (outer product of each pixel's depth distribution with its feature vector) is fused
into the reduction, interval by interval of the geometry plan, so the N·D·h·w·C frustum tensor
is never built (docs/reference.md#bev-pool-kernel). The output ``(1, C·nz, nx, ny)`` is
``camera.vtransform``'s ``feat_in``.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    geometry stage's device plan on a torch device. A camera the frame has no data for
    (``present`` False, ``Frame.dropped``) gets zero depth weights: it adds exact zeros to every
    cell's sum, so the grid equals that of a package without the camera."""

    name = "bevpool"

    def __init__(self, params: BevPoolParams, *, device: str | None = None) -> None:
        self.params = params
        self.device = device
        self._kernels = kernels_for(device)

    def run(self, depth_weights: Any, feats: Any, plan: Any, *, out: Any = None,
            present: Sequence[bool] | None = None) -> Any:
        """Pool one frame, into ``out`` when given (a buffer the caller reuses across frames),
        the cameras with ``present`` False (default: all present) weighted zero.
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
        if present is not None:
            depth_weights = _without(depth_weights, present, p.num_cameras)
        return self._kernels.bev_pool(depth_weights, feats, plan, out=out)


def _without(depth_weights: Any, present: Sequence[bool], cameras: int) -> Any:
    """``depth_weights`` (a numpy array or a torch tensor) with the absent cameras' weights
    zero: a copy, so the backbone's output (a tapped or graph-owned buffer) stays as it was."""
    if len(present) != cameras:
        raise InputError(f"expected one flag per camera ({cameras}), got {len(present)}",
                         field="bevpool.present")
    absent = [i for i, here in enumerate(present) if not here]
    if not absent:
        return depth_weights
    copy = depth_weights.clone() if hasattr(depth_weights, "clone") else depth_weights.copy()
    for i in absent:
        copy[i] = 0
    return copy
