"""A ROS 2 bag of the synthetic world through BagSource, eval and the Foxglove sink: the same
frames, the same mAP and the same boxes as the dataset, and one clear failure per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bag_support import rewrite_bag
from bevdeploy.cli import app
from bevdeploy.cli.bag import dataset_keys
from bevdeploy.data.bags.reader import Bag
from bevdeploy.data.bags.source import BagSource
from bevdeploy.data.sources import DatasetSource
from bevdeploy.data.streams import InOrder
from bevdeploy.errors import BevDeployError, InputError
from bevdeploy.presets import get_preset

runner = CliRunner()
PRESET = get_preset("tiny")


def _frames(source: BagSource) -> list:
    """Every frame of the stream, or the error that failed it."""
    frames = InOrder(source)
    out = []
    for i in range(len(frames)):
        try:
            out.append(frames[i])
        except BevDeployError as exc:
            out.append(exc)
    return out


def test_bag_frames_equal_the_dataset_frames(synthetic_world: Path, synthetic_bag: Path) -> None:
    """Keyed on the samples' timestamps, the bag gives the dataset's frames: the same points
    (multi-sweep through /tf), poses, intrinsics, and for every camera whose nearest image is
    the dataset's, the same image and camera2lidar. CAM_BACK fires 50 ms before the sweep, so
    at 12 Hz its image 33 ms after the sweep is nearer; its calibration follows that image."""
    dataset = DatasetSource(synthetic_world, PRESET, split="mini_val")
    keys = dataset_keys(synthetic_world, PRESET, version="v1.0-mini", split="mini_val")
    frames = _frames(BagSource(synthetic_bag, PRESET, keys=keys))
    assert len(frames) == len(dataset) == 3
    back = PRESET.cameras.names.index("CAM_BACK")
    for i, b in enumerate(frames):
        assert not isinstance(b, Exception), b
        a = dataset[i]
        assert (a.token, a.timestamp) == (b.token, b.timestamp)
        np.testing.assert_allclose(b.points, a.points, atol=1e-5, rtol=0)
        for name in ("intrinsics", "lidar2ego", "ego2global"):
            np.testing.assert_allclose(getattr(b.calib, name), getattr(a.calib, name), atol=1e-9)
        others = [c for c in range(6) if c != back]
        np.testing.assert_array_equal(b.images[others], a.images[others])
        np.testing.assert_allclose(b.calib.camera2lidar[others], a.calib.camera2lidar[others],
                                   atol=1e-6)


def test_eval_on_the_bag_gives_the_datasets_map(synthetic_world: Path, synthetic_bag: Path,
                                                trained_tiny_package: Path,
                                                tmp_path: Path) -> None:
    """Round trip: eval on the bag (ground truth: the dataset beside it) and on the dataset."""
    maps = {}
    for name, extra in (("dataset", []), ("bag", ["--bag", str(synthetic_bag)])):
        result = runner.invoke(app, ["eval", "--data", str(synthetic_world), "--package",
                                     str(trained_tiny_package), "--out", str(tmp_path / name),
                                     *extra])
        assert result.exit_code == 0, result.output
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["num_samples"] == 3
        maps[name] = metrics["mean_ap"]
    assert maps["dataset"] > 0.1
    assert abs(maps["bag"] - maps["dataset"]) < 0.01, maps


def test_infer_bag_out_writes_scene_updates_equal_to_the_detections(
        short_bag: Path, trained_tiny_package: Path, tmp_path: Path) -> None:
    from mcap.reader import make_reader
    from mcap_protobuf.decoder import DecoderFactory

    out = tmp_path / "out"
    result = runner.invoke(app, ["infer", "--bag", str(short_bag), "--package",
                                 str(trained_tiny_package), "--out", str(out), "--bag-out",
                                 str(tmp_path / "scene.mcap"), "--score-threshold", "0.1"])
    assert result.exit_code == 0, result.output
    detections = json.loads((out / "detections.json").read_text())["frames"]
    assert len(detections) == 6 and sum(len(f["boxes"]) for f in detections.values()) > 0
    seen = 0
    with open(tmp_path / "scene.mcap", "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        topics = {c.topic for c in reader.get_summary().channels.values()}
        assert {"/lidar_top/points", "/cam_front/image_raw/compressed", "/tf"} <= topics
        for schema, _, message, update in reader.iter_decoded_messages(
                topics=["/bevdeploy/detections"]):
            assert schema.name == "foxglove.SceneUpdate"
            boxes = detections[str(message.log_time)]["boxes"]
            assert len(update.entities) == len(boxes)
            for entity, box in zip(update.entities, boxes):
                assert entity.frame_id == "lidar_top"
                assert entity.timestamp.ToNanoseconds() == message.log_time
                cube = entity.cubes[0]
                pose = cube.pose
                np.testing.assert_allclose([pose.position.x, pose.position.y, pose.position.z],
                                           [box["x"], box["y"], box["z"]], atol=1e-5)
                yaw = 2 * np.arctan2(pose.orientation.z, pose.orientation.w)
                assert abs(np.angle(np.exp(1j * (yaw - box["yaw"])))) < 1e-5
                np.testing.assert_allclose([cube.size.x, cube.size.y, cube.size.z],
                                           [box["l"], box["w"], box["h"]], atol=1e-5)
                assert entity.texts[0].text.startswith(box["name"])
            seen += 1
    assert seen == 6


# ---- bad input: one clear line each --------------------------------------------------------


def test_a_topic_map_naming_a_missing_topic_lists_what_the_bag_has(short_bag: Path,
                                                                    tmp_path: Path) -> None:
    names = PRESET.cameras.names
    topics = tmp_path / "topics.yaml"
    cams = "".join(f"  {n}: {{image: /{n.lower()}/image_raw/compressed, info: "
                   f"/{n.lower()}/camera_info}}\n" for n in names)
    topics.write_text(f"lidar: /velodyne_points\ncameras:\n{cams}")
    with pytest.raises(InputError, match=r"\[lidar\]: no topic '/velodyne_points'; the bag "
                                         r"has: .*/lidar_top/points \(sensor_msgs/msg/PointCloud2"):
        BagSource(short_bag, PRESET, topics=topics)


def test_a_corrupt_chunk_fails_exactly_its_sweep_naming_the_crc(short_bag: Path,
                                                                 tmp_path: Path) -> None:
    with Bag(short_bag) as bag:
        lidar_id = next(i for i, c in bag.summary.channels.items()
                        if c.topic == "/lidar_top/points")
        chunk = next(c for c in bag.summary.chunk_indexes
                     if lidar_id in c.message_index_offsets)
    data = bytearray(short_bag.read_bytes())
    middle = chunk.chunk_start_offset + chunk.chunk_length // 2
    data[middle:middle + 16] = bytes(16)
    damaged = tmp_path / "damaged.mcap"
    damaged.write_bytes(bytes(data))
    frames = _frames(BagSource(damaged, PRESET))
    failed = [f for f in frames if isinstance(f, Exception)]
    assert len(frames) == 6 and len(failed) >= 1
    assert f"chunk at byte {chunk.chunk_start_offset}" in str(failed[0])
    assert "CRC" in str(failed[0]) or "Error" in str(failed[0])


def test_non_monotonic_stamps_unknown_encodings_missing_cameras_and_broken_tf(
        short_bag: Path, tmp_path: Path) -> None:
    with Bag(short_bag) as bag:
        sweeps = [m.msg.header.stamp for m in bag.messages(["/lidar_top/points"])]
    third = sweeps[2]

    def backwards(topic: str, t: int, msg):  # the 4th sweep stamped before the 3rd
        if topic == "/lidar_top/points" and msg.header.stamp.nanosec == sweeps[3].nanosec:
            msg.header.stamp.nanosec = third.nanosec - 1
        return [(topic, t, msg)]

    def h264(topic: str, t: int, msg):
        if topic == "/cam_front/image_raw/compressed":
            msg.format = "h264"
        return [(topic, t, msg)]

    def no_front(topic: str, t: int, msg):
        return [] if topic == "/cam_front/image_raw/compressed" and t > sweeps_ns[1] else [
            (topic, t, msg)]

    def no_back_tf(topic: str, t: int, msg):
        if topic == "/tf_static":
            msg.transforms = [tr for tr in msg.transforms if tr.child_frame_id != "cam_back"]
        return [(topic, t, msg)]

    sweeps_ns = [s.sec * 10**9 + s.nanosec for s in sweeps]
    cases = {
        backwards: (3, r"/lidar_top/points \[header.stamp\]: header.stamp goes backwards"),
        h264: (0, r"/cam_front/image_raw/compressed \(sensor_msgs/CompressedImage\) "
                  r"\[format\]: unknown image format 'h264'"),
        no_front: (4, r"\[CAM_FRONT\]: no CAM_FRONT image within 50 ms"),
        no_back_tf: (0, r"does not connect 'cam_back' to 'base_link'"),
    }
    for edit, (index, pattern) in cases.items():
        frames = _frames(BagSource(rewrite_bag(short_bag, tmp_path / f"{edit.__name__}.mcap",
                                               edit), PRESET))
        assert len(frames) == 6, edit.__name__
        assert isinstance(frames[index], InputError), (edit.__name__, frames[index])
        assert __import__("re").search(pattern, str(frames[index])), str(frames[index])
