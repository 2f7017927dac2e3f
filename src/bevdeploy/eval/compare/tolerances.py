"""Pass/fail limits: the tolerances of each precision, the compared stages, and which
tolerance each stage of a package is held to.

A stage's precision is the lowest one among the modules on its path (the package manifest's
per-module ``precision``): the camera BEV inherits ``camera.backbone``'s error, the fused
features everything's.
"""

from __future__ import annotations

from dataclasses import dataclass

from bevdeploy.errors import ConfigError
from bevdeploy.package import MANIFEST_NAME, DeployPackage
from bevdeploy.vocabulary import HEAD_OUTPUTS

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")  # strictest first


@dataclass(frozen=True)
class Tolerances:
    """Pass/fail limits for one precision.

    Tensors: ``cosine_min`` (cosine similarity of the flattened tensors) and ``rel_max_abs``
    (max |deployed − reference| / max |reference|: the worst element error on the tensor's own
    scale, so one limit serves image pixels and 1e-3-sized logits alike). Boxes: the largest
    centre distance ``centre_m`` and score difference ``score_delta`` of matched boxes, the
    smallest BEV IoU ``iou_min``, and the fraction of compared boxes allowed no partner
    ``unmatched_fraction``. Boxes scoring below ``box_min_score`` on both sides are not judged
    (they may partner others but never fail a comparison); two boxes farther apart than
    ``match_radius_m`` are never partners.
    """

    precision: str
    cosine_min: float
    rel_max_abs: float
    centre_m: float
    iou_min: float
    score_delta: float
    unmatched_fraction: float
    box_min_score: float = 0.05
    match_radius_m: float = 2.0

    @classmethod
    def for_precision(cls, precision: str) -> Tolerances:
        """The documented limits of ``"fp32"``, ``"fp16"`` or ``"int8"``.

        * fp32 — both sides compute in float32 and differ only in summation order and fused
          kernels: ~1e-6 relative per layer, ~1e-5 after the deepest chain; cosine ≥ 0.99999
          and 1e-3 of the scale leave two orders of margin. Boxes: 1 cm, IoU 0.99, scores 1e-3,
          no box without a partner.
        * fp16 — an 11-bit mantissa rounds each operation to ~5e-4 relative and the error
          grows over a chain of tens of layers: cosine ≥ 0.999, 2 % of the scale. Boxes: 5 cm,
          IoU 0.95, scores 0.01, 2 % of boxes may swap across the score or top-k boundary.
        * int8 — every quantised activation is rounded to 1/255 of its calibrated range
          (histogram + MSE, docs/reference.md#quantisation-recipe) and the steps compound through
          the quantised layers; NVIDIA's PTQ model stays within 0.23 mAP of FP16, so the maps keep
          their direction (cosine ≥ 0.99) while single elements move by up to 10 % of the scale.
          Boxes: 20 cm, IoU 0.8, scores 0.05, 10 % without a partner.
        """
        #            cosine_min  rel_max_abs  centre_m  iou_min  score_delta  unmatched
        limits = {"fp32": (0.99999,    1e-3,        0.01,     0.99,    1e-3,        0.0),
                  "fp16": (0.999,      2e-2,        0.05,     0.95,    1e-2,        0.02),
                  "int8": (0.99,       0.1,         0.2,      0.8,     0.05,        0.1)}
        if precision not in limits:
            raise ConfigError(f"unknown precision {precision!r}; known: {list(PRECISIONS)}",
                              field="precision")
        return cls(precision, *limits[precision])


# ------------------------------------------------------------------------------ stages


@dataclass(frozen=True)
class StageDef:
    """One compared tensor: its name, what produces it, and the package modules on its path
    (whose lowest precision picks the tolerance; none = float32 kernels only)."""

    name: str
    description: str
    modules: tuple[str, ...]


_CAMERA = ("camera.backbone",)
_CAMERA_BEV = ("camera.backbone", "camera.vtransform")
_FUSED = ("camera.backbone", "camera.vtransform", "lidar.backbone", "fuser")

STAGES: tuple[StageDef, ...] = (
    StageDef("normalize", "images → network input (1, N, 3, H, W)", ()),
    StageDef("depth", "points → sparse depth image (1, N, 1, H, W)", ()),
    StageDef("camera.depth_weights", "camera.backbone: depth distribution (N, D, h, w)",
             _CAMERA),
    StageDef("camera.feature", "camera.backbone: context features (N, h, w, C)", _CAMERA),
    StageDef("camera.bevpool", "bevpool: camera BEV before downsampling (1, C·nz, nx, ny)",
             _CAMERA),
    StageDef("camera.bev", "camera.vtransform: camera BEV (1, C, X, Y)", _CAMERA_BEV),
    StageDef("lidar.voxels", "voxelize: mean point features per voxel (M, F)", ()),
    StageDef("lidar.bev", "lidar.backbone (SCN): LiDAR BEV (1, C·Z, X, Y)", ("lidar.backbone",)),
    StageDef("fuser", "fuser + decoder: fused middle features (1, Cm, X, Y)", _FUSED),
    *(StageDef(f"head.{name}", f"head.bbox on the reference's fused features: {name}",
               ("head.bbox",)) for name in HEAD_OUTPUTS),
)
BOXES = StageDef("boxes", "end to end: decoded boxes of each chain", (*_FUSED, "head.bbox"))


def stage_tolerances(pkg: DeployPackage, override: Tolerances | None = None
                     ) -> dict[str, Tolerances]:
    """Tolerances of every stage (and ``"boxes"``): ``override`` for all when given, else
    those of the lowest precision among the stage's modules in the package manifest."""
    result: dict[str, Tolerances] = {}
    for stage in (*STAGES, BOXES):
        if override is not None:
            result[stage.name] = override
            continue
        rank = 0
        for module in stage.modules:
            precision = pkg.module(module).precision
            if precision not in PRECISIONS:
                raise ConfigError(f"unknown precision {precision!r}; known: {list(PRECISIONS)}",
                                  path=pkg.root / MANIFEST_NAME,
                                  field=f"modules.{module}.precision")
            rank = max(rank, PRECISIONS.index(precision))
        result[stage.name] = Tolerances.for_precision(PRECISIONS[rank])
    return result
