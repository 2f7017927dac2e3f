"""The deploy package's vocabulary: every name and rule that the exporter, the manifest, the
runtime, ``compare`` and ``bench`` must agree on, defined once.

It sits at the bottom of the import graph beside ``presets`` and ``errors`` (it imports only the
standard library), so that the preset code, the manifest reader (``bevdeploy.package``) and the
torch-free runtime can all use it. What each name means in the original networks is in
``docs/reference.md``.
"""

from __future__ import annotations

# Module name (manifest key) → file name, in pipeline order. The file names are CUDA-BEVFusion's.
MODULE_FILES: dict[str, str] = {
    "camera.backbone": "camera.backbone.onnx",
    "camera.vtransform": "camera.vtransform.onnx",
    "lidar.backbone": "lidar.backbone.xyz.onnx",
    "fuser": "fuser.onnx",
    "head.bbox": "head.bbox.onnx",
}

# The sparse-convolution module: a custom-op ONNX file run by the SCN executor, never by an
# ONNX backend.
SCN_MODULE = "lidar.backbone"

# The modules an ONNX backend (ONNX Runtime, TensorRT, torch-cuda) runs, in pipeline order.
DENSE_MODULES: tuple[str, ...] = tuple(name for name in MODULE_FILES if name != SCN_MODULE)

# ``head.bbox``'s outputs in graph order, each with the reference head's name for the same
# tensor (``reg`` is the reference's ``center``, ``score`` its class heatmap). The names and the
# order are CUDA-BEVFusion's.
HEAD_OUTPUT_SOURCES: tuple[tuple[str, str], ...] = (
    ("score", "heatmap"), ("rot", "rot"), ("dim", "dim"), ("reg", "center"),
    ("height", "height"), ("vel", "vel"))
HEAD_OUTPUTS: tuple[str, ...] = tuple(name for name, _ in HEAD_OUTPUT_SOURCES)

# The seed of the weights of a package exported without a checkpoint (demo and test packages).
# A reference model built for such a package uses the same seed, so both sides hold equal weights.
RANDOM_INIT_SEED = 0

# How the head's regression outputs are read (the manifest's ``box_convention``): the box
# convention the head was trained in, converted once after decoding by
# ``bevdeploy.data.boxes.from_head_boxes`` (docs/reference.md#box-convention).
# * ``mit``: the pre-1.0 mmdetection3d dialect of the mit-han-lab checkpoints (size order w, l;
#   yaw −θ − π/2; the decoded z already the centre, docs/reference.md#z-quirk);
# * ``mmdet3d-1.x``: mmdetection3d ≥ 1.0 ``LiDARInstance3DBoxes`` (size order l, w, h; the
#   heading yaw; the decoded z the box bottom), what its ``projects/BEVFusion`` trains.
BOX_CONVENTION_MIT = "mit"
BOX_CONVENTION_MMDET3D = "mmdet3d-1.x"
BOX_CONVENTIONS: tuple[str, ...] = (BOX_CONVENTION_MIT, BOX_CONVENTION_MMDET3D)
# What format-1.0 manifests recorded as ``decode.box_dialect``: it means ``mit``.
LEGACY_BOX_DIALECT = "mmdet3d-legacy"

# How far a grid's cell count may be from a whole number and still count as one.
_WHOLE_CELLS_SLACK = 1e-4


def cell_count(lo: float, hi: float, step: float) -> int:
    """Cells of size ``step`` in ``[lo, hi)``: ``round((hi − lo) / step)``, the rule of every grid
    (depth bins, BEV cells, voxels). Raises ``ValueError`` when that is not a positive whole
    number; callers turn it into their own error, naming their field."""
    n = (hi - lo) / step if step > 0 else float("nan")
    if not n > 0 or abs(n - round(n)) > _WHOLE_CELLS_SLACK:
        raise ValueError(f"step {step} does not divide the range [{lo}, {hi}] into whole cells "
                         f"({n:g} cells)")
    return int(round(n))
