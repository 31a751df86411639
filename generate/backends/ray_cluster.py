"""The Ray backend: every pending run is one Ray task calling the same ``run_in_worker`` as the local pool.

* A task declares ``num_cpus = cpus_per_run`` (torch gets that many threads) and, for
  GPT-2 sizes that want a GPU (``small``), ``num_gpus = 1``; Ray places it on a node
  with those resources free.
* ``max_calls=1``: a fresh worker process per run, as on the local pool.
* ``max_retries``: a task whose worker died (killed, OOM-killed, node lost) is rerun
  by Ray. That is safe because a run's files are written atomically and named by its
  ``run_id``, and the manifest row is written by the driver only when a result comes back.
* The driver collects results with ``ray.wait`` and records each row as it arrives, so
  a killed driver loses no finished run (and :func:`stabilitybench.generate.runner.plan` recovers a
  run whose files landed but whose row did not).

Workers write to the ``--out`` path themselves, so on a multi-node cluster it must be
a filesystem every node mounts at the same path (docs/guides/cluster.md).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from stabilitybench.generate.errors import BackendError
from stabilitybench.generate.registry import gpus_for
from stabilitybench.generate.spec import RunSpec
from stabilitybench.generate.worker import died_row, run_in_worker

INSTALL_HINT = "pip install -e '.[ray]' (or pip install 'ray[default]>=2.52')"
#: Object store of a local instance: results are small dicts, so don't reserve 30% of RAM in /dev/shm.
LOCAL_OBJECT_STORE_BYTES = 128 * 1024**2
#: Tries of a Ray Client (``ray://``) connection, this many seconds apart. The head's client proxy spawns one
#: server process per connection; on a busy head that start can fail once ("Initialization failure from
#: server: ... Starting Ray client server failed") and succeed on the next connection.
CLIENT_CONNECT_TRIES, CLIENT_RETRY_DELAY_S = 3, 5.0


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BackendError(f"--backend ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray



def _one_line(exc: BaseException) -> str:
    """The error in one line: its first line, and when that only introduces a server-side traceback
    (Ray Client's "Initialization failure from server:"), the traceback's last line, which names the cause."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[-1]}"
    return lines[0]

class RayCluster:
    """Run specs as Ray tasks on a cluster (``address``) or on a Ray instance started on this machine.

    ``address``: ``None`` starts a local instance with ``num_cpus`` CPUs (default: all);
    ``"auto"`` joins the cluster this machine belongs to (``ray start`` ran here);
    ``"host:port"`` a head node's GCS; ``"ray://host:10001"`` a cluster through Ray Client.
    If Ray is already initialised in this process (a notebook, a test), that session is used.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, cpus_per_run: int = 1,
                 max_retries: int = 3) -> None:
        if cpus_per_run < 1:
            raise BackendError(f"--cpus-per-run must be at least 1, got {cpus_per_run}")
        if max_retries < 0:
            raise BackendError(f"--max-retries must be >= 0, got {max_retries}")
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_run = cpus_per_run
        self.max_retries = max_retries
        self._ray: Any = None
        self._owns_session = False

    # ------------------------------------------------------------------ connection
    def __enter__(self) -> RayCluster:
        ray = self._ray = _import_ray()
        if ray.is_initialized():
            return self
        if self.address not in (None, "auto"):
            _check_reachable(self.address)
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        if self.address is None:  # "local": a new instance even if `ray start` ran here (init would join that)
            kwargs.update(address="local", num_cpus=self.num_cpus, include_dashboard=False,
                          object_store_memory=LOCAL_OBJECT_STORE_BYTES)
        else:
            kwargs.update(address=self.address)
        tries = CLIENT_CONNECT_TRIES if str(self.address).startswith("ray://") else 1
        for attempt in range(1, tries + 1):
            try:
                ray.init(**kwargs)
                break
            except (ConnectionError, RuntimeError, ValueError) as exc:
                if attempt < tries:
                    ray.shutdown()  # a failed Ray Client init can leave a half-made context behind
                    time.sleep(CLIENT_RETRY_DELAY_S)
                    continue
                self._raise_unreachable(exc)
        self._owns_session = True
        return self

    def _raise_unreachable(self, exc: BaseException) -> NoReturn:
        """The one-line error of a failed ``ray.init``."""
        where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray instance"
        hint = (" (if the cluster uses token auth: export RAY_AUTH_MODE=token and its token as RAY_AUTH_TOKEN "
                "or in ~/.ray/auth_token; `ray get-auth-token` on the head prints it)" if self.address else "")
        raise BackendError(f"cannot start or reach {where}: {_one_line(exc)}{hint}") from None

    def __exit__(self, *exc: object) -> None:
        if self._owns_session:
            self._ray.shutdown()
            self._owns_session = False

    def _nodes(self) -> list[dict[str, float]]:
        return [n.get("Resources", {}) for n in self._ray.nodes() if n.get("Alive")]

    def describe(self) -> str:
        nodes = self._nodes()
        cpus = sum(n.get("CPU", 0) for n in nodes)
        gpus = sum(n.get("GPU", 0) for n in nodes)
        where = f"Ray cluster at {self.address}" if self.address else "a local Ray instance"
        return (f"{where}: {len(nodes)} node(s), {cpus:g} CPU(s), {gpus:g} GPU(s); "
                f"{self.cpus_per_run} CPU(s) per run, up to {self.max_retries} retries")

    # ------------------------------------------------------------------- execution
    def resources(self, spec: RunSpec) -> dict[str, int]:
        """What one run's task asks Ray for."""
        return {"num_cpus": self.cpus_per_run, "num_gpus": gpus_for(spec)}

    def check_feasible(self, specs: list[RunSpec], requests: list[dict[str, int]]) -> None:
        """Fail before submitting anything if a run needs more than any node has (it would wait forever)."""
        nodes = self._nodes()
        for spec, need in zip(specs, requests, strict=True):
            if not any(n.get("CPU", 0) >= need["num_cpus"] and n.get("GPU", 0) >= need["num_gpus"] for n in nodes):
                largest = max(((n.get("CPU", 0), n.get("GPU", 0)) for n in nodes), default=(0, 0))
                what = f"{need['num_cpus']} CPU(s)" + (f" and {need['num_gpus']} GPU" if need["num_gpus"] else "")
                raise BackendError(
                    f"run {spec.run_id} ({spec.domain}/{spec.algo}) needs {what} on one node, but the largest "
                    f"node of the Ray cluster has {largest[0]:g} CPU(s) and {largest[1]:g} GPU(s)")

    def execute(self, specs: list[RunSpec], corpus: Path, record: Callable[[dict[str, Any]], None],
                stop: threading.Event | None = None) -> None:
        """Submit every spec and record rows as they finish; once ``stop`` is set, record what finished, cancel
        the rest."""

        ray = self._ray
        requests = [self.resources(spec) for spec in specs]  # resolves each run's config once
        self.check_feasible(specs, requests)
        # absolute, not resolved: workers start in another folder, and a symlinked mount must keep its name
        out = os.path.abspath(corpus)
        task = ray.remote(max_calls=1)(run_in_worker)
        in_flight: dict[Any, RunSpec] = {}
        for spec, res in zip(specs, requests, strict=True):
            ref = task.options(**res, max_retries=self.max_retries, retry_exceptions=False,
                               name=f"stabilitybench:{spec.run_id}").remote(spec, out, res["num_cpus"])
            in_flight[ref] = spec
        stop = stop or threading.Event()
        try:
            while in_flight:
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
                if stop.is_set():  # finished runs are recorded below, the others cancelled in `finally`
                    done, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0)
                for ref in done:
                    spec = in_flight.pop(ref)
                    try:
                        row = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        row = died_row(spec, _task_error(exc, self.max_retries))
                    record(row)
                if stop.is_set():
                    break
        finally:
            for ref in in_flight:  # stopped, interrupted or failed while recording: stop what still runs
                ray.cancel(ref, force=True)


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a wrong ``host:port`` (``ray.init`` itself retries for minutes)."""
    hostport = address.removeprefix("ray://").rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise BackendError(f"--address {address!r} must be auto, host:port or ray://host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise BackendError(f"cannot reach the Ray cluster at {address!r}: {exc.strerror or exc} "
                           "(is `ray start --head` running there, and is the port open?)") from None


def _task_error(exc: BaseException, max_retries: int) -> str:
    """One line for a run whose Ray task failed as a task (not as a training failure)."""
    from ray.exceptions import RayTaskError

    if isinstance(exc, RayTaskError):  # run_in_worker itself raised: e.g. --out not writable on that node
        cause = exc.cause if exc.cause is not None else exc
        text = str(cause).strip().splitlines()
        return f"{type(cause).__name__} in the Ray task: {text[0] if text else ''}"
    text = str(exc).strip().splitlines()
    return (f"Ray worker died on every attempt ({max_retries + 1}): {type(exc).__name__}: "
            f"{text[0] if text else ''}; rerun generate to retry")
