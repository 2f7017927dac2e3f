"""Point/image readers, multi-sweep aggregation, atomic writes and the calibration YAML.

Expected values come from the files' own construction (numpy ``tofile``, PIL, pypcd4) or from
transforms composed independently here; every bad file must give an ``InputError`` naming the
file and the field.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pypcd4 import PointCloud

from bevdeploy.data.calib_yaml import read_calibration, write_calibration
from bevdeploy.data.frame import Calibration
from bevdeploy.data.readers import (Sweep, read_image, read_images, read_multisweep,
                                    read_points, select_sweeps)
from bevdeploy.errors import InputError, UnsafeFileError
from bevdeploy.io import atomic_write


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _cloud(n: int, columns: int, seed: int = 0) -> np.ndarray:
    return _rng(seed).uniform(-40, 40, size=(n, columns)).astype(np.float32)


# ----------------------------------------------------------------------------------- points


def test_nuscenes_bin_round_trips_bit_exact(tmp_path: Path) -> None:
    pts = _cloud(257, 5)
    path = tmp_path / "a.pcd.bin"
    pts.tofile(path)
    out = read_points(path)
    assert out.dtype == np.float32 and out.shape == (257, 5)
    np.testing.assert_array_equal(out, pts)


def test_kitti_bin_is_four_columns_and_gets_a_zero_lag_column(tmp_path: Path) -> None:
    pts = _cloud(100, 4)
    path = tmp_path / "000001.bin"
    pts.tofile(path)
    np.testing.assert_array_equal(read_points(path), pts)
    five = read_points(path, num_features=5)
    np.testing.assert_array_equal(five[:, :4], pts)
    assert five.shape == (100, 5) and not five[:, 4].any()


def test_bin_column_count_can_be_overridden(tmp_path: Path) -> None:
    pts = _cloud(60, 6)
    path = tmp_path / "custom.bin"
    pts.tofile(path)
    np.testing.assert_array_equal(read_points(path, columns=6), pts)


def test_size_not_a_multiple_of_the_record_names_file_and_numbers(tmp_path: Path) -> None:
    path = tmp_path / "bad.pcd.bin"
    np.concatenate([_cloud(10, 5).ravel(), np.ones(3, np.float32)]).tofile(path)
    with pytest.raises(InputError) as err:
        read_points(path)
    assert err.value.path == str(path) and err.value.field == "size"
    assert "212 bytes" in str(err.value) and "20 bytes" in str(err.value)


def test_nonfinite_rows_are_dropped_and_counted(tmp_path: Path, caplog) -> None:
    pts = _cloud(50, 5)
    pts[[3, 17], 1] = np.nan
    pts[40, 4] = np.inf
    path = tmp_path / "nan.pcd.bin"
    pts.tofile(path)
    with caplog.at_level(logging.WARNING, logger="bevdeploy.data.readers"):
        out = read_points(path)
    keep = np.setdiff1d(np.arange(50), [3, 17, 40])
    np.testing.assert_array_equal(out, pts[keep])
    assert "dropped 3 of 50 rows" in caplog.text


def test_nonfinite_rows_raise_under_the_error_policy(tmp_path: Path) -> None:
    pts = _cloud(20, 5)
    pts[5, 0] = -np.inf
    path = tmp_path / "inf.pcd.bin"
    pts.tofile(path)
    with pytest.raises(InputError) as err:
        read_points(path, nonfinite="error")
    assert err.value.path == str(path) and err.value.field == "points"
    assert "1 of 20 rows" in str(err.value)


def test_feature_mismatch_other_than_4_to_5_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "a.pcd.bin"
    _cloud(10, 5).tofile(path)
    with pytest.raises(InputError) as err:
        read_points(path, num_features=4)
    assert err.value.field == "columns" and str(path) in str(err.value)


@pytest.mark.parametrize("with_time", [False, True])
def test_pcd_fields_are_read_through_pypcd4(tmp_path: Path, with_time: bool) -> None:
    pts = _cloud(30, 5 if with_time else 4)
    fields = ["x", "y", "z", "intensity"] + (["time"] if with_time else [])
    path = tmp_path / "cloud.pcd"
    PointCloud.from_points(pts, fields, [np.float32] * len(fields)).save(path)
    np.testing.assert_array_equal(read_points(path), pts)


def test_pcd_without_intensity_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "xyz.pcd"
    PointCloud.from_points(_cloud(5, 3), ["x", "y", "z"], [np.float32] * 3).save(path)
    with pytest.raises(InputError) as err:
        read_points(path)
    assert err.value.field == "fields" and "intensity" in str(err.value)


def test_npy_plain_arrays_only(tmp_path: Path) -> None:
    pts = _cloud(12, 5).astype(np.float64)
    path = tmp_path / "p.npy"
    np.save(path, pts)
    out = read_points(path)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, pts.astype(np.float32))
    evil = tmp_path / "obj.npy"
    np.save(evil, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError) as err:
        read_points(evil)
    assert err.value.path == str(evil) and err.value.field == "format"


def test_missing_and_unknown_point_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_points(tmp_path / "nope.pcd.bin")
    odd = tmp_path / "points.las"
    odd.write_bytes(b"\0" * 16)
    with pytest.raises(InputError) as err:
        read_points(odd)
    assert err.value.field == "format"


# ----------------------------------------------------------------------------------- sweeps


def _rigid(yaw: float, t: tuple[float, float, float]) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    m = np.eye(4)
    m[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    m[:3, 3] = t
    return m


def _world_scene(tmp_path: Path, n_sweeps: int):
    """A static world seen from a moving sensor: the key sweep and ``n_sweeps`` older ones,
    each file holding the same world points expressed in that sweep's own frame."""
    world = _cloud(400, 3, seed=1) * np.array([1.0, 1.0, 0.05], np.float32)
    world = world[np.hypot(world[:, 0], world[:, 1]) > 8.0]  # clear of every sensor position
    # global←sensor_i: the sensor drives and turns
    poses = [_rigid(0.03 * i, (-0.6 * i, 0.2 * i, 0.0)) for i in range(n_sweeps + 1)]
    stamps = [1_600_000_000_000_000 - 50_000 * i for i in range(n_sweeps + 1)]
    sweeps, paths = [], []
    for i, pose in enumerate(poses):
        local = (np.linalg.inv(pose)[:3, :3] @ world.T).T + np.linalg.inv(pose)[:3, 3]
        # one point right next to the sensor in its own frame (a return from the ego body)
        local = np.vstack([local, [[0.5, -0.4, 0.1]]])
        rows = np.column_stack([local, np.full(len(local), 7.0), np.full(len(local), 3.0)])
        path = tmp_path / f"sweep{i}.pcd.bin"
        rows.astype(np.float32).tofile(path)
        paths.append(path)
        if i:
            sweeps.append(Sweep(path, np.linalg.inv(poses[0]) @ pose, stamps[i]))
    return world, paths[0], stamps[0], sweeps


def test_multisweep_compensates_motion_and_sets_time_lags(tmp_path: Path) -> None:
    world, key_path, t_key, sweeps = _world_scene(tmp_path, 3)
    pts = read_multisweep(key_path, t_key, sweeps, num_sweeps=3)
    n = len(world)
    assert pts.shape == (n + 1 + 3 * n, 5)  # the close point survives only in the key sweep
    key_xyz = pts[: n + 1, :3]
    assert not pts[: n + 1, 4].any()  # key lag 0 overwrites the ring index (3.0)
    for k in range(3):
        block = pts[n + 1 + k * n: n + 1 + (k + 1) * n]
        np.testing.assert_allclose(block[:, 4], 0.05 * (k + 1), rtol=1e-6)
        # ego motion compensated: the static world lands where the key sweep sees it
        np.testing.assert_allclose(block[:, :3], key_xyz[:n], atol=2e-4)
        np.testing.assert_array_equal(block[:, 3], 7.0)


def test_nearest_policy_takes_the_most_recent_and_random_matches_numpy(tmp_path: Path) -> None:
    _, key_path, t_key, sweeps = _world_scene(tmp_path, 5)
    nearest = read_multisweep(key_path, t_key, sweeps, num_sweeps=2)
    lags = np.unique(nearest[:, 4])
    np.testing.assert_allclose(lags, [0.0, 0.05, 0.1], atol=1e-7)
    saved = np.random.get_state()
    np.random.seed(11)
    reference_choice = np.random.choice(5, 2, replace=False)  # what the reference would draw
    np.random.set_state(saved)
    chosen = select_sweeps(5, 2, "random", np.random.RandomState(11))
    np.testing.assert_array_equal(chosen, reference_choice)
    random = read_multisweep(key_path, t_key, sweeps, num_sweeps=2, policy="random",
                             rng=np.random.RandomState(11))
    lag_order = list(dict.fromkeys(np.round(random[:, 4], 4).tolist()))
    np.testing.assert_allclose(lag_order, [0.0, *(0.05 * (chosen + 1))], atol=1e-4)


def test_empty_sweeps_are_padded_with_the_key_frame(tmp_path: Path) -> None:
    world, key_path, t_key, _ = _world_scene(tmp_path, 0)
    padded = read_multisweep(key_path, t_key, [], num_sweeps=3)
    n = len(world)
    assert padded.shape == (n + 1 + 3 * n, 5) and not padded[:, 4].any()
    for k in range(3):  # each copy is the key sweep without its close point
        np.testing.assert_array_equal(padded[n + 1 + k * n: n + 1 + (k + 1) * n], padded[:n])
    plain = read_multisweep(key_path, t_key, [], num_sweeps=3, pad_empty_sweeps=False)
    np.testing.assert_array_equal(plain, padded[: n + 1])


def test_four_features_drop_the_time_lag(tmp_path: Path) -> None:
    _, key_path, t_key, sweeps = _world_scene(tmp_path, 2)
    five = read_multisweep(key_path, t_key, sweeps, num_sweeps=2)
    four = read_multisweep(key_path, t_key, sweeps, num_sweeps=2, num_features=4)
    np.testing.assert_array_equal(four, five[:, :4])


# ----------------------------------------------------------------------------------- images


def test_read_image_returns_rgb_uint8(tmp_path: Path) -> None:
    rgb = _rng().integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))


def test_missing_or_broken_camera_image_names_camera_and_file(tmp_path: Path) -> None:
    missing = tmp_path / "CAM_BACK" / "x.jpg"
    with pytest.raises(InputError) as err:
        read_image(missing, camera="CAM_BACK")
    assert err.value.path == str(missing) and err.value.field == "CAM_BACK"
    assert "camera CAM_BACK" in str(err.value)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(InputError, match="not a readable image"):
        read_image(broken, camera="CAM_FRONT")


def test_read_images_checks_the_raw_size(tmp_path: Path) -> None:
    for name, shape in (("a", (10, 16, 3)), ("b", (10, 16, 3)), ("c", (12, 16, 3))):
        Image.fromarray(np.full(shape, 9, np.uint8)).save(tmp_path / f"{name}.png")
    stack = read_images([tmp_path / "a.png", tmp_path / "b.png"], ["A", "B"], (10, 16))
    assert stack.shape == (2, 10, 16, 3)
    with pytest.raises(InputError) as err:
        read_images([tmp_path / "a.png", tmp_path / "c.png"], ["A", "C"], (10, 16))
    assert err.value.field == "C" and err.value.path == str(tmp_path / "c.png")


# ----------------------------------------------------------------------------------- atomic


def test_atomic_write_replaces_and_leaves_no_debris(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]


# ----------------------------------------------------------------------------------- calibration


def _calibration(names=("CAM_A", "CAM_B")) -> Calibration:
    n = len(names)
    k = np.array([[1000.0, 0.0, 800.5], [0.0, 1001.0, 450.25], [0.0, 0.0, 1.0]])
    c2l = np.stack([_rigid(0.7 * i + 0.1, (0.3 * i, -1.1, 1.6)) for i in range(n)])
    c2l[:, :3, :3] = c2l[:, :3, :3] @ np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]]).T
    scales = [np.array([[1 + i], [1 + i], [1]]) for i in range(n)]  # focal lengths differ
    return Calibration(camera_names=tuple(names), intrinsics=np.stack([k * s for s in scales]),
                       camera2lidar=c2l, lidar2ego=_rigid(-np.pi / 2, (0.9, 0, 1.8)),
                       ego2global=_rigid(1.234567890123, (411.3, 1180.9, 0.0)))


def test_calibration_yaml_round_trips_exactly(tmp_path: Path) -> None:
    calib = _calibration()
    path = write_calibration(tmp_path / "rig.yaml", calib)
    assert path.read_text().startswith("# bevdeploy calibration")
    back = read_calibration(path, ["CAM_B", "CAM_A"])  # the caller's order wins
    assert back.camera_names == ("CAM_B", "CAM_A")
    np.testing.assert_array_equal(back.intrinsics, calib.intrinsics[::-1])
    np.testing.assert_array_equal(back.camera2lidar, calib.camera2lidar[::-1])
    np.testing.assert_array_equal(back.lidar2ego, calib.lidar2ego)
    np.testing.assert_array_equal(back.ego2global, calib.ego2global)


def _yaml_with(tmp_path: Path, edit) -> Path:
    path = write_calibration(tmp_path / "rig.yaml", _calibration())
    doc = yaml.safe_load(path.read_text())
    edit(doc)
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("edit, field, words", [
    (lambda d: d["cameras"].pop("CAM_B"), "cameras.CAM_B", "missing"),
    (lambda d: d["cameras"]["CAM_A"].update(intrinsics=[[1, 0, 0], [0, 1, 0]]), "CAM_A.intrinsics",
     "3x3"),
    (lambda d: d["cameras"]["CAM_A"]["camera2lidar"][0].__setitem__(3, float("nan")),
     "CAM_A.camera2lidar", "NaN"),
    (lambda d: d["cameras"]["CAM_B"].update(intrinsics=[[0, 0, 5], [0, 0, 5], [0, 0, 1]]),
     "CAM_B.intrinsics", "singular"),
    (lambda d: d["cameras"]["CAM_B"]["camera2lidar"][0].__setitem__(0, 1.5), "CAM_B.camera2lidar",
     "orthonormal"),
    (lambda d: d["lidar2ego"][1].__setitem__(1, 0.2), "lidar2ego", "orthonormal"),
    (lambda d: d.update(lidar_to_ego=d["lidar2ego"]), "<root>", "unknown"),
])
def test_bad_calibration_names_file_and_field(tmp_path: Path, edit, field: str, words: str) -> None:
    path = _yaml_with(tmp_path, edit)
    with pytest.raises(InputError) as err:
        read_calibration(path, ("CAM_A", "CAM_B"))
    assert err.value.path == str(path) and err.value.field == field
    assert words in str(err.value)


def test_calibration_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    marker = tmp_path / "owned"
    path.write_text(f"cameras: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(UnsafeFileError, match="Python object") as err:
        read_calibration(path, ("CAM_A",))
    assert err.value.path == str(path) and not marker.exists()
