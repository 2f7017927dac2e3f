"""``optimize_package``: a deploy package → a new package with simplified, FP16 or INT8 modules.

The source package is only read. The new one is assembled in a staging directory next to
``out`` (the unchanged files copied, the optimized modules written, the manifest last, then the
whole staged package loaded back and hash-checked) and renamed into place only when complete;
any failure, including the NaN/Inf guard refusing a module, removes the staging directory and
leaves ``out`` as it was.

Which pass touches which module:

==================  ==========  ===================  ======================================
module              --simplify  --fp16               --int8
==================  ==========  ===================  ======================================
camera.backbone     yes         FP16 (if no --int8)  INT8 QDQ
camera.vtransform   yes         FP16                 kept (FP32, or FP16 with --fp16)
fuser               yes         FP16 (if no --int8)  INT8 QDQ
head.bbox           yes         FP16 (if no INT8     INT8 QDQ convolutions, decoder FP32;
                                head), LN/Softmax/   with --no-int8-head kept (FP32, or
                                TopK/Sigmoid FP32    FP16 with --fp16)
lidar.backbone      no          no                   no: bevdeploy's sparse-conv executor
                                                     runs FP32 (INT8 SCN is libspconv's)
==================  ==========  ===================  ======================================

The manifest's ``optimization.int8.layers`` names, per quantized module, the weighted layers
that compute in INT8 and those that stay float, read back from the written graphs.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx
from rich.console import RenderableType
from rich.table import Table

from bevdeploy.distributed.cluster import RayOptions
from bevdeploy.errors import ConfigError
from bevdeploy.export.onnx_utils import model_opset, op_census
from bevdeploy.io import replace_dir, staging_dir
from bevdeploy.optimize.calibrate import CalibrationSet, Progress, calibration_set
from bevdeploy.optimize.fp16 import FP32_OPS, fp32_nodes, to_fp16
from bevdeploy.optimize.graph import QDQ_OPS, GraphStats, check_io_kept, int8_layers
from bevdeploy.optimize.guard import check_finite
from bevdeploy.optimize.graph import weighted_nodes
from bevdeploy.optimize.int8 import (
    INT8_MODULES, Int8Options, calibrate, check_patterns_used, excluded_nodes, quantizable_names,
    quantize,
)
from bevdeploy.optimize.sensitivity import (
    EvalFrames, EvalSource, Granularity, MapProbe, MapScorer, SensitivityReport, eval_frames,
    module_sensitivity, rank,
)
from bevdeploy.optimize.simplify import simplify as slim
from bevdeploy.package import (MANIFEST_NAME, DeployPackage, check_replaceable, load_package,
                               sha256_file)
from bevdeploy.tables import Footnotes, compact_table, with_notes
from bevdeploy.vocabulary import DENSE_MODULES

SENSITIVITY_FILE = "sensitivity.json"
TOOLS: tuple[str, ...] = ("onnx", "onnxruntime", "onnxslim")
SCN_NOTE = ("kept FP32: run by bevdeploy's sparse-conv executor on the CPU; INT8 sparse "
            "convolution is a GPU-side (libspconv) feature")


@dataclass(frozen=True)
class CalibrationSource:
    """Where calibration frames come from (a nuScenes-format dataset split)."""

    data: Path
    frames: int = 8
    version: str = "v1.0-mini"
    split: str = "mini_train"


@dataclass(frozen=True)
class OptimizeOptions:
    simplify: bool = False
    fp16: bool = False
    int8: Int8Options | None = None
    calib: CalibrationSource | None = None
    sensitivity: Granularity | None = None
    sensitivity_map: EvalSource | None = None  # also score each group's mAP on these frames
    sensitivity_modules: tuple[str, ...] | None = None  # modules probed; None: every INT8 one
    threads: int | None = None
    ray: RayOptions | None = None  # score the sensitivity_map probes on this Ray cluster

    def check(self) -> None:
        if not (self.simplify or self.fp16 or self.int8):
            raise ConfigError("nothing to do: give --simplify, --fp16 and/or --int8",
                              field="passes")
        if self.int8 is not None and self.calib is None:
            raise ConfigError("INT8 needs calibration frames: give --calib DIR", field="calib")
        if self.sensitivity is not None and self.int8 is None:
            raise ConfigError("the sensitivity report ranks INT8 layers: give --int8",
                              field="sensitivity")
        if self.sensitivity_map is not None and self.sensitivity is None:
            raise ConfigError("--sensitivity-map scores the groups of the sensitivity report: "
                              "give --sensitivity too", field="sensitivity_map")
        if self.ray is not None and self.sensitivity_map is None:
            raise ConfigError("the cluster scores the --sensitivity-map probes: give "
                              "--sensitivity --sensitivity-map", field="--ray")
        quantized = INT8_MODULES if self.int8 is None else self.int8.modules
        unknown = sorted(set(self.sensitivity_modules or ()) - set(quantized))
        if unknown:
            raise ConfigError(f"{unknown} are not quantized; choose from {list(quantized)}",
                              field="sensitivity_modules")


@dataclass(frozen=True)
class ModuleChange:
    """What happened to one module."""

    module: str
    passes: tuple[str, ...]
    precision_before: str
    precision_after: str
    before: GraphStats
    after: GraphStats
    qdq_nodes: int
    quantized_layers: int
    float_layers: tuple[str, ...] = ()


@dataclass(frozen=True)
class OptimizeResult:
    root: Path
    changes: tuple[ModuleChange, ...]
    sensitivity: SensitivityReport | None = None
    record: dict[str, Any] = field(default_factory=dict)

    def table(self) -> Table:
        table = Table(title=f"optimized package {self.root}")
        for col, justify in (("module", "left"), ("passes", "left"), ("precision", "left"),
                             ("nodes", "right"), ("size", "right"), ("Q/DQ nodes", "right"),
                             ("INT8 layers", "right"), ("kept float", "left")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for c in self.changes:
            table.add_row(c.module, " + ".join(c.passes) or "-",
                          f"{c.precision_before} → {c.precision_after}",
                          f"{c.before.nodes} → {c.after.nodes}",
                          f"{_mib(c.before.bytes)} → {_mib(c.after.bytes)}",
                          str(c.qdq_nodes), str(c.quantized_layers),
                          ", ".join(c.float_layers) or "-")
        table.add_row("lidar.backbone", "-", "fp32", "", "", "", "", SCN_NOTE)
        return table

    def narrow_table(self) -> RenderableType:
        """``table()`` for an 80-column terminal: short headers, the layers kept in float and
        the SCN note numbered under the table."""
        table = compact_table(f"optimized package {self.root}")
        for col in ("module", "passes", "precision", "nodes", "MiB", "Q/DQ", "INT8", "float"):
            table.add_column(col, justify="left" if col in ("module", "passes", "precision",
                                                            "float") else "right",
                             no_wrap=col == "module")
        notes = Footnotes()
        for c in self.changes:
            table.add_row(c.module, "+".join(c.passes) or "-",
                          f"{c.precision_before}→{c.precision_after}",
                          f"{c.before.nodes}→{c.after.nodes}",
                          f"{c.before.bytes / 2**20:.1f}→{c.after.bytes / 2**20:.1f}",
                          str(c.qdq_nodes), str(c.quantized_layers),
                          notes.ref(", ".join(c.float_layers)) or "-")
        table.add_row("lidar.backbone", "-", "fp32", "", "", "", "", notes.ref(SCN_NOTE))
        return with_notes(table, notes)


def optimize_package(src: str | Path, out: str | Path, options: OptimizeOptions, *,
                     progress: Progress | None = None) -> OptimizeResult:
    """Write the optimized copy of package ``src`` to ``out`` (atomically; ``src`` untouched);
    ``progress`` is told after each calibration frame (``calibrate.record_inputs``)."""
    options.check()
    pkg = load_package(src)
    out = Path(out)
    _check_out(pkg.root, out)
    if options.int8 is not None:  # a mistyped --exclude fails before minutes of calibration
        check_patterns_used(options.int8.excludes, {
            m: quantizable_names(onnx.load(str(pkg.path(m)), load_external_data=False), m)
            for m in options.int8.modules})
    calib = None
    if options.calib is not None:
        c = options.calib
        calib = calibration_set(pkg, c.data, DENSE_MODULES, frames=c.frames, version=c.version,
                                split=c.split, threads=options.threads, progress=progress)
    evaluation = None  # the --sensitivity-map frames, loaded (and checked) before the work
    if options.sensitivity_map is not None and options.calib is not None and calib is not None:
        e, c = options.sensitivity_map, options.calib
        evaluation = eval_frames(pkg, e.data or c.data, version=e.version or c.version,
                                 split=e.split, frames=e.frames, calibrated=calib.tokens)
    staging = staging_dir(out)
    try:
        result = _build(pkg, staging, options, calib, evaluation)
        _check_out(pkg.root, out)  # again: it may have changed while we worked
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dataclasses.replace(result, root=out)


def _build(pkg: DeployPackage, staging: Path, options: OptimizeOptions,
           calib: CalibrationSet | None, evaluation: EvalFrames | None = None) -> OptimizeResult:
    modules = dict(pkg.manifest.modules)
    for entry in modules.values():
        shutil.copy2(pkg.root / entry.file, staging / entry.file)
    int8 = options.int8
    quantized = list(int8.modules) if int8 is not None else []
    sources = {name: onnx.load(str(pkg.path(name))) for name in DENSE_MODULES}
    if options.simplify:
        sources = {name: _kept_io(name, model, slim(model), "simplify", pkg)
                   for name, model in sources.items()}
    excluded: dict[str, list[str]] = {}
    if int8 is not None:
        excluded = {m: excluded_nodes(sources[m], m, int8.excludes) for m in quantized}
        check_patterns_used(int8.excludes, {m: quantizable_names(sources[m], m)
                                            for m in quantized})
    ranges = {m: calibrate(sources[m], calib.feeds[m], int8)
              for m in quantized} if int8 is not None and calib is not None else {}

    changes = []
    int8_models: dict[str, onnx.ModelProto] = {}  # as written: the all-INT8 mAP's modules
    layers: dict[str, dict[str, list[str]]] = {}  # module → INT8 and float weighted layers
    for name in DENSE_MODULES:
        entry = modules[name]
        before = onnx.load(str(pkg.path(name)))
        model, passes, precision = sources[name], [], entry.precision
        if options.simplify:
            passes.append("simplify")
        float_layers: tuple[str, ...] = ()
        if name in ranges:
            source = model
            model = _kept_io(name, model, quantize(model, ranges[name], int8, module=name,
                                                   exclude=excluded[name]), "int8", pkg)
            passes.append("int8")
            precision, float_layers = "int8", tuple(excluded[name])
            int8_models[name] = model
            computed = set(int8_layers(model))
            layers[name] = {"int8": [n.name for n in weighted_nodes(source)
                                     if n.name in computed],
                            "float": [n.name for n in weighted_nodes(source)
                                      if n.name not in computed]}
        elif options.fp16:
            model = _kept_io(name, model, to_fp16(model), "fp16", pkg)
            passes.append("fp16")
            precision, float_layers = "fp16", tuple(fp32_nodes(model, FP32_OPS))
        if not passes:
            continue
        path = staging / entry.file
        if calib is not None:
            check_finite(model, calib.feeds[name], module=name, path=path)
        onnx.save(model, str(path))
        modules[name] = dataclasses.replace(
            entry, sha256=sha256_file(path), size=path.stat().st_size, precision=precision,
            opset=model_opset(model), ops=op_census(model))
        changes.append(ModuleChange(
            name, tuple(passes), entry.precision, precision, GraphStats.of(before),
            GraphStats.of(model), sum(n.op_type in QDQ_OPS for n in model.graph.node),
            len(int8_layers(model)), float_layers))

    report = None
    if options.sensitivity is not None and int8 is not None and calib is not None:
        full, groups = {}, []
        with _map_probe(pkg, evaluation, options) as probe:
            for m in [q for q in quantized
                      if options.sensitivity_modules is None or q in options.sensitivity_modules]:
                full[m], found = module_sensitivity(m, sources[m], ranges[m], calib.feeds[m],
                                                    int8, granularity=options.sensitivity,
                                                    exclude=excluded[m], probe=probe)
                groups.extend(found)
            if probe is None:
                report = rank(options.sensitivity, calib.frames, full, groups)
            else:
                report = rank(options.sensitivity, calib.frames, full, groups,
                              fp32_map=probe.fp32_map, int8_map=probe.score(int8_models),
                              evaluation=probe.describe())
        (staging / SENSITIVITY_FILE).write_text(report.to_json(), encoding="utf-8")

    record = _record(pkg, options, calib, changes, excluded, layers, report)
    manifest = dataclasses.replace(pkg.manifest, modules=modules, optimization=record)
    (staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    load_package(staging)  # every hash and the manifest schema, before it becomes visible
    return OptimizeResult(staging, tuple(changes), report, record)


@contextmanager
def _map_probe(pkg: DeployPackage, evaluation: EvalFrames | None, options: OptimizeOptions
               ) -> Iterator[MapScorer | None]:
    """The ``--sensitivity-map`` scorer: this process's ``MapProbe``, or with ``options.ray``
    the workers of a Ray cluster (Ray imported, and the cluster connected, only then)."""
    if evaluation is None:
        yield None
    elif options.ray is None:
        yield MapProbe(pkg, evaluation, threads=options.threads)
    else:
        from bevdeploy.distributed.cluster import connect
        from bevdeploy.distributed.probe import RayMapProbe

        with connect(options.ray), RayMapProbe(pkg, evaluation, options.ray,
                                               threads=options.threads) as probe:
            yield probe


def _kept_io(name: str, before: onnx.ModelProto, after: onnx.ModelProto, step: str,
             pkg: DeployPackage) -> onnx.ModelProto:
    check_io_kept(before, after, module=name, step=step, path=pkg.path(name))
    return after


def _record(pkg: DeployPackage, options: OptimizeOptions, calib: CalibrationSet | None,
            changes: list[ModuleChange], excluded: dict[str, list[str]],
            layers: dict[str, dict[str, list[str]]], report: SensitivityReport | None
            ) -> dict[str, Any]:
    """The manifest's ``optimization`` block: enough to reproduce and to audit the package."""
    passes = [p for p, on in (("simplify", options.simplify), ("int8", options.int8 is not None),
                              ("fp16", options.fp16)) if on]
    tools = {}
    for dist in TOOLS:
        try:
            tools[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"package": str(pkg.root),
                   "manifest_sha256": sha256_file(pkg.root / MANIFEST_NAME)},
        "passes": passes,
        "tools": tools,
        "calibration": None if calib is None else calib.describe(),
        "int8": None if options.int8 is None else {
            **options.int8.describe(), "excluded_nodes": excluded, "layers": layers},
        "fp16": {"fp32_ops": list(FP32_OPS), "io": "float32 (keep_io_types)"}
        if options.fp16 else None,
        "modules": {c.module: {
            "passes": list(c.passes), "precision_before": c.precision_before,
            "nodes_before": c.before.nodes, "nodes_after": c.after.nodes,
            "bytes_before": c.before.bytes, "bytes_after": c.after.bytes,
            "qdq_nodes": c.qdq_nodes, "int8_layers": c.quantized_layers,
            "float_layers": list(c.float_layers),
            "io_dtypes": {s.name: s.dtype for s in (*pkg.module(c.module).inputs,
                                                    *pkg.module(c.module).outputs)},
        } for c in changes},
        "unchanged": {"lidar.backbone": SCN_NOTE},
        "sensitivity": None if report is None else SENSITIVITY_FILE,
    }


def _check_out(src: Path, out: Path) -> None:
    """Refuse to write over the source or over anything that is not an empty directory or a
    previous package (a mistyped ``--out`` must not delete a user's directory)."""
    check_not_source(src, out)
    check_replaceable(out)


def check_not_source(src: Path, out: Path) -> None:
    """Refuse an output that is the source package itself: it is only read, and replacing it
    while its modules are read would lose it."""
    if Path(out).resolve() == Path(src).resolve():
        raise ConfigError("is the source package; write the optimized package elsewhere",
                          path=out, field="--out")


def _mib(n: int) -> str:
    return f"{n / 1024 ** 2:.2f} MiB"
