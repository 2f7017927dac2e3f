"""Frame sources: a dataset split and one frame as files yield the same ``Frame``s, named
before they load."""

from __future__ import annotations

import numpy as np
import pytest

from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.data.sources import DatasetSource, FileSource, FrameFiles, FrameSource
from bevdeploy.errors import ConfigError, InputError
from bevdeploy.presets import get_preset


def test_a_dataset_source_is_the_loader_limited_and_labelled(synthetic_world,
                                                            assert_frames_equal):
    preset = get_preset("tiny")
    loader = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val",
                            preset=preset)
    source = DatasetSource(synthetic_world, preset, split="mini_val", limit=2)
    assert isinstance(source, FrameSource) and source.global_poses
    assert len(loader) == 3 and len(source) == 2
    assert [source.label(i) for i in range(2)] == list(loader.sample_tokens[:2])
    assert_frames_equal(source[1], loader[1])
    assert_frames_equal(source[-1], loader[1])  # the last of the limited source
    with pytest.raises(IndexError):
        source[2]
    assert len(DatasetSource(synthetic_world, preset, split="mini_val", limit=50)) == 3
    with pytest.raises(ConfigError):
        DatasetSource(synthetic_world, preset, limit=0)


def test_a_file_source_reads_one_frame_up_front(frame_files, synthetic_world):
    preset = get_preset("tiny")
    images = tuple(frame_files / f"{name}.jpg" for name in preset.cameras.names)
    files = FrameFiles(frame_files / "points.pcd.bin", images, frame_files / "rig.yaml")
    source = FileSource(files, preset)
    assert isinstance(source, FrameSource) and not source.global_poses
    assert len(source) == 1 and source.label(0) == str(files.points)
    frame = source[0]
    assert frame.token == "points" and frame.images.shape[0] == len(images)
    reference = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val",
                               preset=preset, sweeps=0)[0]
    np.testing.assert_allclose(frame.points[:, :4], reference.points[:, :4], atol=1e-6)
    np.testing.assert_allclose(frame.calib.camera2lidar, reference.calib.camera2lidar,
                               atol=1e-6)
    with pytest.raises(IndexError):
        source[1]
    with pytest.raises(InputError) as err:
        FileSource(FrameFiles(files.points, images[:-1], files.calibration), preset)
    assert err.value.field == "--images"
