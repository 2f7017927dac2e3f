"""Load and save BEVFusion checkpoints safely, from any of the layouts the weights exist in.

Readable sources (docs/reference.md#checkpoint-layout):

* **mit-han-lab** checkpoints (``bevfusion-det.pth``) and CUDA-BEVFusion's ResNet50 FP
  checkpoint: an mmcv dict ``{"meta", "state_dict", "optimizer"}`` with the official names;
  sparse-conv weights in the vendored spconv-1.x layout ``(kx, ky, kz, I, O)``;
* **mmdetection3d 1.x** ``projects/BEVFusion`` checkpoints: other top-level names
  (``img_backbone`` …, docs/reference.md#mmdetection3d-name-mapping) and mmdet's
  ``DetrTransformerDecoderLayer`` keys in the head;
* bare state dicts and files written by ``save_checkpoint`` (spconv-2.x layout).

Files are read with ``torch.load(weights_only=True)`` only. mmcv/mmengine put training logs
next to the weights (mmengine ``HistoryBuffer`` objects, numpy scalars); those few names are
mapped to an inert placeholder class so the unpickler can skip them without running any of
their code. Anything else that needs code to load (a pickled model such as CUDA-BEVFusion's
PTQ file, or a malicious pickle) is refused with ``UnsafeFileError``.

The shipped key lists (``bevdeploy/assets/keys/<preset>.txt``: ``key<TAB>shape<TAB>dtype``)
are the state-dict signatures of the presets; regenerate one with ::

    from bevdeploy.model.bevfusion import BEVFusion
    from bevdeploy.model.checkpoint import key_list
    from bevdeploy.presets import get_preset
    key_list(BEVFusion(get_preset(name)))  # write to src/bevdeploy/assets/keys/<name>.txt
"""

from __future__ import annotations

import io
import json
import pickle
import re
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from spconv.pytorch.conv import SparseConvolution
from torch import Tensor, nn

from bevdeploy.io import atomic_file
from bevdeploy import __version__
from bevdeploy.errors import CheckpointError, UnsafeFileError, os_reason
from bevdeploy.model.rig_transfer import derived_difference, rig_warning

SPCONV2_LAYOUT = "spconv2"  # (O, kx, ky, kz, I)
SPCONV1_LAYOUT = "spconv1"  # (kx, ky, kz, I, O)
FORMAT_MIT = "mit"
FORMAT_MMDET3D = "mmdet3d-1.x"

# Geometry constants that the state dict carries but the preset defines
# (docs/reference.md#checkpoint-layout): derived from the image size, depth bins and BEV grid,
# never learned, so they are rebuilt from the target preset and never loaded (weights move to
# another rig; model/rig_transfer.py says what changed).
_GEOMETRY_SUFFIXES = (".vtransform.frustum", ".vtransform.dx", ".vtransform.bx", ".vtransform.nx")


# --------------------------------------------------------------------------------------------
# Safe reading
# --------------------------------------------------------------------------------------------


class _Discarded:
    """Inert stand-in for metadata objects mmcv/mmengine save beside the weights.

    The unpickler builds it instead of the real class, so none of that class's code runs; its
    arguments and state are dropped.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Discarded":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


_NUMPY_DTYPES = ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType",
                 "UInt8DType", "BoolDType")
# Training-log objects found in mmcv/mmengine checkpoints, never inside the state dict.
METADATA_GLOBALS: tuple[str, ...] = (
    "mmengine.logging.history_buffer.HistoryBuffer",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.ndarray", "numpy.dtype",
    *(f"numpy.dtypes.{name}" for name in _NUMPY_DTYPES),
)


class RigChangeWarning(UserWarning):
    """A checkpoint was loaded into a rig other than the one it was trained for."""


@dataclass
class Checkpoint:
    """The weights of a checkpoint file, unwrapped, plus whatever plain metadata it carried."""

    state_dict: dict[str, Tensor]
    meta: dict[str, Any]
    path: str


def _unsafe_globals(path: Path) -> list[str]:
    """GLOBALs in the file that ``weights_only`` refuses (static scan, nothing executed)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (ValueError, RuntimeError, pickle.UnpicklingError):
        return []  # not a zip checkpoint: torch's own message is all we have
    return sorted(set(found) - set(METADATA_GLOBALS))


def _unpickler_reason(exc: Exception) -> str:
    """The specific part of torch's long weights-only error message."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip().split("\n\n")[0]
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _refusal(path: Path, exc: Exception) -> UnsafeFileError:
    names = _unsafe_globals(path)
    if any(n.startswith(("torch.nn.modules", "pytorch_quantization", "mmdet3d.models"))
           for n in names):
        reason = ("it holds a pickled model, not weights (CUDA-BEVFusion's PTQ file is one): "
                  f"load the FP checkpoint it was built from instead; globals {names}")
    elif names:
        reason = f"loading it would run code named in the file: {names}"
    else:
        reason = f"it cannot be read as plain weights ({_unpickler_reason(exc)})"
    return UnsafeFileError(f"refused: {reason}", path=path, field="pickle")


def _check_container(path: Path) -> None:
    """Refuse a file that is neither of ``torch.save``'s containers — a zip archive, or (legacy)
    a pickle opening with a protocol 2–5 header — before unpickling, so that a corrupt or foreign
    file reads as unreadable, not as a refused (unsafe) one."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read: {os_reason(exc)}", path=path) from None
    if head != b"PK\x03\x04" and not (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        raise CheckpointError("not a readable torch checkpoint: neither a zip archive "
                              "(torch.save) nor a pickle (legacy torch.save)", path=path)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file with ``weights_only=True`` and unwrap its state dict.

    Accepts an mmcv/mmengine dict (``state_dict`` key), a ``{"model": ...}`` dict or a bare
    state dict; strips a DataParallel ``module.`` prefix. Raises ``UnsafeFileError`` for files
    that need code to load and ``CheckpointError`` for anything else unusable.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError("file not found", path=p)
    _check_container(p)
    with torch.serialization.safe_globals([(_Discarded, n) for n in METADATA_GLOBALS]):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise _refusal(p, exc) from None
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(f"not a readable torch checkpoint: {exc}", path=p) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a dict, got {type(obj).__name__}", path=p)
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    for wrapper in ("state_dict", "model"):
        if isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad or not obj:
        raise CheckpointError(f"no state dict of tensors found (offending entries: "
                              f"{[str(k) for k in bad[:5]]})", path=p, field="state_dict")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return Checkpoint(state_dict=dict(obj), meta=meta, path=str(p))


# --------------------------------------------------------------------------------------------
# Name mapping (mmdetection3d 1.x → mit, docs/reference.md#mmdetection3d-name-mapping)
# --------------------------------------------------------------------------------------------

_MMDET3D_PREFIXES: tuple[tuple[str, str], ...] = (
    ("img_backbone.", "encoders.camera.backbone."),
    ("img_neck.", "encoders.camera.neck."),
    ("view_transform.", "encoders.camera.vtransform."),
    ("vtransform.", "encoders.camera.vtransform."),
    ("pts_middle_encoder.", "encoders.lidar.backbone."),
    ("fusion_layer.", "fuser."),
    ("pts_backbone.", "decoder.backbone."),
    ("pts_neck.", "decoder.neck."),
    ("bbox_head.", "heads.object."),
)
# mmdet DetrTransformerDecoderLayer → mit TransformerDecoderLayer, inside heads.object.decoder.N.
_DECODER_LAYER_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), repl) for pattern, repl in (
        (r"^self_attn\.attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)$",
         r"self_attn.\1"),
        (r"^cross_attn\.attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)$",
         r"multihead_attn.\1"),
        (r"^ffn\.layers\.0\.0\.(weight|bias)$", r"linear1.\1"),
        (r"^ffn\.layers\.1\.(weight|bias)$", r"linear2.\1"),
        (r"^norms\.0\.(weight|bias)$", r"norm1.\1"),
        (r"^norms\.1\.(weight|bias)$", r"norm2.\1"),
        (r"^norms\.2\.(weight|bias)$", r"norm3.\1"),
    ))
_DECODER_LAYER = re.compile(r"^(heads\.object\.decoder\.\d+\.)(.*)$")
_MMDET3D_ONLY = ("self_attn.", "cross_attn.", "ffn.", "norms.")


def detect_format(keys: Any) -> str:
    """``FORMAT_MMDET3D`` when any key uses mmdetection3d 1.x top-level names, else mit."""
    prefixes = tuple(p for p, _ in _MMDET3D_PREFIXES)
    return FORMAT_MMDET3D if any(str(k).startswith(prefixes) for k in keys) else FORMAT_MIT


def mmdet3d_to_mit(key: str) -> str | None:
    """The mit name of an mmdetection3d 1.x key, or None when it has no counterpart."""
    for old, new in _MMDET3D_PREFIXES:
        if key.startswith(old):
            key = new + key[len(old):]
            break
    else:
        return None
    layer = _DECODER_LAYER.match(key)
    if layer is None:
        return key
    prefix, rest = layer.groups()
    for pattern, repl in _DECODER_LAYER_RULES:
        if pattern.match(rest):
            return prefix + pattern.sub(repl, rest)
    return None if rest.startswith(_MMDET3D_ONLY) else key


# --------------------------------------------------------------------------------------------
# Sparse-conv weight layouts (docs/reference.md#sparse-conv-weight-layouts)
# --------------------------------------------------------------------------------------------


def sparse_weight_keys(model: nn.Module) -> set[str]:
    """State-dict names of every spconv convolution weight in ``model``."""
    return {f"{name}.weight" for name, m in model.named_modules()
            if isinstance(m, SparseConvolution)}


def to_spconv2_layout(weight: Tensor, target: torch.Size, declared: str | None
                      ) -> tuple[Tensor, bool | None]:
    """Return ``weight`` in the spconv-2.x layout and whether it was converted.

    The layout is read from the shape: (kx, ky, kz, I, O) becomes (O, kx, ky, kz, I) with
    ``permute(4, 0, 1, 2, 3)``. When both readings fit (kx = ky = kz = I = O) the file's
    declared layout decides; without one the answer is None (ambiguous) and ``weight`` is
    returned untouched.
    """
    if weight.ndim != 5:
        return weight, False
    as_v1 = weight.permute(4, 0, 1, 2, 3)
    fits_v2, fits_v1 = weight.shape == target, as_v1.shape == target
    if fits_v2 and fits_v1:
        if declared is None:
            return weight, None
        fits_v2 = declared == SPCONV2_LAYOUT
    if fits_v1 and not fits_v2:
        return as_v1.contiguous(), True
    return weight, False


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _shape(t: Tensor | torch.Size | tuple[int, ...]) -> str:
    dims = tuple(t.shape) if isinstance(t, Tensor) else tuple(t)
    return "(" + ", ".join(str(d) for d in dims) + ")"


@dataclass
class LoadReport:
    """What ``load_checkpoint`` did: one readable account of every key that did not load."""

    path: str
    source_format: str
    loaded: int = 0
    renamed: int = 0
    converted: list[str] = field(default_factory=list)  # sparse weights permuted from spconv-1.x
    missing: list[str] = field(default_factory=list)  # model keys the file lacks
    unexpected: list[str] = field(default_factory=list)  # file keys with no home in the model
    shape_mismatch: list[tuple[str, str, str]] = field(default_factory=list)  # key, file, model
    rebuilt: list[tuple[str, str]] = field(default_factory=list)  # derived key, how it differs
    ambiguous: list[str] = field(default_factory=list)  # sparse weights of undecidable layout
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every model key was loaded and nothing in the file was left over."""
        return not (self.missing or self.unexpected or self.shape_mismatch or self.ambiguous)

    def summary(self) -> str:
        """One line: the counts and whether the load is clean."""
        return (f"checkpoint {self.path} ({self.source_format}): {self.loaded} loaded, "
                f"{self.renamed} renamed, {len(self.converted)} sparse weights converted from "
                f"spconv-1.x; " + ("OK" if self.ok else "PROBLEMS"))

    def table(self, max_rows: int = 25) -> Table:
        """A rich table: one row per problem key (``max_rows`` per kind), summary as caption."""
        table = Table(title=f"checkpoint {self.path} ({self.source_format})",
                      caption=(f"{self.loaded} loaded, {self.renamed} renamed, "
                               f"{len(self.converted)} sparse weights converted from spconv-1.x; "
                               + ("OK" if self.ok else "PROBLEMS")))
        for name in ("problem", "key", "checkpoint", "model"):
            table.add_column(name, overflow="fold")
        kinds: list[tuple[str, list[tuple[str, str, str]]]] = [
            ("missing", [(k, "-", "") for k in self.missing]),
            ("unexpected", [(k, "", "-") for k in self.unexpected]),
            ("shape", self.shape_mismatch),
            ("rebuilt", [(k, how, "rebuilt from the preset") for k, how in self.rebuilt]),
            ("ambiguous layout", [(k, "cube-shaped sparse weight", "no layout declared")
                                  for k in self.ambiguous]),
        ]
        for kind, rows in kinds:
            for key, ckpt, model in rows[:max_rows]:
                table.add_row(kind, key, ckpt, model)
            if len(rows) > max_rows:
                table.add_row(kind, f"… and {len(rows) - max_rows} more", "", "")
        for note in self.notes:
            table.add_row("note", note, "", "")
        return table

    def __str__(self) -> str:
        buffer = io.StringIO()
        Console(file=buffer, width=140, color_system=None).print(self.table())
        return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _classes_in_meta(meta: dict[str, Any]) -> tuple[str, ...] | None:
    classes = meta.get("CLASSES")
    dataset_meta = meta.get("dataset_meta")
    if classes is None and isinstance(dataset_meta, dict):
        classes = dataset_meta.get("classes")
    if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
        return tuple(classes)
    return None


def _same_kind(a: torch.dtype, b: torch.dtype) -> bool:
    return a.is_floating_point == b.is_floating_point and (a == torch.bool) == (b == torch.bool)


def _matching_presets(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Shipped presets whose key list has exactly these keys and shapes (a 5-D sparse weight
    may be in either spconv layout)."""
    def fits(shape: tuple[int, ...], shipped: tuple[int, ...]) -> bool:
        return shape == shipped or (len(shape) == 5 and shape[4:] + shape[:4] == shipped)

    matches = []
    for entry in resources.files("bevdeploy").joinpath("assets", "keys").iterdir():
        if entry.name.endswith(".txt"):
            shipped = {key: shape for key, shape, _ in parse_key_list(entry.read_text())}
            if shipped.keys() == shapes.keys() and all(fits(shapes[k], s)
                                                       for k, s in shipped.items()):
                matches.append(entry.name[:-4])
    return sorted(matches)


def _rename(state: dict[str, Tensor], fmt: str, report: LoadReport
            ) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Checkpoint keys → mit names (identity for mit files); returns the renamed tensors and
    each new name's original key. Unmappable and colliding keys go to ``report.unexpected``."""
    renamed: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        name = mmdet3d_to_mit(key) if fmt == FORMAT_MMDET3D else key
        if name is None:
            report.unexpected.append(key)
        elif name in renamed:
            report.unexpected.append(f"{key} (duplicate of {origin[name]})")
        else:
            renamed[name], origin[name] = value, key
            report.renamed += int(name != key)
    return renamed, origin


def _match(renamed: dict[str, Tensor], origin: dict[str, str], model: nn.Module,
           declared: str | None, report: LoadReport) -> dict[str, Tensor]:
    """The tensors that fit ``model``: sparse weights brought to spconv-2.x, shapes and dtype
    kinds checked; geometry constants never loaded (the preset's rebuilt ones stay) but compared
    into ``report.rebuilt``; everything else is recorded in ``report``."""
    target = model.state_dict()
    sparse = sparse_weight_keys(model)
    accepted: dict[str, Tensor] = {}
    for name, value in renamed.items():
        if name not in target:
            report.unexpected.append(name if origin[name] == name else f"{origin[name]} → {name}")
            continue
        if name in sparse:
            value, converted = to_spconv2_layout(value, target[name].shape, declared)
            if converted is None:
                report.ambiguous.append(name)
            elif converted:
                report.converted.append(name)
        current = target[name]
        if name.endswith(_GEOMETRY_SUFFIXES):  # derived: the model keeps the preset's
            difference = derived_difference(value, current)
            if difference is not None:
                report.rebuilt.append((name, difference))
            continue
        if value.shape != current.shape or not _same_kind(value.dtype, current.dtype):
            report.shape_mismatch.append((name, f"{_shape(value)} {value.dtype}",
                                          f"{_shape(current)} {current.dtype}"))
            continue
        accepted[name] = value
    report.missing = [k for k in target if k not in renamed]
    return accepted


def _annotate(report: LoadReport, meta: dict[str, Any], model: nn.Module,
              renamed: dict[str, Tensor]) -> None:
    """Notes that help a user act on the report: box dialect, class list, matching preset."""
    if report.source_format == FORMAT_MMDET3D:
        report.notes.append(
            "mmdetection3d 1.x weights: the head regresses mmdet3d>=1.0 boxes (sizes l,w,h, "
            "its yaw, z the bottom) and is decoded in box convention mmdet3d-1.x; for weights "
            "converted from a mit checkpoint use --box-convention mit "
            "(docs/reference.md#box-convention)")
    classes = _classes_in_meta(meta)
    preset = getattr(model, "preset", None)
    if classes is not None and preset is not None and classes != tuple(preset.classes):
        report.notes.append(f"checkpoint classes {list(classes)} differ from the preset's "
                            f"{list(preset.classes)}")
    if report.shape_mismatch or report.missing or report.unexpected:
        matches = _matching_presets({n: tuple(v.shape) for n, v in renamed.items()})
        if matches:
            report.notes.append(f"the checkpoint's shapes match preset(s) {matches}")


def load_checkpoint(model: nn.Module, path: str | Path, *, strict: bool = True) -> LoadReport:
    """Load a mit / CUDA-BEVFusion / mmdetection3d-1.x / bevdeploy checkpoint into ``model``.

    Keys are renamed from mmdetection3d names when needed, sparse-conv weights converted to
    the spconv-2.x layout, and geometry constants (frustum, dx, bx, nx) never loaded: they derive
    from the preset, which rebuilds them, so weights move to another rig (camera count, image
    size, BEV range) whenever the learned shapes fit, with one ``RigChangeWarning`` (also a
    report note) saying what changed. With ``strict`` any missing, unexpected,
    mis-shaped or layout-ambiguous key raises ``CheckpointError`` (carrying the
    report table) before the model is touched; otherwise every key that fits is loaded and
    the report says what was not.
    """
    ckpt = read_checkpoint(path)
    report = LoadReport(path=ckpt.path, source_format=detect_format(ckpt.state_dict))
    declared = ckpt.meta.get("sparse_weight_layout")
    declared = declared if declared in (SPCONV1_LAYOUT, SPCONV2_LAYOUT) else None
    renamed, origin = _rename(ckpt.state_dict, report.source_format, report)
    accepted = _match(renamed, origin, model, declared, report)
    _annotate(report, ckpt.meta, model, renamed)
    preset = getattr(model, "preset", None)
    moved = None if preset is None else rig_warning(ckpt.meta, preset, report.rebuilt)
    if moved is not None:
        report.notes.append(moved)
        warnings.warn(moved, RigChangeWarning, stacklevel=2)
    if strict and not report.ok:
        raise CheckpointError(f"does not fit the model:\n{report}", path=ckpt.path,
                              field="state_dict")
    model.load_state_dict(accepted, strict=False)
    report.loaded = len(accepted)
    return report


# --------------------------------------------------------------------------------------------
# Saving and key lists
# --------------------------------------------------------------------------------------------


def save_checkpoint(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None
                    ) -> Path:
    """Write an mmcv-style ``{"meta", "state_dict"}`` file atomically (temp file + rename).

    ``meta`` must be JSON-serializable so that the file stays loadable with
    ``weights_only=True``; the writer adds the bevdeploy version, the preset name, the time
    and ``sparse_weight_layout = "spconv2"``.
    """
    p = Path(path)
    meta = dict(meta or {})
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"meta must be JSON-serializable: {exc}", path=p,
                              field="meta") from None
    preset = getattr(model, "preset", None)
    meta.update(bevdeploy_version=__version__, sparse_weight_layout=SPCONV2_LAYOUT,
                time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **({"preset": preset.name} if preset is not None else {}))
    state = OrderedDict((k, v.detach().cpu()) for k, v in model.state_dict().items())
    with atomic_file(p) as handle:
        torch.save({"meta": meta, "state_dict": state}, handle)
    return p


def key_list(model: nn.Module) -> str:
    """The model's state-dict signature, one ``key<TAB>shape<TAB>dtype`` line per key."""
    return "".join(f"{k}\t{_shape(v)}\t{str(v.dtype).removeprefix('torch.')}\n"
                   for k, v in model.state_dict().items())


def parse_key_list(text: str) -> list[tuple[str, tuple[int, ...], str]]:
    """Inverse of ``key_list``: ``(key, shape, dtype)`` triples."""
    rows = []
    for line in text.splitlines():
        key, shape, dtype = line.split("\t")
        dims = shape.strip("()").replace(" ", "")
        rows.append((key, tuple(int(d) for d in dims.split(",") if d), dtype))
    return rows


def shipped_key_list(preset_name: str) -> str:
    """The key list shipped for a preset (``bevdeploy/assets/keys/<name>.txt``)."""
    entry = resources.files("bevdeploy").joinpath("assets", "keys", f"{preset_name}.txt")
    if not entry.is_file():
        raise CheckpointError("no key list is shipped for this preset",
                              path=str(entry), field=preset_name)
    return entry.read_text()
