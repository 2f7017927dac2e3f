"""Property-based tests (hypothesis) for the loaders of what a user hands over as a document:
the package manifest (``package.load_package``) and the rig / calibration YAML
(``data.calib_yaml.read_calibration``, ``data.rig_files.check_rig``).

Two properties each: a valid generated document loads exactly (the values written are the values
read), and a mutated one — any value replaced by any JSON/YAML value, a key dropped or added,
bytes flipped — loads or raises one of bevdeploy's own errors (``BevDeployError``), never
another exception. Examples are bounded (``max_examples`` ≤ 60, no deadline).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bevdeploy.data.calib_yaml import read_calibration, write_calibration
from bevdeploy.data.frame import Calibration
from bevdeploy.data.rig_files import check_rig
from bevdeploy.errors import BevDeployError
from bevdeploy.package import MANIFEST_NAME, Manifest, load_package
from bevdeploy.presets import get_preset

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
TINY = get_preset("tiny")

# Any JSON document (and so any YAML one): scalars of every kind, nested lists and mappings.
_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=20)
_strict_json = st.recursive(  # what strict JSON holds: no NaN, no Infinity
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False,
                                                                 allow_infinity=False),
              st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path inside ``doc`` (mappings and lists), the root's children first."""
    out: list[tuple] = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) \
        if isinstance(doc, list) else ()
    for key, value in items:
        out.append((*prefix, key))
        out += _paths(value, (*prefix, key))
    return out


@st.composite
def _mutated(draw: st.DrawFn, base: Any) -> Any:
    """``base`` with one to three edits: a value replaced by any JSON value, a key or item
    removed, or an unknown key added."""
    doc = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            return draw(_json)
        *parent_path, key = draw(st.sampled_from(paths))
        parent = doc
        for step in parent_path:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            parent[key] = draw(_json)
        elif action == "remove":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(_json)
        else:
            parent.insert(key, draw(_json))
    return doc


def _loads_or_refuses(load: Any, *args: Any) -> Any:
    try:
        return load(*args)
    except BevDeployError as exc:  # the project's own, naming the file
        assert str(exc)
        return None


# ---------------------------------------------------------------------------------- manifests


@pytest.fixture(scope="module")
def package(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the tiny package whose manifest each example rewrites."""
    return Path(shutil.copytree(tiny_package, tmp_path_factory.mktemp("manifests") / "pkg"))


@pytest.fixture(scope="module")
def manifest(tiny_package: Path) -> Manifest:
    return load_package(tiny_package).manifest


_versions = st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=10), max_size=4)
_checkpoints = st.one_of(st.none(), st.fixed_dictionaries({
    "file": st.text(max_size=20), "sha256": st.text("0123456789abcdef", min_size=64,
                                                    max_size=64)}))


@SETTINGS
@given(created=st.text(max_size=30), versions=_versions, checkpoint=_checkpoints,
       optimization=st.one_of(st.none(), st.dictionaries(st.text(max_size=8), _strict_json,
                                                         max_size=3)),
       threshold=st.floats(0, 1), indent=st.sampled_from([None, 0, 1, 4]),
       reverse=st.booleans())
def test_generated_manifests_load_exactly(package: Path, manifest: Manifest, created: str,
                                          versions: dict, checkpoint: dict | None,
                                          optimization: dict | None, threshold: float,
                                          indent: int | None, reverse: bool) -> None:
    """The free fields anything, the preset's score threshold anywhere in [0, 1] (with the
    derived decode block that follows from it), any layout and key order: loaded as written."""
    head = dataclasses.replace(manifest.preset.model.head, score_threshold=threshold)
    preset = dataclasses.replace(manifest.preset,
                                 model=dataclasses.replace(manifest.preset.model, head=head))
    expected = dataclasses.replace(manifest, preset=preset, created_utc=created,
                                   versions=versions, checkpoint=checkpoint,
                                   optimization=optimization)
    doc = expected.to_dict()
    if reverse:
        doc = dict(reversed(list(doc.items())))
    (package / MANIFEST_NAME).write_text(json.dumps(doc, indent=indent))

    loaded = load_package(package).manifest

    assert loaded.to_dict() == expected.to_dict()
    assert loaded.preset == preset and loaded.preset.model.head.score_threshold == threshold


@SETTINGS
@given(data=st.data())
def test_mutated_manifests_load_or_raise_a_bevdeploy_error(package: Path, manifest: Manifest,
                                                           data: st.DataObject) -> None:
    doc = data.draw(_mutated(manifest.to_dict()))
    (package / MANIFEST_NAME).write_text(json.dumps(doc))  # NaN/Infinity tokens included
    _loads_or_refuses(load_package, package)


@SETTINGS
@given(data=st.data())
def test_manifest_bytes_flipped_load_or_raise_a_bevdeploy_error(
        package: Path, manifest: Manifest, data: st.DataObject) -> None:
    text = bytearray(manifest.to_json().encode())
    for _ in range(data.draw(st.integers(1, 4))):
        text[data.draw(st.integers(0, len(text) - 1))] = data.draw(st.integers(0, 255))
    (package / MANIFEST_NAME).write_bytes(bytes(text))
    _loads_or_refuses(load_package, package)


# ---------------------------------------------------------------------------------- rig files


def _rotation(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


@st.composite
def _rigid(draw: st.DrawFn, reach: float) -> np.ndarray:
    q = draw(hnp.arrays(np.float64, 4, elements=st.floats(-1, 1)).filter(
        lambda v: np.linalg.norm(v) > 0.1))
    m = np.eye(4)
    m[:3, :3] = _rotation(q)
    m[:3, 3] = draw(hnp.arrays(np.float64, 3, elements=st.floats(-reach, reach)))
    return m


@st.composite
def _calibrations(draw: st.DrawFn, names: tuple[str, ...]) -> Calibration:
    """A valid calibration of ``names``: pinhole intrinsics, rigid transforms."""
    ks = []
    for _ in names:
        fx, fy = draw(st.floats(50, 5000)), draw(st.floats(50, 5000))
        cx, cy = draw(st.floats(0, 4000)), draw(st.floats(0, 4000))
        ks.append(np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]))
    return Calibration(camera_names=names, intrinsics=np.stack(ks),
                       camera2lidar=np.stack([draw(_rigid(5.0)) for _ in names]),
                       lidar2ego=draw(_rigid(3.0)), ego2global=draw(_rigid(1e4)))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rigs")


@SETTINGS
@given(calib=_calibrations(TINY.cameras.names), extra=st.booleans(), reverse=st.booleans())
def test_generated_rig_files_load_exactly(scratch: Path, calib: Calibration, extra: bool,
                                          reverse: bool) -> None:
    """Written by ``write_calibration`` or by hand (cameras in any order, cameras the preset
    does not use): read back value for value, and ``check_rig`` summarises those values."""
    path = scratch / "rig.yaml"
    write_calibration(path, calib)
    if extra or reverse:
        doc = yaml.safe_load(path.read_text())
        cameras = list(doc["cameras"].items())
        if extra:
            cameras.append(("CAM_ROOF", cameras[0][1]))
        doc["cameras"] = dict(reversed(cameras) if reverse else cameras)
        path.write_text(yaml.safe_dump(doc))

    read = read_calibration(path, TINY.cameras.names)

    assert read.camera_names == calib.camera_names
    for field in ("intrinsics", "camera2lidar", "lidar2ego", "ego2global"):
        np.testing.assert_array_equal(getattr(read, field), getattr(calib, field))
    summaries = check_rig(path, TINY)
    assert [s.name for s in summaries] == list(TINY.cameras.names)
    assert [s.focal for s in summaries] == [(k[0, 0], k[1, 1]) for k in calib.intrinsics]
    assert [s.position for s in summaries] == [tuple(m[:3, 3]) for m in calib.camera2lidar]


@pytest.fixture(scope="module")
def rig_doc(frame_files: Path) -> dict:
    return yaml.safe_load((frame_files / "rig.yaml").read_text())


@SETTINGS
@given(data=st.data())
def test_mutated_rig_files_load_or_raise_a_bevdeploy_error(scratch: Path, rig_doc: dict,
                                                           data: st.DataObject) -> None:
    doc = data.draw(_mutated(rig_doc))
    path = scratch / "mutated.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    _loads_or_refuses(read_calibration, path, TINY.cameras.names)
    _loads_or_refuses(check_rig, path, TINY)


@SETTINGS
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_arbitrary_rig_text_loads_or_raises_a_bevdeploy_error(scratch: Path,
                                                              text: str | bytes) -> None:
    """YAML syntax errors, tags, anchors, undecodable bytes: an error of bevdeploy's own."""
    path = scratch / "text.yaml"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(text)
    _loads_or_refuses(read_calibration, path, TINY.cameras.names)
