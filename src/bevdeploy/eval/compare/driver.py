"""The ``compare`` driver: both sides on every frame, each stage judged by its comparator
against its tolerance, the results gathered into a ``CompareReport``."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from bevdeploy.data.frame import Frame
from bevdeploy.errors import InputError
from bevdeploy.eval.compare.comparators import (align_proposals, box_failures, head_remarks,
                                                judged_proposals, match_boxes, tensor_failures,
                                                tensor_metrics, voxel_failures)
from bevdeploy.eval.compare.report import BoxResult, CompareReport, StageResult
from bevdeploy.eval.compare.sides import SideOutputs, run_deployed, run_reference
from bevdeploy.eval.compare.tolerances import BOXES, STAGES, Tolerances, stage_tolerances
from bevdeploy.io import atomic_write
from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.model.factory import package_reference
from bevdeploy.package import load_package
from bevdeploy.runtime import Pipeline
from bevdeploy.runtime.backends import RunnerOptions
from bevdeploy.runtime.schedules import Schedule
from bevdeploy.vocabulary import HEAD_OUTPUTS


def compare(package: Path, checkpoint: Path | None, frames: Iterable[Frame], *,
            tolerances: Tolerances | None = None, save: Path | None = None,
            backend: str = "onnxruntime", threads: int | None = None,
            runner_options: RunnerOptions | None = None,
            schedule: Schedule | str = "sequential") -> CompareReport:
    """Run the reference and the deployed package side by side on ``frames`` and compare every
    stage and the boxes (see ``bevdeploy.eval.compare``).

    ``checkpoint`` must be the file the package was exported from (its SHA-256 is checked);
    ``None`` looks for that file (``model.factory.find_recorded``) and refuses when it is not
    found, or takes the seeded initialisation for a package of random weights. ``tolerances``
    overrides the per-precision limits for every stage. ``save`` is a directory that receives
    one ``frame_NNNN.npz`` per frame with every compared pair (``<stage>.reference``,
    ``<stage>.deployed``, the deployed head outputs in the paired proposal order,
    ``head.proposal_order``, ``head.judged`` (the proposals the head's metrics are over:
    ``judged_proposals``), and each side's boxes, scores and labels), each written
    atomically. ``backend``, ``threads``, ``runner_options`` and
    ``schedule`` are the ``Pipeline``'s (a GPU backend's: ``GpuConfig.options`` and
    ``GpuConfig.schedule``).
    """
    pkg = load_package(package)
    model, weights = package_reference(pkg, checkpoint, require_match=True)
    limits = stage_tolerances(pkg, tolerances)
    pipeline = Pipeline(pkg, backend=backend, threads=threads, runner_options=runner_options,
                        schedule=schedule)
    report = CompareReport(package=str(pkg.root),
                           checkpoint=None if weights.random else weights.describe(),
                           backend=backend, tolerances=limits)
    count = 0
    for index, frame in enumerate(frames):
        count += 1
        _compare_frame(report, index, frame, model, pipeline, limits, save)
    if not count:
        raise InputError("no frames to compare", field="frames")
    return report


def _compare_frame(report: CompareReport, index: int, frame: Frame, model: BEVFusion,
                   pipeline: Pipeline, limits: Mapping[str, Tolerances], save: Path | None
                   ) -> None:
    token = frame.token
    reference, ranked = run_reference(model, frame)
    deployed, head_raw = run_deployed(pipeline, frame, reference.tensors["fuser"])
    head_ref = {k: reference.tensors[f"head.{k}"] for k in HEAD_OUTPUTS}
    order = align_proposals(head_ref, head_raw)
    for k in HEAD_OUTPUTS:
        deployed.tensors[f"head.{k}"] = head_raw[k][..., order]

    voxels_differ = voxel_failures(reference.tensors["lidar.voxel_coords"],
                                   deployed.tensors["lidar.voxel_coords"])
    proposals = pipeline.preset.model.head.num_proposals
    proposal_remarks = head_remarks(order, ranked, proposals, limits["head.score"])
    judged = judged_proposals(ranked, proposals, limits["head.score"])
    if not judged.all():
        proposal_remarks.append(f"judged the {int(judged.sum())} of {proposals} proposals "
                                "whose heatmap clears the top-k boundary by twice the error "
                                "budget; the others may legitimately be other cells")
    for stage in STAGES:
        tol = limits[stage.name]
        ref, dep = reference.tensors[stage.name], deployed.tensors[stage.name]
        if stage.name.startswith("head."):
            ref, dep = ref[..., judged], dep[..., judged]
        metrics = tensor_metrics(ref, dep)
        failures = tensor_failures(metrics, tol)
        if stage.name == "lidar.voxels":
            failures += voxels_differ
        remarks = proposal_remarks if stage.name.startswith("head.") else []
        report.stages.append(StageResult(stage.name, index, token, tol.precision, metrics,
                                         passed=not failures, notes=tuple(failures + remarks)))
    tol = limits[BOXES.name]
    box_metrics, _ = match_boxes(reference.detections, deployed.detections, tol)
    failures = box_failures(box_metrics, tol)
    report.boxes.append(BoxResult(index, token, tol.precision, box_metrics,
                                  passed=not failures, notes=tuple(failures)))
    if save is not None:
        report.saved.append(_save_frame(Path(save), index, reference, deployed, order, judged))


def _save_frame(directory: Path, index: int, reference: SideOutputs, deployed: SideOutputs,
                order: np.ndarray, judged: np.ndarray) -> Path:
    arrays: dict[str, np.ndarray] = {"head.proposal_order": order, "head.judged": judged}
    for name in (*(s.name for s in STAGES), "lidar.voxel_coords"):
        arrays[f"{name}.reference"] = reference.tensors[name]
        arrays[f"{name}.deployed"] = deployed.tensors[name]
    for side, dets in (("reference", reference.detections), ("deployed", deployed.detections)):
        arrays[f"boxes.{side}"] = dets.boxes
        arrays[f"scores.{side}"] = dets.scores
        arrays[f"labels.{side}"] = dets.labels
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write(directory / f"frame_{index:04d}.npz", buffer.getvalue())
