"""Property-based tests (hypothesis) for the boundaries that see raw bytes and raw arrays.

Readers: whatever bytes or arrays land in a ``.bin`` / ``.pcd.bin`` / ``.npy`` / ``.pcd`` /
image file, the reader returns a well-formed array or raises ``InputError`` — never another
exception; and the same tests generate valid files too, which must be read exactly (values
equal), so a reader that refused everything would fail them. Voxelizer: any float32 point array (NaN, Inf, values near float32's maximum, empty)
gives voxels inside the grid, within the caps, with finite features whose xyz lies in the voxel.

Examples are bounded (``max_examples`` ≤ 60, no deadline) so the file runs in seconds.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from bevdeploy.data.readers import MAX_ABS_COORD_M, read_image, read_points
from bevdeploy.errors import InputError
from bevdeploy.runtime import kernels

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
FEATURES = 5


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for every example's file (hypothesis re-runs the test body, not the
    fixture; each example overwrites its file)."""
    return tmp_path_factory.mktemp("properties")


def _assert_points(points: np.ndarray, features: int) -> None:
    """What every caller of ``read_points`` relies on."""
    assert isinstance(points, np.ndarray) and points.dtype == np.float32
    assert points.ndim == 2 and points.shape[1] == features and points.flags.c_contiguous
    assert np.isfinite(points).all()
    assert (np.abs(points[:, :3]) <= MAX_ABS_COORD_M).all()


def _read_or_refuse(path: Path, features: int, expected: np.ndarray | None = None,
                    **kwargs) -> None:
    """Points or an ``InputError`` naming the file and field; for a valid file (``expected``
    given) exactly ``expected``, so that a reader refusing everything cannot pass."""
    try:
        points = read_points(path, features, **kwargs)
    except InputError as exc:
        assert expected is None, f"a valid file was refused: {exc}"
        assert exc.path == str(path) and exc.field  # names the file and the field
        return
    _assert_points(points, features)
    if expected is not None:
        assert points.shape == expected.shape
        np.testing.assert_array_equal(points, expected)


# ------------------------------------------------------------------------------------ readers


# Values every format stores exactly: float32 numbers well inside MAX_ABS_COORD_M.
_exact = st.floats(-1000, 1000, width=32)


def _clean_cloud(columns: int) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float32, st.tuples(st.integers(0, 12), st.just(columns)),
                      elements=_exact)


def _with_time_lag(cloud: np.ndarray) -> np.ndarray:
    """What ``read_points(..., 5)`` makes of a 4-column cloud: a zero time lag appended."""
    return np.concatenate([cloud, np.zeros((len(cloud), 1), np.float32)], axis=1)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@st.composite
def _valid_point_files(draw: st.DrawFn) -> tuple[str, bytes, np.ndarray]:
    """(suffix, bytes, the points ``read_points(path, 5)`` must return) of a well-formed file
    of each format."""
    suffix = draw(st.sampled_from([".pcd.bin", ".bin", ".npy", ".pcd"]))
    if suffix == ".pcd.bin":
        cloud = draw(_clean_cloud(5))
        return suffix, cloud.astype("<f4").tobytes(), cloud
    if suffix == ".bin":  # KITTI: 4 columns
        cloud = draw(_clean_cloud(4))
        return suffix, cloud.astype("<f4").tobytes(), _with_time_lag(cloud)
    if suffix == ".npy":
        cloud = draw(_clean_cloud(5))
        return suffix, _npy_bytes(cloud), cloud
    data, expected = draw(_pcd_files(valid=st.just(True)))
    assert expected is not None
    return suffix, data, expected


_any_bytes = st.tuples(st.sampled_from([".pcd.bin", ".bin", ".npy", ".pcd"]),
                       st.binary(max_size=400), st.none())


@SETTINGS
@given(case=st.one_of(_any_bytes, st.deferred(_valid_point_files)))
def test_arbitrary_bytes_give_points_or_an_input_error(
        scratch: Path, case: tuple[str, bytes, np.ndarray | None]) -> None:
    """Any bytes under any suffix: points or an ``InputError``; a valid file of the suffix's
    format: exactly its points."""
    suffix, data, expected = case
    path = scratch / f"cloud{suffix}"
    path.write_bytes(data)
    _read_or_refuse(path, FEATURES, expected)


_finite_or_not = st.one_of(
    st.floats(-80, 80, width=32),
    st.floats(width=32),  # NaN, ±Inf, ±3.4e38 included
    st.sampled_from([0.0, 1e4, -1e4, 1e4 + 1, float("nan"), float("inf")]))


@SETTINGS
@given(cloud=hnp.arrays(np.float32, st.tuples(st.integers(0, 40), st.just(5)),
                        elements=_finite_or_not),
       policy=st.sampled_from(["drop", "error"]))
def test_raw_float32_records_give_clean_points_or_an_input_error(scratch: Path,
                                                                  cloud: np.ndarray,
                                                                  policy: str) -> None:
    path = scratch / "cloud.pcd.bin"
    cloud.tofile(path)
    _read_or_refuse(path, FEATURES, nonfinite=policy)
    if policy == "drop" and len(cloud):
        valid = np.isfinite(cloud).all(1) & (np.abs(cloud[:, :3]) <= MAX_ABS_COORD_M).all(1)
        if valid.any():  # some rows survive: exactly those, in file order
            np.testing.assert_array_equal(read_points(path, FEATURES), cloud[valid])


_dtypes = st.one_of(hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(),
                    hnp.floating_dtypes(), hnp.complex_number_dtypes(), hnp.boolean_dtypes(),
                    st.just(np.dtype([("x", "<f4"), ("y", "<f4")])))


# Real numeric dtypes, either byte order, as a valid point array may come.
_point_dtypes = st.sampled_from(["<f4", ">f4", "<f8", "<f2", "<i2", "<i4", "<i8", "<u2", "u1"])


@st.composite
def _valid_npy(draw: st.DrawFn) -> tuple[np.ndarray, int | None, np.ndarray]:
    """(array, columns, expected points): (P, 5) of any real dtype, or flat with columns=5;
    values that the dtype and float32 both hold exactly."""
    dtype = np.dtype(draw(_point_dtypes))
    low = 0 if dtype.kind == "u" else -100
    values = draw(hnp.arrays(np.int16, st.tuples(st.integers(0, 10), st.just(5)),
                             elements=st.integers(low, 100)))
    array = values.astype(dtype)
    if dtype.kind == "f":  # and fractions: eighths are exact in every float dtype
        array = (array / np.asarray(8, dtype)).astype(dtype)
    expected = array.astype(np.float32)
    if draw(st.booleans()):
        return array.reshape(-1), 5, expected
    return array, draw(st.sampled_from([None, 5])), expected


_any_npy = st.tuples(hnp.arrays(_dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                          max_side=6)),
                     st.sampled_from([None, 4, 5]), st.none())


@SETTINGS
@given(case=st.one_of(_any_npy, _valid_npy()))
def test_any_npy_array_gives_points_or_an_input_error(
        scratch: Path, case: tuple[np.ndarray, int | None, np.ndarray | None]) -> None:
    """Any array of any dtype and shape: points or an ``InputError``; a valid point array:
    exactly its values as float32."""
    array, columns, expected = case
    path = scratch / "cloud.npy"
    np.save(path, array, allow_pickle=False)
    _read_or_refuse(path, FEATURES, expected, columns=columns)


_PCD_TYPES = {("F", 4): "<f4", ("F", 8): "<f8", ("I", 2): "<i2", ("U", 1): "u1"}


_PCD_FORMATS = {"F": "{!r}", "I": "{:d}", "U": "{:d}"}


@st.composite
def _pcd_files(draw: st.DrawFn, valid: st.SearchStrategy[bool] = st.booleans()
               ) -> tuple[bytes, np.ndarray | None]:
    """(bytes, expected points): a PCD header that may be well-formed or subtly wrong (fields
    missing, sizes, counts, point counts that the payload does not fill), ascii or binary, with
    a random payload (expected None); or, when ``valid``, a well-formed file with x, y, z,
    intensity (and maybe a time lag and a ring) in any order and type, values each type holds
    exactly, with the points ``read_points(path, 5)`` must return."""
    ok = draw(valid)
    if ok:
        extra = draw(st.lists(st.sampled_from(["time_lag", "ring"]), max_size=2, unique=True))
        fields = draw(st.permutations(["x", "y", "z", "intensity", *extra]))
    else:
        fields = draw(st.lists(st.sampled_from(["x", "y", "z", "intensity", "time_lag",
                                                "ring"]), min_size=1, max_size=6, unique=True))
    types = [draw(st.sampled_from(sorted(_PCD_TYPES))) for _ in fields]
    points = draw(st.integers(0, 12))
    declared = points if ok else draw(st.one_of(st.just(points), st.integers(0, 20)))
    binary = draw(st.booleans())
    header = "\n".join([
        "# .PCD v0.7", "VERSION 0.7", "FIELDS " + " ".join(fields),
        "SIZE " + " ".join(str(size) for _, size in types),
        "TYPE " + " ".join(kind for kind, _ in types),
        "COUNT " + " ".join("1" for _ in fields),
        f"WIDTH {declared}", "HEIGHT 1", "VIEWPOINT 0 0 0 1 0 0 0", f"POINTS {declared}",
        f"DATA {'binary' if binary else 'ascii'}", ""]).encode()
    if ok:  # small integers, for float fields eighths: exact in every type, u1 included
        counts = draw(hnp.arrays(np.int16, (points, len(fields)), elements=st.integers(0, 100)))
        scale = np.array([8.0 if kind == "F" else 1.0 for kind, _ in types])
        values = counts / scale
    else:
        values = draw(hnp.arrays(np.float64, (points, len(fields)), elements=_finite_or_not))
    if binary:
        record = np.dtype([(f, _PCD_TYPES[t]) for f, t in zip(fields, types)])
        rows = np.zeros(points, dtype=record)
        with np.errstate(invalid="ignore", over="ignore"):
            for i, f in enumerate(fields):
                rows[f] = np.nan_to_num(values[:, i]) if record[f].kind in "iu" else values[:, i]
        payload = rows.tobytes()
    elif ok:  # each type written as its own text: "3" for an integer field, "0.375" for a float
        payload = "".join(" ".join(_PCD_FORMATS[kind].format(float(v) if kind == "F" else int(v))
                                   for v, (kind, _) in zip(row, types)) + "\n"
                          for row in values).encode()
    else:
        payload = "".join(" ".join(repr(float(v)) for v in row) + "\n"
                          for row in values).encode()
    if not ok:
        return header + payload, None
    columns = [fields.index(f) for f in ("x", "y", "z", "intensity")]
    lag = values[:, [fields.index("time_lag")]] if "time_lag" in fields \
        else np.zeros((points, 1))
    return header + payload, np.concatenate([values[:, columns], lag], axis=1).astype(np.float32)


@SETTINGS
@given(case=_pcd_files())
def test_pcd_headers_and_payloads_give_points_or_an_input_error(
        scratch: Path, case: tuple[bytes, np.ndarray | None]) -> None:
    """Damaged headers and payloads: points or an ``InputError``; a well-formed file (any
    field order and type): exactly its points, the time lag as column 5 (zero without one)."""
    data, expected = case
    path = scratch / "cloud.pcd"
    path.write_bytes(data)
    _read_or_refuse(path, FEATURES, expected)


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@SETTINGS
@given(data=st.one_of(st.binary(max_size=300),
                      hnp.arrays(np.uint8, st.tuples(st.integers(1, 8), st.integers(1, 8),
                                                     st.just(3))).map(_png)),
       cut=st.integers(0, 400))
def test_image_bytes_give_rgb_or_an_input_error(scratch: Path, data: bytes, cut: int) -> None:
    """Random bytes, and real PNGs possibly truncated after ``cut`` bytes."""
    path = scratch / "camera.png"
    path.write_bytes(data[:cut] if cut < len(data) else data)
    try:
        image = read_image(path, camera="CAM_FRONT")
    except InputError as exc:
        assert exc.path == str(path) and exc.field == "CAM_FRONT"
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


# ------------------------------------------------------------------------------------ voxelizer

VOXEL = np.array([0.5, 0.5, 0.25], np.float32)
LOW = np.array([-4.0, -4.0, -1.0], np.float32)
GRID = np.array([16, 16, 8])


_HUGE = float(np.float32(3.4e38))  # near float32's maximum: ten of them overflow a float32 sum


@st.composite
def _clouds(draw: st.DrawFn) -> np.ndarray:
    """Float32 (P, F) points: xyz crowded into few voxels of the grid (or anywhere, or
    non-finite); the other features anything a float32 holds, near-maximum values included."""
    n, extra = draw(st.integers(0, 300)), draw(st.integers(0, 3))
    xyz = draw(hnp.arrays(np.float32, (n, 3), elements=st.one_of(
        st.floats(-1, 1, width=32), st.floats(-5, 5, width=32), _finite_or_not)))
    rest = draw(hnp.arrays(np.float32, (n, extra), elements=st.one_of(
        st.floats(-_HUGE, _HUGE, width=32), st.sampled_from([_HUGE, -_HUGE]), _finite_or_not)))
    return np.concatenate([xyz, rest], axis=1)


@SETTINGS
@given(cloud=_clouds(), max_points=st.integers(1, 12), max_voxels=st.integers(1, 80))
def test_voxelizer_never_crashes_and_keeps_every_voxel_in_the_grid(cloud: np.ndarray,
                                                                   max_points: int,
                                                                   max_voxels: int) -> None:
    feats, coords, counts = kernels.voxelize(cloud, VOXEL, LOW, GRID, max_points, max_voxels)
    m = len(coords)
    assert feats.shape == (m, cloud.shape[1]) and counts.shape == (m,) and coords.shape == (m, 3)
    assert m <= max_voxels
    assert ((coords >= 0) & (coords < GRID)).all()
    assert len({tuple(c) for c in coords.tolist()}) == m  # each voxel once
    assert ((counts >= 1) & (counts <= max_points)).all()
    assert np.isfinite(feats).all()
    # the mean of points inside a voxel lies inside it (float32 rounding at the faces allowed)
    low = LOW + coords * VOXEL
    eps = 1e-4 * np.maximum(1.0, np.abs(low))
    assert ((feats[:, :3] >= low - eps) & (feats[:, :3] <= low + VOXEL + eps)).all()
    in_grid = np.isfinite(cloud).all(1)
    with np.errstate(invalid="ignore", over="ignore"):
        idx = np.floor((cloud[:, :3] - LOW) / VOXEL)
        in_grid &= ((idx >= 0) & (idx < GRID)).all(1)
    if m < max_voxels:  # no voxel was dropped by the cap: every in-grid point is counted
        assert counts.sum() == sum(min(int(n), max_points) for n in
                                   np.unique(idx[in_grid], axis=0, return_counts=True)[1])


@SETTINGS
@given(cloud=hnp.arrays(np.float32, st.tuples(st.integers(0, 200), st.just(FEATURES)),
                        elements=st.one_of(st.floats(-60, 60, width=32), _finite_or_not)))
def test_voxelize_stage_on_arbitrary_points(tiny_stage, cloud: np.ndarray) -> None:
    """The runtime stage with the tiny package's parameters: the range filter then the kernel."""
    params = tiny_stage.params
    kept = tiny_stage.select(cloud)
    assert np.isfinite(kept[:, :3]).all()
    voxels = tiny_stage.run(kept)
    assert len(voxels) <= params.max_voxels
    assert ((voxels.coords >= 0) & (voxels.coords < np.asarray(params.grid_size))).all()
    assert ((voxels.counts >= 1) & (voxels.counts <= params.max_points_per_voxel)).all()
    assert np.isfinite(voxels.feats).all()


@pytest.fixture(scope="module")
def tiny_stage(tiny_package: Path):
    from bevdeploy.package import load_package
    from bevdeploy.runtime.stages import VoxelizeParams, VoxelizeStage

    return VoxelizeStage(VoxelizeParams.from_package(load_package(tiny_package)))
