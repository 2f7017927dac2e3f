"""The results of a ``compare`` run: one ``StageResult`` per stage and frame, one ``BoxResult``
per frame, and the ``CompareReport`` that holds them, prints them as a table (worst case over
the frames) and writes them as strict JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table

from bevdeploy.eval.compare.comparators import BoxMetrics, TensorMetrics
from bevdeploy.eval.compare.tolerances import BOXES, STAGES, Tolerances
from bevdeploy.tables import Footnotes, compact_table, shape_text, with_notes


@dataclass(frozen=True)
class StageResult:
    """One stage of one frame: its metrics against the tolerance of ``precision``."""

    stage: str
    frame: int
    token: str
    precision: str
    metrics: TensorMetrics
    passed: bool
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class BoxResult:
    """The end-to-end boxes of one frame."""

    frame: int
    token: str
    precision: str
    metrics: BoxMetrics
    passed: bool
    notes: tuple[str, ...] = ()


@dataclass
class CompareReport:
    """Every comparison of a ``compare`` run. ``passed`` is what the CLI turns into its exit
    status (0 when every stage of every frame passes)."""

    package: str
    checkpoint: str | None  # file name the reference loaded, None for random weights
    backend: str
    tolerances: dict[str, Tolerances]  # per stage name (and "boxes")
    stages: list[StageResult] = field(default_factory=list)
    boxes: list[BoxResult] = field(default_factory=list)
    saved: list[Path] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.stages) and all(r.passed for r in self.boxes)

    @property
    def failed_stages(self) -> list[str]:
        """Names of the stages (``"boxes"`` included) that failed on any frame, in order."""
        failed = {r.stage for r in self.stages if not r.passed}
        names = [s.name for s in STAGES if s.name in failed]
        return names + ([BOXES.name] if any(not r.passed for r in self.boxes) else [])

    def stage(self, name: str) -> list[StageResult]:
        """The results of one stage, one per frame."""
        return [r for r in self.stages if r.stage == name]

    def table(self) -> Table:
        """One row per stage, worst case over the frames, then the end-to-end boxes."""
        verdict = "[green]PASS[/green]" if self.passed else "[red]FAIL[/red]"
        weights = self.checkpoint or "random weights"
        t = Table(title=f"compare {escape(self.package)} ({escape(weights)}, {self.backend}): "
                        f"{verdict}")
        for col, justify in (("stage", "left"), ("precision", "left"), ("shape", "left"),
                             ("max-abs", "right"), ("mean-abs", "right"),
                             ("max-abs/scale", "right"), ("cosine", "right"),
                             ("NaN/Inf ref|dep", "right"), ("result", "left"),
                             ("notes", "left")):
            t.add_column(col, justify=justify)  # type: ignore[arg-type]
        for stage in STAGES:
            rows = self.stage(stage.name)
            if rows:
                t.add_row(*_stage_row(stage.name, rows))
        if self.boxes:
            t.add_section()
            t.add_row(*_box_row(self.boxes))
        return t

    def narrow_table(self) -> RenderableType:
        """The table for an 80-column terminal: the worst case per stage (largest max-abs
        error, its ratio to the reference's scale, the smallest cosine, NaN/Inf counts) with
        compact numbers and shapes, the precision in the title when every stage shares one, the
        notes numbered under it; ``table()`` has every column."""
        verdict = "[green]PASS[/green]" if self.passed else "[red]FAIL[/red]"
        precisions = sorted({r.precision for r in [*self.stages, *self.boxes]})
        mixed = len(precisions) > 1
        weights = escape(self.checkpoint or "random weights")
        t = compact_table(f"compare {escape(self.package)} ({weights}, {self.backend}"
                          + ("" if mixed else f", all {''.join(precisions)}")
                          + f"): {verdict}")
        for col in ("stage", *(("prec",) if mixed else ()), "shape", "max|Δ|", "/scale",
                    "cosine", "NaN", "result"):
            t.add_column(col, justify="left" if col in ("stage", "prec", "shape", "result")
                         else "right", no_wrap=col == "stage")
        notes = Footnotes()
        for stage in STAGES:
            rows = self.stage(stage.name)
            if not rows:
                continue
            ms = [r.metrics for r in rows]
            full = _stage_row(stage.name, rows)
            t.add_row(stage.name, *((full[1],) if mixed else ()), shape_text(_shape(rows)),
                      _fmt(_extreme((m.max_abs for m in ms), max), ".2g"),
                      _fmt(_extreme((m.rel_max_abs for m in ms), max), ".1e"),
                      _fmt(_extreme((m.cosine for m in ms), min), ".5f"), full[7],
                      f"{full[8]} {notes.ref(full[9])}".rstrip())
        if self.boxes:
            full = _box_row(self.boxes)
            t.add_section()
            t.add_row(full[0], *((full[1],) if mixed else ()), full[2], "", "", "", full[7],
                      f"{full[8]} {notes.ref(full[9])}".rstrip())
        return with_notes(t, notes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "package": self.package, "checkpoint": self.checkpoint, "backend": self.backend,
            "passed": self.passed, "failed_stages": self.failed_stages,
            "stage_definitions": [asdict(s) for s in (*STAGES, BOXES)],
            "tolerances": {name: asdict(t) for name, t in self.tolerances.items()},
            "stages": [_jsonable(asdict(r)) for r in self.stages],
            "boxes": [_jsonable({**asdict(r), "metrics": {
                **asdict(r.metrics), "unmatched_fraction": r.metrics.unmatched_fraction}})
                for r in self.boxes],
            "saved": [str(p) for p in self.saved],
        }

    def to_json(self) -> str:
        """Strict JSON (non-finite numbers become the strings "nan", "inf", "-inf")."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _fmt(x: float, spec: str) -> str:
    return "-" if math.isnan(x) else format(x, spec)


def _extreme(values: Iterable[float], pick: Any) -> float:
    """``pick`` (``max`` or ``min``) of the values that are not NaN; NaN when none is."""
    kept = [v for v in values if not math.isnan(v)]
    return pick(kept) if kept else math.nan


def _notes(rows: Sequence[StageResult | BoxResult]) -> str:
    """The notes of the first failing frame (else the first with notes), naming the frame when
    there are several and how many others fail; the JSON report holds every frame's."""
    annotated = [r for r in rows if r.notes]
    if not annotated:
        return ""
    shown = next((r for r in annotated if not r.passed), annotated[0])
    text = "; ".join(shown.notes)
    if len(rows) == 1:
        return text
    others = sum(not r.passed for r in rows if r is not shown)
    return f"frame {shown.frame}: {text}" + (f" (+{others} more failing)" if others else "")


def _result(rows: Sequence[StageResult | BoxResult]) -> str:
    failed = sum(not r.passed for r in rows)
    return "[green]pass[/green]" if not failed else f"[red]FAIL[/red] ({failed}/{len(rows)})"


def _shape(rows: list[StageResult]) -> object:
    """The one shape of a stage's tensors (a list), or its description when they differ."""
    shapes = {(r.metrics.shape_reference, r.metrics.shape_deployed) for r in rows}
    if len(shapes) == 1:
        a, b = next(iter(shapes))
        if a == b:
            return list(a)
    return "; ".join(f"{list(a)} vs {list(b)}" for a, b in shapes)


def _stage_row(name: str, rows: list[StageResult]) -> list[str]:
    """Worst case over the frames: largest errors, smallest cosine, summed NaN/Inf counts."""
    ms = [r.metrics for r in rows]
    shapes = {(m.shape_reference, m.shape_deployed) for m in ms}
    shape = "; ".join(str(list(a)) if a == b else f"{list(a)} vs {list(b)}" for a, b in shapes)
    return [name, ",".join(sorted({r.precision for r in rows})), shape,
            _fmt(_extreme((m.max_abs for m in ms), max), ".3g"),
            _fmt(_extreme((m.mean_abs for m in ms), max), ".3g"),
            _fmt(_extreme((m.rel_max_abs for m in ms), max), ".2e"),
            _fmt(_extreme((m.cosine for m in ms), min), ".6f"),
            f"{sum(m.nonfinite_reference for m in ms)}|{sum(m.nonfinite_deployed for m in ms)}",
            _result(rows), _notes(rows)]


def _box_row(rows: list[BoxResult]) -> list[str]:
    ms = [r.metrics for r in rows]
    summary = (f"matched {sum(m.matched for m in ms)}, without partner "
               f"{sum(m.unmatched_reference for m in ms)} ref / "
               f"{sum(m.unmatched_deployed for m in ms)} dep; centre ≤ "
               f"{_fmt(_extreme((m.max_centre_m for m in ms), max), '.3g')} m, IoU ≥ "
               f"{_fmt(_extreme((m.min_iou for m in ms), min), '.4f')}, |Δscore| ≤ "
               f"{_fmt(_extreme((m.max_score_delta for m in ms), max), '.2e')}")
    notes = summary if all(r.passed for r in rows) else \
        f"matched {sum(m.matched for m in ms)}; {_notes(rows)}"
    return [BOXES.name, ",".join(sorted({r.precision for r in rows})),
            f"{sum(m.judged_reference for m in ms)} ref, {sum(m.judged_deployed for m in ms)} dep",
            "", "", "", "",
            f"{sum(m.nonfinite_reference for m in ms)}|{sum(m.nonfinite_deployed for m in ms)}",
            _result(rows), notes]
