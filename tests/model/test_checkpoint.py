"""Checkpoint loading and saving: round trips through every supported layout give identical
outputs, unsafe pickles are refused without running, and every problem is reported by key."""

from __future__ import annotations

import os
import pickle
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bevdeploy.errors import CheckpointError, UnsafeFileError
from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.model.checkpoint import (
    FORMAT_MMDET3D, FORMAT_MIT, SPCONV1_LAYOUT, load_checkpoint, mmdet3d_to_mit,
    read_checkpoint, save_checkpoint, sparse_weight_keys, to_spconv2_layout)
from bevdeploy.model.inputs import collate
from bevdeploy.model.macs import probe_frame
from bevdeploy.presets import get_preset

torch.set_num_threads(2)


def _build(seed: int) -> BEVFusion:
    """A tiny model whose every learned tensor and statistic depends on ``seed``.

    Constant-initialised entries (norm affines, attention biases, BN statistics) are filled
    with random values too, so that a key that failed to load cannot go unnoticed.
    """
    torch.manual_seed(seed)
    model = BEVFusion(get_preset("tiny")).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if ".vtransform." in name and name.rsplit(".", 1)[1] in ("frustum", "dx", "bx", "nx"):
                continue  # geometry constants come from the preset
            if name.endswith("num_batches_tracked"):
                value.fill_(seed)
            elif value.is_floating_point() and bool((value == value.flatten()[0]).all()):
                value.uniform_(0.5, 1.5, generator=gen)
    return model


DERIVED = 4  # frustum, dx, bx, nx: rebuilt from the preset, never loaded


def _outputs(model: BEVFusion, batch) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return model(batch)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def batch():
    preset = get_preset("tiny")
    return collate([probe_frame(preset, seed=3)], preset)


@pytest.fixture(scope="module")
def source(batch):
    model = _build(seed=1)
    return model, _outputs(model, batch)


@pytest.fixture()
def target(source):
    """A fresh model whose weights all differ from the source's, so a no-op load would fail."""
    model = _build(seed=2)
    theirs = source[0].state_dict()
    differing = [not torch.equal(v, theirs[k]) for k, v in model.state_dict().items()
                 if ".vtransform." not in k or k.endswith(("weight", "bias", "running_mean",
                                                           "running_var"))]
    assert all(differing)
    return model


def test_round_trip_identical_outputs(tmp_path, batch, source, target):
    model, expected = source
    path = save_checkpoint(model, tmp_path / "ckpt.pth", meta={"note": "round trip"})
    report = load_checkpoint(target, path)
    assert report.ok and report.source_format == FORMAT_MIT
    assert report.loaded == len(model.state_dict()) - DERIVED and not report.converted
    _assert_same(_outputs(target, batch), expected)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # no temp file left behind
    meta = read_checkpoint(path).meta
    assert meta["note"] == "round trip" and meta["preset"] == "tiny"
    assert meta["sparse_weight_layout"] == "spconv2"


def test_spconv1_layout_is_converted(tmp_path, batch, source, target):
    """The mit checkpoints store sparse weights as (kx, ky, kz, I, O)
    (docs/reference.md#sparse-conv-weight-layouts)."""
    model, expected = source
    sparse = sparse_weight_keys(model)
    assert len(sparse) == 21  # conv_input + 4×2 blocks×2 convs + 3 strided + conv_out
    state = {k: (v.permute(1, 2, 3, 4, 0).contiguous() if k in sparse else v)
             for k, v in model.state_dict().items()}
    torch.save({"meta": {"mmcv_version": "1.4.0"}, "state_dict": state, "optimizer": {}},
               tmp_path / "mit.pth")
    report = load_checkpoint(target, tmp_path / "mit.pth")
    assert report.ok and sorted(report.converted) == sorted(sparse)
    _assert_same(_outputs(target, batch), expected)


# mmdetection3d 1.x names, written out independently from projects/BEVFusion (bevfusion.py,
# transformer.py) and mmcv's MultiheadAttention / FFN / DetrTransformerDecoderLayer.
_TO_MMDET3D_PREFIX = {
    "encoders.camera.backbone.": "img_backbone.",
    "encoders.camera.neck.": "img_neck.",
    "encoders.camera.vtransform.": "view_transform.",
    "encoders.lidar.backbone.": "pts_middle_encoder.",
    "fuser.": "fusion_layer.",
    "decoder.backbone.": "pts_backbone.",
    "decoder.neck.": "pts_neck.",
    "heads.object.": "bbox_head.",
}
_TO_MMDET3D_LAYER = {
    "self_attn.in_proj_weight": "self_attn.attn.in_proj_weight",
    "self_attn.in_proj_bias": "self_attn.attn.in_proj_bias",
    "self_attn.out_proj.weight": "self_attn.attn.out_proj.weight",
    "self_attn.out_proj.bias": "self_attn.attn.out_proj.bias",
    "multihead_attn.in_proj_weight": "cross_attn.attn.in_proj_weight",
    "multihead_attn.in_proj_bias": "cross_attn.attn.in_proj_bias",
    "multihead_attn.out_proj.weight": "cross_attn.attn.out_proj.weight",
    "multihead_attn.out_proj.bias": "cross_attn.attn.out_proj.bias",
    "linear1.weight": "ffn.layers.0.0.weight", "linear1.bias": "ffn.layers.0.0.bias",
    "linear2.weight": "ffn.layers.1.weight", "linear2.bias": "ffn.layers.1.bias",
    "norm1.weight": "norms.0.weight", "norm1.bias": "norms.0.bias",
    "norm2.weight": "norms.1.weight", "norm2.bias": "norms.1.bias",
    "norm3.weight": "norms.2.weight", "norm3.bias": "norms.2.bias",
}


def _to_mmdet3d(key: str) -> str:
    for mit, mm in _TO_MMDET3D_PREFIX.items():
        if key.startswith(mit):
            key = mm + key[len(mit):]
    layer = "bbox_head.decoder.0."
    if key.startswith(layer) and key[len(layer):] in _TO_MMDET3D_LAYER:
        key = layer + _TO_MMDET3D_LAYER[key[len(layer):]]
    return key


def test_mmdet3d_names_load_to_identical_outputs(tmp_path, batch, source, target):
    model, expected = source
    state = {_to_mmdet3d(k): v for k, v in model.state_dict().items()}
    assert any(k.startswith("bbox_head.decoder.0.ffn.layers.0.0") for k in state)
    torch.save({"meta": {"dataset_meta": {"classes": list(model.preset.classes)}},
                "state_dict": state}, tmp_path / "mm3d.pth")
    report = load_checkpoint(target, tmp_path / "mm3d.pth")
    assert report.ok and report.source_format == FORMAT_MMDET3D
    assert report.renamed == len(state)
    assert any("mmdet3d>=1.0 boxes" in note for note in report.notes)
    _assert_same(_outputs(target, batch), expected)


@pytest.mark.parametrize("mm3d, mit", [
    ("bbox_head.decoder.0.cross_attn.attn.out_proj.weight",
     "heads.object.decoder.0.multihead_attn.out_proj.weight"),
    ("bbox_head.decoder.2.norms.2.bias", "heads.object.decoder.2.norm3.bias"),
    ("bbox_head.decoder.0.self_posembed.position_embedding_head.1.running_var",
     "heads.object.decoder.0.self_posembed.position_embedding_head.1.running_var"),
    ("vtransform.frustum", "encoders.camera.vtransform.frustum"),
    ("bbox_head.decoder.0.ffn.layers.2.weight", None),  # a third FC has no mit counterpart
    ("bbox_head.decoder.0.cross_attn.attn.bias_k", None),
    ("pts_voxel_encoder.vfe_layers.0.linear.weight", None),  # a learned VFE: not in mit
])
def test_mmdet3d_key_mapping(mm3d, mit):
    assert mmdet3d_to_mit(mm3d) == mit


def test_unmappable_mmdet3d_key_is_flagged(tmp_path, source, target):
    model, _ = source
    state = {_to_mmdet3d(k): v for k, v in model.state_dict().items()}
    state["pts_voxel_encoder.vfe_layers.0.linear.weight"] = torch.ones(4, 5)
    torch.save({"state_dict": state}, tmp_path / "mm3d.pth")
    with pytest.raises(CheckpointError, match="pts_voxel_encoder.vfe_layers.0.linear.weight"):
        load_checkpoint(target, tmp_path / "mm3d.pth")
    report = load_checkpoint(target, tmp_path / "mm3d.pth", strict=False)
    assert report.unexpected == ["pts_voxel_encoder.vfe_layers.0.linear.weight"]
    assert report.loaded == len(model.state_dict()) - DERIVED and not report.ok


def _evil_pickle_payload(marker: Path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    return Evil()


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_with_code_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"w": torch.ones(1)}, "meta": _evil_pickle_payload(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as handle:
            pickle.dump(payload, handle)
    with pytest.raises(UnsafeFileError) as info:
        load_checkpoint(torch.nn.Linear(1, 1), path)
    assert not marker.exists()
    assert info.value.path == str(path) and info.value.field == "pickle"
    if writer == "torch.save":
        assert "system" in str(info.value)  # names the offending global


def test_pickled_model_is_refused_with_a_hint(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "ptq.pth")
    with pytest.raises(UnsafeFileError, match="pickled model"):
        read_checkpoint(tmp_path / "ptq.pth")


def test_mmengine_training_logs_are_skipped_without_running_them(tmp_path, monkeypatch,
                                                                   source, target):
    """mmengine checkpoints carry HistoryBuffer objects and numpy values in ``message_hub``;
    they must not stop the load, and none of their code may run."""
    model, _ = source
    marker = tmp_path / "setstate-ran"

    class HistoryBuffer:
        def __init__(self):
            self._log_history = np.arange(3.0)

        def __setstate__(self, state):
            marker.touch()

    # Pose as mmengine's class just long enough for pickle to write it under that name.
    names = ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer")
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = names[-1], "HistoryBuffer"
    sys.modules[names[-1]].HistoryBuffer = HistoryBuffer
    torch.save({"meta": {"hook_msgs": {"best": np.float64(0.5)}},
                "message_hub": {"log_scalars": {"loss": HistoryBuffer()}},
                "state_dict": model.state_dict()}, tmp_path / "mmengine.pth")
    for name in names:
        monkeypatch.delitem(sys.modules, name)
    report = load_checkpoint(target, tmp_path / "mmengine.pth")
    assert report.ok and not marker.exists()


def test_shape_mismatch_strict_and_lenient(tmp_path, source):
    model, _ = source
    save_checkpoint(model, tmp_path / "tiny.pth")
    preset = get_preset("tiny")
    narrow = replace(preset, model=replace(preset.model,
                                           head=replace(preset.model.head, head_conv=16)))
    other = BEVFusion(narrow)
    mine, theirs = other.state_dict(), model.state_dict()
    differing = sorted(k for k in mine if mine[k].shape != theirs[k].shape)
    assert differing  # the preset edit changes the prediction heads' shapes
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(other, tmp_path / "tiny.pth")
    text = str(info.value)
    assert "heads.object.prediction_heads.0.center.0.conv.weight" in text
    assert "(32, 64, 1)" in text and "(16, 64, 1)" in text
    report = load_checkpoint(other, tmp_path / "tiny.pth", strict=False)
    assert sorted(k for k, _, _ in report.shape_mismatch) == differing
    assert any("['tiny']" in note for note in report.notes)
    assert report.loaded == len(mine) - len(differing) - DERIVED
    torch.testing.assert_close(other.state_dict()["heads.object.shared_conv.weight"],
                               theirs["heads.object.shared_conv.weight"], rtol=0, atol=0)


def test_geometry_disagreement_keeps_preset_values(tmp_path, source, target):
    """Derived buffers are rebuilt from the preset, never loaded: a disagreeing frustum is
    reported (and warned about) but loads strictly, and the preset's values stay."""
    from bevdeploy.model.checkpoint import RigChangeWarning

    model, _ = source
    state = dict(model.state_dict())
    state["encoders.camera.vtransform.frustum"] = state["encoders.camera.vtransform.frustum"] + 1
    torch.save(state, tmp_path / "bare.pth")
    before = target.state_dict()["encoders.camera.vtransform.frustum"].clone()
    with pytest.warns(RigChangeWarning, match="frustum max"):
        report = load_checkpoint(target, tmp_path / "bare.pth")
    assert report.ok and report.rebuilt == [("encoders.camera.vtransform.frustum", "max |Δ| = 1")]
    assert torch.equal(target.state_dict()["encoders.camera.vtransform.frustum"], before)


def test_bare_state_dict_with_module_prefix(tmp_path, batch, source, target):
    model, expected = source
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pth")
    assert load_checkpoint(target, tmp_path / "ddp.pth").ok
    _assert_same(_outputs(target, batch), expected)


def test_missing_keys_are_reported(tmp_path, source, target):
    model, _ = source
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fuser.")}
    torch.save({"state_dict": state}, tmp_path / "partial.pth")
    report = load_checkpoint(target, tmp_path / "partial.pth", strict=False)
    assert report.missing == [k for k in model.state_dict() if k.startswith("fuser.")]
    assert "missing" in str(report) and "fuser.0.weight" in str(report)


@pytest.mark.parametrize("content, match", [
    (None, "file not found"),
    (b"definitely not a checkpoint", "not a readable torch checkpoint"),
])
def test_unreadable_files(tmp_path, content, match):
    path = tmp_path / "bad.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        read_checkpoint(path)
    assert info.value.path == str(path)


def test_non_tensor_state_is_refused(tmp_path):
    torch.save({"state_dict": {"a": torch.ones(1), "b": [1, 2]}}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="offending entries") as info:
        read_checkpoint(tmp_path / "odd.pth")
    assert info.value.field == "state_dict"


def test_save_refuses_meta_that_would_need_pickle(tmp_path, source):
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(source[0], tmp_path / "x.pth", meta={"array": np.zeros(2)})
    assert info.value.field == "meta" and not (tmp_path / "x.pth").exists()


def test_layout_rule():
    target = torch.Size((16, 3, 3, 3, 5))
    w1 = torch.randn(3, 3, 3, 5, 16)
    converted, flag = to_spconv2_layout(w1, target, None)
    assert flag is True and torch.equal(converted, w1.permute(4, 0, 1, 2, 3))
    w2 = torch.randn(16, 3, 3, 3, 5)
    assert to_spconv2_layout(w2, target, None) == (w2, False)
    cube = torch.randn(3, 3, 3, 3, 3)
    assert to_spconv2_layout(cube, cube.shape, None)[1] is None  # undecidable from the shape
    converted, flag = to_spconv2_layout(cube, cube.shape, SPCONV1_LAYOUT)
    assert flag is True and torch.equal(converted, cube.permute(4, 0, 1, 2, 3))
