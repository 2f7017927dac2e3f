"""``export_package``: a preset (+ checkpoint) → a complete, verified deploy package directory.

The package is built in a temporary directory next to ``out`` and renamed into place only when
every file and the manifest (written last) are complete, so an interrupted or failed export
never leaves a half-written package behind and never damages a previous one at ``out``.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx
import torch

from bevdeploy.io import staged_dir
from bevdeploy import __version__
from bevdeploy.errors import PackageError
from bevdeploy.export.camera import camera_backbone_graph, camera_vtransform_graph
from bevdeploy.export.fuser import fuser_graph
from bevdeploy.export.head import head_graph
from bevdeploy.export.onnx_utils import (
    DEFAULT_OPSET, DenseGraph, export_graph, graph_io, model_opset, op_census,
)
from bevdeploy.export.scn import export_scn
from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.model.factory import create_model, report_record
from bevdeploy.package import (
    MANIFEST_NAME, Manifest, ModuleEntry, check_replaceable, sha256_file,
    verify_file,
)
from bevdeploy.presets import Preset
from bevdeploy.vocabulary import MODULE_FILES, SCN_MODULE

# Distributions whose versions are recorded in the manifest (what produced the files).
RECORDED_VERSIONS: tuple[str, ...] = ("torch", "onnx", "onnxruntime", "spconv", "numpy")


def dense_graphs(model: BEVFusion, preset: Preset) -> list[DenseGraph]:
    """The four dense graphs of ``model`` in pipeline order."""
    return [camera_backbone_graph(model, preset), camera_vtransform_graph(model, preset),
            fuser_graph(model, preset), head_graph(model, preset)]


def export_package(preset: Preset, checkpoint: Path | None, out: Path, *,
                   opset: int = DEFAULT_OPSET, box_convention: str | None = None) -> Path:
    """Export the five modules of ``preset``'s model and their manifest to the directory
    ``out``. Weights come from ``checkpoint``, or from a random initialisation seeded with
    ``vocabulary.RANDOM_INIT_SEED`` when it is ``None`` (demo and test packages).

    The manifest records the checkpoint's load report and the box convention its head decodes
    in: ``box_convention`` when given, else the one its origin implies
    (``model.factory.checkpoint_box_convention``).

    ``out`` may not exist yet, be empty, or hold a previous package (which is replaced only
    after the new one is complete); anything else is refused rather than overwritten.
    Returns ``out``.
    """
    out = Path(out)
    check_replaceable(out)
    # seeded: reproducible files without a checkpoint
    model, weights = create_model(preset, checkpoint, box_convention=box_convention)
    checkpoint_info = None
    if checkpoint is not None:
        checkpoint_info = {"file": Path(checkpoint).name, "sha256": sha256_file(checkpoint)}

    with staged_dir(out, cannot="cannot write the package") as staging:
        modules: dict[str, ModuleEntry] = {}
        for graph in dense_graphs(model, preset):
            path = staging / MODULE_FILES[graph.name]
            onnx_model = export_graph(graph, path, opset=opset)
            modules[graph.name] = _dense_entry(graph.name, path, onnx_model)
        scn_path = staging / MODULE_FILES[SCN_MODULE]
        scn_entry = export_scn(model.encoders["lidar"]["backbone"], preset, scn_path)
        modules[SCN_MODULE] = _scn_entry(scn_path, scn_entry)

        manifest = Manifest(
            preset=preset,
            modules={name: modules[name] for name in MODULE_FILES},
            versions=_versions(),
            created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            checkpoint=checkpoint_info,
            box_convention=weights.box_convention,
            checkpoint_report=None if weights.report is None else report_record(weights.report),
        )
        (staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        check_replaceable(out)  # again: it may have changed while we exported
    return out


# ---------------------------------------------------------------------------------- entries


def _dense_entry(name: str, path: Path, model: onnx.ModelProto) -> ModuleEntry:
    inputs, outputs = graph_io(model)
    return ModuleEntry(name=name, file=path.name, sha256=sha256_file(path),
                       size=path.stat().st_size, precision="fp32", opset=model_opset(model),
                       inputs=inputs, outputs=outputs, ops=op_census(model))


def _scn_entry(path: Path, entry: Mapping[str, Any]) -> ModuleEntry:
    """Parse what ``export_scn`` reports about its file with the manifest's own schema, and
    check its hash against the file it wrote."""
    module = ModuleEntry.from_dict(SCN_MODULE, dict(entry), source=path)
    if module.file != path.name:
        raise PackageError(f"export_scn reported file {module.file!r}", path=path,
                           field="modules.lidar.backbone.file")
    verify_file(path.parent, module)
    return module


def _versions() -> dict[str, str]:
    versions = {"bevdeploy": __version__, "torch": torch.__version__}
    for dist in RECORDED_VERSIONS:
        try:
            versions.setdefault(dist, md.version(dist))
        except md.PackageNotFoundError:
            continue
    return versions
