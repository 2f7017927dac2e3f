"""The ROS 2 message definitions (``ros2msg`` text, dependencies appended as ROS 2 bags store
them) of the messages bevdeploy writes: synthetic bags and hand-made test bags carry the same
schema text a ``ros2 bag record`` would, so the reader is exercised on what real bags hold."""

from __future__ import annotations

_SEPARATOR = "=" * 80

_DEFS: dict[str, str] = {
    "builtin_interfaces/Time": "int32 sec\nuint32 nanosec\n",
    "std_msgs/Header": "builtin_interfaces/Time stamp\nstring frame_id\n",
    "sensor_msgs/PointField": (
        "uint8 INT8    = 1\nuint8 UINT8   = 2\nuint8 INT16   = 3\nuint8 UINT16  = 4\n"
        "uint8 INT32   = 5\nuint8 UINT32  = 6\nuint8 FLOAT32 = 7\nuint8 FLOAT64 = 8\n"
        "string name\nuint32 offset\nuint8  datatype\nuint32 count\n"),
    "sensor_msgs/PointCloud2": (
        "std_msgs/Header header\nuint32 height\nuint32 width\nPointField[] fields\n"
        "bool    is_bigendian\nuint32  point_step\nuint32  row_step\nuint8[] data\n"
        "bool is_dense\n"),
    "sensor_msgs/CompressedImage": "std_msgs/Header header\nstring format\nuint8[] data\n",
    "sensor_msgs/Image": (
        "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\n"
        "uint8 is_bigendian\nuint32 step\nuint8[] data\n"),
    "sensor_msgs/RegionOfInterest": (
        "uint32 x_offset\nuint32 y_offset\nuint32 height\nuint32 width\nbool do_rectify\n"),
    "sensor_msgs/CameraInfo": (
        "std_msgs/Header header\nuint32 height\nuint32 width\nstring distortion_model\n"
        "float64[] d\nfloat64[9]  k\nfloat64[9]  r\nfloat64[12] p\nuint32 binning_x\n"
        "uint32 binning_y\nRegionOfInterest roi\n"),
    "geometry_msgs/Vector3": "float64 x\nfloat64 y\nfloat64 z\n",
    "geometry_msgs/Quaternion": "float64 x 0\nfloat64 y 0\nfloat64 z 0\nfloat64 w 1\n",
    "geometry_msgs/Transform": "Vector3 translation\nQuaternion rotation\n",
    "geometry_msgs/TransformStamped": (
        "std_msgs/Header header\nstring child_frame_id\nTransform transform\n"),
    "tf2_msgs/TFMessage": "geometry_msgs/TransformStamped[] transforms\n",
}

_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "std_msgs/Header": ("builtin_interfaces/Time",),
    "sensor_msgs/PointCloud2": ("std_msgs/Header", "sensor_msgs/PointField"),
    "sensor_msgs/CompressedImage": ("std_msgs/Header",),
    "sensor_msgs/Image": ("std_msgs/Header",),
    "sensor_msgs/CameraInfo": ("std_msgs/Header", "sensor_msgs/RegionOfInterest"),
    "geometry_msgs/Transform": ("geometry_msgs/Vector3", "geometry_msgs/Quaternion"),
    "geometry_msgs/TransformStamped": ("std_msgs/Header", "geometry_msgs/Transform"),
    "tf2_msgs/TFMessage": ("geometry_msgs/TransformStamped",),
}

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"


def _closure(name: str) -> list[str]:
    """``name``'s dependencies, depth first, each once."""
    out: list[str] = []
    for dep in _DEPENDENCIES.get(name, ()):
        for d in (*_closure(dep), dep):
            if d not in out:
                out.append(d)
    return out


def msgdef(schema_name: str) -> str:
    """The full definition of ``schema_name`` (``pkg/msg/Type``) as a bag's schema record."""
    short = schema_name.replace("/msg/", "/")
    text = _DEFS[short]
    for dep in _closure(short):
        text += f"{_SEPARATOR}\nMSG: {dep}\n{_DEFS[dep]}"
    return text


def stamp(ns: int) -> dict[str, int]:
    """A ``builtin_interfaces/Time`` of a nanosecond timestamp."""
    return {"sec": ns // 1_000_000_000, "nanosec": ns % 1_000_000_000}


def header(ns: int, frame_id: str) -> dict[str, object]:
    return {"stamp": stamp(ns), "frame_id": frame_id}
