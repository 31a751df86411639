"""Exceptions of the corpus contract.

:class:`StabilityBenchError` is the root of every error a user can cause (a bad
profile, a missing corpus, a corrupt file). The CLI prints such errors as one line
and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
import warnings
from collections.abc import Callable
from typing import Any


class StabilityBenchError(Exception):
    """Base class of all user-facing StabilityBench errors."""


class SchemaError(StabilityBenchError):
    """A table or file does not match its declared schema; names the file and column."""


class NewerSchemaError(SchemaError):
    """A corpus file was written by a newer schema version than this code reads: upgrade, touch nothing."""


class CorruptFileError(StabilityBenchError):
    """A file exists but cannot be read as Parquet."""


class CorpusNotFoundError(StabilityBenchError):
    """The corpus directory (or a table in it) does not exist."""


class OutputPathError(StabilityBenchError):
    """An output path cannot be written (it is a file, the filesystem is read-only, ...)."""


class DiskFullError(StabilityBenchError):
    """The disk filled up while writing the corpus; the corpus is consistent and a rerun resumes."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): how a library's multi-line
    error becomes part of a one-line user error."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class SkippedRunsWarning(UserWarning):
    """A reader left out runs whose files are missing or damaged (``stabilitybench verify`` names them).

    Readers that take a ``notes`` list append the same line there instead of warning; the CLIs
    print it as one ``warning:`` line.
    """


def exit_on_user_error(entry: Callable[[], object]) -> None:
    """Run a command-line entry point; a :class:`StabilityBenchError` becomes one line and exit status 2.

    The one place every CLI (``stabilitybench``, ``python -m stabilitybench.generate|analysis|reports``)
    turns user errors into output. The message is escaped, so brackets in paths print as
    they are instead of being read as rich markup. A :class:`SkippedRunsWarning` a reader
    raises on the way prints as one ``warning:`` line (no source location).
    """
    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, SkippedRunsWarning):
            _print_warning(str(message))
        else:
            shown(message, category, *args, **kwargs)

    warnings.showwarning = show
    try:
        entry()
    except StabilityBenchError as exc:
        _print_error(str(exc))
        sys.exit(2)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        _print_error(f"no space left on device writing {exc.filename or 'a file'}; files are written atomically, "
                     "so free some space and rerun")
        sys.exit(2)
    except KeyboardInterrupt:
        from rich.console import Console

        Console(stderr=True).print("interrupted", highlight=False)
        sys.exit(130)
    finally:
        warnings.showwarning = shown


def _print_error(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _print_warning(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)
