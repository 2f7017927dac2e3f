"""The deploy package: a directory holding ``manifest.json`` and the five ONNX modules.

The manifest is everything the runtime needs besides the graphs themselves — the full preset,
every module's inputs and outputs, the parameters of the stages that run outside ONNX
(camera geometry, voxelization, box decode) and a SHA-256 of every file — so a deployment needs
neither the Python model code nor the checkpoint. ``load_package`` verifies every file against
its hash before anything runs, because a silently swapped or truncated engine input would give
plausible-looking wrong boxes rather than an error.

This module is torch-free on purpose (the runtime side imports it on machines without PyTorch):
it depends on the standard library, numpy-based preprocessing maths and the presets only.

Manifest layout (format ``1.x``; a newer *minor* version only adds keys, which this reader
ignores; a newer *major* version is refused)::

    format_version   "1.0"
    created_utc      ISO-8601 time of the export
    versions         {bevdeploy, torch, onnx, spconv, ...} that produced the package
    checkpoint       {"file": name, "sha256": hex} or null (random weights)
    checkpoint_report  (1.1) what loading the checkpoint did: format, counts, missing,
                     unexpected, converted, notes (``LoadReport.to_dict``); absent without one
    box_convention   (1.1) the convention the head regresses in, ``mit`` | ``mmdet3d-1.x``
                     (``vocabulary.BOX_CONVENTIONS``); a 1.0 manifest (``decode.box_dialect``
                     ``mmdet3d-legacy``) reads as ``mit``
    preset           Preset.to_dict() — the one source of truth, re-validated on load
    classes, cameras  the preset's class and camera order (denormalised for readers in C++)
    geometry, voxelization, decode   derived from the preset by ``runtime_parameters``
    modules          {name: {file, sha256, size, precision, opset, inputs, outputs, ops, details,
                             engine (optional: a TensorRT engine, ``EngineEntry``)}}
    optimization     (optional) what ``bevdeploy optimize`` did: passes, tools, calibration

The ``geometry``/``voxelization``/``decode`` blocks are derived data; ``load_package`` refuses a
manifest whose blocks disagree with its own preset, so the two can never drift apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bevdeploy.data.preprocess import img_aug_matrices
from bevdeploy.errors import ConfigError, PackageError, excerpt, os_reason
from bevdeploy.package_bounds import check_counts, check_memory, read_manifest
from bevdeploy.package_files import check_external_data, check_regular_file
from bevdeploy.presets import Preset
from bevdeploy.vocabulary import (BOX_CONVENTION_MIT, BOX_CONVENTIONS, LEGACY_BOX_DIALECT,
                                  MODULE_FILES)

FORMAT_VERSION = "1.1"
MANIFEST_NAME = "manifest.json"

_HASH_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (ONNX files reach hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. A ``str`` dimension is symbolic (the SCN voxel count)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str  # numpy name: "float32", "float16", "int32", ...

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: Any, *, source: Path, where: str) -> "TensorSpec":
        d = _mapping(data, source, where)
        name = _typed(d, "name", str, source, where)
        dtype = _typed(d, "dtype", str, source, where)
        shape = _typed(d, "shape", list, source, where)
        for i, dim in enumerate(shape):
            if isinstance(dim, bool) or not isinstance(dim, (int, str)) \
                    or (isinstance(dim, int) and dim < 0):
                raise PackageError(f"dimension {dim!r} is neither a size >= 0 nor a symbol",
                                   path=source, field=f"{where}.shape[{i}]")
        return cls(name, tuple(shape), dtype)


@dataclass(frozen=True)
class EngineEntry:
    """A TensorRT engine built from a module's ONNX by ``bevdeploy build``.

    An engine runs only under the TensorRT version and on the GPU (compute capability) that
    built it, so both are recorded and checked before it is deserialized. Its hash is checked
    when it is loaded, not by ``load_package``: a damaged engine must not stop the package's
    ONNX modules from running on another backend.
    """

    file: str
    sha256: str
    size: int
    precision: str  # what the build was asked for: "fp16" | "int8"
    tensorrt: str  # tensorrt.__version__ of the builder
    gpu: str  # device name, e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str  # "9.0"
    flags: tuple[str, ...]  # builder flags, e.g. ("FP16",) or ("STRONGLY_TYPED",)
    workspace_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "size": self.size,
                "precision": self.precision, "tensorrt": self.tensorrt, "gpu": self.gpu,
                "compute_capability": self.compute_capability, "flags": list(self.flags),
                "workspace_bytes": self.workspace_bytes}

    @classmethod
    def from_dict(cls, data: Any, *, source: Path, where: str) -> "EngineEntry":
        d = _mapping(data, source, where)
        file = _typed(d, "file", str, source, where)
        if Path(file).name != file or file in ("", ".", ".."):
            raise PackageError(f"file name {file!r} must be a plain name inside the package",
                               path=source, field=f"{where}.file")
        flags = _typed(d, "flags", list, source, where)
        if not all(isinstance(f, str) for f in flags):
            raise PackageError("expected a list of flag names", path=source,
                               field=f"{where}.flags")
        workspace = d.get("workspace_bytes")
        if workspace is not None and (isinstance(workspace, bool)
                                      or not isinstance(workspace, int)):
            raise PackageError("expected null or a byte count", path=source,
                               field=f"{where}.workspace_bytes")
        return cls(file=file, sha256=_typed(d, "sha256", str, source, where),
                   size=_typed(d, "size", int, source, where),
                   precision=_typed(d, "precision", str, source, where),
                   tensorrt=_typed(d, "tensorrt", str, source, where),
                   gpu=_typed(d, "gpu", str, source, where),
                   compute_capability=_typed(d, "compute_capability", str, source, where),
                   flags=tuple(flags), workspace_bytes=workspace)


@dataclass(frozen=True)
class ModuleEntry:
    """One file of the package and what the runtime must know to bind it."""

    name: str
    file: str
    sha256: str
    size: int
    precision: str  # "fp32" | "fp16" | "int8" (what the file's weights and I/O carry)
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    ops: Mapping[str, int]  # op census: op type (domain-qualified if custom) → node count
    details: Mapping[str, Any] = field(default_factory=dict)  # exporter-specific facts
    engine: EngineEntry | None = None  # a TensorRT engine built from ``file`` (bevdeploy build)

    def to_dict(self) -> dict[str, Any]:
        engine = {} if self.engine is None else {"engine": self.engine.to_dict()}
        return {"file": self.file, "sha256": self.sha256, "size": self.size,
                "precision": self.precision, "opset": self.opset,
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs],
                "ops": dict(self.ops), "details": dict(self.details), **engine}

    @classmethod
    def from_dict(cls, name: str, data: Any, *, source: Path) -> "ModuleEntry":
        where = f"modules.{name}"
        d = _mapping(data, source, where)
        file = _typed(d, "file", str, source, where)
        if Path(file).name != file or file in ("", ".", ".."):
            raise PackageError(f"file name {file!r} must be a plain name inside the package",
                               path=source, field=f"{where}.file")
        ops = _typed(d, "ops", dict, source, where)
        if not all(isinstance(k, str) and isinstance(v, int) for k, v in ops.items()):
            raise PackageError("expected a mapping of op type to count", path=source,
                               field=f"{where}.ops")
        return cls(
            name=name, file=file,
            sha256=_typed(d, "sha256", str, source, where),
            size=_typed(d, "size", int, source, where),
            precision=_typed(d, "precision", str, source, where),
            opset=_typed(d, "opset", int, source, where),
            inputs=tuple(TensorSpec.from_dict(t, source=source, where=f"{where}.inputs[{i}]")
                         for i, t in enumerate(_typed(d, "inputs", list, source, where))),
            outputs=tuple(TensorSpec.from_dict(t, source=source, where=f"{where}.outputs[{i}]")
                          for i, t in enumerate(_typed(d, "outputs", list, source, where))),
            ops=ops,
            details=_typed(d, "details", dict, source, where) if "details" in d else {},
            engine=EngineEntry.from_dict(d["engine"], source=source, where=f"{where}.engine")
            if "engine" in d else None,
        )


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json``; ``to_dict`` is exactly what is written."""

    preset: Preset
    modules: Mapping[str, ModuleEntry]
    versions: Mapping[str, str]
    created_utc: str
    checkpoint: Mapping[str, str] | None = None
    format_version: str = FORMAT_VERSION
    # What ``bevdeploy optimize`` did to the exported files (passes, tools, calibration);
    # None for a package as exported. Written only when present, so older readers ignore it.
    optimization: Mapping[str, Any] | None = None
    # The convention the head regresses in (``vocabulary.BOX_CONVENTIONS``): the checkpoint's.
    box_convention: str = BOX_CONVENTION_MIT
    # What loading the checkpoint did (``LoadReport.to_dict``); None for random weights.
    checkpoint_report: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        optimization = {} if self.optimization is None else {"optimization": self.optimization}
        report = {} if self.checkpoint_report is None \
            else {"checkpoint_report": self.checkpoint_report}
        return {
            "format_version": self.format_version,
            "created_utc": self.created_utc,
            "versions": dict(self.versions),
            "checkpoint": None if self.checkpoint is None else dict(self.checkpoint),
            **report,
            "box_convention": self.box_convention,
            "preset": self.preset.to_dict(),
            "classes": list(self.preset.classes),
            "cameras": list(self.preset.cameras.names),
            **runtime_parameters(self.preset),
            "modules": {name: m.to_dict() for name, m in self.modules.items()},
            **optimization,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, *, source: Path) -> "Manifest":
        d = _mapping(data, source, "<root>")
        version = _typed(d, "format_version", str, source, "<root>")
        check_format_version(version, source)
        try:
            preset = Preset.from_dict(_typed(d, "preset", dict, source, "<root>"),
                                      source=str(source))
        except ConfigError as exc:
            raise PackageError(f"the embedded preset is invalid: {exc}", path=source,
                               field=f"preset.{exc.field}") from None
        derived = json.loads(json.dumps({
            "classes": list(preset.classes), "cameras": list(preset.cameras.names),
            **runtime_parameters(preset)}))
        box_convention, d = _box_convention(d, source)
        for key, expected in derived.items():
            difference = _first_difference(key, d.get(key), expected)
            if difference is not None:
                fld, want = difference
                raise PackageError(f"disagrees with the embedded preset {preset.name!r} "
                                   f"(expected {excerpt(want)})", path=source, field=fld)
        modules_raw = _typed(d, "modules", dict, source, "<root>")
        missing = [m for m in MODULE_FILES if m not in modules_raw]
        if missing:
            raise PackageError(f"no entry for module(s) {missing}", path=source, field="modules")
        modules = {name: ModuleEntry.from_dict(name, raw, source=source)
                   for name, raw in modules_raw.items()}
        checkpoint = d.get("checkpoint")
        if checkpoint is not None and not (isinstance(checkpoint, dict)
                                           and isinstance(checkpoint.get("sha256"), str)):
            raise PackageError("expected null or {file, sha256}", path=source, field="checkpoint")
        optimization = _typed(d, "optimization", dict, source, "<root>") \
            if "optimization" in d else None
        report = _typed(d, "checkpoint_report", dict, source, "<root>") \
            if "checkpoint_report" in d else None
        return cls(preset=preset, modules=modules,
                   versions=_typed(d, "versions", dict, source, "<root>"),
                   created_utc=_typed(d, "created_utc", str, source, "<root>"),
                   checkpoint=checkpoint, format_version=version, optimization=optimization,
                   box_convention=box_convention, checkpoint_report=report)


def _box_convention(d: dict[str, Any], source: Path) -> tuple[str, dict[str, Any]]:
    """The manifest's ``box_convention`` and the manifest to check further. A format-1.0
    manifest has none and records ``decode.box_dialect: "mmdet3d-legacy"``, which means ``mit``
    (the returned copy drops that key, so its derived ``decode`` block compares equal)."""
    decode = d.get("decode")
    if isinstance(decode, dict) and decode.get("box_dialect") == LEGACY_BOX_DIALECT:
        d = {**d, "decode": {k: v for k, v in decode.items() if k != "box_dialect"}}
        legacy = BOX_CONVENTION_MIT
    else:
        legacy = None
    convention = d.get("box_convention", legacy)
    if convention not in BOX_CONVENTIONS:
        raise PackageError(f"expected one of {list(BOX_CONVENTIONS)}, got {convention!r}",
                           path=source, field="box_convention")
    return convention, d


def check_format_version(version: str, source: Path) -> None:
    """Refuse a manifest of another major format version, naming both versions."""
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise PackageError(f"format_version {version!r} is not MAJOR.MINOR", path=source,
                           field="format_version") from None
    supported = int(FORMAT_VERSION.split(".")[0])
    if major > supported:
        raise PackageError(f"package format {version} is newer than this bevdeploy reads "
                           f"(format {FORMAT_VERSION}); upgrade bevdeploy or re-export",
                           path=source, field="format_version")
    if major < supported:
        raise PackageError(f"package format {version} is older than this bevdeploy reads "
                           f"(format {FORMAT_VERSION}); re-export the package",
                           path=source, field="format_version")


def runtime_parameters(preset: Preset) -> dict[str, Any]:
    """The ``geometry``, ``voxelization`` and ``decode`` blocks: the parameters of the stages
    that run outside ONNX, derived from the preset in this one place.

    ``geometry.img_aug`` holds one 4×4 per camera (NVIDIA's geometry used camera 0's for all,
    docs/reference.md#geometry-precompute); ``bev_pool_size`` is (nx, ny, nz) before the
    ``camera.vtransform`` downsample. ``decode`` maps the head outputs to metres: ``x =
    reg₀·out_size_factor· voxel_size₀ + pc_range₀`` (same for y), sizes ``exp(dim)``,
    ``z = height − h/2``, ``θ = atan2(rot₀, rot₁)``, then the manifest's ``box_convention``
    (``data.boxes.from_head_boxes``), which is the checkpoint's, not the preset's.
    """
    vt = preset.model.vtransform
    head = preset.model.head
    r = preset.points.point_cloud_range
    vs = preset.voxel.voxel_size
    return {
        "geometry": {
            "num_cameras": preset.cameras.num_cameras,
            "image_size": list(preset.cameras.image_size),
            "feature_size": list(preset.feature_size),
            "dbound": list(vt.dbound),
            "xbound": list(vt.xbound),
            "ybound": list(vt.ybound),
            "zbound": list(vt.zbound),
            "depth_bins": vt.depth_bins,
            "camera_channels": vt.out_channels,
            "bev_pool_size": list(vt.bev_size),
            "downsample": vt.downsample,
            "img_aug": img_aug_matrices(preset.cameras).tolist(),
        },
        "voxelization": {
            "num_point_features": preset.points.num_features,
            "point_cloud_range": list(r),
            "voxel_size": list(vs),
            "grid_size": list(preset.grid_size),
            "sparse_shape": list(preset.sparse_shape),
            "max_points_per_voxel": preset.voxel.max_points,
            "max_voxels": preset.voxel.max_voxels,
            "max_points": preset.points.max_points,
        },
        "decode": {
            "num_proposals": head.num_proposals,
            "num_classes": preset.num_classes,
            "bev_size": list(preset.bev_size),
            "out_size_factor": head.out_size_factor,
            "voxel_size": list(vs[:2]),
            "pc_range": [r[0], r[1]],
            "post_center_range": list(head.post_center_range),
            "score_threshold": head.score_threshold,
        },
    }


# ---------------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class DeployPackage:
    """A verified package on disk: its directory and its parsed manifest."""

    root: Path
    manifest: Manifest

    @property
    def preset(self) -> Preset:
        return self.manifest.preset

    def module(self, name: str) -> ModuleEntry:
        try:
            return self.manifest.modules[name]
        except KeyError:
            raise PackageError(f"no module {name!r}; the package has "
                               f"{sorted(self.manifest.modules)}",
                               path=self.root / MANIFEST_NAME, field="modules") from None

    def path(self, name: str) -> Path:
        """Absolute path of a module's file."""
        return self.root / self.module(name).file


def verify_file(root: Path, entry: ModuleEntry) -> None:
    """Refuse a module file that is missing or does not match its manifest size and hash."""
    path = root / entry.file
    where = f"modules.{entry.name}"
    size = check_regular_file(path, f"{where}.file", f"file of module {entry.name!r}").st_size
    if size != entry.size:
        raise PackageError(f"size {size} B differs from the manifest's {entry.size} B: the file "
                           f"was truncated or replaced", path=path, field=f"{where}.size")
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise PackageError(f"cannot read: {os_reason(exc)}", path=path,
                           field=f"{where}.file") from None
    if digest != entry.sha256:
        raise PackageError(f"SHA-256 {digest} differs from the manifest's {entry.sha256}: the "
                           f"file was modified or corrupted", path=path, field=f"{where}.sha256")
    check_external_data(root, path, f"{where}.file")


def check_replaceable(out: Path) -> None:
    """Refuse to write a package over anything that is not missing, an empty directory or a
    previous package: a mistyped ``--out`` must not delete a user's directory (``export`` and
    ``optimize`` replace their output directory whole)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise PackageError("exists and is not a directory; choose another output path", path=out)
    if any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise PackageError(f"is a non-empty directory without {MANIFEST_NAME} (not a previous "
                           f"package); refusing to replace it", path=out)


def load_package(path: str | Path) -> DeployPackage:
    """Read and verify a package directory: manifest schema and format version, the embedded
    preset, and the size and SHA-256 of every module file. Raises ``PackageError`` naming the
    offending file and manifest field."""
    root = Path(path)
    if not root.is_dir():
        raise PackageError("not a package directory", path=root)
    manifest_path = root / MANIFEST_NAME
    try:
        if manifest_path.is_symlink() or manifest_path.exists():  # no FIFO is opened
            check_regular_file(manifest_path, "<root>", MANIFEST_NAME)
        data = json.loads(read_manifest(manifest_path).decode("utf-8"),
                          parse_constant=_refuse_constant)
    except FileNotFoundError:
        raise PackageError(f"no {MANIFEST_NAME}: not a bevdeploy package (or an export that did "
                           f"not finish)", path=manifest_path) from None
    except OSError as exc:
        raise PackageError(f"cannot read: {os_reason(exc)}", path=manifest_path) from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise PackageError(f"not valid JSON: {exc}", path=manifest_path) from None
    check_counts(data, manifest_path)
    manifest = Manifest.from_dict(data, source=manifest_path)
    check_memory(manifest.preset, manifest_path)
    for entry in manifest.modules.values():
        verify_file(root, entry)
    return DeployPackage(root=root, manifest=manifest)


# ---------------------------------------------------------------------------------- helpers


def _refuse_constant(name: str) -> float:
    """JSON has no NaN/Infinity; a manifest containing them was not written by us."""
    raise ValueError(f"non-standard constant {name}")


def _first_difference(key: str, got: Any, expected: Any) -> tuple[str, Any] | None:
    """The dotted path and expected value of the first place ``got`` differs, or None."""
    if isinstance(got, dict) and isinstance(expected, dict):
        for sub in [*expected, *(k for k in got if k not in expected)]:
            found = _first_difference(f"{key}.{sub}", got.get(sub), expected.get(sub))
            if found is not None:
                return found
        return None
    return None if got == expected else (key, expected)


def _mapping(data: Any, source: Path, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PackageError(f"expected a mapping, got {type(data).__name__}", path=source,
                           field=where)
    return data


def _typed(d: Mapping[str, Any], key: str, tp: type, source: Path, where: str) -> Any:
    fld = key if where == "<root>" else f"{where}.{key}"
    if key not in d:
        raise PackageError("missing", path=source, field=fld)
    value = d[key]
    if (isinstance(value, bool) and tp is not bool) or not isinstance(value, tp):
        raise PackageError(f"expected {tp.__name__}, got {type(value).__name__}", path=source,
                           field=fld)
    return value
