"""Per-layer INT8 sensitivity: quantize one layer (or block) at a time, measure the damage.

A whole-model INT8 error is the sum of many small ones and does not say where to look. Here
each group of weighted layers (a single Conv/Gemm/MatMul, or a *block*: the node names minus
their last two path components, e.g. ``/backbone/layer2/layer2.0`` for a ResNet basic block,
``/backbone/blocks.1`` for a SECOND stage) is quantized alone under the same calibrated ranges
as the full quantization, and the module's outputs are compared with the FP32 module on the
calibration feeds. Groups are ranked by their worst output cosine; the ``exclude`` column is the
pattern that keeps a group in float (``bevdeploy optimize --exclude``). ``head.bbox``'s outputs
are per top-k proposal, and a heatmap moved by rounding may legitimately list the same proposals
in another order; its outputs are compared after pairing each proposal with its FP32 partner
(``compare``'s ``align_proposals``), so the cosine measures values, not the order. Of the head
only its convolutions are candidates (``int8.RECIPE_INCLUDES``), so ``layer`` granularity suits
it best (its block names lump unrelated convs).

A cosine says how far a module's tensors move, not whether the detector gets worse: a block
that shifts the fused map's scale a little may cost no box, one that blurs the heatmap's peaks
may cost many. So, on request (``--sensitivity-map``), each group is also scored where it
matters: the whole FP32 package runs through the runtime's own ``Pipeline`` with only that
module's runner swapped for the probe (the module with only this group quantized), over the
frames of a small evaluation split, and nuscenes-devkit's ``DetectionEval`` scores the
detections (``MapProbe``). The FP32 package and the package with every INT8 module fully
quantized are scored once each on the same frames, so each group's mAP drop is measured against
the same baseline; the ranking then puts the largest drop first (cosine breaks ties, which are
common on a few frames). The frames must not be calibration frames: INT8 ranges fitted to a
frame flatter its score.

The probes are independent of each other, so ``optimize --ray`` scores them on a Ray cluster
(``bevdeploy.distributed.probe.RayMapProbe``, the same ``MapScorer`` interface): the groups
are quantized here and streamed to the scorer (``MapScorer.scores``), which may score several
while the next are being quantized.
"""

from __future__ import annotations

import fnmatch
import json
import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import TensorsData
from rich.console import Group, RenderableType
from rich.table import Table

from bevdeploy.data.frame import Frame
from bevdeploy.errors import ConfigError
from bevdeploy.optimize.calibrate import Feeds, frame_indices
from bevdeploy.optimize.graph import weighted_nodes
from bevdeploy.optimize.int8 import Int8Options, quantize, recipe_scope
from bevdeploy.package import DeployPackage
from bevdeploy.runtime import Pipeline
from bevdeploy.runtime.backends.base import RunnerOptions
from bevdeploy.runtime.fp_env import callers_fp_env
from bevdeploy.runtime.backends.onnxruntime import PROVIDERS, OnnxRuntimeRunner, session_options

Granularity = Literal["layer", "block"]
# Modules whose outputs are per top-k proposal: compared proposal by proposal, not by place.
PROPOSAL_MODULES: tuple[str, ...] = ("head.bbox",)


@dataclass(frozen=True)
class GroupSensitivity:
    """One group quantized alone: its worst output cosine and scale-relative max error, and
    (when measured) the detector's mAP with it and the drop from the FP32 mAP."""

    module: str
    group: str
    nodes: tuple[str, ...]
    cosine: float
    rel_max_abs: float
    exclude: tuple[str, ...]  # the ``--exclude`` patterns that keep exactly this group in float
    map: float | None = None  # devkit mAP on the evaluation frames; None: not measured
    map_drop: float | None = None  # FP32 mAP - ``map`` (positive: the group costs accuracy)


@dataclass(frozen=True)
class SensitivityReport:
    granularity: Granularity
    frames: int
    full: Mapping[str, float]  # module → worst output cosine with all of its layers quantized
    groups: tuple[GroupSensitivity, ...]  # worst first
    fp32_map: float | None = None  # the source package on the evaluation frames
    int8_map: float | None = None  # every INT8 module as written (exclusions kept float)
    evaluation: Mapping[str, Any] | None = None  # which frames were scored (``EvalFrames``)

    def worst(self, k: int) -> list[str]:
        """Exclusion patterns of the ``k`` groups that hurt most."""
        return [p for g in self.groups[:k] for p in g.exclude]

    def to_dict(self) -> dict[str, Any]:
        return {"granularity": self.granularity, "frames": self.frames, "full": dict(self.full),
                "ranked_by": self.ranked_by, "fp32_map": self.fp32_map,
                "int8_map": self.int8_map, "evaluation": self.evaluation,
                "groups": [asdict(g) for g in self.groups]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @property
    def ranked_by(self) -> str:
        return "cosine" if self.fp32_map is None else "map_drop, cosine"

    def table(self, top: int | None = None) -> Table:
        full = ", ".join(f"{m} {c:.5f}" for m, c in self.full.items())
        order = f"{self.granularity}s quantized one at a time, {self.frames} calibration frames"
        if self.fp32_map is None:
            order += "; ranked by cosine"
        else:
            on = "" if self.evaluation is None else \
                f" on {self.evaluation['frames']} {self.evaluation['split']} frames"
            order += (f"; ranked by mAP drop{on}, then cosine; mAP FP32 {self.fp32_map:.4f}, "
                      f"all INT8 {_fmt(self.int8_map, '.4f')}")
        table = Table(title=f"INT8 sensitivity ({order}; all quantized cosine: {full})")
        columns = [("rank", "right"), ("module", "left"), ("group", "left"),
                   ("layers", "right"), ("cosine", "right"), ("max-abs/scale", "right")]
        if self.fp32_map is not None:
            columns += [("mAP", "right"), ("mAP drop", "right")]
        for col, justify in (*columns, ("exclude with", "left")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for rank, g in enumerate(self.groups[:top], start=1):
            scored = () if self.fp32_map is None else (_fmt(g.map, ".4f"), _fmt(g.map_drop, "+.4f"))
            table.add_row(str(rank), g.module, g.group, str(len(g.nodes)), f"{g.cosine:.6f}",
                          f"{g.rel_max_abs:.2e}", *scored, " ".join(g.exclude))
        return table


    def narrow_table(self, top: int | None = None) -> RenderableType:
        """``table()`` for an 80-column terminal: short headers (the modules' as in
        ``inspect``'s census), the ``--exclude`` patterns numbered below the table, then the
        headers' legend, the ranking's basis and the all-quantized cosines as lines."""
        from rich.text import Text

        from bevdeploy.export.inspect import SHORT_NAMES
        from bevdeploy.tables import Footnotes, compact_table

        scored = self.fp32_map is not None
        table = compact_table(f"INT8 sensitivity, {self.granularity}s quantized one at a time "
                              f"(worst first)")
        for col in ("#", "module", "group", "n", "cosine", "err",
                    *(("mAP", "drop") if scored else ()), "ex"):
            left = col in ("module", "group", "ex")
            table.add_column(col, justify="left" if left else "right",
                             no_wrap=col != "group", overflow="fold")
        notes = Footnotes()
        shown = self.groups[:top]
        for rank, g in enumerate(shown, start=1):
            maps = (_fmt(g.map, ".4f"), _fmt(g.map_drop, "+.4f")) if scored else ()
            table.add_row(str(rank), SHORT_NAMES.get(g.module, g.module), g.group,
                          str(len(g.nodes)), f"{g.cosine:.6f}", f"{g.rel_max_abs:.1e}", *maps,
                          notes.ref(" ".join(g.exclude)))
        modules = sorted({g.module for g in shown if SHORT_NAMES.get(g.module, g.module)
                          != g.module})
        basis = f"{self.frames} calibration frames; ranked by "
        if scored:
            on = "" if self.evaluation is None else \
                f" on {self.evaluation['frames']} {self.evaluation['split']} frames"
            basis += (f"mAP drop{on}, then cosine; mAP FP32 {self.fp32_map:.4f}, all INT8 "
                      f"{_fmt(self.int8_map, '.4f')}")
        else:
            basis += "cosine"
        full = ", ".join(f"{m} {c:.5f}" for m, c in self.full.items())
        legend = ", ".join(f"{SHORT_NAMES[m]} = {m}" for m in modules)
        lines = [f"{legend}{'; ' if legend else ''}n: layers; err: max-abs error / scale; ex: the --exclude "
                 "patterns keeping the group float", basis,
                 f"all quantized, cosine: {full}"]
        return Group(table, *notes.render(), *(Text(line, overflow="fold") for line in lines))


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@dataclass(frozen=True)
class EvalSource:
    """Where the mAP probes' frames come from: ``frames`` frames spread over ``split`` of a
    nuScenes-format dataset (``data`` / ``version`` ``None``: the calibration dataset's)."""

    data: Path | None = None
    frames: int = 8
    version: str | None = None
    split: str = "mini_val"

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ConfigError(f"must be >= 1, got {self.frames}", field="sensitivity_frames")


@dataclass(frozen=True)
class EvalFrames:
    """The evaluation frames, loaded once and scored for every probe."""

    frames: tuple[Frame, ...]
    data: Path
    version: str
    split: str

    def describe(self) -> dict[str, Any]:
        """The report's record of what was scored."""
        return {"dataset": str(self.data), "version": self.version, "split": self.split,
                "frames": len(self.frames), "sample_tokens": [f.token for f in self.frames]}


def eval_frames(package: DeployPackage, data: Path, *, version: str, split: str, frames: int,
                calibrated: Collection[str]) -> EvalFrames:
    """Load ``frames`` frames spread over ``split``; refuse any that calibrated the ranges."""
    from bevdeploy.data.nuscenes import NuScenesLoader

    loader = NuScenesLoader(data, version=version, split=split, preset=package.preset)
    shared = sorted(set(loader.sample_tokens) & set(calibrated))
    if shared:
        raise ConfigError(f"split {split!r} shares {len(shared)} sample(s) with the calibration "
                          f"frames (e.g. {shared[0]}); INT8 ranges fitted to a frame flatter its "
                          f"score: evaluate on another split", path=data,
                          field="sensitivity_split")
    chosen = tuple(loader[i] for i in frame_indices(len(loader), frames))
    return EvalFrames(chosen, Path(data), version, split)


class MapScorer(Protocol):
    """What scores the groups' mAP: ``MapProbe`` here, or ``RayMapProbe`` on a cluster."""

    fp32_map: float

    def score(self, swaps: Mapping[str, onnx.ModelProto]) -> float: ...

    def scores(self, swaps: Iterable[Mapping[str, onnx.ModelProto]]) -> Iterator[float]: ...

    def describe(self) -> dict[str, Any]: ...


class MapProbe:
    """The FP32 package's pipeline, scored by the devkit on fixed frames, with chosen modules'
    runners swapped for in-memory models: the mAP of the whole detector with only those
    modules changed. One pipeline serves every probe (its geometry cache and the SCN executor
    are built once); a swap lasts for one ``score``."""

    def __init__(self, package: DeployPackage, frames: EvalFrames, *,
                 threads: int | None = None) -> None:
        self.pipeline = Pipeline(package, threads=threads)
        self.frames = frames
        self._options = RunnerOptions(threads=threads)
        self.fp32_map = self.score({})

    def scores(self, swaps: Iterable[Mapping[str, onnx.ModelProto]]) -> Iterator[float]:
        """``score`` of each of ``swaps``, one after the other."""
        return (self.score(s) for s in swaps)

    def describe(self) -> dict[str, Any]:
        """The report's record of what was scored (``EvalFrames.describe``)."""
        return self.frames.describe()

    def score(self, swaps: Mapping[str, onnx.ModelProto | bytes]) -> float:
        """Devkit mAP (all ten classes, ``DetectionEval``) with ``swaps`` in place (a model,
        or its serialized bytes as a Ray worker receives them)."""
        from bevdeploy.eval.nuscenes_eval import evaluate  # eval sits above optimize

        runners = self.pipeline.runners
        kept = {name: runners[name] for name in swaps}
        try:
            for name, model in swaps.items():
                runners[name] = self._runner(name, model)
            results = [(frame, self.pipeline.run(frame)) for frame in self.frames.frames]
        finally:
            runners.update(kept)
        with tempfile.TemporaryDirectory(prefix="bevdeploy-sensitivity-") as tmp:
            return evaluate(results, self.frames.data, tmp, version=self.frames.version,
                            split=self.frames.split).mean_ap

    def _runner(self, name: str, model: onnx.ModelProto | bytes) -> OnnxRuntimeRunner:
        pkg = self.pipeline.package
        entry = pkg.module(name)
        blob = model if isinstance(model, bytes) else model.SerializeToString()
        with callers_fp_env():  # ONNX Runtime's flush mode stays on its own threads
            session = ort.InferenceSession(blob, sess_options=session_options(self._options),
                                           providers=list(PROVIDERS))
        return OnnxRuntimeRunner(name, pkg.path(name), session, entry.inputs, entry.outputs)


def layer_groups(model: onnx.ModelProto, granularity: Granularity,
                 skip: Sequence[str] = (), within: Collection[str] | None = None
                 ) -> dict[str, list[str]]:
    """Group name → weighted node names, in graph order (``skip``: nodes kept in float;
    ``within``: the only nodes INT8 may touch, ``None``: all)."""
    groups: dict[str, list[str]] = {}
    for node in weighted_nodes(model):
        if node.name in skip or (within is not None and node.name not in within):
            continue
        key = node.name if granularity == "layer" else (node.name.rsplit("/", 2)[0] or node.name)
        groups.setdefault(key, []).append(node.name)
    return groups


def output_agreement(reference: Sequence[Sequence[np.ndarray]],
                     candidate: Sequence[Sequence[np.ndarray]]) -> tuple[float, float]:
    """Worst cosine and worst max-abs/scale over all frames and outputs (float64 maths)."""
    worst_cos, worst_rel = 1.0, 0.0
    for ref_frame, cand_frame in zip(reference, candidate):
        for ref, cand in zip(ref_frame, cand_frame):
            r = np.asarray(ref, np.float64).ravel()
            c = np.asarray(cand, np.float64).ravel()
            norm = np.linalg.norm(r) * np.linalg.norm(c)
            cosine = float(r @ c / norm) if norm > 0 else float(np.array_equal(r, c))
            scale = float(np.abs(r).max()) if r.size else 0.0
            rel = float(np.abs(c - r).max() / scale) if scale > 0 else 0.0
            if not np.all(np.isfinite(c)):
                cosine, rel = float("nan"), float("inf")
            worst_cos = cosine if np.isnan(cosine) else min(worst_cos, cosine)
            worst_rel = max(worst_rel, rel)
    return worst_cos, worst_rel


def run_all(model: onnx.ModelProto, feeds: Sequence[Feeds]) -> list[list[np.ndarray]]:
    """The model's outputs on every feed (ONNX Runtime CPU, default optimizations)."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [session.run(None, f) for f in feeds]


def in_reference_order(module: str, model: onnx.ModelProto,
                       reference: Sequence[Sequence[np.ndarray]],
                       candidate: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
    """``candidate``'s outputs with each proposal moved to its reference partner's place
    (``PROPOSAL_MODULES``; other modules' outputs unchanged): top-k lists near-equal scores in
    whatever order rounding gives them, which is no error of the values."""
    if module not in PROPOSAL_MODULES:
        return [list(frame) for frame in candidate]
    from bevdeploy.eval.compare.comparators import align_proposals  # eval sits above optimize

    names = [o.name for o in model.graph.output]
    aligned = []
    for ref, cand in zip(reference, candidate):
        order = align_proposals(dict(zip(names, ref)), dict(zip(names, cand)))
        aligned.append([np.asarray(c)[..., order] for c in cand])
    return aligned


def module_sensitivity(module: str, model: onnx.ModelProto, ranges: TensorsData,
                       feeds: Sequence[Feeds], options: Int8Options, *,
                       granularity: Granularity, exclude: Sequence[str] = (),
                       probe: MapScorer | None = None) -> tuple[float, list[GroupSensitivity]]:
    """(worst cosine fully quantized, per-group results) for one module; with ``probe``, each
    group's mAP too (each quantized group is handed to the probe as soon as it is made, so a
    parallel probe scores while the next group is quantized)."""
    reference = run_all(model, feeds)
    full = quantize(model, ranges, options, module=module, exclude=exclude)
    def agreement(quantized: onnx.ModelProto) -> tuple[float, float]:
        outputs = in_reference_order(module, model, reference, run_all(quantized, feeds))
        return output_agreement(reference, outputs)

    full_cos, _ = agreement(full)
    weighted = [n.name for n in weighted_nodes(model)]
    results: list[GroupSensitivity] = []

    def quantized_groups() -> Iterator[dict[str, onnx.ModelProto]]:
        for group, nodes in layer_groups(model, granularity, skip=exclude,
                                         within=recipe_scope(model, module)).items():
            quantized = quantize(model, ranges, options, module=module, only=nodes)
            cosine, rel = agreement(quantized)
            results.append(GroupSensitivity(module, group, tuple(nodes), cosine, rel,
                                            _patterns(module, group, nodes, weighted)))
            yield {module: quantized}

    if probe is None:
        for _ in quantized_groups():
            pass
        return full_cos, results
    scores = list(probe.scores(quantized_groups()))
    return full_cos, [replace(g, map=m, map_drop=probe.fp32_map - m)
                      for g, m in zip(results, scores)]


def _patterns(module: str, group: str, nodes: Sequence[str], weighted: Sequence[str]
              ) -> tuple[str, ...]:
    """``MODULE:GROUP/*`` when that glob selects exactly the group's weighted layers (the
    block's activations and adds then stay float with them), else one exact name per layer."""
    if len(nodes) > 1 or group != nodes[0]:
        glob = f"{group}/*"
        if [n for n in weighted if fnmatch.fnmatchcase(n, glob)] == list(nodes):
            return (f"{module}:{glob}",)
    return tuple(f"{module}:{n}" for n in nodes)


def rank(granularity: Granularity, frames: int, full: Mapping[str, float],
         groups: Sequence[GroupSensitivity], *, fp32_map: float | None = None,
         int8_map: float | None = None, evaluation: Mapping[str, Any] | None = None
         ) -> SensitivityReport:
    """Order the groups worst first: NaN (overflow) before any finite cosine, then the largest
    mAP drop (where measured), then the lowest cosine."""
    def key(g: GroupSensitivity) -> tuple[bool, float, float, float]:
        drop = 0.0 if g.map_drop is None else g.map_drop
        return not np.isnan(g.cosine), -drop, g.cosine, -g.rel_max_abs

    return SensitivityReport(granularity, frames, dict(full), tuple(sorted(groups, key=key)),
                             fp32_map, int8_map, evaluation)
