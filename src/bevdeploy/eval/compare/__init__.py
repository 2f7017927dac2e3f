"""``bevdeploy compare``: per-stage parity of a deploy package against the PyTorch reference.

Polygraphy-style (docs/architecture.md#evidence,
docs/reference.md#python-binding-and-tools, #numerics-guardrails): the reference BEVFusion, built
with the weights the package was exported from, and the deployed ``Pipeline`` run side by side on
the same frames, and every intermediate tensor the two share is compared — max-abs, mean-abs,
max-abs relative to the reference's own max-abs, cosine, and the NaN/Inf count of each side — then
the boxes, matched one to one.

**What is compared with what.** The deployed side is the pipeline's own schedule, unmodified:
its stages and runners are wrapped in recorders for the duration of a frame, so the tensors are
exactly those ``bevdeploy infer`` computes, each stage fed by the deployed stage before it (a
GPU backend's ``CudaSchedule`` hands them over through its ``taps`` instead, since its device
kernels are not the pipeline's CPU stages). A
fault therefore shows at the first stage that fails, and every stage downstream of it fails
too; the table's first red row locates it. Two rows differ on purpose:

* ``head.*`` — the deployed ``head.bbox`` runs on the *reference's* fused features, the same
  input as the reference head. Its top-k proposal selection is a discontinuous function of its
  input: fed two slightly different feature maps, the two heads may legitimately pick different
  cells, and their per-proposal tensors would not be comparable. On the same input only the
  head's own arithmetic can move a proposal, and where the reference's heatmap has a near tie
  at the top-k boundary (a gap smaller than the error the head's precision allows) the report
  says so. Proposals are paired one to one (same class, closest regression outputs) before
  comparing, so a legitimate reordering of near-equal or exactly equal scores is not mistaken
  for an error; the notes say which moves are ties, near-ties, or unexplained, and when the
  top-k boundary falls inside an exact tie. The tensors are judged over the proposals whose
  heatmap score clears the top-k boundary by twice the precision's heatmap error budget (every
  one, mostly, at FP32): the others may legitimately be other cells (``judged_proposals``).
* ``boxes`` — the end-to-end result of each chain (deployed boxes come from the deployed fused
  features), matched greedily by centre distance within the same class: centre distance,
  rotated BEV IoU, score delta, and the boxes without a partner.

**Tolerances** come per precision (``Tolerances.for_precision``). A stage's precision is the
lowest one among the modules on its path (the package manifest's per-module ``precision``):
the camera BEV inherits ``camera.backbone``'s error, the fused features everything's.

The package is split by role, as Polygraphy's comparator is: ``tolerances`` (the limits and the
compared stages), ``comparators`` (how a pair of tensors, proposals or box sets is judged),
``sides`` (running and recording the reference and the deployed pipeline), ``report`` (the
results, their table and JSON) and ``driver`` (``compare``, which ties them together).
"""

from bevdeploy.eval.compare.comparators import (
    BoxMetrics,
    TensorMetrics,
    align_proposals,
    bev_iou_pairs,
    box_failures,
    match_boxes,
    tensor_failures,
    tensor_metrics,
)
from bevdeploy.eval.compare.driver import compare
from bevdeploy.eval.compare.report import BoxResult, CompareReport, StageResult
from bevdeploy.eval.compare.sides import SideOutputs, run_deployed, run_reference
from bevdeploy.eval.compare.tolerances import (
    BOXES,
    PRECISIONS,
    STAGES,
    StageDef,
    Tolerances,
    stage_tolerances,
)
from bevdeploy.vocabulary import HEAD_OUTPUTS

__all__ = [
    "BOXES", "HEAD_OUTPUTS", "PRECISIONS", "STAGES", "BoxMetrics", "BoxResult", "CompareReport",
    "SideOutputs", "StageDef", "StageResult", "TensorMetrics", "Tolerances", "align_proposals",
    "bev_iou_pairs", "box_failures", "compare", "match_boxes", "run_deployed", "run_reference",
    "stage_tolerances", "tensor_failures", "tensor_metrics",
]
