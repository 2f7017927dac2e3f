"""Box conventions of a head's regression: an mmdetection3d-1.x-trained head decoded as such.

The encoder below is written independently from mmdetection3d 1.x's facts
(docs/reference.md#box-convention): a nuScenes box becomes a ``LiDARInstance3DBoxes`` row
``[x, y, z_bottom, l, w, h, yaw]`` (the converter's ``dims[:, [1, 0, 2]]`` of ``wlh``, the box's
own yaw, the dataset's origin (0.5, 0.5, 0.5) → (0.5, 0.5, 0) shift), and its
``TransFusionBBoxCoder.encode`` gives ``[(x − pc₀)/(f·v₀), (y − pc₁)/(f·v₁), z_bottom + h/2,
log l, log w, log h, sin yaw, cos yaw, vx, vy]``. Decoding those targets with the
``mmdet3d-1.x`` convention must return the boxes: centre ≤ 1e-4 m, yaw ≤ 1e-5 rad (mod 2π),
sizes bit-exact (the sizes are drawn so that float32 ``exp(log s)`` is ``s``; the conversion
itself only reorders them). With ``mit`` it must not (l and w swap, the yaw mirrors).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bevdeploy.data.boxes import from_head_boxes, from_mmdet3d_v1, to_mmdet3d_v1
from bevdeploy.model.bbox_coder import TransFusionBBoxCoder
from bevdeploy.presets import get_preset
from bevdeploy.runtime import kernels
from bevdeploy.vocabulary import BOX_CONVENTION_MIT, BOX_CONVENTION_MMDET3D

TINY = get_preset("tiny")
CENTRE_TOL_M = 1e-4
YAW_TOL_RAD = 1e-5


def _known_boxes(count: int = 40) -> np.ndarray:
    """(K, 9) bevdeploy boxes inside the tiny range, yaws over the whole circle (both ends
    included), l ≠ w by at least 20 %, float32 sizes whose exp(log s) round trip is exact in
    numpy and in torch."""
    rng = np.random.default_rng(11)
    r = TINY.points.point_cloud_range
    sizes: list[np.ndarray] = []
    while len(sizes) < count:
        s = rng.uniform(0.4, 12.0, size=3).astype(np.float32)
        if abs(s[0] - s[1]) < 0.2 * max(s[0], s[1]):
            continue
        log = np.log(s)
        if np.array_equal(np.exp(log), s) and np.array_equal(torch.from_numpy(log).exp(), s):
            sizes.append(s)
    size = np.stack(sizes)
    yaw = np.linspace(-np.pi, np.pi, count, endpoint=False) + 0.013
    return np.column_stack([rng.uniform(r[0] + 2, r[3] - 2, count),
                            rng.uniform(r[1] + 2, r[4] - 2, count),
                            rng.uniform(-2.0, 1.0, count), size, yaw,
                            rng.normal(0, 3, (count, 2))]).astype(np.float32)


def _mmdet3d_v1_targets(boxes: np.ndarray) -> dict[str, np.ndarray]:
    """The independent 1.x encoder: bevdeploy (≡ nuScenes centre, l, w, h, yaw) → a
    ``LiDARInstance3DBoxes`` row with a bottom z → the head's regression targets, as the head
    outputs ``(n, P)`` (float64 maths, float32 results)."""
    b = boxes.astype(np.float64)
    x, y, z_centre, length, width, height, yaw = (b[:, i] for i in range(7))
    z_bottom = z_centre - height / 2  # origin (0.5, 0.5, 0.5) → (0.5, 0.5, 0)
    factor = TINY.model.head.out_size_factor
    voxel = TINY.voxel.voxel_size
    pc = TINY.points.point_cloud_range
    out = {"reg": np.stack([(x - pc[0]) / (factor * voxel[0]), (y - pc[1]) / (factor * voxel[1])]),
           "height": (z_bottom + height * 0.5)[None],
           "dim": np.log(np.stack([length, width, height])),
           "rot": np.stack([np.sin(yaw), np.cos(yaw)]),
           "vel": b[:, 7:9].T}
    return {k: v.astype(np.float32) for k, v in out.items()}


def _decode_cpu(targets: dict[str, np.ndarray], convention: str) -> np.ndarray:
    p = targets["reg"].shape[1]
    score = np.zeros((TINY.num_classes, p), np.float32)
    score[0] = 0.9
    head = TINY.model.head
    boxes, scores, _ = kernels.decode(
        score, targets["rot"], targets["dim"], targets["reg"], targets["height"],
        targets["vel"], head.out_size_factor, TINY.voxel.voxel_size[:2],
        TINY.points.point_cloud_range[:2], (-1e3, -1e3, -1e3, 1e3, 1e3, 1e3), 0.0,
        box_convention=convention)
    assert len(boxes) == p
    return boxes


def _decode_reference(targets: dict[str, np.ndarray], convention: str) -> np.ndarray:
    coder = TransFusionBBoxCoder(TINY, box_convention=convention)
    coder.post_center_range = (-1e3, -1e3, -1e3, 1e3, 1e3, 1e3)
    p = targets["reg"].shape[1]
    scores = torch.zeros(1, TINY.num_classes, p)
    scores[:, 0] = 0.9
    t = {k: torch.from_numpy(v)[None] for k, v in targets.items()}
    return coder.decode(scores, t["rot"], t["dim"], t["reg"], t["height"], t["vel"])[0].boxes


def _assert_same_boxes(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got[:, :3], want[:, :3], atol=CENTRE_TOL_M, rtol=0)
    np.testing.assert_array_equal(got[:, 3:6], want[:, 3:6])
    dyaw = got[:, 6].astype(np.float64) - want[:, 6]
    np.testing.assert_allclose(np.arctan2(np.sin(dyaw), np.cos(dyaw)), 0.0, atol=YAW_TOL_RAD)
    np.testing.assert_allclose(got[:, 7:9], want[:, 7:9], atol=1e-6, rtol=0)


@pytest.mark.parametrize("decode", [_decode_cpu, _decode_reference], ids=["cpu", "reference"])
def test_mmdet3d_v1_targets_decode_to_the_boxes_only_in_their_convention(decode):
    boxes = _known_boxes()
    targets = _mmdet3d_v1_targets(boxes)
    _assert_same_boxes(decode(targets, BOX_CONVENTION_MMDET3D), boxes)
    wrong = decode(targets, BOX_CONVENTION_MIT)
    np.testing.assert_array_equal(wrong[:, 3:5], boxes[:, [4, 3]])  # l and w swapped
    dyaw = wrong[:, 6].astype(np.float64) - boxes[:, 6]
    assert np.abs(np.arctan2(np.sin(dyaw), np.cos(dyaw))).min() > 0.02  # the mirrored yaw
    assert np.abs(wrong[:, 2] - boxes[:, 2]).min() > 0.19  # z at the bottom (h ≥ 0.4 m)


def test_cuda_decode_kernel_honours_the_convention():
    """The GPU decode (plain torch ops) on CPU tensors equals the CPU kernel for each
    convention (1e-5, as tests/runtime/kernels_cuda/test_parity.py states for decode)."""
    pytest.importorskip("triton", reason="triton is not installed (the gpu extra)")
    from bevdeploy.runtime.kernels.cuda.decode import decode as cuda_decode

    targets = _mmdet3d_v1_targets(_known_boxes())
    p = targets["reg"].shape[1]
    score = np.zeros((TINY.num_classes, p), np.float32)
    score[0] = 0.9
    head = TINY.model.head
    for convention in (BOX_CONVENTION_MIT, BOX_CONVENTION_MMDET3D):
        boxes, _, _ = cuda_decode(
            *(torch.from_numpy(a) for a in (score, targets["rot"], targets["dim"],
                                            targets["reg"], targets["height"],
                                            targets["vel"])),
            head.out_size_factor, TINY.voxel.voxel_size[:2], TINY.points.point_cloud_range[:2],
            (-1e3, -1e3, -1e3, 1e3, 1e3, 1e3), 0.0, box_convention=convention)
        want = _decode_cpu(targets, convention)
        np.testing.assert_allclose(boxes.numpy(), want, atol=1e-5, rtol=0)


def test_reference_coder_encodes_in_its_convention():
    """The coder's own encode (what a 1.x-convention model would be trained on) equals the
    independent encoder."""
    boxes = _known_boxes()
    coder = TransFusionBBoxCoder(TINY, box_convention=BOX_CONVENTION_MMDET3D)
    got = coder.encode(boxes).numpy()
    t = _mmdet3d_v1_targets(boxes)
    want = np.concatenate([t["reg"], t["height"], t["dim"], t["rot"], t["vel"]]).T
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-6)


def test_v1_conversion_round_trips_and_unknown_conventions_are_refused():
    boxes = _known_boxes()
    back = from_mmdet3d_v1(to_mmdet3d_v1(boxes))
    np.testing.assert_allclose(back, boxes, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="mmdet3d-legacy"):
        from_head_boxes(to_mmdet3d_v1(boxes), "mmdet3d-legacy")
