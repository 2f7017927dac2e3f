"""The assembled model: state-dict layout against the shipped key lists and
docs/reference.md#checkpoint-layout, test-time preprocessing against independent maths, and
end-to-end ``predict``."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from bevdeploy.data.boxes import points_in_boxes
from bevdeploy.data.frame import Detections
from bevdeploy.errors import InputError
from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.model.checkpoint import key_list, parse_key_list, shipped_key_list
from bevdeploy.model.inputs import collate, filter_points, round_points_fp16
from bevdeploy.model.macs import probe_frame
from bevdeploy.presets import get_preset

torch.set_num_threads(2)

# docs/reference.md#checkpoint-layout: keys per top-level module (SwinT, ResNet50).
SPEC_KEYS = {
    "encoders.camera.backbone": (187, 318),
    "encoders.camera.neck": (24, 24),
    "encoders.camera.vtransform": (59, 59),
    "encoders.lidar.backbone": (126, 126),
    "fuser": (6, 6),
    "decoder.backbone": (72, 72),
    "decoder.neck": (12, 12),
    "heads.object": (96, 96),
}


@pytest.fixture(scope="module")
def tiny():
    preset = get_preset("tiny")
    torch.manual_seed(0)
    return BEVFusion(preset).eval()


@pytest.fixture(scope="module")
def frames():
    preset = get_preset("tiny")
    return [probe_frame(preset, seed=s) for s in (0, 1)]


@pytest.mark.parametrize("name, column, total", [("nuscenes-swint", 0, 582),
                                                 ("nuscenes-resnet50", 1, 713)])
def test_state_dict_matches_spec_and_shipped_list(name, column, total):
    model = BEVFusion(get_preset(name))
    state = model.state_dict()
    assert len(state) == total
    for prefix, counts in SPEC_KEYS.items():
        assert sum(k.startswith(prefix + ".") for k in state) == counts[column], prefix
    assert key_list(model) == shipped_key_list(name)
    vt = "encoders.camera.vtransform."
    assert tuple(state[vt + "frustum"].shape) == (118, 32, 88, 3)
    assert state[vt + "nx"].dtype == torch.int64 and state[vt + "nx"].tolist() == [360, 360, 1]
    assert not any(p.requires_grad for k, p in model.named_parameters()
                   if k.startswith(vt) and k.rsplit(".", 1)[1] in ("frustum", "dx", "bx", "nx"))


def test_tiny_key_list_is_shipped(tiny):
    assert key_list(tiny) == shipped_key_list("tiny")
    rows = parse_key_list(shipped_key_list("tiny"))
    assert [(k, tuple(v.shape)) for k, v in tiny.state_dict().items()] == \
        [(k, s) for k, s, _ in rows]


def test_forward_outputs_follow_the_interface(tiny, frames):
    preset = tiny.preset
    batch = collate(frames, preset)
    with torch.inference_mode():
        out = tiny(batch)
    b, p, k = 2, preset.model.head.num_proposals, preset.num_classes
    expected = {"center": (b, 2, p), "height": (b, 1, p), "dim": (b, 3, p), "rot": (b, 2, p),
                "vel": (b, 2, p), "heatmap": (b, k, p), "query_heatmap_score": (b, k, p),
                "query_labels": (b, p), "dense_heatmap": (b, k, *preset.bev_size)}
    assert {key: tuple(out[key].shape) for key in expected} == expected
    assert all(torch.isfinite(out[key]).all() for key in expected)


def test_batch_of_two_equals_two_single_frames(tiny, frames):
    """Collation must keep each frame's points, images and matrices with that frame."""
    preset = tiny.preset
    with torch.inference_mode():
        both = tiny(collate(frames, preset))
        singles = [tiny(collate([f], preset)) for f in frames]
    assert not torch.allclose(singles[0]["dense_heatmap"], singles[1]["dense_heatmap"])
    for i, single in enumerate(singles):
        torch.testing.assert_close(both["dense_heatmap"][i], single["dense_heatmap"][0],
                                   rtol=1e-4, atol=1e-4)
        assert torch.equal(both["query_labels"][i], single["query_labels"][0])


def test_predict_tiny_gives_valid_detections(tiny, frames):
    dets = tiny.predict(frames[0])
    preset = tiny.preset
    assert isinstance(dets, Detections) and dets.class_names == preset.classes
    assert 0 < len(dets) <= preset.model.head.num_proposals
    assert np.isfinite(dets.boxes).all() and (dets.boxes[:, 3:6] > 0).all()
    assert ((dets.scores >= 0) & (dets.scores <= 1)).all()
    lo, hi = np.array(preset.model.head.post_center_range).reshape(2, 3)
    assert ((dets.boxes[:, :3] >= lo) & (dets.boxes[:, :3] <= hi)).all()


@pytest.mark.slow  # a latency bound: meaningful only on a quiet machine (bench measures in CI's place)
def test_predict_tiny_under_a_second(tiny, frames):
    tiny.predict(frames[0])  # warm-up
    timings = []
    for _ in range(5):  # the best of five
        start = time.perf_counter()
        tiny.predict(frames[0])
        timings.append(time.perf_counter() - start)
    assert min(timings) < 1.0, timings


def test_predict_restores_training_mode_and_statistics(frames):
    model = BEVFusion(get_preset("tiny")).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.predict(frames[0])
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_collate_matrices_against_independent_maths(frames):
    preset = get_preset("nuscenes-resnet50")
    frame = replace(frames[0], images=np.full((6, 900, 1600, 3), 128, np.uint8))
    calib = frame.calib
    batch = collate([frame], preset)
    # docs/reference.md#camera-input: the test-time image augmentation of the nuScenes presets.
    aug = np.array([[0.48, 0, 0, -32], [0, 0.48, 0, -176], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(batch.img_aug_matrix[0].numpy(), np.broadcast_to(aug, (6, 4, 4)),
                               atol=1e-6)
    np.testing.assert_allclose(batch.camera_intrinsics[0, :, :3, :3].numpy(), calib.intrinsics,
                               rtol=1e-6)
    assert torch.equal(batch.camera_intrinsics[0, :, 3], torch.tensor([0.0, 0, 0, 1]).expand(6, 4))
    # lidar2image maps p to (u·z, v·z, z) with z the camera depth: K · Rᵀ(p − t).
    p = np.array([3.0, 12.0, 0.5])
    for cam in range(6):
        r, t = calib.camera2lidar[cam, :3, :3], calib.camera2lidar[cam, :3, 3]
        expected = calib.intrinsics[cam] @ (r.T @ (p - t))
        got = batch.lidar2image[0, cam].numpy().astype(np.float64) @ np.append(p, 1.0)
        np.testing.assert_allclose(got[:3], expected, rtol=1e-5, atol=1e-4)
    assert batch.img.shape == (1, 6, 3, 256, 704)
    np.testing.assert_allclose(batch.img[0, :, 0].numpy(), (128 - 123.675) / 58.395, rtol=1e-5)
    assert torch.equal(batch.lidar_aug_matrix, torch.eye(4)[None])


def test_points_are_filtered_strictly_and_rounded():
    rng = np.random.default_rng(0)
    r = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    inside = rng.uniform([-50, -50, -4.9], [50, 50, 2.9], size=(20, 3))
    on_faces = np.array([[-51.2, 0, 0], [51.2, 0, 0], [0, -51.2, 0], [0, 0, 3.0], [0, 0, -5.0]])
    outside = np.array([[60.0, 0, 0], [0, 0, -7.0]])
    pts = np.concatenate([inside, on_faces, outside]).astype(np.float32)
    pts = np.column_stack([pts, rng.uniform(0, 255, len(pts))]).astype(np.float32)
    kept = filter_points(pts, r)
    np.testing.assert_array_equal(kept, pts[:20])
    rounded = round_points_fp16(kept)
    assert rounded.dtype == np.float32
    np.testing.assert_array_equal(rounded, kept.astype(np.float16).astype(np.float32))
    assert np.abs(rounded[:, :3] - kept[:, :3]).max() <= 2.0 ** -6  # half an fp16 step at < 64 m


def test_fp16_flag_reaches_the_model_input(frames):
    preset = get_preset("tiny")
    exact = collate([frames[0]], preset).points[0]
    rounded = collate([frames[0]], preset, fp16_points=True).points[0]
    assert torch.equal(rounded, exact.half().float()) and not torch.equal(rounded, exact)


def test_probe_frame_is_structured(frames):
    preset = get_preset("tiny")
    frame = frames[0]
    again = probe_frame(preset, seed=0)
    assert np.array_equal(frame.points, again.points) and np.array_equal(frame.images, again.images)
    hits = points_in_boxes(frame.points, np.asarray(frame.gt.boxes) * [1, 1, 1, 1.05, 1.05, 1.05,
                                                                       1, 1, 1])
    assert hits.any(axis=0).sum() >= len(frame.gt) // 2  # most objects are seen by the LiDAR
    assert frame.images.std() > 20  # not a flat image
    np.testing.assert_allclose(np.unique(frame.points[:, 4]),
                               0.05 * np.arange(preset.points.sweeps + 1), atol=1e-7)


@pytest.mark.parametrize("change, field", [
    (lambda f: replace(f, calib=replace(f.calib, camera_names=f.calib.camera_names[::-1])),
     "calib.camera_names"),
    (lambda f: replace(f, images=f.images[:, :450]), "images"),
    (lambda f: replace(f, points=f.points[:, :4]), "points"),
])
def test_bad_frames_are_refused_by_field(frames, change, field):
    with pytest.raises(InputError) as info:
        collate([change(frames[0])], get_preset("tiny"))
    assert info.value.field == field and info.value.path == frames[0].source


@pytest.mark.slow
def test_full_size_resnet50_frame_on_cpu():
    preset = get_preset("nuscenes-resnet50")
    model = BEVFusion(preset).eval()
    dets = model.predict(probe_frame(preset), fp16_points=True)
    assert 0 < len(dets) <= 200 and np.isfinite(dets.boxes).all()
