"""Progress of long commands (``generate``, ``calibrate``, ``analyze``), in a terminal and in a log.

The one owner of how progress is shown. In a terminal it is rich's live bar on stderr (done/total,
tally, elapsed, ETA). When the output is not a terminal (``make quick > log``, CI, ``nohup``,
``| tee``) a live bar prints nothing, so instead every finished unit (a run, an analysis stage) is
a plain line on stdout, flushed at once::

    generate quick: 12/88 runs done (ok 11, failed 1), elapsed 3m05s, ETA 19m40s

Lines are rate-limited to one every :data:`DEFAULT_INTERVAL_S` seconds (``STABILITYBENCH_PROGRESS_SECONDS``
overrides it; 0 prints every unit); the final state is always printed when the work stops.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Seconds between two plain progress lines (the final line is always printed).
DEFAULT_INTERVAL_S = 5.0
#: Environment variable that sets the interval (seconds; 0 = a line for every finished unit).
INTERVAL_ENV = "STABILITYBENCH_PROGRESS_SECONDS"


def progress_interval() -> float:
    """The plain-line interval: :data:`INTERVAL_ENV` when it is a number >= 0, else :data:`DEFAULT_INTERVAL_S`."""
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value >= 0 else DEFAULT_INTERVAL_S


def output_is_terminal(console: Console, stream: TextIO | None = None) -> bool:
    """Whether a live bar can be seen: ``console`` (stderr) *and* ``stream`` (stdout) are terminals.

    ``make quick > log`` keeps stderr on the terminal but sends stdout to the log: that counts as
    not a terminal, so the log gets the plain lines.
    """
    stream = sys.stdout if stream is None else stream
    try:
        stream_tty = stream.isatty()
    except (AttributeError, ValueError):  # closed or a stand-in without isatty
        stream_tty = False
    return bool(console.is_terminal) and stream_tty


def format_duration(seconds: float | None) -> str:
    """``1h02m03s``, ``3m05s``, ``42s``; ``?`` for unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = max(round(seconds), 0)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{sec:02d}s"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"


class ProgressReporter:
    """Done/total of ``total`` units with a tally of failures, shown live in a terminal or as plain lines.

    Use as a context manager (or :meth:`start` / :meth:`stop`). Call :meth:`result` with each finished
    run's manifest row (or :meth:`advance` for any other unit), :meth:`note` for what is happening now,
    and :meth:`print` for a message that must not tear the live bar.

    ``live`` (default: :func:`output_is_terminal`) chooses the bar; ``interval`` (default:
    :func:`progress_interval`) rate-limits plain lines; ``tally=False`` leaves out the ok/failed
    counts (analysis stages do not fail one by one); ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "runs",
        *,
        console: Console | None = None,
        stream: TextIO | None = None,
        live: bool | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        tally: bool = True,
    ) -> None:
        self.label = label
        self.show_tally = tally
        self.total = int(total)
        self.unit = unit
        self.console = console or Console(stderr=True, soft_wrap=True, highlight=False)
        self.stream = stream
        self.live = output_is_terminal(self.console, stream) if live is None else live
        self.interval = progress_interval() if interval is None else max(float(interval), 0.0)
        self.clock = clock
        self.tally: Counter[str] = Counter()
        self.done = 0
        self.now = ""
        self._t0: float | None = None
        self._last_line: float | None = None
        self._printed_state: tuple[int, str] | None = None
        self._bar: Progress | None = None
        self._task: Any = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ProgressReporter:
        """Start the clock (and the live bar in a terminal); idempotent."""
        if self._t0 is not None:
            return self
        self._t0 = self.clock()
        if self.live:
            self._bar = Progress(
                SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[tally]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console, transient=False, redirect_stdout=False, redirect_stderr=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(escape(self.label), total=self.total, tally="")
        return self

    def stop(self) -> None:
        """Stop the bar, or print the final plain line if the last state was not printed yet; idempotent."""
        if self._t0 is None:
            return
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self._printed_state != (self.done, self.now) and (self.done or self.now):
            self._emit()
        self._t0 = None

    def __enter__(self) -> ProgressReporter:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ updates
    def set_total(self, total: int) -> None:
        """Change the number of units (e.g. analysis stages, known once the runs are loaded)."""
        self.total = int(total)
        if self._bar is not None:
            self._bar.update(self._task, total=self.total)

    def result(self, row: dict[str, Any]) -> None:
        """One finished run, from its manifest row (``status``, ``stop_reason``)."""
        self.advance(str(row.get("status") or "ok"), nonfinite=row.get("stop_reason") == "nonfinite")

    def advance(self, status: str = "ok", *, nonfinite: bool = False, note: str | None = None) -> None:
        """One unit finished with ``status`` (``ok`` or ``failed``); ``note`` replaces what is happening now."""
        self.start()
        self.done += 1
        self.tally[status] += 1
        if nonfinite:
            self.tally["nonfinite"] += 1
        if note is not None:
            self.now = note
        if self._bar is not None:
            self._bar.update(self._task, advance=1, tally=self._tally_markup())
        else:
            self._maybe_emit(final=self.done >= self.total)

    def note(self, text: str) -> None:
        """What is happening now (e.g. an analysis sub-stage): the bar's tally, or a rate-limited plain line."""
        self.start()
        self.now = text
        if self._bar is not None:
            self._bar.update(self._task, tally=self._tally_markup())
        else:
            self._maybe_emit(final=False)

    def print(self, text: str) -> None:
        """A message line (rich markup allowed): above the live bar, or on the console as it is."""
        (self._bar.console if self._bar is not None else self.console).print(text)

    # ------------------------------------------------------------------ text
    def eta_seconds(self) -> float | None:
        """Remaining seconds at the mean rate so far; None before the first finished unit."""
        if self._t0 is None or self.done == 0 or self.total == 0:
            return None
        elapsed = self.clock() - self._t0
        return elapsed / self.done * max(self.total - self.done, 0)

    def line(self) -> str:
        """The plain progress line for the current state."""
        elapsed = 0.0 if self._t0 is None else self.clock() - self._t0
        counts = [f"ok {self.tally['ok']}", f"failed {self.tally['failed']}"]
        counts += [f"{k} {v}" for k, v in sorted(self.tally.items()) if k not in ("ok", "failed", "nonfinite")]
        if self.tally["nonfinite"]:
            counts.append(f"non-finite {self.tally['nonfinite']}")
        tally = f" ({', '.join(counts)})" if self.show_tally else ""
        text = (f"{self.label}: {self.done}/{self.total or '?'} {self.unit} done{tally}, "
                f"elapsed {format_duration(elapsed)}, ETA {format_duration(self.eta_seconds())}")
        return text + (f"; {self.now}" if self.now else "")

    def _tally_markup(self) -> str:
        text = ""
        if self.show_tally:
            failed = self.tally["failed"]
            text = f"ok {self.tally['ok']}" + (f" [red]failed {failed}[/]" if failed else "")
            text += f" (non-finite {self.tally['nonfinite']})" if self.tally["nonfinite"] else ""
        return (text + (f" {escape(self.now)}" if self.now else "")).strip()

    def _maybe_emit(self, final: bool) -> None:
        now = self.clock()
        if final or self._last_line is None or now - self._last_line >= self.interval:
            self._emit()

    def _emit(self) -> None:
        out = self.stream if self.stream is not None else sys.stdout
        out.write(self.line() + "\n")
        out.flush()
        self._last_line = self.clock()
        self._printed_state = (self.done, self.now)
