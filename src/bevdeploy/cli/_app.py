"""The Typer application and the error policy every command shares.

Every command turns a ``BevDeployError`` into one red line and the exit code of its class,
Ctrl-C into one line and exit 130, SIGTERM (a scheduler's or ``kill``'s stop) into one
``terminated`` line and exit 143 after the same orderly ending as Ctrl-C, and any other exception
(a bug) into one line and exit 70 (the table is in ``bevdeploy.errors``); ``--debug`` shows the
traceback instead. Every output directory goes through ``claim_output`` (``bevdeploy.io``'s
lock and ``--overwrite`` rule). Heavy imports (torch,
the model) happen inside the commands that need them, so ``bevdeploy doctor`` and the runtime
commands work on a machine without PyTorch.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import typer
from rich.console import Console
from rich.markup import escape
from typer.exceptions import TyperException

from bevdeploy import __version__
from bevdeploy.errors import (EXIT_CODE_HELP, INTERNAL_EXIT, INTERRUPTED_EXIT, PARTIAL_EXIT,
                              TERMINATED_EXIT, BevDeployError, Terminated)

if TYPE_CHECKING:
    from bevdeploy.frame_loop import FrameLoop
    from bevdeploy.io import OutputDir

app = typer.Typer(add_completion=False, no_args_is_help=True, epilog=EXIT_CODE_HELP,
                  help="BEVFusion from a PyTorch checkpoint to a fast, verified deployment.")
presets_app = typer.Typer(no_args_is_help=True, help="List and show model presets.")
app.add_typer(presets_app, name="presets")

console = Console()
err_console = Console(stderr=True)
_state: dict[str, Any] = {"debug": False}


def _reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print a ``BevDeployError`` as one line and exit with its class's code; Ctrl-C and any
    other exception likewise, with codes 130 and 70 (``--debug``: raise, with the traceback)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _sigterm_raises(), ExitStack() as outputs:
                _state["outputs"] = outputs
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, TyperException):
            raise  # typer's own exits and usage errors
        except BevDeployError as exc:
            if _state["debug"]:
                raise
            _error_line(f"[red]error[/red] ({type(exc).__name__})", _with_notes(exc))
            raise typer.Exit(exc.exit_code) from None
        except Terminated:
            if _state["debug"]:
                raise
            _error_line("[red]terminated[/red]", "SIGTERM")
            raise typer.Exit(TERMINATED_EXIT) from None
        except KeyboardInterrupt:
            if _state["debug"]:
                raise
            _error_line("[red]interrupted[/red]", "Ctrl-C")
            raise typer.Exit(INTERRUPTED_EXIT) from None
        except Exception as exc:
            if _state["debug"]:
                raise
            _error_line(f"[red]internal error[/red] ({type(exc).__name__})",
                        f"{_with_notes(exc)} — a bug in bevdeploy: rerun with "
                        "`bevdeploy --debug ...` for the traceback to report")
            raise typer.Exit(INTERNAL_EXIT) from None
    return wrapper


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` in the main thread while a command runs, so that it ends
    like Ctrl-C (finished frames written, one line, exit 143) instead of dying mid-write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def claim_output(out: Path, *, overwrite: bool, flag: str = "--out",
                 replaceable: Callable[[Path], None] | None = None,
                 locked: bool = True) -> OutputDir:
    """The command's output directory (``bevdeploy.io.OutputDir``: locked, refused when it
    exists without ``--overwrite`` or when ``replaceable`` refuses it, written in a staging
    directory that ``commit`` swaps in); released, and the staging directory removed if never
    committed, when the command ends. ``flag`` is the option that named ``out``."""
    from bevdeploy.io import OutputDir

    return _state["outputs"].enter_context(OutputDir(out, overwrite=overwrite, out_flag=flag,
                                                     replaceable=replaceable, locked=locked))


def claim_workdir(out: Path) -> None:
    """Lock a working directory that a command reuses across runs (``demo --out``) until the
    command ends: a second writer is refused, naming the holder."""
    from bevdeploy.io import OutputLock

    _state["outputs"].enter_context(OutputLock(out))


def _with_notes(exc: BaseException) -> str:
    """The message and, on the same line, the notes added on the way up (e.g. which frame of a
    stream failed, ``Pipeline.run_stream``)."""
    notes = [str(n) for n in getattr(exc, "__notes__", ())]
    return str(exc) + "".join(f" ({note})" for note in notes)


def _error_line(head: str, text: str) -> None:
    """``head: text`` on stderr; ``text`` is printed verbatim (a ``[field]`` is not markup)."""
    err_console.print(f"{head}: {escape(text)}", highlight=False, soft_wrap=True)


def command(group: typer.Typer = app, name: str | None = None) -> Callable[..., Any]:
    """``group.command`` with the error policy applied."""
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        return group.command(name)(_reports_errors(fn))
    return register


def warn(text: str) -> None:
    """A yellow warning line on stderr."""
    err_console.print(f"[yellow]warning[/yellow]: {text}")


def finish(loop: FrameLoop) -> None:
    """End a multi-frame command with its outcome: re-raise what stopped it (the error, Ctrl-C:
    exit 130, SIGTERM: exit 143), or exit 8 when frames were skipped."""
    loop.raise_if_ended()
    if loop.failures:
        err_console.print(f"[yellow]partial[/yellow]: {len(loop.failures)} of {loop.total} "
                          f"frame(s) skipped (--on-error skip)", highlight=False)
        raise typer.Exit(PARTIAL_EXIT)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"bevdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
          version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    _state["debug"] = debug
    # spconv 2.3.8 indexes with a list inside dense(); the warning is its own, not the user's.
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional "
                            "indexing is deprecated", category=UserWarning)
    # ...and torch.fx warns once per process when spconv asks whether it is being traced.
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
