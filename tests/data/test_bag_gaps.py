"""The bag paths the round-trip tests do not reach: a bag without ``/tf`` (single sweeps, static
extrinsics, no global pose: infer runs, eval is refused), per-point time fields in multi-sweep
aggregation, a camera that never appears, and ``--bag-out`` inside ``--out``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mcap.reader import make_reader
from typer.testing import CliRunner

from bag_support import drop_messages, rewrite_bag
from bevdeploy.cli import app
from bevdeploy.data.bags.pointcloud2 import decode_pointcloud2, encode_pointcloud2
from bevdeploy.data.bags.reader import Bag
from bevdeploy.data.bags.source import BagSource
from bevdeploy.data.bags.tf import quaternion_matrix
from bevdeploy.data.readers import remove_close
from bevdeploy.data.streams import InOrder
from bevdeploy.errors import InputError, OutputError
from bevdeploy.presets import get_preset
from bevdeploy.shipped import shipped_package_dir

runner = CliRunner()
PRESET = get_preset("tiny")
LIDAR = "/lidar_top/points"


def _frames(path: Path, **kwargs: Any) -> list:
    frames = InOrder(BagSource(path, PRESET, **kwargs))
    return [frames[i] for i in range(len(frames))]


def _without_tf(short_bag: Path, tmp_path: Path) -> Path:
    return rewrite_bag(short_bag, tmp_path / "no_tf.mcap",
                       lambda topic, t, msg: [] if topic == "/tf" else [(topic, t, msg)])


def _static_tree(bag_path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """child → (parent, T_parent←child) of the bag's /tf_static, composed here by hand."""
    with Bag(bag_path) as bag:
        msg = next(iter(bag.messages(["/tf_static"]))).msg
    tree = {}
    for tr in msg.transforms:
        m, r, t = np.eye(4), tr.transform.rotation, tr.transform.translation
        m[:3, :3] = quaternion_matrix(r.x, r.y, r.z, r.w)
        m[:3, 3] = t.x, t.y, t.z
        tree[tr.child_frame_id] = (tr.header.frame_id, m)
    return tree


def test_without_tf_a_frame_is_its_key_sweep_with_static_extrinsics(short_bag: Path,
                                                                     tmp_path: Path) -> None:
    """No ego pose: no global pose, the key sweep padded with itself (as the reference pads a
    sample without sweeps), camera2lidar from /tf_static alone; the images are the same."""
    path = _without_tf(short_bag, tmp_path)
    assert not BagSource(path, PRESET).global_poses
    with Bag(path) as bag:
        keys = [decode_pointcloud2(m.msg, topic=LIDAR).points for m in bag.messages([LIDAR])]
    tree = _static_tree(path)
    with_tf = _frames(short_bag)
    for i, frame in enumerate(_frames(path)):
        np.testing.assert_array_equal(frame.calib.ego2global, np.eye(4))
        np.testing.assert_array_equal(frame.calib.lidar2ego, np.eye(4))
        pad = remove_close(keys[i], PRESET.points.remove_close)
        np.testing.assert_array_equal(frame.points, np.concatenate([keys[i], *[pad] * 3]))
        assert not frame.points[:, 4].any()  # one sweep: every time lag is 0
        for c, name in enumerate(PRESET.cameras.names):
            parent, base_cam = tree[name.lower()]
            lidar_parent, base_lidar = tree["lidar_top"]
            assert parent == lidar_parent
            np.testing.assert_allclose(frame.calib.camera2lidar[c],
                                       np.linalg.inv(base_lidar) @ base_cam, atol=1e-9)
        np.testing.assert_array_equal(frame.images, with_tf[i].images)


def test_infer_runs_on_a_bag_without_tf_and_eval_refuses_it(short_bag: Path,
                                                            synthetic_world: Path,
                                                            tmp_path: Path) -> None:
    path, package = _without_tf(short_bag, tmp_path), str(shipped_package_dir("tiny"))
    result = runner.invoke(app, ["infer", "--bag", str(path), "--package", package,
                                 "--out", str(tmp_path / "infer")])
    assert result.exit_code == 0, result.output
    detections = json.loads((tmp_path / "infer" / "detections.json").read_text())["frames"]
    assert len(detections) == 6 and sum(len(f["boxes"]) for f in detections.values()) > 0
    assert not (tmp_path / "infer" / "results_nusc.json").exists()  # no global frame
    result = runner.invoke(app, ["eval", "--bag", str(path), "--data", str(synthetic_world),
                                 "--package", package, "--out", str(tmp_path / "eval")])
    assert result.exit_code == InputError.exit_code, result.output
    line = " ".join(result.output.split())
    assert re.search(r"no_tf\.mcap \[/tf\]: eval needs the ego pose in /tf .* it has no /tf "
                     r"topic; infer runs on this bag without it", line), line
    assert not (tmp_path / "eval").exists()


def _with_point_times(cloud_msg: Any, kind: str) -> dict[str, Any]:
    """The sweep re-encoded with a per-point time field a function of each point's intensity
    (0.5 ms per unit), which the aggregation keeps: Ouster's uint32 ``t`` in ns after the
    stamp, or Hesai's float64 ``timestamp`` in absolute seconds."""
    pts = decode_pointcloud2(cloud_msg, topic=LIDAR).points
    stamp = cloud_msg.header.stamp.sec + cloud_msg.header.stamp.nanosec * 1e-9
    offset = pts[:, 3].astype(np.float64) * 5e-4
    columns = {"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2], "intensity": pts[:, 3]}
    columns.update({"t": (offset * 1e9).round().astype(np.uint32)} if kind == "ouster" else
                   {"timestamp": stamp + offset})
    return encode_pointcloud2(columns, stamp_ns=cloud_msg.header.stamp.sec * 10**9
                              + cloud_msg.header.stamp.nanosec,
                              frame_id=cloud_msg.header.frame_id)


@pytest.mark.parametrize("kind", ["ouster", "hesai"])
def test_per_point_times_offset_every_points_lag_in_the_aggregated_sweeps(
        short_bag: Path, tmp_path: Path, kind: str) -> None:
    """With /tf (previous sweeps moved into the key frame), each point's time lag is its
    sweep's lag minus its own time after the stamp, for the key and the previous sweeps."""
    timed = rewrite_bag(short_bag, tmp_path / f"{kind}.mcap", lambda topic, t, msg: [
        (topic, t, _with_point_times(msg, kind) if topic == LIDAR else msg)])
    plain, frames = _frames(short_bag), _frames(timed)
    assert max(len(np.unique(f.points[:, 4])) for f in plain) == 4  # key + 3 sweeps
    for a, b in zip(plain, frames):
        np.testing.assert_array_equal(b.points[:, :4], a.points[:, :4])
        np.testing.assert_allclose(b.points[:, 4], a.points[:, 4] - b.points[:, 3] * 5e-4,
                                   atol=1e-6 if kind == "ouster" else 2e-6)
    assert (frames[-1].points[:, 4] < 0).any()  # key points captured after the stamp


def test_a_camera_that_never_appears_is_refused_at_open_naming_its_topic(
        short_bag: Path, tmp_path: Path) -> None:
    topic = "/cam_back/image_raw/compressed"
    absent = rewrite_bag(short_bag, tmp_path / "absent.mcap",
                         lambda t_, t, msg: [] if t_ == topic else [(t_, t, msg)])
    with pytest.raises(InputError, match=r"absent\.mcap \[cameras\]: cannot tell which topic "
                                         r"is which camera \(CAM_BACK: image topics none"):
        BagSource(absent, PRESET)
    topics = tmp_path / "topics.yaml"
    topics.write_text("lidar: /lidar_top/points\ncameras:\n" + "".join(
        f"  {n}: {{image: /{n.lower()}/image_raw/compressed, info: /{n.lower()}/camera_info}}\n"
        for n in PRESET.cameras.names))
    with pytest.raises(InputError, match=rf"\[CAM_BACK\]: no topic '{topic}'; the bag has"):
        BagSource(absent, PRESET, topics=topics)
    silent = drop_messages(short_bag, tmp_path / "silent.mcap", topic)
    for kwargs in ({}, {"topics": topics}):
        with pytest.raises(InputError, match=rf"silent\.mcap \[CAM_BACK\]: topic '{topic}' has "
                                             r"no messages \(a sensor never seen\)"):
            BagSource(silent, PRESET, **kwargs)
    result = runner.invoke(app, ["infer", "--bag", str(silent), "--package",
                                 str(shipped_package_dir("tiny")), "--out", str(tmp_path / "o")])
    assert result.exit_code == InputError.exit_code and topic in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_a_topic_map_without_frames_takes_the_ego_pose_from_tf(short_bag: Path,
                                                                tmp_path: Path) -> None:
    topics = tmp_path / "topics.yaml"
    topics.write_text("lidar: /lidar_top/points\ncameras:\n" + "".join(
        f"  {n}: {{image: /{n.lower()}/image_raw/compressed, info: /{n.lower()}/camera_info}}\n"
        for n in PRESET.cameras.names))
    source = BagSource(short_bag, PRESET, topics=topics)
    assert (source.map.global_frame, source.map.base_frame) == ("map", "base_link")
    assert source.global_poses


def _scene_updates(path: Path) -> int:
    with open(path, "rb") as f:
        summary = make_reader(f).get_summary()
    assert summary is not None and summary.statistics is not None
    ids = [i for i, c in summary.channels.items() if c.topic == "/bevdeploy/detections"]
    return sum(summary.statistics.channel_message_counts.get(i, 0) for i in ids)


def test_bag_out_inside_out_arrives_with_the_swapped_in_outputs(short_bag: Path,
                                                                 tmp_path: Path) -> None:
    """--out is staged and swapped in whole: a --bag-out inside it goes through the staging
    directory (it survives the swap, an --overwrite run included); --out itself, the input
    bag and an existing file elsewhere without --overwrite are refused in one line."""
    out, package = tmp_path / "out", str(shipped_package_dir("tiny"))
    base = ["infer", "--bag", str(short_bag), "--package", package, "--out", str(out)]
    for extra in ([], ["--overwrite"]):
        result = runner.invoke(app, [*base, "--bag-out", str(out / "viz" / "scene.mcap"),
                                     *extra])
        assert result.exit_code == 0, result.output
        assert _scene_updates(out / "viz" / "scene.mcap") == 6
        assert str(out / "viz" / "scene.mcap") in " ".join(result.output.split())
        assert sorted(p.name for p in out.iterdir()) == ["detections.json", "results_nusc.json",
                                                         "viz"]
    elsewhere = tmp_path / "scene.mcap"
    elsewhere.write_bytes(b"a user's file")
    fresh = tmp_path / "fresh"
    for bag_out, pattern in ((fresh, r"is a directory \(or --out itself\)"),
                             (short_bag, r"is the input --bag"),
                             (elsewhere, r"already exists; pass --overwrite")):
        result = runner.invoke(app, [*base[:-1], str(fresh), "--bag-out", str(bag_out)])
        assert result.exit_code == OutputError.exit_code, result.output
        assert re.search(rf"\[--bag-out\]: {pattern}", result.output), result.output
        assert not fresh.exists()
    assert elsewhere.read_bytes() == b"a user's file"
    assert _scene_updates(out / "viz" / "scene.mcap") == 6  # the refused runs changed nothing


def test_the_readmes_topic_map_example_opens_the_synthetic_bag(short_bag: Path,
                                                              tmp_path: Path) -> None:
    """README 'ROS 2 bags (MCAP)': its topic map YAML, as printed, is the detected map."""
    readme = Path(__file__).resolve().parents[2] / "README.md"
    section = readme.read_text().split("### ROS 2 bags (MCAP)", 1)[1]
    yaml_text = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    topics = tmp_path / "topics.yaml"
    topics.write_text("\n".join(line.removeprefix("  ") for line in yaml_text.splitlines()))
    assert BagSource(short_bag, PRESET, topics=topics).map == BagSource(short_bag, PRESET).map
