"""Reading a user's YAML file (presets, rig calibration) with ``yaml.safe_load`` only.

``safe_load`` never constructs Python objects; a file that asks for one (a ``!!python/...``
tag, the classic way to make ``yaml.load`` run code) is refused as an ``UnsafeFileError``
rather than reported as a mere syntax error, so that a fleet operator sees that someone tried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bevdeploy.errors import BevDeployError, UnsafeFileError, os_reason

_PYTHON_TAG = "tag:yaml.org,2002:python/"


def load_yaml_file(path: str | Path, error: type[BevDeployError], *,
                   field: str | None = None) -> Any:
    """The parsed document of ``path``; a missing, unreadable or malformed file raises
    ``error`` naming the file (and ``field``), a Python-object tag raises ``UnsafeFileError``."""
    p = Path(path)
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
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


def _reason(exc: Exception) -> str:
    """PyYAML's multi-line message as one line: the problem and where it is."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem is None:
        return " ".join(str(exc).split())
    where = "" if mark is None else f" (line {mark.line + 1}, column {mark.column + 1})"
    return f"{problem}{where}"
