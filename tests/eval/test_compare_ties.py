"""Proposal pairing and the head remarks on constructed head outputs that hold exact ties.

Equal heatmap scores leave the order of proposals (and, at the top-k boundary, the choice of
cells) to each runtime's tie-breaking: a legitimate reordering that ``align_proposals`` must
undo and ``head_remarks`` must name as such, never as an unexplained move.
"""

from __future__ import annotations

import numpy as np
import pytest

from bevdeploy.eval.compare import (HEAD_OUTPUTS, Tolerances, align_proposals, tensor_failures,
                                   tensor_metrics)
from bevdeploy.eval.compare.comparators import head_remarks

FP32 = Tolerances.for_precision("fp32")
CHANNELS = {"score": 3, "rot": 2, "dim": 3, "reg": 2, "height": 1, "vel": 2}
PROPOSALS = 8


def _head(rng: np.random.Generator, labels: np.ndarray, scores: np.ndarray
          ) -> dict[str, np.ndarray]:
    """Head outputs ``(1, C, P)``: one-hot class scores, random regression outputs."""
    out = {k: rng.normal(size=(1, c, PROPOSALS)) for k, c in CHANNELS.items()}
    out["score"] = np.zeros((1, CHANNELS["score"], PROPOSALS))
    out["score"][0, labels, np.arange(PROPOSALS)] = scores
    return out


def _deployed(reference: dict[str, np.ndarray], perm: np.ndarray, rng: np.random.Generator
              ) -> dict[str, np.ndarray]:
    """The reference's proposals in the deployed order ``perm`` with float32 rounding noise."""
    return {k: (v + rng.normal(0, 1e-7, v.shape) * np.abs(v))[..., perm]
            for k, v in reference.items()}


def _passes(reference: dict[str, np.ndarray], deployed: dict[str, np.ndarray],
            order: np.ndarray) -> bool:
    return not any(tensor_failures(tensor_metrics(reference[k], deployed[k][..., order]), FP32)
                   for k in HEAD_OUTPUTS)


def test_a_reordering_among_exactly_equal_scores_is_paired_and_called_tie_breaking():
    rng = np.random.default_rng(0)
    # Heatmap scores of the proposals, best first: places 2, 3 and 4 tie exactly.
    ranked = np.array([0.9, 0.8, 0.5, 0.5, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    labels = np.array([0, 1, 2, 2, 2, 0, 1, 0])
    reference = _head(rng, labels, ranked[:PROPOSALS])  # equal class scores too
    perm = np.array([0, 1, 4, 2, 3, 5, 6, 7])  # the deployed runtime broke the tie otherwise
    deployed = _deployed(reference, perm, rng)

    order = align_proposals(reference, deployed)
    np.testing.assert_array_equal(perm[order], np.arange(PROPOSALS))
    assert _passes(reference, deployed, order)
    assert head_remarks(order, ranked, PROPOSALS, FP32) == [
        "3 proposals reordered among exactly equal heatmap scores (tie-breaking; not an error)"]


def test_moves_between_distinct_scores_are_told_apart_from_ties():
    rng = np.random.default_rng(1)
    ranked = np.array([0.9, 0.5, 0.5, 0.4, 0.4 - 1e-5, 0.3, 0.2, 0.1, 0.05])
    reference = _head(rng, np.zeros(PROPOSALS, int), ranked[:PROPOSALS])
    perm = np.array([7, 2, 1, 4, 3, 5, 6, 0])  # a tie, a near tie (1e-5), and 0.9 <-> 0.1
    order = align_proposals(reference, _deployed(reference, perm, rng))
    np.testing.assert_array_equal(perm[order], np.arange(PROPOSALS))
    assert head_remarks(order, ranked, PROPOSALS, FP32) == [
        "2 proposals reordered among exactly equal heatmap scores (tie-breaking; not an error)",
        "2 proposals reordered among heatmap scores within the error budget 9.0e-04",
        "2 proposals paired out of order beyond the heatmap error budget 9.0e-04"]


def test_duplicated_proposals_keep_their_places():
    """Whole proposals tying exactly (equal scores and regression outputs) pair at equal cost
    either way; the pairing keeps each in its place rather than report a reordering."""
    rng = np.random.default_rng(2)
    ranked = np.array([0.9, 0.7, 0.7, 0.7, 0.6, 0.5, 0.5, 0.4, 0.3])
    reference = _head(rng, np.array([0, 1, 1, 1, 2, 0, 0, 2]), ranked[:PROPOSALS])
    for k in reference:  # 1, 2, 3 are one proposal three times, 5 and 6 another
        reference[k][..., 2] = reference[k][..., 3] = reference[k][..., 1]
        reference[k][..., 6] = reference[k][..., 5]
    moved = 0
    for seed in range(20):  # the assignment alone swaps equal-cost duplicates in most draws
        deployed = _deployed(reference, np.arange(PROPOSALS), np.random.default_rng(seed))
        order = align_proposals(reference, deployed)
        np.testing.assert_array_equal(order, np.arange(PROPOSALS))
        assert _passes(reference, deployed, order)
        moved += bool(head_remarks(order, ranked, PROPOSALS, FP32))
    assert moved == 0


@pytest.mark.parametrize("ranked, says", [
    (np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.2, 0.2, 0.1]),
     "the top-k boundary falls inside an exact tie (1 of 3 equal cells kept, by "
     "tie-breaking): the proposal set may legitimately differ"),
    (np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.2 - 1e-4, 0.1]),
     "top-k boundary gap 1.0e-04 within the heatmap error budget 9.0e-04: the proposal set "
     "may legitimately differ"),
    (np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]), None),
], ids=["exact_tie", "near_tie", "clear_gap"])
def test_the_top_k_boundary_remark(ranked: np.ndarray, says: str | None):
    remarks = head_remarks(np.arange(PROPOSALS), ranked, PROPOSALS, FP32)
    assert remarks == ([] if says is None else [says])
