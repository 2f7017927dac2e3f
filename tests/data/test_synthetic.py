"""The synthetic nuScenes-format world, checked through the nuScenes devkit itself.

One small world (2 scenes × 3 samples, sparse LiDAR) is written once per module; the checks
read it back with ``nuscenes-devkit`` objects (tables, ``Box``, ``LidarPointCloud``,
``points_in_box``, ``box_velocity``, ``load_gt``, ``DetectionEval``) or independent geometry
(shapely, closed-form distances and areas), not with the writer's own helpers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from nuscenes.eval.common.loaders import load_gt
from nuscenes.eval.detection.config import config_factory
from nuscenes.eval.detection.data_classes import DetectionBox
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.eval.detection.utils import (category_to_detection_name,
                                           detection_name_to_rel_attributes)
from nuscenes.nuscenes import NuScenes
from nuscenes.utils import splits
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import BoxVisibility, points_in_box, view_points
from PIL import Image
from pyquaternion import Quaternion
from shapely.geometry import Polygon

from bevdeploy.data.synthetic import (CAMERAS, LIDAR, CameraSpec, background_color,
                                      background_image, build_world, write_world)
from bevdeploy.data.synthetic.camera import render
from bevdeploy.data.synthetic.lidar import GROUND, cast_rays
from bevdeploy.data.synthetic.writer import MARKER
from bevdeploy.errors import ConfigError, DatasetError, InputError
from bevdeploy.presets import NUSCENES_CAMERAS

CHANNELS = {c.name for c in CAMERAS} | {LIDAR.name}


@pytest.fixture(scope="module")
def world(synthetic_world: Path) -> Path:
    """The suite's shared small world (``tests/conftest.py``)."""
    return synthetic_world


@pytest.fixture(scope="module")
def args(world: Path) -> dict:
    """The ``write_world`` arguments the world was written with, from its marker file."""
    marker = json.loads((world / MARKER).read_text())
    assert marker["scenes"] >= 2 and marker["samples"] >= 3, "the checks need both splits"
    return {k: marker[k] for k in ("scenes", "samples", "seed", "density")}


@pytest.fixture(scope="module")
def nusc(world: Path) -> NuScenes:
    return NuScenes(version="v1.0-mini", dataroot=str(world), verbose=False)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _lidar_points_global(nusc: NuScenes, sd_token: str) -> np.ndarray:
    """(3, N) points of a LiDAR sample_data moved to the global frame with devkit objects."""
    sd = nusc.get("sample_data", sd_token)
    pc = LidarPointCloud.from_file(nusc.get_sample_data_path(sd_token))
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    pc.rotate(Quaternion(cs["rotation"]).rotation_matrix)
    pc.translate(np.array(cs["translation"]))
    pc.rotate(Quaternion(pose["rotation"]).rotation_matrix)
    pc.translate(np.array(pose["translation"]))
    return pc.points[:3]


# ---------------------------------------------------------------------------------------------
# Tables and files
# ---------------------------------------------------------------------------------------------


def test_scenes_follow_the_mini_splits(nusc: NuScenes, args: dict) -> None:
    names = [s["name"] for s in nusc.scene]
    assert len(names) == len(set(names)) == args["scenes"]
    assert set(names) <= set(splits.mini_train) | set(splits.mini_val)
    assert set(names) & set(splits.mini_train) and set(names) & set(splits.mini_val)


def test_every_sample_has_all_sensors_and_files(nusc: NuScenes, world: Path, args: dict) -> None:
    assert len(nusc.sample) == args["scenes"] * args["samples"]
    for sample in nusc.sample:
        assert set(sample["data"]) == CHANNELS
        for channel, token in sample["data"].items():
            sd = nusc.get("sample_data", token)
            assert sd["is_key_frame"] and sd["filename"].startswith(f"samples/{channel}/")
            assert (world / sd["filename"]).is_file()
            pose = nusc.get("ego_pose", sd["ego_pose_token"])
            assert pose["timestamp"] == sd["timestamp"] and pose["translation"][2] == 0.0
            # Cameras fire while the LiDAR turns toward the sweep's timestamp: ≤ 50 ms before.
            assert -50_000 <= sd["timestamp"] - sample["timestamp"] <= 0
        cam = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
        assert (cam["width"], cam["height"]) == (1600, 900)
        with Image.open(world / cam["filename"]) as im:
            assert im.size == (1600, 900) and im.mode == "RGB"


def test_lidar_sweep_chain(nusc: NuScenes, world: Path, args: dict) -> None:
    for scene in nusc.scene:
        sd = nusc.get("sample_data",
                      nusc.get("sample", scene["first_sample_token"])["data"]["LIDAR_TOP"])
        while sd["prev"]:
            sd = nusc.get("sample_data", sd["prev"])
        chain = [sd]
        while chain[-1]["next"]:
            nxt = nusc.get("sample_data", chain[-1]["next"])
            assert nxt["prev"] == chain[-1]["token"]
            chain.append(nxt)
        # 9 sweeps before every key frame (the first included), nothing after the last.
        assert [s["is_key_frame"] for s in chain] == ([False] * 9 + [True]) * args["samples"]
        assert np.all(np.diff([s["timestamp"] for s in chain]) == 50_000)
        for s in chain:
            folder = "samples" if s["is_key_frame"] else "sweeps"
            assert s["filename"].startswith(f"{folder}/LIDAR_TOP/") and s["fileformat"] == "pcd"
            assert (world / s["filename"]).is_file()
            # A sweep belongs to the sample it leads up to, as in nuScenes.
            owner = nusc.get("sample", s["sample_token"])
            assert 0 <= owner["timestamp"] - s["timestamp"] < 500_000


def test_map_mask_is_the_road(nusc: NuScenes) -> None:
    for scene in nusc.scene:
        log = nusc.get("log", scene["log_token"])
        mask = nusc.get("map", log["map_token"])["mask"]
        sample = nusc.get("sample", scene["first_sample_token"])
        pose = nusc.get("ego_pose",
                        nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
        rotation = Quaternion(pose["rotation"]).rotation_matrix
        left = rotation[:2, 1]  # ego +y in the global frame
        x, y = np.array(pose["translation"][:2])[:, None] + left[:, None] * [0.0, 5.0, 30.0]
        # The ego's lane and the lane to its left are drivable; 30 m to the side is not.
        assert mask.is_on_mask(x, y).tolist() == [True, True, False]


def test_camera_rig_is_nuscenes_like(nusc: NuScenes) -> None:
    assert tuple(c.name for c in CAMERAS) == NUSCENES_CAMERAS
    yaws = {"CAM_FRONT": 0, "CAM_FRONT_RIGHT": -55, "CAM_FRONT_LEFT": 55, "CAM_BACK": 180,
            "CAM_BACK_LEFT": 110, "CAM_BACK_RIGHT": -110}
    sample = nusc.sample[0]
    for cam in CAMERAS:
        sd = nusc.get("sample_data", sample["data"][cam.name])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        rotation = Quaternion(cs["rotation"]).rotation_matrix  # camera → ego
        yaw = np.deg2rad(yaws[cam.name])
        # Optical axis (camera +z) level at the stated yaw; image rows (camera +y) point down.
        np.testing.assert_allclose(rotation @ [0, 0, 1], [np.cos(yaw), np.sin(yaw), 0], atol=1e-9)
        np.testing.assert_allclose(rotation @ [0, 1, 0], [0, 0, -1], atol=1e-9)
        np.testing.assert_allclose(cs["camera_intrinsic"], cam.intrinsics)
        focal = 809.2 if cam.name == "CAM_BACK" else 1266.0
        assert abs(cam.intrinsics[0, 0] - focal) < 10 and 1.4 < cs["translation"][2] < 1.7
    with pytest.raises(InputError):
        background_image("CAM_ROOF")


def test_annotation_links_and_attributes(nusc: NuScenes) -> None:
    for inst in nusc.instance:
        ann = nusc.get("sample_annotation", inst["first_annotation_token"])
        count = 1
        while ann["next"]:
            nxt = nusc.get("sample_annotation", ann["next"])
            assert nxt["prev"] == ann["token"] and nxt["instance_token"] == inst["token"]
            ann, count = nxt, count + 1
        assert ann["token"] == inst["last_annotation_token"] and count == inst["nbr_annotations"]
    attribute_names = {a["token"]: a["name"] for a in nusc.attribute}
    for ann in nusc.sample_annotation:
        cls = category_to_detection_name(ann["category_name"])
        assert cls is not None, ann["category_name"]
        assert ann["visibility_token"] in {"1", "2", "3", "4"} and ann["num_radar_pts"] == 0
        relevant = detection_name_to_rel_attributes(cls)
        names = [attribute_names[t] for t in ann["attribute_tokens"]]
        assert len(names) == (1 if relevant else 0) and set(names) <= set(relevant)


def test_boxes_never_overlap(nusc: NuScenes) -> None:
    for sample in nusc.sample:
        footprints = [Polygon(nusc.get_box(t).bottom_corners()[:2].T) for t in sample["anns"]]
        assert len(footprints) >= 10
        for i, a in enumerate(footprints):
            for b in footprints[i + 1:]:
                assert a.distance(b) > 0.25


# ---------------------------------------------------------------------------------------------
# LiDAR
# ---------------------------------------------------------------------------------------------


def test_point_files_are_nuscenes_lidar_top(nusc: NuScenes, args: dict) -> None:
    sample = nusc.sample[0]
    path = nusc.get_sample_data_path(sample["data"]["LIDAR_TOP"])
    points = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
    rays = LIDAR.beams * round(LIDAR.azimuth_steps * args["density"])
    assert 0.5 * rays < len(points) <= rays
    ring = points[:, 4]
    assert np.array_equal(ring, np.round(ring)) and ring.min() >= 0 and ring.max() <= 31
    intensity = points[:, 3]
    assert np.array_equal(intensity, np.round(intensity)) and 0 <= intensity.min()
    assert intensity.max() <= 255
    # Range noise moves a point along its ray, so its elevation is exactly its beam's.
    elevation = np.arctan2(points[:, 2], np.hypot(points[:, 0], points[:, 1]))
    beams = np.deg2rad(np.linspace(-30.67, 10.67, 32))
    np.testing.assert_allclose(elevation, beams[ring.astype(int)], atol=1e-5)
    # LIDAR_TOP frame: x right, y forward, z up; the ground is 1.84 m below the sensor.
    assert abs(np.median(points[ring == 0, 2]) + 1.84) < 0.03
    cs = nusc.get("calibrated_sensor",
                  nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["calibrated_sensor_token"])
    yaw = Quaternion(cs["rotation"]).yaw_pitch_roll[0]
    assert np.isclose(yaw, -np.pi / 2) and np.isclose(cs["translation"][2], 1.84)
    # Through the devkit's calibration and pose, the ground lands on the global plane z = 0.
    lowest = _lidar_points_global(nusc, sample["data"]["LIDAR_TOP"])[:, ring == 0]
    assert abs(np.median(lowest[2])) < 0.03


def test_num_lidar_pts_is_the_devkit_recount(nusc: NuScenes) -> None:
    counted, recounted = [], []
    for sample in nusc.sample:
        points = _lidar_points_global(nusc, sample["data"]["LIDAR_TOP"])
        for token in sample["anns"]:
            counted.append(nusc.get("sample_annotation", token)["num_lidar_pts"])
            recounted.append(int(points_in_box(nusc.get_box(token), points).sum()))
    counted, recounted = np.array(counted), np.array(recounted)
    assert counted.max() > 100 and (counted > 0).mean() > 0.4
    # Points exactly on a face could flip with float rounding; there are none in practice.
    assert np.abs(counted - recounted).max() <= 1
    assert np.abs(counted - recounted).sum() <= 0.01 * counted.sum()


def test_velocities_match_the_simulation(nusc: NuScenes, args: dict) -> None:
    sims = {sim.name: sim for sim in build_world(args["seed"], args["scenes"], args["samples"])}
    moving = 0
    for scene in nusc.scene:
        sim = sims[scene["name"]]
        sample = nusc.get("sample", scene["first_sample_token"])
        for k in range(args["samples"]):
            boxes = sim.actors.boxes(k * 0.5)
            assert len(sample["anns"]) == len(boxes)
            for token in sample["anns"]:
                ann = nusc.get("sample_annotation", token)
                match = np.flatnonzero(np.all(np.isclose(boxes[:, :3], ann["translation"],
                                                         atol=1e-9), axis=1))
                assert len(match) == 1
                truth = boxes[match[0]]
                np.testing.assert_allclose(nusc.box_velocity(token)[:2], truth[7:9], atol=1e-6)
                np.testing.assert_allclose(ann["size"], truth[[4, 3, 5]], atol=1e-9)
                yaw = Quaternion(ann["rotation"]).yaw_pitch_roll[0]
                assert abs((yaw - truth[6] + np.pi) % (2 * np.pi) - np.pi) < 1e-9
                moving += bool(np.hypot(*truth[7:9]) > 1.0)
            sample = nusc.get("sample", sample["next"]) if sample["next"] else sample
    assert moving >= 5


# ---------------------------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------------------------


def test_visible_box_centres_differ_from_background(nusc: NuScenes, world: Path) -> None:
    checked = 0
    for sample in nusc.sample:
        for cam in CAMERAS:
            path, boxes, intrinsic = nusc.get_sample_data(sample["data"][cam.name],
                                                          box_vis_level=BoxVisibility.ALL)
            image = np.asarray(Image.open(path)).astype(int)
            for box in boxes:
                ann = nusc.get("sample_annotation", box.token)
                if ann["visibility_token"] != "4" or box.center[2] < 2.0:
                    continue
                u, v = np.round(view_points(box.center[:, None], intrinsic, True)[:2, 0])
                seen = image[int(v), int(u)]
                expected = background_color(cam.name, u, v).astype(int)
                assert np.abs(seen - expected).sum() > 40, (cam.name, ann["category_name"])
                checked += 1
    assert checked >= 20


def test_background_is_what_empty_pixels_show(nusc: NuScenes) -> None:
    diffs = []
    for cam in CAMERAS:
        path = nusc.get_sample_data_path(nusc.sample[0]["data"][cam.name])
        image = np.asarray(Image.open(path)).astype(np.int16)
        diffs.append(np.abs(image - background_image(cam.name)).max(axis=2))
    # Objects cover part of the views; elsewhere JPEG moves the flat colours by a few levels.
    assert (np.concatenate(diffs) <= 4).mean() > 0.5
    front = background_image("CAM_FRONT")
    assert front.shape == (900, 1600, 3) and not front.flags.writeable
    np.testing.assert_array_equal(background_color("CAM_FRONT", [5, 1500], [3, 880]),
                                  front[[3, 880], [5, 1500]])
    # A level camera: sky above the horizon row (bluer), ground below (greyer).
    sky, ground = front[100, 800].astype(int), front[800, 800].astype(int)
    assert sky[2] - sky[0] > 30 and abs(ground[2] - ground[0]) < 15


def test_well_visible_cars_have_lidar_points(nusc: NuScenes) -> None:
    """Cameras and LiDAR see the same world: a car fully visible in the images and within
    20 m is hit by several LiDAR beams, even at the sparse test density."""
    checked = 0
    for sample in nusc.sample:
        pose = nusc.get("ego_pose",
                        nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
        for token in sample["anns"]:
            ann = nusc.get("sample_annotation", token)
            distance = np.hypot(*(np.array(ann["translation"][:2]) - pose["translation"][:2]))
            if ann["category_name"] == "vehicle.car" and ann["visibility_token"] == "4" \
                    and distance < 20:
                assert ann["num_lidar_pts"] >= 3
                checked += 1
    assert checked >= 3


def test_renderer_occludes_and_measures_area() -> None:
    cam = CameraSpec("TEST", 500.0, (200.0, 150.0), (0.0, 0.0, 1.0), 0.0, width=400, height=300)
    # A level camera 1 m above the ground at the origin, looking along +x at two boxes whose
    # faces toward it are fronto-parallel.
    camera2global = np.eye(4)
    camera2global[:3, :3] = cam.rotation
    camera2global[:3, 3] = cam.translation
    near = [10.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # x, y, z, l, w, h, yaw: a 1 m cube
    far = [20.0, 0.0, 1.0, 1.0, 4.0, 1.0, 0.0]  # 4 m wide, 1 m tall
    view = render(cam, camera2global, np.array([near, far]),
                  np.array([[200.0, 0, 0], [0, 0, 200.0]]), np.array([0.0, 0.0, 1.0]))
    # Pinhole areas: the near face is 1 m × 1 m at 9.5 m, the far one 4 m × 1 m at 19.5 m,
    # and the near face hides a (1 m at 9.5 m) × (1 m at 19.5 m) strip of the far one.
    near_side, far_side = 500 / 9.5, 500 / 19.5
    assert view.silhouette[0] == pytest.approx(near_side ** 2, rel=0.05)
    assert view.silhouette[1] == pytest.approx(4 * far_side ** 2, rel=0.05)
    visible = view.visible_pixels()
    assert visible[0] == view.silhouette[0]
    assert visible[1] == pytest.approx(4 * far_side ** 2 - near_side * far_side, rel=0.05)
    assert view.ids[150, 200] == 0 and view.ids[150, 240] == 1 and view.ids[10, 200] == -1
    # Faces lit only by the ambient term (the sun is overhead), in each box's colour.
    assert tuple(view.image[150, 200]) == (90, 0, 0)
    assert tuple(view.image[150, 240]) == (0, 0, 90)
    np.testing.assert_array_equal(view.image[10, 200], background_color(cam, 200, 10))


def test_ray_caster_against_closed_form() -> None:
    origin = np.array([0.0, 0.3, 2.0])
    down = np.deg2rad(-10.0)
    rays = np.array([[[1.0, 0.0, 0.0]],  # level, at the box
                     [[0.0, np.cos(down), np.sin(down)]],  # downward, away from the box
                     [[0.0, -1.0, 0.0]]])  # level, into the void
    # A 2 m square box turned 45°: from y = 0.3 the ray along +x enters through the face whose
    # plane is x − 10 − y = −√2, i.e. at x = 10.3 − √2, meeting it at 45°.
    body = np.array([[10.0, 0.0, 1.5, 2.0, 2.0, 3.0, np.pi / 4]])
    t, hit, cos_inc = cast_rays(origin, rays, body, max_range=80.0)
    assert t[0, 0] == pytest.approx(10.3 - np.sqrt(2.0)) and hit[0, 0] == 0
    assert cos_inc[0, 0] == pytest.approx(np.sqrt(0.5))
    assert t[1, 0] == pytest.approx(2.0 / np.sin(-down)) and hit[1, 0] == GROUND
    assert cos_inc[1, 0] == pytest.approx(np.sin(-down))
    assert np.isinf(t[2, 0]) and hit[2, 0] == -2


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def test_detection_eval_scores_ground_truth_perfectly(nusc: NuScenes, tmp_path: Path) -> None:
    gt = load_gt(nusc, "mini_val", DetectionBox)
    val_samples = {s["token"] for s in nusc.sample
                   if nusc.get("scene", s["scene_token"])["name"] in splits.mini_val}
    assert set(gt.sample_tokens) == val_samples
    results = {token: [{"sample_token": token, "translation": list(b.translation),
                        "size": list(b.size), "rotation": list(b.rotation),
                        "velocity": list(b.velocity), "detection_name": b.detection_name,
                        "detection_score": 0.9, "attribute_name": b.attribute_name}
                       for b in gt[token] if b.num_pts > 0]
               for token in gt.sample_tokens}
    meta = {"use_camera": True, "use_lidar": True, "use_radar": False, "use_map": False,
            "use_external": False}
    result_path = tmp_path / "results.json"
    result_path.write_text(json.dumps({"meta": meta, "results": results}))
    evaluation = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(result_path),
                               "mini_val", str(tmp_path), verbose=False)
    metrics, _ = evaluation.evaluate()
    # Classes that survive the devkit's own filtering (class ranges, points).
    present = {b.detection_name for b in evaluation.gt_boxes.all}
    assert len(present) >= 3
    for name in present:
        assert metrics.get_label_ap(name, 2.0) == pytest.approx(1.0)
        assert metrics.get_label_tp(name, "trans_err") == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# Determinism and bad input
# ---------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_differs(world: Path, args: dict, tmp_path: Path
                                                 ) -> None:
    again = write_world(tmp_path / "again", **args)
    assert _digest(again) == _digest(world)
    other = write_world(tmp_path / "other", **{**args, "seed": args["seed"] + 1})
    a, b = _digest(world), _digest(other)
    assert a["v1.0-mini/sample_annotation.json"] != b["v1.0-mini/sample_annotation.json"]
    assert set(a.values()).isdisjoint(set(b[k] for k in b if k.endswith(".bin")))


@pytest.mark.parametrize("kwargs, field", [
    ({"scenes": 11}, "scenes"), ({"scenes": 0}, "scenes"), ({"samples": 1}, "samples"),
    ({"density": 0.0}, "density"), ({"seed": -1}, "seed")])
def test_bad_arguments_name_the_field(tmp_path: Path, kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        write_world(tmp_path / "w", **kwargs)
    assert err.value.field == field
    assert not any(tmp_path.iterdir())


def test_existing_output_is_protected(tmp_path: Path) -> None:
    tiny = dict(scenes=1, samples=2, density=0.05)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(DatasetError) as err:
        write_world(foreign, **tiny)
    assert err.value.path == str(foreign)
    with pytest.raises(DatasetError):
        write_world(foreign, overwrite=True, **tiny)
    assert (foreign / "keep.txt").read_text() == "user data"

    out = write_world(tmp_path / "w", **tiny)
    first = _digest(out)
    write_world(out, overwrite=True, seed=7, **tiny)
    assert _digest(out) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "w"]  # no leftovers
