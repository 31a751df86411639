"""The default backend: a spawn process pool on this machine, one run per worker process."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing as mp
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import spawn
from pathlib import Path
from typing import Any

from stabilitybench.generate.spec import RunSpec
from stabilitybench.generate.worker import died_row, run_in_worker


def _skip_interpreter_teardown() -> None:
    """The last exit handler of a pool worker: flush the streams, then ``os._exit`` (see :func:`_run_in_pool`)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:  # C-level stdio buffers (native libraries printing to the run's log)
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass
    os._exit(0)


def _worker_init(driver_pid: int) -> None:
    """Set up a pool worker: Ctrl-C is the driver's to handle, and the worker dies with its driver.

    The terminal sends SIGINT to the whole process group; the driver decides what stops (see
    :func:`stabilitybench.generate.runner.run_matrix`), so workers ignore it. A watchdog thread kills the
    worker as soon as its parent is no longer the driver (the driver died, even by SIGKILL):
    otherwise an orphaned run would go on training while a rerun trains it a second time.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the driver starts workers with both signals blocked (see generate.runner._stop_on_signals): a pending
    # Ctrl-C is now dropped, and a pending SIGTERM (the driver stopping it) takes effect
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})

    def watchdog() -> None:
        while os.getppid() == driver_pid:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watchdog, name="driver-watchdog", daemon=True).start()


def _run_in_pool(spec: RunSpec, corpus: str) -> dict[str, Any]:
    """The pool's task: :func:`~stabilitybench.generate.worker.run_in_worker`, in a process that skips teardown.

    A worker serves one run and then exits. Finalising an interpreter that holds torch, SB3 and MuJoCo
    takes about a second of CPU (measured: 0.98 s, against 0.10 s with this), which on a busy machine
    is taken from the runs still training. The run's files are written, fsynced and closed before the
    result is sent, and the result is sent before the worker exits, so skipping the teardown loses
    nothing. The handler is registered first, so it runs after every other exit handler (LIFO).
    """
    atexit.register(_skip_interpreter_teardown)
    return run_in_worker(spec, corpus)


class LocalPool:
    """``workers`` runs at a time (default: every core), each in a fresh spawned process with one torch thread.

    ``max_tasks_per_child=1`` gives each run a clean interpreter (MuJoCo, torch and the
    fd redirect of :func:`~stabilitybench.generate.worker.run_in_worker` all hold process state). A
    killed worker breaks the pool: its runs in flight are recorded as failed and the
    pool is rebuilt for the rest, so one OOM kill never stops the matrix.
    """

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def describe(self) -> str:
        return f"{self.workers} local worker(s)"

    def execute(self, specs: list[RunSpec], corpus: Path, record: Callable[[dict[str, Any]], None],
                stop: threading.Event | None = None) -> None:
        """Run ``specs``; when ``stop`` is set, start nothing more, record what finished, stop the workers."""

        stop = stop or threading.Event()
        pending = list(specs)
        ctx = mp.get_context("spawn")
        with _workers_born_ignoring_sigint(ctx):
            self._execute(ctx, pending, corpus, record, stop)

    def _execute(self, ctx: Any, pending: list[RunSpec], corpus: Path, record: Callable[[dict[str, Any]], None],
                 stop: threading.Event) -> None:
        while pending and not stop.is_set():
            pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, max_tasks_per_child=1,
                                       initializer=_worker_init, initargs=(os.getpid(),))
            in_flight: dict[Future[dict[str, Any]], RunSpec] = {}
            broken = False
            try:
                while (pending or in_flight) and not broken and not stop.is_set():
                    while pending and len(in_flight) < self.workers:
                        spec = pending.pop(0)
                        in_flight[pool.submit(_run_in_pool, spec, str(corpus))] = spec
                    finished, _ = wait(in_flight, timeout=0.2, return_when=FIRST_COMPLETED)
                    broken = _collect(in_flight, finished, record)
                if stop.is_set():  # a run that finished while we waited is recorded, not lost
                    _collect(in_flight, [f for f in in_flight if f.done() and not f.exception()], record)
                elif broken:  # a worker was killed (OOM, signal): the runs in flight died with it
                    for spec in in_flight.values():
                        record(died_row(spec))
                    in_flight.clear()
            finally:
                if in_flight:  # stopped, or an error while recording: the runs still training are abandoned
                    _stop_workers(pool)
                pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _workers_born_ignoring_sigint(ctx: Any) -> Iterator[None]:
    """Spawned workers start with SIGINT ignored, from their first instruction.

    The terminal sends Ctrl-C to the whole process group, and a worker that is still starting up
    (importing torch, pyarrow, ...) would die of it with a traceback before its initializer can
    ignore it. A blocked signal mask is no help: the spawned interpreter starts with an empty mask.
    An *ignored* disposition survives ``exec`` and Python keeps SIGINT ignored when it starts that way,
    so the pool spawns its workers through a two-line ``/bin/sh`` wrapper that ignores SIGINT and
    ``exec``s this interpreter. The driver itself still gets Ctrl-C (see ``stabilitybench.generate.runner``).
    """
    fd, wrapper = tempfile.mkstemp(prefix="stabilitybench-worker-", suffix=".sh")
    with os.fdopen(fd, "w") as f:
        f.write(f"#!/bin/sh\ntrap '' INT\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    os.chmod(wrapper, 0o700)
    previous = spawn.get_executable()
    ctx.set_executable(wrapper)
    try:
        yield
    finally:
        ctx.set_executable(previous)
        with contextlib.suppress(OSError):
            os.unlink(wrapper)


def _collect(in_flight: dict[Future[dict[str, Any]], RunSpec], futures: Iterable[Future[dict[str, Any]]],
             record: Callable[[dict[str, Any]], None]) -> bool:
    """Record finished futures (removing them from ``in_flight``); True if one found the pool broken."""
    dead = False
    for fut in futures:
        spec = in_flight.pop(fut)
        try:
            row = fut.result()
        except BrokenProcessPool:
            dead = True
            row = died_row(spec)
        except Exception as exc:  # raised outside run_one's own handler (e.g. its log could not be opened)
            text = str(exc).strip().splitlines()
            row = died_row(spec, f"{type(exc).__name__}: {text[0] if text else ''} (in the worker process)")
        record(row)
    return dead


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate a pool's worker processes (their runs leave no file but temporaries, removed on resume)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # no public API for this
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
