"""Where the runs of a matrix execute: a local process pool (default) or a Ray cluster.

A backend only *schedules*: every run goes through the same
:func:`stabilitybench.generate.worker.run_in_worker` → :func:`stabilitybench.generate.worker.run_one`, in a fresh
process per run, and hands its manifest row to the driver's ``record`` callback as it
finishes. The driver (:func:`stabilitybench.generate.runner.run_matrix`) is the only manifest writer.

A backend is a context manager (connect / start workers on enter, release on exit)
with ``describe()`` for the progress header and ``execute(specs, corpus, record)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from stabilitybench.generate.backends.local_pool import LocalPool
from stabilitybench.generate.backends.ray_cluster import RayCluster
from stabilitybench.generate.errors import BackendError
from stabilitybench.generate.spec import RunSpec

Record = Callable[[dict[str, Any]], None]

BACKENDS = ("local", "ray")


class Backend(Protocol):
    name: str

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc: object) -> None: ...

    def describe(self) -> str:
        """One line for the progress header: where the runs go and how many at once."""
        ...

    def execute(self, specs: list[RunSpec], corpus: Path, record: Record,
                stop: threading.Event | None = None) -> None:
        """Run every spec once (retrying dead workers where the backend can); ``record`` each row.

        Once ``stop`` is set: start nothing more, record every run that finished, stop the rest.
        """
        ...


def make_backend(name: str, *, workers: int = 0, address: str | None = None, cpus_per_run: int = 1,
                 max_retries: int = 3) -> Backend:
    """The backend named on the command line (``--backend``), with its options checked."""
    if name == "local":
        if address is not None:
            raise BackendError("--address is for --backend ray; the local backend runs on this machine")
        if cpus_per_run != 1:
            raise BackendError("--cpus-per-run is for --backend ray; the local pool gives every run one core")
        return LocalPool(workers or None)
    if name == "ray":
        if address is not None and workers:
            raise BackendError("--workers sizes a local Ray instance; with --address the cluster decides "
                               "(size it with `ray start --num-cpus`)")
        return RayCluster(address=address, num_cpus=workers or None, cpus_per_run=cpus_per_run,
                          max_retries=max_retries)
    raise BackendError(f"unknown backend {name!r} (available: {', '.join(BACKENDS)})")


__all__ = ["BACKENDS", "Backend", "LocalPool", "RayCluster", "Record", "make_backend"]
