"""``bevdeploy inspect``: what is inside a deploy package, as rich tables.

Loading goes through ``load_package``, so inspecting a package also verifies every file's hash.
Torch-free: it reads only the manifest and, for the TensorRT column, the ONNX graphs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
from rich.console import Console, RenderableType
from rich.table import Table

from bevdeploy.export.trt_ops import tensorrt_violations
from bevdeploy.package import DeployPackage, ModuleEntry, load_package
from bevdeploy.tables import Footnotes, compact_table, print_report, shape_text, with_notes

# Column labels of the op census in an 80-column terminal (five module columns must fit).
SHORT_NAMES = {"camera.backbone": "cam.bb", "camera.vtransform": "cam.vt",
               "lidar.backbone": "lidar", "fuser": "fuser", "head.bbox": "head"}


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.1f} MiB"


def _shape(shape: tuple[int | str, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _tensorrt(pkg: DeployPackage, entry: ModuleEntry) -> str:
    """Whether TensorRT's ONNX parser takes the file (the SCN file is not meant for it)."""
    if entry.name == "lidar.backbone":
        return "n/a (SCN executor)"
    problems = tensorrt_violations(onnx.load(str(pkg.path(entry.name)), load_external_data=False))
    return "parses" if not problems else f"[red]{len(problems)} unsupported[/red]"


def _load_summary(report: Mapping[str, Any]) -> str:
    """One line of the manifest's ``checkpoint_report``: format, counts, and the keys that did
    not load (the first few of each kind)."""
    def count(key: str) -> int:
        value = report.get(key, [])
        return len(value) if isinstance(value, list) else 0

    line = (f"{report.get('source_format', '?')}: {report.get('loaded', '?')} loaded, "
            f"{report.get('renamed', 0)} renamed, {count('converted')} converted, "
            f"{count('missing')} missing, {count('unexpected')} unexpected, "
            f"{count('shape_mismatch')} mis-shaped")
    for key in ("missing", "unexpected"):
        keys = report.get(key, [])
        if isinstance(keys, list) and keys:
            line += f"; {key}: " + ", ".join(str(k) for k in keys[:5]) \
                + (f" … (+{len(keys) - 5})" if len(keys) > 5 else "")
    return line


def package_tables(pkg: DeployPackage) -> list[Table]:
    """Summary, modules, I/O and op-census tables of a loaded package."""
    m = pkg.manifest
    summary = Table(title=f"deploy package {pkg.root}", show_header=False)
    summary.add_column("item")
    summary.add_column("value")
    summary.add_row("preset", m.preset.name)
    summary.add_row("format", m.format_version)
    summary.add_row("created (UTC)", m.created_utc)
    summary.add_row("checkpoint", "random weights" if m.checkpoint is None
                    else f"{m.checkpoint.get('file', '?')} (sha256 {m.checkpoint['sha256'][:16]}…)")
    summary.add_row("box convention", m.box_convention)
    report = m.checkpoint_report
    if report is not None:
        summary.add_row("checkpoint load", _load_summary(report))
        for note in report.get("notes", []):
            summary.add_row("checkpoint note", str(note))
    summary.add_row("cameras", ", ".join(m.preset.cameras.names))
    summary.add_row("classes", ", ".join(m.preset.classes))
    summary.add_row("produced by", ", ".join(f"{k} {v}" for k, v in m.versions.items()))

    modules = Table(title="modules")
    for col, justify in (("module", "left"), ("file", "left"), ("precision", "left"),
                         ("opset", "right"), ("size", "right"), ("nodes", "right"),
                         ("TensorRT", "left")):
        modules.add_column(col, justify=justify)  # type: ignore[arg-type]
    for entry in m.modules.values():
        modules.add_row(entry.name, entry.file, entry.precision, str(entry.opset),
                        _size(entry.size), str(sum(entry.ops.values())), _tensorrt(pkg, entry))

    io = Table(title="inputs and outputs")
    for col in ("module", "", "name", "shape", "dtype"):
        io.add_column(col)
    for entry in m.modules.values():
        for direction, specs in (("in", entry.inputs), ("out", entry.outputs)):
            for spec in specs:
                io.add_row(entry.name, direction, spec.name, _shape(spec.shape), spec.dtype)

    census = Table(title="op census (nodes per op type)")
    census.add_column("op", no_wrap=True)
    names = list(m.modules)
    for name in names:
        census.add_column(name, justify="right")
    ops = sorted({op for e in m.modules.values() for op in e.ops},
                 key=lambda op: (-sum(e.ops.get(op, 0) for e in m.modules.values()), op))
    for op in ops:  # custom ops are "domain::Type": keep the domain's last part ("spconv::")
        census.add_row(op.rsplit(".", 1)[-1] if "::" in op else op, *(str(m.modules[n].ops.get(op, "")) for n in names))
    return [summary, modules, io, census]


def narrow_tables(pkg: DeployPackage) -> list[RenderableType]:
    """``package_tables`` for an 80-column terminal: the summary as it is (two columns wrap
    well), the modules without the file column (module name + suffix), I/O shapes as
    ``1×6×3×128×256``, the census under short module labels explained below it."""
    summary, _, _, _ = package_tables(pkg)
    m = pkg.manifest
    notes, legend = Footnotes(), Footnotes()
    modules = compact_table("modules")
    for col in ("module", "precision", "opset", "size", "nodes", "TensorRT"):
        modules.add_column(col, justify="right" if col in ("opset", "size", "nodes") else "left",
                           no_wrap=col == "module")
    for entry in m.modules.values():
        trt = _tensorrt(pkg, entry)
        if entry.name == "lidar.backbone":
            trt = "n/a " + notes.ref("lidar.backbone runs on bevdeploy's SCN executor, not "
                                     "TensorRT's ONNX parser")
        modules.add_row(entry.name, entry.precision, str(entry.opset), _size(entry.size),
                        str(sum(entry.ops.values())), trt)
    io = compact_table("inputs and outputs")
    for col in ("module", "", "name", "shape", "dtype"):
        io.add_column(col, no_wrap=col in ("module", "name"))
    for entry in m.modules.values():
        for direction, specs in (("in", entry.inputs), ("out", entry.outputs)):
            for spec in specs:
                io.add_row(entry.name, direction, spec.name,
                           shape_text(list(spec.shape)) if spec.shape else "dynamic", spec.dtype)
    census = compact_table("op census (nodes per op type)")
    census.add_column("op", no_wrap=True)
    names = list(m.modules)
    for name in names:
        census.add_column(SHORT_NAMES.get(name, name), justify="right")
    ops = sorted({op for e in m.modules.values() for op in e.ops},
                 key=lambda op: (-sum(e.ops.get(op, 0) for e in m.modules.values()), op))
    for op in ops:
        census.add_row(op.rsplit(".", 1)[-1] if "::" in op else op,
                       *(str(m.modules[n].ops.get(op, "")) for n in names))
    legend.ref(", ".join(f"{SHORT_NAMES[n]} = {n}" for n in names if n in SHORT_NAMES))
    return [summary, with_notes(modules, notes), io, with_notes(census, legend)]


def print_package(path: str | Path, *, console: Console | None = None,
                  wide: bool = False) -> DeployPackage:
    """Verify the package at ``path`` and print its tables (``PackageError`` if it is
    damaged): fitted to the terminal, or every column unfolded with ``wide``; returns it."""
    console = console or Console()
    pkg = load_package(path)
    for table in (package_tables(pkg) if wide else narrow_tables(pkg)):
        print_report(console, table, wide=wide)
    return pkg
