"""``bevdeploy.eval.compare``: per-stage parity of a deploy package against the reference.

**The weights.** As in ``tests/runtime/test_pipeline.py``: a seeded random initialisation alone
is numerically degenerate (BatchNorm's initial statistics shrink the activations to ~1e-6 by the
head, the heatmap is flat and the top-k proposals are decided by rounding), so the package under
test is exported from a model whose BatchNorm statistics were re-estimated on one frame. Its
activations are at unit scale and its proposals well defined, so any failure means the two
sides differ, not that the comparison is ill-conditioned.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from scipy.spatial.distance import cosine as cosine_distance

from support import calibrate_batchnorm, copy_with_fuser_weight

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.errors import CheckpointError, ConfigError, InputError
from bevdeploy.eval.compare import (
    BOXES, HEAD_OUTPUTS, STAGES, CompareReport, Tolerances, align_proposals, compare,
    match_boxes, stage_tolerances, tensor_failures, tensor_metrics,
)
from bevdeploy.eval.compare.comparators import judged_proposals
from bevdeploy.export.writer import export_package
from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.model.checkpoint import save_checkpoint
from bevdeploy.model.inputs import collate
from bevdeploy.package import MANIFEST_NAME, load_package, sha256_file
from bevdeploy.presets import get_preset

torch.set_num_threads(2)

TINY = get_preset("tiny")
STAGE_NAMES = [s.name for s in STAGES]
BEFORE_FUSER = STAGE_NAMES[:STAGE_NAMES.index("fuser")]
HEAD_STAGES = [f"head.{k}" for k in HEAD_OUTPUTS]
CLASSES = ("car", "pedestrian")


@pytest.fixture(scope="module")
def frames(synthetic_world: Path) -> list[Frame]:
    loader = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val", preset=TINY)
    return [loader[0], loader[1]]


@pytest.fixture(scope="module")
def exported(frames: list[Frame], tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[BEVFusion, Path, Path]:
    """(model, checkpoint, package): the package is exported from exactly this checkpoint."""
    torch.manual_seed(0)
    model = BEVFusion(TINY)
    calibrate_batchnorm(model, frames[0])
    root = tmp_path_factory.mktemp("compare")
    checkpoint = save_checkpoint(model, root / "calibrated.pth")
    return model, checkpoint, export_package(TINY, checkpoint, root / "package")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("saved")


@pytest.fixture(scope="module")
def report(exported: tuple[BEVFusion, Path, Path], frames: list[Frame], saved: Path
           ) -> CompareReport:
    _, checkpoint, package = exported
    return compare(package, checkpoint, frames, save=saved)


def _table_text(report: CompareReport) -> str:
    console = Console(record=True, width=240)
    console.print(report.table())
    return console.export_text()


def _with_precisions(package: Path, out: Path, precisions: dict[str, str]) -> Path:
    shutil.copytree(package, out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    for module, precision in precisions.items():
        manifest["modules"][module]["precision"] = precision
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return out


# ------------------------------------------------------------------------- a good package


def test_a_fresh_package_passes_at_fp32_on_every_stage(report: CompareReport):
    assert report.passed, _table_text(report)
    assert report.failed_stages == []
    for name in STAGE_NAMES:
        rows = report.stage(name)
        assert [r.frame for r in rows] == [0, 1]
        for r in rows:
            assert r.precision == "fp32" and r.passed
            # Non-trivial: the reference tensor is not all zero, and nothing is non-finite.
            assert r.metrics.ref_max_abs > 0, name
            assert r.metrics.nonfinite_reference == r.metrics.nonfinite_deployed == 0
    for box in report.boxes:
        m = box.metrics
        assert box.passed and m.judged_reference >= 50  # real boxes are compared
        assert m.matched >= m.judged_reference and m.unmatched_fraction == 0
        assert m.max_centre_m < 0.01 and m.min_iou > 0.99


def test_reported_metrics_equal_independent_maths_on_the_saved_pairs(report: CompareReport,
                                                                      saved: Path):
    assert [p.name for p in report.saved] == ["frame_0000.npz", "frame_0001.npz"]
    assert all(p.parent == saved for p in report.saved)
    for path in report.saved:
        frame = int(path.stem.split("_")[1])
        with np.load(path) as pairs:
            for name in STAGE_NAMES:
                ref = pairs[f"{name}.reference"].astype(np.float64)
                dep = pairs[f"{name}.deployed"].astype(np.float64)
                if name.startswith("head."):  # judged over the proposals sure on both sides
                    ref, dep = ref[..., pairs["head.judged"]], dep[..., pairs["head.judged"]]
                m = next(r.metrics for r in report.stage(name) if r.frame == frame)
                diff = np.abs(ref - dep)
                assert m.max_abs == pytest.approx(diff.max(), rel=1e-9, abs=1e-30)
                assert m.mean_abs == pytest.approx(diff.mean(), rel=1e-9, abs=1e-30)
                assert m.rel_max_abs == pytest.approx(diff.max() / np.abs(ref).max(), rel=1e-9,
                                                      abs=1e-30)
                assert m.cosine == pytest.approx(1 - cosine_distance(ref.ravel(), dep.ravel()),
                                                 abs=1e-12)
            for side in ("reference", "deployed"):
                assert pairs[f"boxes.{side}"].shape[1] == 9
                assert len(pairs[f"scores.{side}"]) == len(pairs[f"labels.{side}"])


def test_the_reference_chain_equals_the_model_forward(exported, frames, report, saved):
    """compare's stage-by-stage reference is ``BEVFusion.forward`` split, not another model."""
    model = exported[0]
    with np.load(report.saved[0]) as pairs, torch.no_grad():
        out = model(collate([frames[0]], TINY))
        for name, key in (("reg", "center"), ("rot", "rot"), ("dim", "dim"),
                          ("height", "height"), ("vel", "vel")):
            np.testing.assert_allclose(pairs[f"head.{name}.reference"], out[key].numpy(),
                                       rtol=0, atol=1e-6, err_msg=name)
        expected = model.heads["object"].decode(out)[0]  # what BEVFusion.predict returns
        np.testing.assert_allclose(pairs["boxes.reference"], expected.boxes, rtol=0, atol=1e-5)
        np.testing.assert_allclose(pairs["scores.reference"], expected.scores, rtol=0, atol=1e-6)


def test_the_report_renders_as_a_table_and_as_strict_json(report: CompareReport):
    text = _table_text(report)
    assert "PASS" in text and "FAIL" not in text
    for name in (*STAGE_NAMES, BOXES.name):
        assert name in text
    data = json.loads(report.to_json())
    assert data["passed"] is True and data["failed_stages"] == []
    assert len(data["stages"]) == 2 * len(STAGES) and len(data["boxes"]) == 2
    assert data["tolerances"]["fuser"]["cosine_min"] == Tolerances.for_precision("fp32").cosine_min


def test_proposal_pairing_undoes_a_reordering_of_the_head_outputs(report: CompareReport):
    with np.load(report.saved[1]) as pairs:
        reference = {k: pairs[f"head.{k}.reference"] for k in HEAD_OUTPUTS}
    rng = np.random.default_rng(0)
    perm = rng.permutation(reference["score"].shape[-1])
    deployed = {k: v[..., perm] + rng.normal(0, 1e-6, v.shape)[..., perm]
                for k, v in reference.items()}
    order = align_proposals(reference, deployed)
    np.testing.assert_array_equal(perm[order], np.arange(len(perm)))
    for k in HEAD_OUTPUTS:
        m = tensor_metrics(reference[k], deployed[k][..., order])
        assert not tensor_failures(m, Tolerances.for_precision("fp32")), k


# ------------------------------------------------------------------------- faults are found


@pytest.mark.parametrize("value", [None, np.nan], ids=["perturbed", "nan"])
def test_a_changed_fuser_weight_fails_the_fuser_and_the_boxes_only(exported, frames, tmp_path,
                                                                   value):
    _, checkpoint, package = exported
    broken = copy_with_fuser_weight(package, tmp_path / "broken", value)
    result = compare(broken, checkpoint, frames[:1])
    assert not result.passed  # the CLI exits 1
    assert result.failed_stages == ["fuser", BOXES.name]
    for name in BEFORE_FUSER:  # upstream of the change: untouched
        assert result.stage(name)[0].passed, name
    for name in HEAD_STAGES:  # the deployed head is fed the reference's fused features
        assert result.stage(name)[0].passed, name
    fuser = result.stage("fuser")[0]
    assert fuser.metrics.nonfinite_reference == 0
    if value is None:
        assert fuser.metrics.nonfinite_deployed == 0
        assert fuser.metrics.rel_max_abs > 1e-3
    else:
        assert fuser.metrics.nonfinite_deployed > 0
        assert any("NaN/Inf in the deployed tensor" in note for note in fuser.notes)


def test_tensor_metrics_count_injected_nan_and_inf_and_skip_them():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(4, 50)).astype(np.float32)
    dep = ref + rng.normal(0, 1e-3, ref.shape).astype(np.float32)
    dep[0, :3] = np.nan
    dep[1, 0] = np.inf
    dep[1, 1] = -np.inf
    ref[2, 5] = np.nan
    m = tensor_metrics(ref, dep)
    assert (m.nonfinite_deployed, m.nonfinite_reference) == (5, 1)
    ok = np.isfinite(ref) & np.isfinite(dep)
    r, d = ref[ok].astype(np.float64), dep[ok].astype(np.float64)
    assert m.max_abs == pytest.approx(np.abs(r - d).max(), rel=1e-12)
    assert m.cosine == pytest.approx(1 - cosine_distance(r, d), abs=1e-12)
    reasons = tensor_failures(m, Tolerances.for_precision("int8"))
    assert reasons == ["5 NaN/Inf in the deployed tensor", "1 NaN/Inf in the reference tensor"]

    mismatch = tensor_metrics(ref, dep[:3])
    assert np.isnan(mismatch.max_abs) and tensor_failures(mismatch, Tolerances.for_precision(
        "fp32"))[0].startswith("shapes differ")


def test_match_boxes_against_analytic_overlaps():
    def dets(rows: list[list[float]], scores: list[float], labels: list[int]) -> Detections:
        return Detections(np.array(rows), np.array(scores), np.array(labels), CLASSES)

    # car 4×2 m; the same car 0.5 m further along x; a car turned by 90°; a pedestrian that
    # the other side calls a car; a low-score reference box without a partner.
    reference = dets([[0, 0, 0, 4, 2, 1.5, 0, 0, 0], [20, 0, 0, 4, 2, 1.5, 0, 0, 0],
                      [40, 0, 0, 1, 1, 2, 0, 0, 0], [60, 0, 0, 4, 2, 1.5, 0, 0, 0]],
                     [0.9, 0.8, 0.7, 0.01], [0, 0, 1, 0])
    deployed = dets([[0.5, 0, 0, 4, 2, 1.5, 0, 0, 0], [20, 0, 0, 4, 2, 1.5, np.pi / 2, 0, 0],
                     [40, 0, 0, 1, 1, 2, 0, 0, 0]], [0.85, 0.8, 0.7], [0, 0, 0])
    m, pairs = match_boxes(reference, deployed, Tolerances.for_precision("int8"))
    assert sorted(pairs) == [(0, 0), (1, 1)]
    # Shift 0.5 m: intersection 3.5×2 = 7, union 16 − 7 = 9. Turned: 2×2 = 4, union 12.
    assert m.min_iou == pytest.approx(1 / 3) and m.mean_iou == pytest.approx((7 / 9 + 1 / 3) / 2)
    assert m.max_centre_m == pytest.approx(0.5) and m.max_score_delta == pytest.approx(0.05)
    assert (m.unmatched_reference, m.unmatched_deployed) == (1, 1)  # the low-score box is exempt
    assert (m.judged_reference, m.judged_deployed) == (3, 3)


# ------------------------------------------------------------------------- tolerances


def test_tolerances_loosen_from_fp32_to_int8_and_refuse_unknown_precisions():
    t32, t16, t8 = (Tolerances.for_precision(p) for p in ("fp32", "fp16", "int8"))
    assert t32.cosine_min > t16.cosine_min > t8.cosine_min
    assert t32.rel_max_abs < t16.rel_max_abs < t8.rel_max_abs
    assert t32.centre_m < t16.centre_m < t8.centre_m and t32.iou_min > t16.iou_min > t8.iou_min
    with pytest.raises(ConfigError):
        Tolerances.for_precision("bf16")


def test_a_stage_gets_the_lowest_precision_on_its_path(exported, tmp_path):
    pkg = load_package(_with_precisions(exported[2], tmp_path / "mixed",
                                        {"camera.backbone": "int8", "head.bbox": "fp16"}))
    limits = stage_tolerances(pkg)
    got = {name: t.precision for name, t in limits.items()}
    assert got == {"normalize": "fp32", "depth": "fp32", "camera.depth_weights": "int8",
                   "camera.feature": "int8", "camera.bevpool": "int8", "camera.bev": "int8",
                   "lidar.voxels": "fp32", "lidar.bev": "fp32", "fuser": "int8",
                   **{name: "fp16" for name in HEAD_STAGES}, "boxes": "int8"}
    override = Tolerances.for_precision("fp16")
    assert set(stage_tolerances(pkg, override).values()) == {override}

    bad = load_package(_with_precisions(exported[2], tmp_path / "bad", {"fuser": "fp8"}))
    with pytest.raises(ConfigError) as err:
        stage_tolerances(bad)
    assert err.value.field == "modules.fuser.precision"
    assert err.value.path.endswith(MANIFEST_NAME)


def test_head_tensors_are_judged_over_the_proposals_sure_to_be_selected():
    """An INT8 heatmap may move every cell by 10 % of the best score, so a proposal whose score
    clears the top-k boundary by less than twice that may be replaced by a cell the reference
    left out; at FP32 (1e-3) every proposal here is sure."""
    ranked = np.array([1.0, 0.9, 0.5, 0.31, 0.30, 0.29, 0.1])
    int8, fp32 = Tolerances.for_precision("int8"), Tolerances.for_precision("fp32")
    assert judged_proposals(ranked, 4, int8).tolist() == [True, True, False, False]
    assert judged_proposals(ranked, 4, fp32).all()
    assert judged_proposals(ranked, 7, int8).all()  # no cell left out: all selected
    flat = np.array([0.31, 0.305, 0.30, 0.30])  # none sure: judge all rather than nothing
    assert judged_proposals(flat, 3, int8).all()


# ------------------------------------------------------------------------- weights and input


def test_the_checkpoint_must_be_the_one_the_package_was_exported_from(exported, frames,
                                                                      tmp_path):
    model, checkpoint, package = exported
    other = save_checkpoint(model, tmp_path / "other.pth", meta={"note": "another file"})
    with pytest.raises(CheckpointError) as err:
        compare(package, other, frames)
    assert err.value.field == "checkpoint.sha256" and err.value.path == str(other)
    assert sha256_file(other) in str(err.value) and sha256_file(checkpoint) in str(err.value)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        compare(package, tmp_path / "missing.pth", frames)
    with pytest.raises(InputError) as err:
        compare(package, checkpoint, [])
    assert err.value.field == "frames"


def test_without_a_checkpoint_the_recorded_file_beside_the_package_is_the_reference(
        exported, frames, tmp_path):
    """``compare`` without ``--checkpoint`` uses the weights the package was exported from:
    the file of the recorded name beside the package, taken only for its SHA-256; elsewhere,
    or beside under the same name with other content, it refuses naming the file and hash."""
    model, checkpoint, package = exported
    assert checkpoint.parent == package.parent  # exported beside each other
    result = compare(package, None, frames[:1])
    assert result.checkpoint == "calibrated.pth" and result.passed, _table_text(result)

    moved = tmp_path / "moved" / "package"
    shutil.copytree(package, moved)
    with pytest.raises(CheckpointError) as err:
        compare(moved, None, frames[:1])
    said = str(err.value)
    assert err.value.field == "checkpoint" and err.value.path == str(moved / MANIFEST_NAME)
    assert "calibrated.pth" in said and sha256_file(checkpoint) in said
    assert str(moved.parent / "calibrated.pth") in said  # where it looked

    impostor = save_checkpoint(model, moved.parent / "calibrated.pth", meta={"note": "other"})
    with pytest.raises(CheckpointError) as err:
        compare(moved, None, frames[:1])
    assert sha256_file(impostor) in str(err.value) and sha256_file(checkpoint) in str(err.value)


def test_a_random_weight_package_is_compared_with_the_exporters_seeded_init(exported, frames,
                                                                            tmp_path):
    package = export_package(TINY, None, tmp_path / "random")
    with pytest.raises(CheckpointError, match="random weights"):
        compare(package, exported[1], frames[:1])
    result = compare(package, None, frames[:1])
    assert result.checkpoint is None
    # Any other initialisation would differ from the first learned layer on. (The head of a
    # random network is degenerate, see the module docstring, so it is not asserted here.)
    for name in (*BEFORE_FUSER, "fuser"):
        assert result.stage(name)[0].passed, name


# ---------------------------------------------------------------- the GPU schedule's chain


@pytest.mark.parametrize("broken", [False, True], ids=["faithful", "changed_fuser_weight"])
def test_the_gpu_schedules_own_stages_are_compared(exported, frames, tmp_path, broken):
    """``CudaSchedule`` hands its stage results to compare through ``taps`` (its device
    kernels are not the pipeline's CPU stages). Run on CPU tensors (Triton interpreted, the SCN
    on torch): a faithful package passes every stage at fp32, a changed fuser weight fails the
    fuser and the boxes only — the tapped tensors are the ones the schedule computed."""
    pytest.importorskip("triton", reason="the device kernels are Triton's (the gpu extra)")
    from bevdeploy.runtime.backends import GpuOptions
    from bevdeploy.runtime.schedules import CudaSchedule

    _, checkpoint, package = exported
    if broken:
        package = copy_with_fuser_weight(package, tmp_path / "broken", None)
    schedule = CudaSchedule(device="cpu", streams=False)
    result = compare(package, checkpoint, frames[:1], backend="torch-cuda",
                     runner_options=GpuOptions(threads=2, device="cpu"), schedule=schedule)
    assert result.backend == "torch-cuda" and schedule.taps is None  # taps off afterwards
    if broken:
        assert result.failed_stages == ["fuser", BOXES.name]
        return
    assert result.passed, _table_text(result)
    for name in STAGE_NAMES:
        row = result.stage(name)[0]
        assert row.precision == "fp32" and row.metrics.ref_max_abs > 0, name
    assert result.boxes[0].metrics.judged_reference >= 50
