"""mmdetection3d >= 1.1 info files (``metainfo`` + ``data_list``, ``data.info_v2``) and the
format dispatch of ``data.info_files``: a file written the way mmdet3d's converter writes one
gives the devkit's Frames, the devkit's mAP through ``eval --info`` and its rig; bad files give
one ``DatasetError`` naming the file and the field; a pickle that expands through shared
references is refused in a fraction of a second and a few MB.

``write_data_list`` follows mmdet3d 1.x ``tools/create_data.py nuscenes``: its legacy
converter (boxes ``[x, y, z centre, l, w, h, yaw]``) then ``update_infos_to_v2.py`` (every
matrix 4×4 rounded to float32, bare file names, timestamps in seconds, sweeps with
``lidar2sensor``, labels in mmdet3d's class order with ``-1`` for other names, no annotation
tokens, mmengine's pickle protocol 2). Its samples come from the synthetic world's tables
through the devkit (``NuScenesLoader`` records).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from bevdeploy.cli import app
from bevdeploy.data.boxes import to_mmdet3d_v1
from bevdeploy.data.info_files import InfoSource, open_info_file
from bevdeploy.data.info_v2 import DataListLoader
from bevdeploy.data.infos import write_infos
from bevdeploy.data.nuscenes import NuScenesLoader, Pose, SampleRecord
from bevdeploy.data.rig_files import rig_from_info, rig_from_nuscenes
from bevdeploy.errors import DatasetError, UnsafeFileError
from bevdeploy.presets import get_preset

runner = CliRunner()
TINY = get_preset("tiny")
VERSION = "v1.0-mini"
SPLIT = "mini_val"
# mmdet3d 1.x's nuScenes class order (update_infos_to_v2.py METAINFO), not mit-han-lab's
MMDET3D_CLASSES = ("car", "truck", "trailer", "bus", "construction_vehicle", "bicycle",
                   "motorcycle", "pedestrian", "traffic_cone", "barrier")


def _m32(matrix: np.ndarray) -> list[list[float]]:
    return np.asarray(matrix, np.float64).astype(np.float32).tolist()


def _pose32(pose: Pose) -> list[list[float]]:
    return _m32(pose.matrix())


def _converter_path(path: Path) -> str:
    """A sweep's ``data_path`` as the legacy converter stored it (relative to where it ran)."""
    return "./data/nuscenes/" + "/".join(path.parts[-3:])


def _data_info(rec: SampleRecord, index: int, ignored: set[str]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "sample_idx": index, "token": rec.token, "timestamp": rec.timestamp / 1e6,
        "ego2global": _pose32(rec.lidar.ego2global),
        "lidar_points": {"num_pts_feats": 5, "lidar_path": rec.lidar.path.name,
                         "lidar2ego": _pose32(rec.lidar.sensor2ego)},
        "lidar_sweeps": [{
            "timestamp": s.timestamp / 1e6, "ego2global": _pose32(s.ego2global),
            "sample_data_token": s.token,
            "lidar_points": {"lidar_path": _converter_path(s.path),
                             "lidar2ego": _pose32(s.sensor2ego),
                             "lidar2sensor": _m32(np.linalg.inv(s.sensor2lidar))}}
            for s in rec.sweeps],
        "images": {name: {
            "img_path": c.path.name, "cam2img": np.asarray(c.intrinsics).tolist(),
            "sample_data_token": c.token, "timestamp": c.timestamp / 1e6,
            "cam2ego": _pose32(c.sensor2ego),
            "lidar2cam": _m32(np.linalg.inv(c.sensor2lidar))} for name, c in rec.cameras.items()},
        "instances": [],
        "cam_instances": {name: [] for name in rec.cameras},
    }
    a = rec.annotations
    assert a is not None
    v1 = to_mmdet3d_v1(a.boxes, z_is_bottom=False).astype(np.float64)  # converter: z centre
    for k, name in enumerate(a.names.tolist()):
        label = MMDET3D_CLASSES.index(name) if name in MMDET3D_CLASSES else -1
        if label < 0:
            ignored.add(name)
        info["instances"].append({
            "bbox_3d": v1[k, :7].tolist(), "bbox_label": label, "bbox_label_3d": label,
            "velocity": v1[k, 7:9].tolist(), "num_lidar_pts": np.int64(a.num_lidar_pts[k]),
            "num_radar_pts": np.int64(a.num_radar_pts[k]),
            "bbox_3d_isvalid": np.bool_(a.num_lidar_pts[k] + a.num_radar_pts[k] > 0)})
    return info


def write_data_list(path: Path, loader: NuScenesLoader) -> Path:
    ignored: set[str] = set()
    data_list = [_data_info(loader.record(i), i, ignored) for i in range(len(loader))]
    categories = {name: i for i, name in enumerate(MMDET3D_CLASSES)}
    categories.update({name: -1 for name in ignored})
    metainfo = {"categories": categories, "dataset": "nuscenes", "version": loader.version,
                "info_version": "1.1"}
    path.write_bytes(pickle.dumps({"metainfo": metainfo, "data_list": data_list}, protocol=2))
    return path


@pytest.fixture(scope="module")
def devkit(synthetic_world: Path) -> NuScenesLoader:
    return NuScenesLoader(synthetic_world, version=VERSION, split=SPLIT, preset=TINY)


@pytest.fixture(scope="module")
def data_list_file(devkit: NuScenesLoader, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data_list(tmp_path_factory.mktemp("v2") / "nuscenes_infos_val.pkl", devkit)


def _without_tokens(frame):
    """The devkit frame as a data_list file can hold it: no annotation tokens."""
    assert frame.gt is not None
    return replace(frame, gt=replace(frame.gt, tokens=np.full(len(frame.gt), "", object)))


def test_data_list_file_gives_the_devkit_frames(data_list_file: Path, devkit: NuScenesLoader,
                                                synthetic_world: Path,
                                                assert_frames_equal) -> None:
    loader = open_info_file(data_list_file, TINY, synthetic_world)
    assert isinstance(loader, DataListLoader) and loader.version == VERSION
    assert loader.sample_tokens == devkit.sample_tokens
    records = [loader.record(i) for i in range(len(loader))]
    # some sweeps reach back to the previous key frame, which lives in samples/
    assert {s.path.parts[-3] for r in records for s in r.sweeps} == {"samples", "sweeps"}
    for i, want in enumerate(devkit):
        got = loader[i]
        assert got.gt is not None and len(got.gt) > 0 and np.abs(got.points).max() > 10
        assert_frames_equal(got, _without_tokens(want), float32_calibration=True)
    names = {n for i in range(len(loader)) for n in loader[i].gt.names}
    assert "car" in names  # mmdet3d's label 0 read back through metainfo.categories


def test_source_is_limited_and_named_by_tokens(data_list_file: Path, devkit: NuScenesLoader,
                                               synthetic_world: Path, tmp_path: Path) -> None:
    source = InfoSource(data_list_file, TINY, dataroot=synthetic_world, limit=2)
    assert len(source) == 2 and source.global_poses and source.version == VERSION
    assert [source.label(i) for i in range(2)] == list(devkit.sample_tokens[:2])
    assert source[-1].token == devkit.sample_tokens[1]
    # without a data root the files are looked up beside the info file, as mmdet3d lays it out
    for folder in ("samples", "sweeps"):
        (tmp_path / folder).symlink_to(synthetic_world / folder)
    beside = tmp_path / data_list_file.name
    beside.write_bytes(data_list_file.read_bytes())
    np.testing.assert_array_equal(InfoSource(beside, TINY)[1].points, source[1].points)


def _map(result: Any, out: Path) -> float:
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 3
    return float(metrics["mean_ap"])


def test_eval_info_gives_the_datasets_map(data_list_file: Path, devkit: NuScenesLoader,
                                          synthetic_world: Path, trained_tiny_package: Path,
                                          tmp_path: Path) -> None:
    """The same samples as frames of the dataset, of a data_list file and of a legacy infos
    file, each scored on the dataset by sample token: the same mAP."""
    legacy = write_infos(tmp_path / "legacy.pkl", devkit)
    common = ["--package", str(trained_tiny_package), "--version", VERSION, "--split", SPLIT]
    maps = {"dataset": _map(runner.invoke(app, ["eval", "--data", str(synthetic_world),
                                                "--out", str(tmp_path / "d"), *common]),
                            tmp_path / "d")}
    for name, pkl in (("data_list", data_list_file), ("infos", legacy)):
        result = runner.invoke(app, ["eval", "--info", str(pkl), "--data-root",
                                     str(synthetic_world), "--out", str(tmp_path / name),
                                     *common])
        maps[name] = _map(result, tmp_path / name)
    print("mAP", maps)
    assert maps["dataset"] > 0.1
    assert maps["data_list"] == pytest.approx(maps["dataset"], abs=1e-9), maps
    assert maps["infos"] == pytest.approx(maps["dataset"], abs=1e-9), maps


def test_eval_info_refuses_what_it_cannot_score(data_list_file: Path, synthetic_world: Path,
                                                trained_tiny_package: Path,
                                                tmp_path: Path) -> None:
    base = ["eval", "--package", str(trained_tiny_package), "--info", str(data_list_file)]
    cases = {
        "--data": ([], 2),  # no --data-root
        "--split": (["--data-root", str(synthetic_world), "--split", "mini_train"], 4),
        "--version": (["--data-root", str(synthetic_world), "--version", "v1.0-trainval"], 2),
    }
    for field, (extra, code) in cases.items():
        result = runner.invoke(app, [*base, *extra, "--out", str(tmp_path / field[2:])])
        assert result.exit_code == code, result.output
        assert field in result.output and "Traceback" not in result.output


def test_infer_info_writes_a_submission(data_list_file: Path, synthetic_world: Path,
                                        trained_tiny_package: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["infer", "--info", str(data_list_file), "--data-root",
                                 str(synthetic_world), "--package", str(trained_tiny_package),
                                 "--out", str(out), "--limit", "1"])
    assert result.exit_code == 0, result.output
    frames = json.loads((out / "detections.json").read_text())["frames"]
    submission = json.loads((out / "results_nusc.json").read_text())["results"]
    assert len(frames) == 1 and set(submission) == set(frames) and any(submission.values())


def test_rig_from_info_reads_both_formats(data_list_file: Path, devkit: NuScenesLoader,
                                          synthetic_world: Path, tmp_path: Path) -> None:
    token = devkit.sample_tokens[1]
    want = yaml.safe_load(rig_from_nuscenes(synthetic_world, token, tmp_path / "n.yaml",
                                            TINY).read_text())
    legacy = write_infos(tmp_path / "legacy.pkl", devkit)
    for name, pkl in (("v2", data_list_file), ("legacy", legacy)):
        result = runner.invoke(app, ["rig", "from-info", str(pkl), "--index", "1", "--out",
                                     str(tmp_path / f"{name}.yaml")])
        assert result.exit_code == 0, result.output
        got = yaml.safe_load((tmp_path / f"{name}.yaml").read_text())
        flat_got, flat_want = _flatten(got), _flatten(want)
        assert flat_got.keys() == flat_want.keys()
        for key, value in flat_want.items():
            np.testing.assert_allclose(flat_got[key], value, atol=1e-6, rtol=1e-6, err_msg=key)
    assert rig_from_info(data_list_file, tmp_path / "direct.yaml", TINY, index=1).exists()


def _flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, dict):
        return {k: v for key, sub in doc.items() for k, v in _flatten(sub, f"{prefix}.{key}")
                .items()}
    return {prefix: doc}


def _corrupt(data_list_file: Path, tmp_path: Path, edit) -> Path:
    data = pickle.loads(data_list_file.read_bytes())  # our own file, written above
    edit(data)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(data, protocol=2))
    return bad


@pytest.mark.parametrize("field,edit", [
    ("data_list[1].images.CAM_FRONT.lidar2cam",
     lambda d: d["data_list"][1]["images"]["CAM_FRONT"].update(lidar2cam=[[2.0] * 4] * 4)),
    ("data_list[0].instances[2].bbox_3d",
     lambda d: d["data_list"][0]["instances"][2].update(bbox_3d=[1.0, 2.0, 3.0])),
    ("data_list[2].instances[0].bbox_label_3d",
     lambda d: d["data_list"][2]["instances"][0].update(bbox_label_3d=42)),
    ("data_list[0].lidar_sweeps[1].timestamp",
     lambda d: d["data_list"][0]["lidar_sweeps"][1].update(timestamp="yesterday")),
    ("data_list[1].images.CAM_BACK.img_path",
     lambda d: d["data_list"][1]["images"]["CAM_BACK"].pop("img_path")),
    ("data_list[0].lidar_points.num_pts_feats",
     lambda d: d["data_list"][0]["lidar_points"].update(num_pts_feats=4)),
    ("data_list[1].ego2global",
     lambda d: d["data_list"][1].update(ego2global=[[1.0, 0.0, 0.0, 0.0]] * 3)),
    ("metainfo.categories", lambda d: d["metainfo"].update(categories=["car"])),
    ("infos|data_list", lambda d: d.pop("data_list")),
])
def test_bad_data_list_fields_are_named(data_list_file: Path, tmp_path: Path, field: str,
                                        edit) -> None:
    bad = _corrupt(data_list_file, tmp_path, edit)
    with pytest.raises(DatasetError) as err:
        open_info_file(bad, TINY)
    assert (err.value.path, err.value.field) == (str(bad), field), str(err.value)


def test_unsafe_data_list_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(b"\x80\x02}q\x00(X\t\x00\x00\x00data_listq\x01cos\nsystem\nq\x02u.")
    with pytest.raises(UnsafeFileError):
        open_info_file(bad, TINY)


# Memory from /proc (VmHWM: this process's own peak; ru_maxrss would carry pytest's across exec).
_EXPANSION_CHILD = """
import json, sys, time
from pathlib import Path
from bevdeploy.data.info_files import open_info_file
from bevdeploy.errors import DatasetError

def status_mb(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

path = Path(sys.argv[1])
before = status_mb("VmRSS")
t0 = time.perf_counter()
try:
    open_info_file(path, "tiny")
    outcome = {"refused": False}
except DatasetError as exc:
    outcome = {"refused": True, "field": exc.field, "message": str(exc)}
outcome["seconds"] = time.perf_counter() - t0
outcome["peak_rss_mb"] = status_mb("VmHWM")
outcome["rss_before_mb"] = before
print(json.dumps(outcome))
"""


def test_shared_reference_bomb_is_refused_fast_and_small(tmp_path: Path) -> None:
    """~2 KB whose box lists all reference one list that references one list ... (100 items
    each, 5 levels): 10^10 numbers once expanded, an 80 GB array if anything built one."""
    level: list[Any] = [i / 7 for i in range(100)]
    for _ in range(4):
        level = [level] * 100
    instances = [{"bbox_3d": level, "bbox_label_3d": 0, "num_lidar_pts": 1}] * 8
    bomb = {"metainfo": {"categories": {"car": 0}, "version": VERSION},
            "data_list": [{"token": "t", "instances": instances, "timestamp": 1.0}]}
    path = tmp_path / "bomb.pkl"
    path.write_bytes(pickle.dumps(bomb, protocol=2))
    assert path.stat().st_size < 2048
    child = subprocess.run([sys.executable, "-c", _EXPANSION_CHILD, str(path)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    outcome = json.loads(child.stdout.strip().splitlines()[-1])
    print("expansion bomb", path.stat().st_size, "bytes:", outcome)
    assert outcome["refused"] and outcome["field"] == "file"
    assert str(path) in outcome["message"] and "expands" in outcome["message"]
    assert outcome["seconds"] < 1.0
    assert outcome["peak_rss_mb"] < 200  # most of it the imports (nuscenes-devkit: cv2, ...)
    assert outcome["peak_rss_mb"] - outcome["rss_before_mb"] < 50
