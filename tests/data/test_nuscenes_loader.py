"""The devkit loader on the synthetic nuScenes world, checked against the world's own truth:
rendered pixels, the annotations' point counts, the global annotation records, the devkit's
submission loader; plus the info-file round trip and the submission converter.

The world (``tests/conftest.py::synthetic_world``) is 2 scenes × 3 key frames at LiDAR density
0.15, written once per session.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nuscenes.eval.common.loaders import load_prediction
from nuscenes.eval.detection.data_classes import DetectionBox
from nuscenes.eval.detection.utils import detection_name_to_rel_attributes
from nuscenes.utils.splits import create_splits_scenes
from pyquaternion import Quaternion

from bevdeploy.data.boxes import box_corners, points_in_boxes
from bevdeploy.data.frame import Detections
from bevdeploy.data.infos import InfoLoader, write_infos
from bevdeploy.data.nuscenes import (NuScenesLoader, Pose, attribute_name, class_ranges,
                                     detections_to_nuscenes, sensor2lidar, write_submission)
from bevdeploy.data.preprocess import lidar2image
from bevdeploy.data.readers import read_points
from bevdeploy.data.synthetic import background_image
from bevdeploy.errors import ConfigError, DatasetError, InputError
from bevdeploy.presets import get_preset

VERSION = "v1.0-mini"
SWEEP_PERIOD = 0.05  # s, the 20 Hz LiDAR
JPEG_NOISE = 20  # max per-channel difference a JPEG'd background pixel stays within


@pytest.fixture(scope="module")
def tiny():
    return get_preset("tiny")


@pytest.fixture(scope="module")
def loader(synthetic_world: Path, tiny) -> NuScenesLoader:
    return NuScenesLoader(synthetic_world, version=VERSION, split="all", preset=tiny)


@pytest.fixture(scope="module")
def frames(loader: NuScenesLoader) -> list:
    return list(loader)


def test_sensor2lidar_matches_the_reference_converter_algebra() -> None:
    """``obtain_sensor2top`` in the mit-han-lab converter works with row vectors:
    R = (Rs_l2e.T Rs_e2g.T)(R_e2g⁻¹.T R_l2e⁻¹.T), T = (ts_l2e Rs_e2g.T + ts_e2g)(...) − (...),
    and stores Rᵀ and T. Our 4×4 chain must give the same numbers."""
    rng = np.random.default_rng(4)

    def pose() -> Pose:
        q = rng.normal(size=4)
        return Pose(tuple(rng.uniform(-300, 300, 3)), tuple(q / np.linalg.norm(q)))

    s2e, s_e2g, l2e, e2g = pose(), pose(), pose(), pose()
    rot = lambda p: Quaternion(p.rotation).rotation_matrix  # noqa: E731
    inv_chain = np.linalg.inv(rot(e2g)).T @ np.linalg.inv(rot(l2e)).T
    r = (rot(s2e).T @ rot(s_e2g).T) @ inv_chain
    t = (np.array(s2e.translation) @ rot(s_e2g).T + np.array(s_e2g.translation)) @ inv_chain
    t -= np.array(e2g.translation) @ inv_chain + np.array(l2e.translation) @ np.linalg.inv(
        rot(l2e)).T
    m = sensor2lidar(s2e, s_e2g, l2e, e2g)
    np.testing.assert_allclose(m[:3, :3], r.T, atol=1e-12)
    np.testing.assert_allclose(m[:3, 3], t, atol=1e-9)
    np.testing.assert_array_equal(m[3], [0, 0, 0, 1])


def test_frames_follow_the_preset_and_time_order(loader, frames, tiny) -> None:
    assert len(frames) == 6
    stamps = [f.timestamp for f in frames]
    assert stamps == sorted(stamps)
    for frame in frames:
        assert frame.calib.camera_names == tiny.cameras.names
        assert frame.images.shape == (tiny.cameras.num_cameras, *tiny.cameras.raw_size, 3)
        assert frame.points.shape[1] == tiny.points.num_features
        assert frame.gt is not None and len(frame.gt) > 0
    assert list(loader.sample_tokens) == [f.token for f in frames]


def test_splits_select_their_scenes(synthetic_world: Path, loader, tiny) -> None:
    splits = create_splits_scenes()
    scene_of = {s["token"]: s["name"] for s in loader.nusc.scene}
    seen = set()
    for split in ("mini_train", "mini_val"):
        part = NuScenesLoader(synthetic_world, version=VERSION, split=split, preset=tiny)
        names = {scene_of[loader.nusc.get("sample", t)["scene_token"]] for t in part.sample_tokens}
        assert names and names <= set(splits[split])
        seen |= set(part.sample_tokens)
    assert seen == set(loader.sample_tokens)


def test_gt_boxes_project_onto_the_rendered_objects(frames) -> None:
    """The centre and the corners of each GT box shrunk to 60 % lie inside the object, so where
    the box is fully in view they must land on rendered object pixels, not background. This
    checks camera2lidar, the intrinsics, the box centre, sizes and yaw at once."""
    probes = 0
    cameras_with_objects = set()
    for frame in frames:
        l2i = lidar2image(frame.calib).astype(np.float64)
        boxes = frame.gt.boxes.astype(np.float64)
        inner = boxes.copy()
        inner[:, 3:6] *= 0.6
        probe_xyz = np.concatenate([boxes[:, None, :3], box_corners(inner)], axis=1)
        outer = box_corners(boxes)
        h, w = frame.images.shape[1:3]
        for c, name in enumerate(frame.calib.camera_names):
            diff = np.abs(frame.images[c].astype(int) - background_image(name).astype(int)).max(-1)
            for k in range(len(boxes)):
                depth = (np.c_[outer[k], np.ones(8)] @ l2i[c].T)[:, 2]
                hom = np.c_[probe_xyz[k], np.ones(9)] @ l2i[c].T
                uv = hom[:, :2] / hom[:, 2:3]
                if (depth < 1.0).any() or not ((uv >= 0) & (uv < [w - 1, h - 1])).all():
                    continue
                u, v = np.round(uv).astype(int).T
                assert (diff[v, u] > JPEG_NOISE).all(), (frame.token, name, k, diff[v, u])
                probes += 9
                cameras_with_objects.add(name)
    assert probes >= 200 and len(cameras_with_objects) >= 4


def test_key_sweep_points_inside_gt_boxes_match_the_annotations(frames) -> None:
    exact = total = 0
    for frame in frames:
        key = frame.points[frame.points[:, 4] == 0.0]
        counts = points_in_boxes(key, frame.gt.boxes).sum(axis=0)
        claimed = frame.gt.num_lidar_pts
        assert claimed.sum() > 100
        assert np.abs(counts - claimed).max() <= 1  # a boundary point may round either way
        exact += int((counts == claimed).sum())
        total += len(claimed)
    assert exact >= 0.95 * total


def test_time_lags_are_zero_for_the_key_sweep_and_grow_with_age(frames, tiny) -> None:
    for frame in frames:
        lags = frame.points[:, 4]
        starts = np.flatnonzero(np.r_[True, np.diff(lags) != 0])
        block_lags = lags[starts]
        assert block_lags[0] == 0.0 and (np.diff(block_lags) > 0).all()  # contiguous, ordered
        np.testing.assert_allclose(block_lags, SWEEP_PERIOD * np.arange(tiny.points.sweeps + 1),
                                   atol=1e-6)


def _strays(points: np.ndarray, boxes: np.ndarray, k: int, max_lag: float) -> tuple[int, int]:
    """Points within 1 m of static box ``k`` (above its bottom, and clear of every other box
    grown by how far it can move in ``max_lag``): how many, and how many of them lie more than
    10 cm outside box ``k``."""
    tight, wide = boxes[k].copy(), boxes[k].copy()
    tight[3:6] += 2 * 0.1
    wide[3:6] += 2 * 1.0
    others = np.delete(boxes, k, axis=0)
    others[:, 3:6] += 2 * (np.hypot(others[:, 7], others[:, 8])[:, None] * max_lag + 0.3)
    p = points[points[:, 2] > boxes[k, 2] - boxes[k, 5] / 2 + 0.15]
    p = p[points_in_boxes(p, wide[None])[:, 0] & ~points_in_boxes(p, others).any(axis=1)]
    return len(p), int((~points_in_boxes(p, tight[None])[:, 0]).sum())


def test_ego_motion_is_compensated_for_static_objects(loader, frames) -> None:
    """Points of every sweep near a static box lie on that box (within the simulated 4 cm range
    noise): the sweeps were moved into the key frame through each sweep's own ego pose. The
    control: the oldest sweep read raw (left in its own frame) puts points off most boxes."""
    checked = raw_off = static_boxes = 0
    for index, frame in enumerate(frames):
        boxes = frame.gt.boxes.astype(np.float64)
        lags = frame.points[:, 4]
        static = (np.hypot(boxes[:, 7], boxes[:, 8]) < 1e-3) & (frame.gt.num_lidar_pts >= 20)
        rec = loader.record(index)
        oldest = rec.sweeps[loader.sweeps - 1]
        moved = np.linalg.norm(np.subtract(oldest.ego2global.translation,
                                           rec.lidar.ego2global.translation))
        assert moved > 0.2  # the ego really moves between sweeps
        raw = read_points(oldest.path)
        for k in np.flatnonzero(static):
            for lag in np.unique(lags):
                near, off = _strays(frame.points[lags == lag], boxes, k, lags.max())
                assert off == 0, (frame.token, k, lag, off, near)
                checked += near >= 10
            near, off = _strays(raw, boxes, k, lags.max())
            raw_off += off > 0
            static_boxes += near >= 10
    assert checked >= 20 and static_boxes >= 5
    assert raw_off >= 0.6 * static_boxes


def test_random_sweep_policy_is_seeded_and_differs_from_nearest(synthetic_world, loader,
                                                                 frames, tiny) -> None:
    rand = NuScenesLoader(synthetic_world, version=VERSION, split="all", preset=tiny,
                          sweep_policy="random", seed=3)
    a, b = rand[2], rand[2]
    np.testing.assert_array_equal(a.points, b.points)
    lags = np.unique(a.points[:, 4])
    assert len(lags) == tiny.points.sweeps + 1
    np.testing.assert_allclose(lags / SWEEP_PERIOD, np.round(lags / SWEEP_PERIOD), atol=1e-4)
    assert lags.max() <= SWEEP_PERIOD * 10 + 1e-6  # drawn from the 10 collected sweeps
    assert not np.array_equal(a.points, frames[2].points)


def test_info_file_round_trip_gives_the_same_frames(tmp_path, loader, frames, tiny,
                                                    assert_frames_equal) -> None:
    pkl = write_infos(tmp_path / "nuscenes_infos_all.pkl", loader)
    infos = InfoLoader(pkl, tiny)
    assert infos.sample_tokens == loader.sample_tokens and infos.version == VERSION
    for got, want in zip(infos, frames):
        assert_frames_equal(got, want)


def test_detections_convert_to_the_global_annotations(tmp_path, loader, frames, tiny) -> None:
    """GT boxes fed back as detections must reproduce the devkit's global annotation records
    (translation, wlh, rotation, velocity), minus those beyond the class range; the written
    submission must load with the devkit's own loader."""
    nusc = loader.nusc
    ranges = class_ranges()
    results = {}
    for frame in frames:
        gt = frame.gt
        keep = gt.labels(tiny.classes) >= 0
        dets = Detections(gt.boxes[keep], np.linspace(0.9, 0.1, keep.sum()),
                          gt.labels(tiny.classes)[keep], tiny.classes)
        out = detections_to_nuscenes(dets, frame.calib, frame.token)
        anns = [nusc.get("sample_annotation", t) for t in gt.tokens[keep]]
        ego = nusc.get("ego_pose", nusc.get("sample_data", nusc.get(
            "sample", frame.token)["data"]["LIDAR_TOP"])["ego_pose_token"])
        in_range = [np.linalg.norm(Quaternion(ego["rotation"]).inverse.rotate(
            np.subtract(a["translation"], ego["translation"]))[:2]) <= ranges[n]
            for a, n in zip(anns, gt.names[keep])]
        expected = [a for a, ok in zip(anns, in_range) if ok]
        assert len(out) == len(expected) > 0
        for box, ann in zip(out, expected):
            np.testing.assert_allclose(box["translation"], ann["translation"], atol=2e-3)
            np.testing.assert_allclose(box["size"], ann["size"], atol=1e-4)
            dot = abs(np.dot(box["rotation"], ann["rotation"]))
            assert dot > 1 - 1e-6
            np.testing.assert_allclose(box["velocity"], nusc.box_velocity(ann["token"])[:2],
                                       atol=1e-3)
            assert box["attribute_name"] in detection_name_to_rel_attributes(
                box["detection_name"]) or box["attribute_name"] == ""
        results[frame.token] = out
    path = write_submission(tmp_path / "results_nusc.json", results)
    boxes, meta = load_prediction(str(path), 500, DetectionBox)
    assert meta["use_lidar"] and set(boxes.sample_tokens) == set(results)
    assert json.loads(path.read_text())["results"] == results


def test_attribute_heuristic_matches_mmdet3d() -> None:
    assert attribute_name("car", 1.0) == "vehicle.moving"
    assert attribute_name("car", 0.1) == "vehicle.parked"
    assert attribute_name("bus", 0.1) == "vehicle.stopped"
    assert attribute_name("bus", 0.3) == "vehicle.moving"
    assert attribute_name("pedestrian", 0.0) == "pedestrian.standing"
    assert attribute_name("pedestrian", 1.5) == "pedestrian.moving"
    assert attribute_name("bicycle", 2.0) == "cycle.with_rider"
    assert attribute_name("motorcycle", 0.2) == "cycle.without_rider"  # 0.2 is not > 0.2
    for name, attrs in ((n, detection_name_to_rel_attributes(n)) for n in class_ranges()):
        for speed in (0.0, 5.0):
            assert attribute_name(name, speed) in (attrs or [""])


def test_bad_dataset_arguments_are_clear_errors(synthetic_world: Path, tmp_path, tiny) -> None:
    with pytest.raises(DatasetError) as err:
        NuScenesLoader(synthetic_world, version=VERSION, split="mini_test", preset=tiny)
    assert err.value.field == "split" and "mini_val" in str(err.value)
    with pytest.raises(DatasetError) as err:
        NuScenesLoader(synthetic_world, version="v1.0-trainval", split="val", preset=tiny)
    assert err.value.field == "version" and "v1.0-mini" in str(err.value)
    with pytest.raises(DatasetError) as err:
        NuScenesLoader(synthetic_world, version=VERSION, split="test", preset=tiny)
    assert err.value.field == "split"  # a real split, but none of its scenes is here
    with pytest.raises(DatasetError) as err:
        NuScenesLoader(tmp_path / "nowhere", version=VERSION, split="all", preset=tiny)
    assert err.value.field == "dataroot"
    with pytest.raises(ConfigError) as err:
        NuScenesLoader(synthetic_world, version=VERSION, split="all", preset=tiny, sweeps=11)
    assert err.value.field == "sweeps"


def test_missing_camera_image_names_camera_and_file(loader) -> None:
    rec = loader.record(1)
    gone = rec.cameras["CAM_BACK_LEFT"].path.with_name("deleted.jpg")
    rec.cameras["CAM_BACK_LEFT"].path = gone
    with pytest.raises(InputError) as err:
        loader.frame(rec)
    assert err.value.path == str(gone) and err.value.field == "CAM_BACK_LEFT"
