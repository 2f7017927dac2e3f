"""Tables that fit a terminal: long prose out of the cells, into numbered notes below.

A rich table squeezed into 80 columns folds every cell, and a notes column of sentences ends up
one word per line, which nobody reads. The reports (``compare``, ``optimize``, ``bench``,
``inspect``) therefore build a narrow table by default: short headers, compact cells, and the
prose as footnotes under the table (``Footnotes``); ``--wide`` prints the full table at the
width it needs and ``--json`` writes everything for machines. ``print_report`` is how the CLI
prints any of them.
"""

from __future__ import annotations

from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

WIDE_COLUMNS = 240  # --wide: wide enough that no report folds a cell


class Footnotes:
    """Numbered notes for the cells of one table: ``ref(text)`` returns the marker to put in
    the cell (``[1]``; the same text gets the same number), ``render()`` the notes."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def ref(self, text: str) -> str:
        if not text:
            return ""
        if text not in self.notes:
            self.notes.append(text)
        return f"[{self.notes.index(text) + 1}]"

    def render(self) -> list[Text]:
        return [Text(f"[{i}] {note}", overflow="fold") for i, note in enumerate(self.notes, 1)]


def compact_table(title: str) -> Table:
    """A table with the narrow style the reports share: no vertical rules, one space of
    padding (every column costs two characters, not three)."""
    return Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False,
                 show_edge=False, collapse_padding=True, title_justify="left")


def with_notes(table: Table, notes: Footnotes) -> RenderableType:
    """The table and its notes below it, as one renderable."""
    return Group(table, *notes.render()) if notes.notes else table


def shape_text(shape: object) -> str:
    """``[1, 32, 128, 128]`` → ``1×32×128×128`` (a third shorter, never split by a wrap)."""
    if isinstance(shape, (list, tuple)):
        return "×".join(str(s) for s in shape) or "scalar"
    return escape(str(shape))


def print_report(console: Console, renderable: RenderableType, *, wide: bool = False) -> None:
    """Print one report: at the terminal's width, or unfolded at ``WIDE_COLUMNS`` with
    ``wide`` (for a pager or a file)."""
    if wide:
        Console(width=WIDE_COLUMNS, file=console.file, color_system=console.color_system,
                highlight=False).print(renderable, crop=False)
    else:
        console.print(renderable)
