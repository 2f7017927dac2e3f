"""``bevdeploy doctor``'s backend rows: usable or not, and the first missing piece."""

from __future__ import annotations

from typer.testing import CliRunner

from bevdeploy.cli import app
from bevdeploy.doctor import Check, backend_checks


def test_each_backend_row_names_what_is_missing():
    triton = Check("triton", True, "Triton 3.5.0")
    rows = {c.name: c for c in backend_checks(Check("cuda", False, "CPU-only build"), triton,
                                              Check("tensorrt", False, "does not import"))}
    assert rows["backend onnxruntime"].ok
    assert not rows["backend torch-cuda"].ok
    assert rows["backend torch-cuda"].detail == "needs CUDA torch: CPU-only build"
    assert rows["backend tensorrt"].detail == "needs tensorrt: does not import"
    rows = {c.name: c for c in backend_checks(Check("cuda", False, "no driver"), triton,
                                              Check("tensorrt", True, "TensorRT 10.3.0"))}
    assert not rows["backend tensorrt"].ok and "no driver" in rows["backend tensorrt"].detail
    rows = {c.name: c for c in backend_checks(Check("cuda", True, "NVIDIA H100"),
                                              Check("triton", False, "does not import"),
                                              Check("tensorrt", True, "TensorRT 10.3.0"))}
    for name in ("backend torch-cuda", "backend tensorrt"):
        assert not rows[name].ok and "needs triton" in rows[name].detail
    rows = {c.name: c for c in backend_checks(Check("cuda", True, "NVIDIA H100"), triton,
                                              Check("tensorrt", True, "TensorRT 10.3.0"))}
    assert rows["backend torch-cuda"].ok and rows["backend tensorrt"].ok


def test_doctor_lists_the_backends():
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0
    for name in ("backend onnxruntime", "backend torch-cuda", "backend tensorrt", "triton"):
        assert name in result.output
