"""PointCloud2 layouts, camera messages and the TF tree of ROS 2 bags (data/bags)."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from mcap_ros2.writer import Writer
from PIL import Image

from bevdeploy.data.bags import msgdefs
from bevdeploy.data.bags.images import decode_compressed, decode_raw, intrinsics
from bevdeploy.data.bags.pointcloud2 import decode_pointcloud2, encode_pointcloud2
from bevdeploy.data.bags.reader import Bag, BagMessage
from bevdeploy.data.bags.tf import TfTree
from bevdeploy.errors import InputError

STAMP = 1_700_000_000_123_456_789


def _cloud(n: int = 257) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {"x": rng.uniform(-50, 50, n).astype(np.float32),
            "y": rng.uniform(-50, 50, n).astype(np.float32),
            "z": rng.uniform(-3, 3, n).astype(np.float32),
            "intensity": rng.uniform(0, 255, n).astype(np.float32).round()}


def test_unusual_pointcloud2_layouts_in_a_bag_give_the_plain_layouts_points(tmp_path: Path
                                                                             ) -> None:
    """A bag written by hand with the layouts drivers publish: padding after each field,
    float64 coordinates, big-endian data, row padding over 4 rows, integer intensity, a ring
    and a per-point time field. Read back through the bag reader, every one decodes to the
    points of the plain float32 little-endian layout."""
    cols = _cloud(256)
    plain = encode_pointcloud2(cols, stamp_ns=STAMP, frame_id="lidar")
    f64 = {k: v.astype(np.float64) for k, v in cols.items()}
    variants = {
        "plain": plain,
        "padded": encode_pointcloud2(cols, stamp_ns=STAMP, frame_id="lidar", padding=4),
        "float64": encode_pointcloud2(f64, stamp_ns=STAMP, frame_id="lidar"),
        "bigendian": encode_pointcloud2(cols, stamp_ns=STAMP, frame_id="lidar", bigendian=True),
        "be_f64_rows": encode_pointcloud2(f64, stamp_ns=STAMP, frame_id="lidar", bigendian=True,
                                          padding=2, row_padding=12, height=4),
        "uint16_intensity_ring_time": encode_pointcloud2(
            {**cols, "intensity": cols["intensity"].astype(np.uint16),
             "ring": np.arange(256, dtype=np.uint16) % 32,
             "time": np.linspace(-0.05, 0, 256).astype(np.float32)},
            stamp_ns=STAMP, frame_id="lidar", padding=1),
    }
    path = tmp_path / "layouts.mcap"
    with open(path, "wb") as f:
        writer = Writer(f)
        schema = writer.register_msgdef(msgdefs.POINTCLOUD2, msgdefs.msgdef(msgdefs.POINTCLOUD2))
        for i, msg in enumerate(variants.values()):
            writer.write_message(f"/{list(variants)[i]}", schema, msg, log_time=STAMP + i)
        writer.finish()
    with Bag(path) as bag:
        decoded = {m.topic[1:]: decode_pointcloud2(m.msg, topic=m.topic)
                   for m in bag.messages(list(bag.topics)) if isinstance(m, BagMessage)}
    assert set(decoded) == set(variants)
    reference = decoded["plain"].points
    assert reference.shape == (256, 5) and np.abs(reference[:, :3]).max() > 10
    for name, cloud in decoded.items():
        np.testing.assert_array_equal(cloud.points, reference, err_msg=name)
    time_s = decoded["uint16_intensity_ring_time"].time_s
    assert time_s is not None
    np.testing.assert_allclose(time_s, np.linspace(-0.05, 0, 256), atol=1e-7)
    assert decoded["plain"].time_s is None


def _msg(d: dict) -> SimpleNamespace:
    return SimpleNamespace(**{k: _msg(v) if isinstance(v, dict) else
                              [_msg(x) if isinstance(x, dict) else x for x in v]
                              if isinstance(v, list) else v for k, v in d.items()})


def test_bad_pointcloud2_layouts_are_named() -> None:
    cols = _cloud(8)
    no_z = _msg(encode_pointcloud2({k: cols[k] for k in ("x", "y", "intensity")}, stamp_ns=1,
                                   frame_id="l"))
    with pytest.raises(InputError, match=r"/pts.*\[fields\].*no z field"):
        decode_pointcloud2(no_z, topic="/pts")
    odd = _msg(encode_pointcloud2(cols, stamp_ns=1, frame_id="l"))
    odd.fields[0].datatype = 42
    with pytest.raises(InputError, match=r"unknown datatype 42"):
        decode_pointcloud2(odd, topic="/pts")
    short = _msg(encode_pointcloud2(cols, stamp_ns=1, frame_id="l"))
    short.data = short.data[:-5]
    with pytest.raises(InputError, match=r"\[data\]"):
        decode_pointcloud2(short, topic="/pts")


def test_raw_and_compressed_images_decode_to_the_same_rgb() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    step = 10 * 3 + 2  # row padding
    def raw(pixels: np.ndarray, enc: str) -> SimpleNamespace:
        c = pixels.shape[2] if pixels.ndim == 3 else 1
        rows = np.zeros((6, step), np.uint8)
        rows[:, :10 * c] = pixels.reshape(6, -1)
        return SimpleNamespace(encoding=enc, height=6, width=10, step=step, data=rows.tobytes())
    np.testing.assert_array_equal(decode_raw(raw(rgb, "rgb8"), topic="/c"), rgb)
    np.testing.assert_array_equal(decode_raw(raw(rgb[..., ::-1].copy(), "bgr8"), topic="/c"), rgb)
    mono = decode_raw(raw(rgb[..., :1].copy(), "mono8"), topic="/c")
    np.testing.assert_array_equal(mono, np.repeat(rgb[..., :1], 3, axis=2))
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    np.testing.assert_array_equal(
        decode_compressed(SimpleNamespace(format="png", data=png.getvalue()), topic="/c"), rgb)
    with pytest.raises(InputError, match=r"/c \(sensor_msgs/Image\) \[encoding\].*bayer_rggb8"):
        decode_raw(SimpleNamespace(encoding="bayer_rggb8", height=1, width=1, step=1,
                                   data=b"\0"), topic="/c")
    with pytest.raises(InputError, match=r"\[format\].*'h264'"):
        decode_compressed(SimpleNamespace(format="h264", data=b""), topic="/c")



def _jpeg(pixels: np.ndarray, mode: str = "RGB", **save: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, format="JPEG", **save)
    return out.getvalue()


def test_jpegs_decode_to_pils_pixels_and_a_wrong_size_is_refused_from_the_header() -> None:
    """libjpeg-turbo through simplejpeg gives PIL's pixels (the dataset path's) for every
    chroma subsampling, progressive and greyscale JPEGs; CMYK and truncated files take PIL's
    path (decoded, or refused as PIL refuses them); an image of the wrong size is refused
    from its header, before its (here truncated) data is decoded."""
    import simplejpeg

    from bevdeploy.data.bags.images import decode_into

    y, x = np.mgrid[0:90, 0:160]
    noise = np.random.default_rng(3).integers(0, 40, (90, 160, 3))
    pixels = np.stack([x * 1.5, y * 2.5, (x + y) % 256], axis=2) + noise
    pixels = pixels.clip(0, 255).astype(np.uint8)
    variants = {f"subsampling {s}": _jpeg(pixels, quality=90, subsampling=s) for s in (0, 1, 2)}
    variants |= {"progressive": _jpeg(pixels, progressive=True, quality=75),
                 "grey": _jpeg(pixels, "L"), "cmyk": _jpeg(pixels, "CMYK"),
                 "rgb": _jpeg(pixels, keep_rgb=True)}
    for name, data in variants.items():
        pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        out = np.zeros((90, 160, 3), np.uint8)
        decode_into(SimpleNamespace(format="jpeg", data=data), compressed=True, out=out,
                    topic="/c", field="CAM")
        np.testing.assert_array_equal(out, pil, err_msg=name)
        if name != "cmyk":  # the fast path took it, and agrees with PIL
            np.testing.assert_array_equal(simplejpeg.decode_jpeg(data, colorspace="RGB"), pil)
    cut = variants["subsampling 2"][:len(variants["subsampling 2"]) // 2]
    with pytest.raises(InputError, match=r"/c \(sensor_msgs/CompressedImage\) \[data\]: not a "
                                         r"readable jpeg image \(.*[Tt]runcated"):
        decode_compressed(SimpleNamespace(format="jpeg", data=cut), topic="/c")
    with pytest.raises(InputError, match=r"\[CAM\]: image is 90×160 \(H×W\) but the preset "
                                         r"expects 900×1600"):
        decode_into(SimpleNamespace(format="jpeg", data=cut), compressed=True, topic="/c",
                    out=np.zeros((900, 1600, 3), np.uint8), field="CAM")
    raw = SimpleNamespace(encoding="rgb8", height=90, width=160, step=480,
                          data=pixels.tobytes())
    with pytest.raises(InputError, match=r"sensor_msgs/Image\) \[CAM\]: image is 90×160"):
        decode_into(raw, compressed=False, out=np.zeros((9, 16, 3), np.uint8), topic="/c",
                    field="CAM")

def test_camera_info_gives_k_and_refuses_distortion() -> None:
    k = [1000.0, 0, 800, 0, 1000.0, 450, 0, 0, 1]
    ok = SimpleNamespace(d=[0.0] * 5, k=k, distortion_model="plumb_bob")
    np.testing.assert_array_equal(intrinsics(ok, topic="/i"), np.reshape(k, (3, 3)))
    bad = SimpleNamespace(d=[-0.3, 0.1, 0, 0, 0], k=k, distortion_model="plumb_bob")
    with pytest.raises(InputError, match=r"\[d\].*plumb_bob.*rectified"):
        intrinsics(bad, topic="/i")


def _tf(parent: str, child: str, ns: int, xyz: tuple, yaw: float = 0.0) -> SimpleNamespace:
    return _msg({"header": msgdefs.header(ns, parent), "child_frame_id": child,
                 "transform": {"translation": dict(zip("xyz", xyz)), "rotation": {
                     "x": 0.0, "y": 0.0, "z": np.sin(yaw / 2), "w": np.cos(yaw / 2)}}})


def test_tf_tree_chains_interpolates_and_refuses() -> None:
    tree = TfTree()
    tree.add(SimpleNamespace(transforms=[_tf("base_link", "lidar", 0, (1.0, 0, 2.0), np.pi / 2),
                                         _tf("base_link", "cam", 0, (2.0, 0, 1.5))]),
             static=True, topic="/tf_static")
    tree.add(SimpleNamespace(transforms=[_tf("map", "base_link", 0, (0.0, 0, 0))]), static=False,
             topic="/tf")
    tree.add(SimpleNamespace(transforms=[_tf("map", "base_link", 100, (10.0, 0, 0))]),
             static=False, topic="/tf")
    mid = tree.lookup("map", "base_link", 25)
    np.testing.assert_allclose(mid[:3, 3], [2.5, 0, 0])
    cam_in_lidar = tree.lookup("lidar", "cam", 50)  # lidar rotated 90°: x_lidar = y_base
    np.testing.assert_allclose(cam_in_lidar[:3, 3], [0.0, -1.0, -0.5], atol=1e-12)
    with pytest.raises(InputError, match=r"would extrapolate"):
        tree.lookup("map", "base_link", 101)
    with pytest.raises(InputError, match=r"does not connect 'radar' to 'map'"):
        tree.add(SimpleNamespace(transforms=[_tf("radar_mount", "radar", 0, (0, 0, 0))]),
                 static=True, topic="/tf_static") or tree.lookup("map", "radar", 50)
    with pytest.raises(InputError, match=r"\[header.stamp\].*back in time"):
        tree.add(SimpleNamespace(transforms=[_tf("map", "base_link", 50, (0, 0, 0))]),
                 static=False, topic="/tf")
