"""Execute a matrix of run specs: resumable, one run per process, results into the corpus.

* :func:`plan` splits specs into done / to-run by looking at the corpus: a run is
  done when its steps and events files validate. A run whose files are complete but
  whose manifest row was lost (driver killed between the two writes) is recovered
  from the manifest row stored in its steps file's metadata.
* :func:`run_matrix` hands the pending specs to a backend (:mod:`stabilitybench.generate.backends`:
  a local process pool, or Ray) and rewrites ``manifest.parquet`` atomically after
  every finished run. The driver is the only writer of the manifest; workers write
  only their own run's files, so a retried or duplicated attempt cannot duplicate data.

One run in its worker process (:func:`~stabilitybench.generate.worker.run_one`, the function that trains
one spec and writes its files; it returns the run's manifest row and never raises for a training
failure) lives in :mod:`stabilitybench.generate.worker`, which every backend calls; the runner imports
the backends, and nothing there imports the runner.
"""

from __future__ import annotations

import _thread
import contextlib
import errno
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from stabilitybench.data_schema import (
    MANIFEST,
    CorruptFileError,
    read_manifest,
    run_metadata,
    steps_path,
    write_manifest,
)
from stabilitybench.data_schema.corpus import STEPS_DIR
from stabilitybench.data_schema.errors import DiskFullError
from stabilitybench.data_schema.integrity import Problem, check_run
from stabilitybench.data_schema.io import remove_stale_temps_tree
from stabilitybench.data_schema.lock import CorpusLock
from stabilitybench.generate.backends import Backend, LocalPool
from stabilitybench.generate.costs import longest_first
from stabilitybench.generate.errors import Interrupted
from stabilitybench.generate.spec import RunSpec
from stabilitybench.generate.worker import LOG_DIR, base_row


# ------------------------------------------------------------------------------ plan
@dataclass
class Plan:
    """Which specs of a matrix are done and which still have to run."""

    done: list[RunSpec] = field(default_factory=list)
    todo: list[RunSpec] = field(default_factory=list)
    failed_before: list[RunSpec] = field(default_factory=list)  # in todo: failed last time
    recovered: list[dict[str, Any]] = field(default_factory=list)  # rows rebuilt from steps metadata
    rows: list[dict[str, Any]] = field(default_factory=list)  # the current manifest rows
    damaged: list[Problem] = field(default_factory=list)  # files of runs the manifest says ok; in todo
    upgraded: int = 0  # ok rows of an older manifest whose file hashes were computed now
    notes: list[str] = field(default_factory=list)  # what the driver repaired before planning


def outputs_valid(corpus: str | os.PathLike[str], row: dict[str, Any]) -> bool:
    """True if the run's steps and events files exist, match schema v1, the recorded sizes and hashes."""
    return not check_run(corpus, row)[0]


def plan(specs: Iterable[RunSpec], corpus: str | os.PathLike[str],
         rows: list[dict[str, Any]] | None = None) -> Plan:
    """Split ``specs`` into done and to-run against the corpus (``rows``: the manifest, read if None).

    A run is done when its manifest row is ok and :func:`stabilitybench.data_schema.integrity.check_run`
    finds nothing wrong with its files (size and hash as recorded, schema v1, row count);
    a run with no row whose steps file carries a valid row in its metadata is recovered.
    """
    corpus = Path(corpus)
    if rows is None:
        rows = read_manifest(corpus).to_pylist() if corpus.exists() else []
    by_id = {r["run_id"]: r for r in rows}
    result = Plan(rows=rows)
    for spec in specs:
        row = by_id.get(spec.run_id)
        if row is not None and row["status"] == "ok":
            problems, hashes = check_run(corpus, row)
            if not problems:
                result.done.append(spec)
                if hashes:
                    row.update(hashes)
                    result.upgraded += 1
                continue
            result.damaged += problems
        if row is None:
            meta = run_metadata(steps_path(corpus, base_row(spec)))
            if meta is not None and meta.get("run_id") == spec.run_id:
                problems, hashes = check_run(corpus, meta)
                if not problems:
                    result.done.append(spec)
                    result.recovered.append({**meta, **hashes})
                    continue
        if row is not None and row["status"] == "failed":
            result.failed_before.append(spec)
        result.todo.append(spec)
    result.rows = rows + result.recovered
    return result


def load_rows_for_writing(corpus: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The manifest rows, for a driver that holds the corpus lock; repairs what a dead writer left.

    Removes stale temporary files, and moves a corrupt manifest aside
    (``manifest.parquet.corrupt-<UTC time>``) and rebuilds it from the metadata of every
    valid steps file in the corpus (failed runs, which have no steps file, will rerun).
    Returns ``(rows, notes)``: one line per repair.
    """
    notes = []
    stale = remove_stale_temps_tree(corpus)
    if stale:
        notes.append(f"removed {len(stale)} temporary file(s) left by a writer that died")
    try:
        return read_manifest(corpus).to_pylist(), notes
    except CorruptFileError as exc:
        aside = corpus / f"{MANIFEST}.corrupt-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
        os.replace(corpus / MANIFEST, aside)
        rows = rebuild_rows(corpus)
        write_manifest(corpus, rows)
        notes.append(f"{corpus / MANIFEST} was corrupt ({str(exc).split(': ', 1)[-1]}); moved it aside to "
                     f"{aside.name} and rebuilt {len(rows)} row(s) from the steps files' metadata")
        return rows, notes


def rebuild_rows(corpus: Path) -> list[dict[str, Any]]:
    """Manifest rows of every run whose steps file carries its row and whose files check out."""
    rows = []
    for path in sorted(Path(corpus, STEPS_DIR).rglob("*.parquet")):
        if path.name.startswith("."):
            continue
        meta = run_metadata(path)
        if meta is None or f"{meta.get('run_id')}.parquet" != path.name:
            continue
        try:
            problems, hashes = check_run(corpus, meta)
        except KeyError:  # metadata without the partition keys: not ours
            continue
        if not problems:
            rows.append({**meta, **hashes})
    return rows


# ----------------------------------------------------------------------------- matrix
@dataclass
class MatrixReport:
    ran: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    recovered: int = 0
    wall_time_s: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)


ProgressFn = Callable[[dict[str, Any]], None]


def run_matrix(
    specs: list[RunSpec],
    corpus: str | os.PathLike[str],
    workers: int | None = None,
    on_start: Callable[[Plan], None] | None = None,
    on_result: ProgressFn | None = None,
    backend: Backend | None = None,
) -> MatrixReport:
    """Run every pending spec on ``backend`` (default: a local pool of ``workers``); resumable, idempotent.

    ``on_start`` sees the plan before anything runs (with the backend already connected,
    so it can describe it); ``on_result`` sees every finished manifest row (the CLI drives
    its progress bar with these). Which backend ran a run does not matter to :func:`plan`,
    so a matrix started on one backend can be finished on the other.

    The driver holds the corpus lock (:class:`stabilitybench.data_schema.lock.CorpusLock`) from planning to
    the last manifest write. SIGINT and SIGTERM stop it cleanly: no new run starts, every
    finished run is recorded, the workers are stopped, and :class:`Interrupted` is raised.
    A full disk raises :class:`~stabilitybench.data_schema.errors.DiskFullError` with the corpus consistent.
    """
    corpus = Path(corpus)
    t0 = time.perf_counter()
    lock = CorpusLock(corpus, "stabilitybench generate")
    try:
        notes: list[str] = []
        rows_now = None
        if corpus.is_dir():
            lock.acquire()
            rows_now, notes = load_rows_for_writing(corpus)
        the_plan = plan(specs, corpus, rows_now)
        the_plan.notes = notes
        rows = list(the_plan.rows)
        if the_plan.recovered or the_plan.upgraded:
            _write_manifest(corpus, rows, len(the_plan.todo))
        report = MatrixReport(skipped=len(the_plan.done), recovered=len(the_plan.recovered))

        def record(row: dict[str, Any]) -> None:
            rows.append(row)
            _write_manifest(corpus, rows, len(the_plan.todo) - report.ran)  # atomic: a killed driver loses this row
            report.ran += 1
            if row["status"] == "ok":
                report.ok += 1
            else:
                report.failed += 1
                report.failures.append(row)
                _log_failure(corpus, row)
            if on_result is not None:
                on_result(row)
            if f"[Errno {errno.ENOSPC}]" in str(row.get("error") or ""):
                raise _disk_full(corpus, corpus, rows, len(the_plan.todo) - report.ran)

        if not the_plan.todo:
            if on_start is not None:
                on_start(the_plan)
        else:
            backend = backend or LocalPool(workers)
            with backend:  # connect first: a backend that cannot start leaves no trace in the corpus
                if not lock.held:
                    corpus.mkdir(parents=True, exist_ok=True)
                    lock.acquire()
                if on_start is not None:
                    on_start(the_plan)
                stop = threading.Event()
                with _stop_on_signals(stop):
                    # longest first, so the matrix does not end waiting on one long run that started last
                    backend.execute(longest_first(the_plan.todo, rows), corpus, record, stop)
                if stop.is_set():
                    done = len(the_plan.done) + report.ok
                    raise Interrupted(done, len(specs) - done)
        report.wall_time_s = time.perf_counter() - t0
        return report
    finally:
        lock.release()


def _write_manifest(corpus: Path, rows: list[dict[str, Any]], left: int) -> None:
    try:
        write_manifest(corpus, rows)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _disk_full(corpus, Path(exc.filename or corpus / MANIFEST), rows, left) from None
        raise


def _disk_full(corpus: Path, path: Path, rows: list[dict[str, Any]], left: int) -> DiskFullError:
    """The one-line error of a full disk: where, how much is free and about how much the rest needs."""
    sizes = [int(r.get("steps_bytes") or 0) + int(r.get("events_bytes") or 0) for r in rows
             if r.get("status") == "ok" and r.get("steps_bytes")]
    free = shutil.disk_usage(corpus).free if corpus.exists() else 0
    need = (f"about {sum(sizes) / len(sizes) * max(left, 1) / 1e6:,.1f} MB more for the {left} run(s) left"
            if sizes else f"space for the {left} run(s) left")
    return DiskFullError(f"no space left on device writing {path} ({free / 1e6:,.1f} MB free; needs {need}); "
                         "the corpus is consistent: free some space and rerun to resume")


def _log_failure(corpus: Path, row: dict[str, Any]) -> None:
    """A failed run whose worker died wrote no traceback: leave its one-line error in ``logs/<run_id>.log``."""
    log = corpus / LOG_DIR / f"{row['run_id']}.log"
    try:
        if not log.exists():
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(f"{row.get('error')}\n(no traceback: the process running it died; its output is in "
                           f"{row['run_id']}.out)\n")
    except OSError:
        pass


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """While active, SIGINT and SIGTERM set ``stop``; a second one raises KeyboardInterrupt in the main thread.

    The signals are *blocked* in the driver's threads and taken by a ``sigwait`` thread. A blocked
    mask is inherited by every worker process the driver starts meanwhile, so a Ctrl-C sent to the
    whole process group cannot interrupt a worker that is still starting up (before its initializer
    ignores SIGINT and unblocks both signals: see :mod:`stabilitybench.generate.backends.local_pool`).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = {signal.SIGINT, signal.SIGTERM}
    closing = threading.Event()

    def wait_for_signals() -> None:
        while True:
            signal.sigwait(sigs)
            if closing.is_set():
                return
            if stop.is_set():
                _thread.interrupt_main()
            stop.set()

    def handler(signum: int, frame: object) -> None:  # a thread started earlier (e.g. rich's) took the signal
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    old_handlers = {sig: signal.signal(sig, handler) for sig in sigs}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    waiter = threading.Thread(target=wait_for_signals, name="stop-on-signals", daemon=True)
    waiter.start()
    try:
        yield
    finally:
        closing.set()
        signal.pthread_kill(waiter.ident, signal.SIGTERM)  # wakes the sigwait, which sees `closing`
        waiter.join(timeout=5)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for sig, previous in old_handlers.items():
            signal.signal(sig, previous)
