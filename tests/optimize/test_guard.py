"""The NaN/Inf guard on real broken graphs: it names the module and the first node whose output
is non-finite, and a refused optimization leaves neither an output nor a staging directory."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bevdeploy.errors import PackageError
from bevdeploy.optimize import OptimizeOptions, optimize_package
from bevdeploy.optimize.calibrate import calibration_set
from bevdeploy.optimize.guard import check_finite, first_overflow
from bevdeploy.package import MANIFEST_NAME, load_package, sha256_file
from bevdeploy.presets import get_preset

TINY = get_preset("tiny")
pytestmark = pytest.mark.skipif(TINY.checkpoint_path is None
                                or not TINY.checkpoint_path.is_file(),
                                reason="no shipped tiny weights")


def _set_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
            return
    raise KeyError(name)


def test_a_huge_dequantize_scale_is_refused_naming_its_node(int8_result, tiny_package,
                                                            calib_source):
    pkg = load_package(int8_result.root)
    model = onnx.load(str(pkg.path("fuser")))
    feeds = calibration_set(load_package(tiny_package), calib_source.data, ["fuser"], frames=1,
                            split="mini_train").feeds["fuser"]
    check_finite(model, feeds, module="fuser", path=pkg.path("fuser"))  # intact: passes
    # The DequantizeLinear that produces the fused map gets a scale of its own near float32's
    # maximum (its QuantizeLinear keeps the calibrated one): every code above the zero point
    # then dequantizes to Inf.
    node = next(n for n in model.graph.node if "middle" in n.output)
    assert node.op_type == "DequantizeLinear"
    model.graph.initializer.append(numpy_helper.from_array(np.float32(3e38), "broken_scale"))
    node.input[1] = "broken_scale"
    culprit = first_overflow(model, feeds[0])
    assert culprit is not None and culprit.node == node.name
    assert 0 < culprit.nonfinite <= culprit.size
    with pytest.raises(PackageError) as err:
        check_finite(model, feeds, module="fuser", path=pkg.path("fuser"))
    assert err.value.field == "modules.fuser"
    assert node.name in str(err.value) and "'middle'" in str(err.value)


def test_a_refused_package_leaves_no_output_and_the_source_untouched(tiny_package,
                                                                    calib_source, tmp_path):
    # A source whose camera.vtransform overflows float32 (last conv's weights ±3e38): the
    # guard, run on every rewritten module, must refuse it and name that conv.
    source = tmp_path / "broken"
    shutil.copytree(tiny_package, source)
    path = source / "camera.vtransform.onnx"
    model = onnx.load(str(path))
    last = [n for n in model.graph.node if n.op_type == "Conv"][-1]
    weight = numpy_helper.to_array(next(t for t in model.graph.initializer
                                        if t.name == last.input[1]))
    _set_initializer(model, last.input[1], (np.sign(weight) * 3e38).astype(np.float32))
    onnx.save(model, str(path))
    manifest = json.loads((source / MANIFEST_NAME).read_text())
    entry = manifest["modules"]["camera.vtransform"]
    entry["sha256"], entry["size"] = sha256_file(path), path.stat().st_size
    (source / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    before = {p.name: sha256_file(p) for p in source.iterdir()}

    out = tmp_path / "optimized"
    with pytest.raises(PackageError) as err:
        optimize_package(source, out, OptimizeOptions(simplify=True, calib=calib_source))
    assert err.value.field == "modules.camera.vtransform"
    assert repr(last.name) in str(err.value)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]  # no staging directory left
    assert {p.name: sha256_file(p) for p in source.iterdir()} == before  # source untouched
