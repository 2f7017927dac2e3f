"""Info ``.pkl`` files: the restricted unpickler, the converter format, and the round trip
records → ``write_infos`` → ``InfoLoader`` → the same Frames.

The records here are built by hand on small files (two 128×256 cameras), so these tests need no
dataset; the round trip against the devkit loader is in ``test_nuscenes_loader.py``.
"""

from __future__ import annotations

import collections
import os
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bevdeploy.data.infos import InfoLoader, info_from_record, load_infos, write_infos
from bevdeploy.data.nuscenes import (Annotations, Pose, RecordFrames, SampleRecord,
                                     SensorRecord, sensor2lidar)
from bevdeploy.errors import DatasetError, InputError, UnsafeFileError
from bevdeploy.presets import get_preset

CAMS = ("CAM_A", "CAM_B")


@pytest.fixture(scope="module")
def preset():
    tiny = get_preset("tiny")
    cams = replace(tiny.cameras, names=CAMS, raw_size=(128, 256), resize=1.0)
    return replace(tiny, cameras=cams).validate()


class ListFrames(RecordFrames):
    """Frames of records held in memory (the concrete ``RecordFrames`` these tests need)."""

    version = "v1.0-test-records"

    def __init__(self, records: list[SampleRecord], preset, **kw) -> None:
        super().__init__(preset, **kw)
        self.records = records

    @property
    def sample_tokens(self) -> tuple[str, ...]:
        return tuple(r.token for r in self.records)

    def record(self, index: int) -> SampleRecord:
        return self.records[index]


def _pose(rng: np.random.Generator, scale: float) -> Pose:
    q = rng.normal(size=4)
    q[1:3] *= 0.05  # mostly yaw, like a vehicle
    q /= np.linalg.norm(q)
    return Pose(tuple(rng.uniform(-scale, scale, 3).tolist()), tuple(q.tolist()))


def _write_points(path: Path, rng: np.random.Generator, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pts = rng.uniform(-30, 30, size=(n, 5)).astype(np.float32)
    pts[:, 4] = rng.integers(0, 32, n)  # ring index, overwritten by the loader
    pts.tofile(path)


def _make_records(root: Path, seed: int = 0) -> list[SampleRecord]:
    rng = np.random.default_rng(seed)
    lidar2ego = _pose(rng, 2.0)
    records = []
    for s, t_key in enumerate((1_000_300_000, 1_000_000_000, 1_000_800_000)):  # out of order
        key_pose = _pose(rng, 500.0)
        token = f"sample{s}"
        key_path = root / "samples" / "LIDAR_TOP" / f"{token}.pcd.bin"
        _write_points(key_path, rng, 300)
        sweeps = []
        for k in range(0 if s == 1 else 3):
            path = root / "sweeps" / "LIDAR_TOP" / f"{token}_{k}.pcd.bin"
            _write_points(path, rng, 200)
            e2g = _pose(rng, 500.0)
            sweeps.append(SensorRecord(f"sd{s}{k}", path, t_key - 50_000 * (k + 1), lidar2ego,
                                       e2g, sensor2lidar(lidar2ego, e2g, lidar2ego, key_pose)))
        cameras = {}
        for c, name in enumerate(CAMS):
            path = root / "samples" / name / f"{token}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (128, 256, 3), dtype=np.uint8)).save(path)
            s2e, e2g = _pose(rng, 2.0), _pose(rng, 500.0)
            k = np.array([[300.0 + c, 0, 128.0], [0, 301.0, 64.0], [0, 0, 1]])
            cameras[name] = SensorRecord(f"cam{s}{c}", path, t_key + 10_000, s2e, e2g,
                                         sensor2lidar(s2e, e2g, lidar2ego, key_pose), k)
        boxes = rng.uniform(-20, 20, size=(4, 9)).astype(np.float32)
        boxes[:, 3:6] = np.abs(boxes[:, 3:6]) + 0.5
        boxes[:, 6] = rng.uniform(-np.pi, np.pi, 4)
        boxes[1, 7:9] = np.nan  # the devkit could not estimate this one's velocity
        ann = Annotations(boxes=boxes,
                          names=np.array(["car", "movable_object.debris", "pedestrian", "bus"]),
                          num_lidar_pts=np.array([5, 0, 12, 0]),
                          num_radar_pts=np.array([0, 0, 1, 3]),
                          tokens=np.array([f"ann{s}{i}" for i in range(4)]))
        records.append(SampleRecord(
            token=token, timestamp=t_key, location="singapore-onenorth",
            lidar=SensorRecord("", key_path, t_key, lidar2ego, key_pose, np.eye(4)),
            cameras=cameras, sweeps=sweeps, annotations=ann, source=f"hand-made {token}"))
    return records


@pytest.fixture()
def records(tmp_path: Path) -> list[SampleRecord]:
    return _make_records(tmp_path / "data")


def test_round_trip_gives_the_same_frames(tmp_path: Path, records, preset,
                                          assert_frames_equal) -> None:
    source = ListFrames(records, preset)
    pkl = write_infos(tmp_path / "infos.pkl", source)
    loaded = InfoLoader(pkl, preset)
    assert loaded.version == "v1.0-test-records"
    # time order, as mmdet3d's NuScenesDataset sorts the infos
    assert loaded.sample_tokens == ("sample1", "sample0", "sample2")
    by_token = {f.token: f for f in source}
    for frame in loaded:
        assert_frames_equal(frame, by_token[frame.token])
    gt = loaded[0].gt
    assert gt is not None and list(gt.names) == ["car", "ignore", "pedestrian", "bus"]
    np.testing.assert_array_equal(gt.boxes[1, 7:9], 0.0)  # NaN velocity → 0


def test_random_sweep_choice_is_the_same_through_both_loaders(tmp_path: Path, records,
                                                             preset) -> None:
    kw = dict(sweeps=2, sweep_policy="random", seed=5)
    source = ListFrames(records, preset, **kw)
    loaded = InfoLoader(write_infos(tmp_path / "i.pkl", source), preset, **kw)
    a, b = source[0], loaded.frame(loaded.record(loaded.sample_tokens.index(records[0].token)))
    np.testing.assert_array_equal(a.points, b.points)
    assert np.unique(a.points[:, 4]).size == 3  # key + the two sweeps drawn out of three


def test_written_file_follows_the_converter_format(tmp_path: Path, records, preset) -> None:
    pkl = write_infos(tmp_path / "infos.pkl", ListFrames(records, preset))
    with pkl.open("rb") as f:
        data = pickle.load(f)  # plain pickle, as mmcv.load reads it
    assert set(data) == {"infos", "metadata"}
    info, rec = data["infos"][0], records[0]
    assert {"lidar_path", "token", "sweeps", "cams", "lidar2ego_translation", "lidar2ego_rotation",
            "ego2global_translation", "ego2global_rotation", "timestamp", "location", "gt_boxes",
            "gt_names", "gt_velocity", "num_lidar_pts", "num_radar_pts", "valid_flag"} <= set(info)
    cam = info["cams"]["CAM_A"]
    np.testing.assert_array_equal(cam["cam_intrinsic"], cam["camera_intrinsics"])
    # the reference builds camera2lidar as [R | t] from these two fields
    c2l = rec.cameras["CAM_A"].sensor2lidar
    np.testing.assert_allclose(cam["sensor2lidar_rotation"], c2l[:3, :3])
    np.testing.assert_allclose(cam["sensor2lidar_translation"], c2l[:3, 3])
    assert [s["timestamp"] for s in info["sweeps"]] == [s.timestamp for s in rec.sweeps]
    # legacy boxes: sizes (w, l, h), yaw −heading − π/2, z unchanged (the reference's z quirk)
    b = rec.annotations.boxes.astype(np.float64)
    np.testing.assert_allclose(info["gt_boxes"][:, :3], b[:, :3], atol=1e-6)
    np.testing.assert_allclose(info["gt_boxes"][:, 3:6], b[:, [4, 3, 5]], atol=1e-6)
    dyaw = info["gt_boxes"][:, 6] - (-b[:, 6] - np.pi / 2)
    np.testing.assert_allclose(np.sin(dyaw), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.cos(dyaw), 1.0, atol=1e-6)
    assert np.isnan(info["gt_velocity"][1]).all()
    np.testing.assert_array_equal(info["valid_flag"], [True, False, True, True])


def test_dataroot_re_anchors_moved_files(tmp_path: Path, records, preset) -> None:
    pkl = write_infos(tmp_path / "infos.pkl", ListFrames(records, preset))
    shutil.move(tmp_path / "data", tmp_path / "moved")
    with pytest.raises(InputError) as err:
        InfoLoader(pkl, preset)[0]
    assert str(tmp_path / "data") in str(err.value)
    frame = InfoLoader(pkl, preset, dataroot=tmp_path / "moved")[0]
    assert frame.images.shape == (2, 128, 256, 3)


def test_converter_written_info_without_our_extras_loads(tmp_path: Path, records, preset,
                                                         monkeypatch) -> None:
    """An info as the db75150 converter writes it: only ``camera_intrinsics``, no ann tokens,
    paths relative to the directory the converter ran in."""
    info = info_from_record(records[1])
    for cam in info["cams"].values():
        del cam["cam_intrinsic"]
    del info["ann_tokens"]
    monkeypatch.chdir(tmp_path)
    info["lidar_path"] = os.path.relpath(info["lidar_path"], tmp_path)
    for cam in info["cams"].values():
        cam["data_path"] = os.path.relpath(cam["data_path"], tmp_path)
    pkl = tmp_path / "converter.pkl"
    pkl.write_bytes(pickle.dumps({"infos": [info], "metadata": {"version": "v1.0-mini"}},
                                 protocol=2))  # mmcv.dump's default protocol
    frame = InfoLoader(pkl, preset)[0]
    assert frame.token == "sample1" and frame.gt is not None and len(frame.gt) == 4
    np.testing.assert_allclose(frame.calib.intrinsics[0], records[1].cameras["CAM_A"].intrinsics)
    assert list(frame.gt.tokens) == [""] * 4


class _Marker:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_malicious_pickle_is_refused_before_anything_runs(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps({"infos": [{"token": _Marker(marker)}], "metadata": {}},
                                 protocol=protocol))
    with pytest.raises(UnsafeFileError) as err:
        InfoLoader(pkl, "tiny")
    refused = f"{open.__module__}.{open.__name__}"
    assert err.value.path == str(pkl) and err.value.field == refused
    assert refused in str(err.value)
    assert not marker.exists()
    pickle.loads(pkl.read_bytes()).get("infos")[0]["token"].close()  # the control: it would have
    assert marker.exists()


def test_os_system_global_is_refused(tmp_path: Path) -> None:
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "x").encode() + b"'\ntR.")
    with pytest.raises(UnsafeFileError, match="posix.system|os.system"):
        load_infos(pkl)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_rich_pickles_load_with_the_allow_list(tmp_path: Path, protocol: int) -> None:
    payload = {"infos": [{"f": np.arange(12.0).reshape(3, 4).T, "s": np.array(["car", "bus"]),
                          "i": np.int64(7), "b": np.array([True, False]), "x": np.float32(2.5),
                          "o": collections.OrderedDict(a=1), "set": {1, 2}, "bytes": b"\x00\xff"}],
               "metadata": {"version": "v"}}
    pkl = tmp_path / "ok.pkl"
    pkl.write_bytes(pickle.dumps(payload, protocol=protocol))
    got = load_infos(pkl)["infos"][0]
    for key, value in payload["infos"][0].items():
        assert type(got[key]) is type(value), key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_broken_files_raise_dataset_errors(tmp_path: Path, records, preset) -> None:
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(DatasetError, match="not a readable pickle"):
        InfoLoader(junk, preset)
    with pytest.raises(DatasetError, match="not found"):
        InfoLoader(tmp_path / "missing.pkl", preset)
    listing = tmp_path / "list.pkl"
    listing.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DatasetError) as err:
        InfoLoader(listing, preset)
    assert err.value.field == "infos"
    cases = {
        "infos[2].cams.CAM_B.sensor2lidar_rotation":
            lambda i: i["cams"]["CAM_B"].pop("sensor2lidar_rotation"),
        "infos[2].sweeps[1].timestamp": lambda i: i["sweeps"][1].update(timestamp="yesterday"),
        "infos[2].gt_boxes": lambda i: i.update(gt_boxes=i["gt_boxes"][:, :5]),
        "infos[2].ego2global_rotation": lambda i: i.update(ego2global_rotation=[1, 1, 0, 0]),
    }
    for field, corrupt in cases.items():
        infos = [info_from_record(r) for r in records]
        corrupt(infos[2])
        bad = tmp_path / "bad.pkl"
        bad.write_bytes(pickle.dumps({"infos": infos, "metadata": {}}))
        with pytest.raises(DatasetError) as err:
            InfoLoader(bad, preset)
        assert (err.value.path, err.value.field) == (str(bad), field)
