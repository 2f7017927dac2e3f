"""Reading a user's YAML file (presets, rig calibration) with ``yaml.safe_load`` only.

``safe_load`` never constructs Python objects; a file that asks for one (a ``!!python/...``
tag, the classic way to make ``yaml.load`` run code) is refused as an ``UnsafeFileError``
rather than reported as a mere syntax error, so that a fleet operator sees that someone tried.

Parsing is bounded before it allocates: the file may hold at most ``MAX_YAML_BYTES`` (read
with a cap, so a FIFO or a device cannot feed it forever) and at most ``MAX_YAML_NODES`` nodes
nested at most ``MAX_YAML_DEPTH`` deep, *counting every alias as the value it stands for*. An
alias (``*name``) is how a 2.7 KB file stands for billions of elements (the "billion laughs");
PyYAML's own dumper writes aliases for shared values, so they are accepted, but each one adds
the size of its value to the count where the composer meets it, before anything is expanded.
An alias to a value that contains it (a cycle) is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bevdeploy.errors import BevDeployError, UnsafeFileError, os_reason

_PYTHON_TAG = "tag:yaml.org,2002:python/"
MAX_YAML_BYTES = 4 << 20  # a preset is ~3 KB, a 12-camera rig ~10 KB
MAX_YAML_NODES = 100_000  # PyYAML holds ~0.5 KB per node while composing: ~50 MB at most
MAX_YAML_DEPTH = 64  # the composer recurses; a preset nests 4 deep


class _Refused(yaml.YAMLError):
    """A bound of this module was exceeded (the message says which, with the position)."""


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that counts nodes, aliases expanded, and their depth as it composes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0
        self._done: dict[int, tuple[int, int]] = {}  # id(node) → (expanded nodes, height)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        where = _mark(event.start_mark)
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self._done:
                raise _Refused(f"the alias *{event.anchor}{where} refers to a value that "
                               "contains it")
            size, height = self._done[id(node)]
            self._count(size, self._depth + height, where)
            return node
        self._count(1, self._depth + 1, where)
        start = self._nodes
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._done[id(node)] = (self._nodes - start + 1, 1 + max(
            (self._done.get(id(child), (0, 0))[1] for child in _children(node)), default=0))
        return node

    def _count(self, nodes: int, depth: int, where: str) -> None:
        self._nodes += nodes
        if self._nodes > MAX_YAML_NODES:
            raise _Refused(f"more than {MAX_YAML_NODES:,} values, aliases expanded{where}")
        if depth > MAX_YAML_DEPTH:
            raise _Refused(f"nested more than {MAX_YAML_DEPTH} levels deep, aliases "
                           f"expanded{where}")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml_text(text: str) -> Any:
    """The document of ``text`` under the bounds of this module (``yaml.YAMLError`` when
    malformed or beyond a bound)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path, error: type[BevDeployError], *,
                   field: str | None = None) -> Any:
    """The parsed document of ``path``; a missing, unreadable, oversized, malformed or
    alias-using file raises ``error`` naming the file (and ``field``), a Python-object tag
    raises ``UnsafeFileError``."""
    p = Path(path)
    try:
        with p.open("rb") as handle:
            raw = handle.read(MAX_YAML_BYTES + 1)
        if len(raw) > MAX_YAML_BYTES:
            raise error(f"larger than {MAX_YAML_BYTES >> 20} MiB: not a preset or rig file",
                        path=p, field=field)
        return load_yaml_text(raw.decode("utf-8"))
    except FileNotFoundError:
        raise error("file not found", path=p, field=field) from None
    except OSError as exc:
        raise error(f"cannot read: {os_reason(exc)}", path=p, field=field) from None
    except yaml.constructor.ConstructorError as exc:
        if _PYTHON_TAG in str(exc.problem):
            raise UnsafeFileError(f"refused: the YAML asks to construct a Python object "
                                  f"({_reason(exc)}); nothing was run", path=p,
                                  field=field) from None
        raise error(f"not valid YAML: {_reason(exc)}", path=p, field=field) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise error(f"not valid YAML: {_reason(exc)}", path=p, field=field) from None


def _mark(mark: Any) -> str:
    return "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"


def _reason(exc: Exception) -> str:
    """PyYAML's multi-line message as one line: the problem and where it is."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem is None:
        return " ".join(str(exc).split())
    where = "" if mark is None else f" (line {mark.line + 1}, column {mark.column + 1})"
    return f"{problem}{where}"
