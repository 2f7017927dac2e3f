"""The shipped tiny weights move to other rigs: the learned tensors load, the derived buffers are
rebuilt from the target preset, one warning lists what changed; shapes that cannot fit are
still a CheckpointError table."""

from __future__ import annotations

import pytest
import torch

from rig_presets import four_camera_preset, tiny_variant

from bevdeploy.errors import CheckpointError
from bevdeploy.model.checkpoint import RigChangeWarning, read_checkpoint
from bevdeploy.model.factory import create_model
from bevdeploy.presets import get_preset

TINY = get_preset("tiny")
pytestmark = pytest.mark.skipif(not TINY.checkpoint_path.is_file(),
                                reason="no shipped tiny weights")
DERIVED = ("frustum", "dx", "bx", "nx")


def _learned(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.rsplit(".", 1)[1] not in DERIVED
            or ".vtransform." not in k}


@pytest.mark.parametrize("preset, says", [
    (four_camera_preset(), ["cameras", "CAM_REAR", "image_size [128, 256] → [128, 320]",
                            "ybound"]),
    (tiny_variant("tiny-crop", cameras={"image_size": [96, 256]}),
     ["image_size [128, 256] → [96, 256]"]),
])
def test_tiny_weights_load_into_another_rig(preset, says) -> None:
    with pytest.warns(RigChangeWarning) as caught:
        model, weights = create_model(preset, TINY.checkpoint_path)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert all(s in message for s in says), message
    assert weights.report is not None and weights.report.ok
    file = read_checkpoint(TINY.checkpoint_path).state_dict
    state = model.state_dict()
    for key, value in _learned(file).items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    vt = model.encoders["camera"]["vtransform"]
    assert tuple(vt.frustum.shape[1:3]) == preset.feature_size  # rebuilt, not loaded
    assert tuple(int(v) for v in vt.nx[:2]) == tuple(preset.model.vtransform.bev_size[:2])


def test_same_rig_loads_without_a_warning() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RigChangeWarning)
        _, weights = create_model(TINY, TINY.checkpoint_path)
    assert weights.report is not None and not weights.report.rebuilt


def test_learned_shapes_that_differ_are_still_refused() -> None:
    narrow = tiny_variant("tiny-narrow")
    data = narrow.to_dict()
    data["model"]["vtransform"]["out_channels"] = 16
    from bevdeploy.presets import Preset

    other = Preset.from_dict(data, source="<narrow>").validate()
    with pytest.raises(CheckpointError, match="shape"):
        create_model(other, TINY.checkpoint_path)
