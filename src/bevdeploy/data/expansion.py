"""How big an unpickled object really is, measured before anything is built from it.

A pickle stores an object once and refers to it again with a two-byte memo lookup, so a 1.5 KB
info file can hold a list whose items are the same list, nine levels deep: cheap to unpickle,
but ``np.asarray`` on it asks for gigabytes (an 11 GiB allocation, then a raw ``MemoryError``).
``check_expansion`` walks the object as the readers will, counting every element each time it
is reached (a shared list counts once per reference), strings and arrays by their length, and
stops as soon as the count passes a budget proportional to the file's size: a file written
without such sharing never comes near it, since every element it holds costs at least one byte
of the file. A container is walked once: reached again, it adds the size and height recorded
the first time, so a file built of shared references is refused after walking only the objects
it really holds (milliseconds, not a walk of the whole budget). Cycles (a list holding itself)
and deep nesting are refused too; the walk is iterative, so a deep object cannot exhaust the
interpreter's stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bevdeploy.errors import BevDeployError

# Every element of a file without shared references costs at least one byte of it; the factor
# leaves room for short strings and scalars stored once and referenced from many records.
ELEMENTS_PER_BYTE = 4
MIN_ELEMENTS = 1_000_000
MAX_DEPTH = 32  # an info file nests 5 deep (infos → info → cams → camera → matrix rows)


def expansion_budget(file_bytes: int) -> int:
    """The element count a file of ``file_bytes`` may expand to."""
    return MIN_ELEMENTS + ELEMENTS_PER_BYTE * file_bytes


def check_expansion(obj: Any, budget: int, *, path: Path, error: type[BevDeployError]) -> int:
    """Count the elements of ``obj`` with shared references expanded, up to ``budget``; return
    the count, or raise ``error`` naming ``path`` when it passes the budget, holds a cycle or
    nests deeper than ``MAX_DEPTH``."""
    count = 0
    # (object, depth, entered): ``entered`` (the count when the container was entered) marks
    # its exit, when its expanded size and height are recorded for every later reference
    stack: list[tuple[Any, int, int | None]] = [(obj, 0, None)]
    on_path: set[int] = set()
    walked: dict[int, tuple[int, int]] = {}  # id → (expanded size, height) of a container
    while stack:
        item, depth, entered = stack.pop()
        if entered is not None:
            on_path.discard(id(item))
            height = 1 + max((walked[id(c)][1] for c in _children(item) or ()
                              if id(c) in walked), default=0)
            walked[id(item)] = (count - entered, height)
            continue
        start = count
        if id(item) in walked:  # a container reached again: what its first walk found
            size, reach = walked[id(item)]
            count += size
            children = None
        else:
            count += _weight(item)
            children = _children(item)
            reach = 0 if children is None else 1
        if count + len(children or ()) > budget:
            raise error(f"expands to more than {budget:,} elements (the bound for a file of "
                        "this size): the same objects are referenced over and over, as no "
                        "converter writes them; refused before building arrays", path=path,
                        field="file")
        if depth + reach > MAX_DEPTH:
            raise error(f"nested more than {MAX_DEPTH} levels deep; refused", path=path,
                        field="file")
        if children is None:
            continue
        if id(item) in on_path:
            raise error("holds a container that contains itself; refused", path=path,
                        field="file")
        on_path.add(id(item))
        stack.append((item, depth, start))
        stack.extend((child, depth + 1, None) for child in children)
    return count


def _weight(item: Any) -> int:
    if isinstance(item, (str, bytes, bytearray)):
        return 1 + len(item) // 8
    if isinstance(item, np.ndarray):
        return 1 + item.size if item.dtype != object else 1
    return 1


def _children(item: Any) -> list[Any] | None:
    """The items a reader may turn into an array, or None for a leaf."""
    if isinstance(item, Mapping):
        return [*item.keys(), *item.values()]
    if isinstance(item, (list, tuple, set, frozenset)):
        return list(item)
    if isinstance(item, np.ndarray) and item.dtype == object:
        return list(item.ravel())
    return None
