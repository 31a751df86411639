"""Execute a matrix of run specs: resumable, one run per process, results into the corpus.

* :func:`run_one` is *the* function that trains one spec and writes its files. Every
  backend calls it (through :func:`run_in_worker`); it returns the run's manifest row
  and never raises for a training failure (a failed run is a row with ``status = "failed"``).
* :func:`plan` splits specs into done / to-run by looking at the corpus: a run is
  done when its steps and events files validate. A run whose files are complete but
  whose manifest row was lost (driver killed between the two writes) is recovered
  from the manifest row stored in its steps file's metadata.
* :func:`run_matrix` hands the pending specs to a backend (:mod:`generate.backends`:
  a local process pool, or Ray) and rewrites ``manifest.parquet`` atomically after
  every finished run. The driver is the only writer of the manifest; workers write
  only their own run's files, so a retried or duplicated attempt cannot duplicate data.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from data_schema import (
    EVENTS_SCHEMA,
    RUN_METADATA_KEY,
    SCHEMA_VERSION,
    STEPS_SCHEMA,
    CorruptFileError,
    SchemaError,
    events_path,
    read_manifest,
    remove_stale_temps,
    run_metadata,
    steps_path,
    write_manifest,
    write_table,
)
from data_schema.compat import upgrade_schema
from data_schema.schema import DIMENSIONS
from generate.costs import longest_first
from generate.perturbations import perturbation_class
from generate.registry import generator_for
from generate.spec import RunSpec
from generate.version import code_version

if TYPE_CHECKING:
    from generate.backends import Backend

LOG_DIR = "logs"


# ---------------------------------------------------------------------------- one run
def run_one(spec: RunSpec, corpus: str | os.PathLike[str], num_threads: int = 1) -> dict[str, Any]:
    """Train ``spec``, write its steps and events files atomically, return its manifest row.

    ``num_threads`` is torch's intra-op thread count: the cores this run was given
    (1 on the local pool; a Ray task's ``num_cpus``).
    """
    import torch  # imported here so the driver process stays light

    torch.set_num_threads(num_threads)
    corpus = Path(corpus)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    row = base_row(spec)
    for path in (events_path(corpus, spec.run_id), steps_path(corpus, row)):
        remove_stale_temps(path)  # left by an earlier attempt of this run that was killed mid-write
    row["started_at"] = started
    try:
        result = generator_for(spec.domain, spec.algo).load()(spec)
        row.update(
            onset_step=result.onset_step,
            planned_updates=result.planned_updates,
            n_updates=result.steps.num_rows,
            stop_reason=result.stop_reason,
            tokenizer_hash=result.tokenizer_hash,
            # torch_threads: intra-op threads can change float reduction order, so it is part of the config
            config_json=json.dumps({"spec": spec.to_dict(), "algo_config": result.config,
                                    "torch_threads": torch.get_num_threads()}, sort_keys=True),
            status="ok",
            run_wall_time_s=time.perf_counter() - t0,
            **result.knobs,
        )
        # events first, steps last: the steps file (carrying the manifest row) marks completion
        write_table(result.events, events_path(corpus, spec.run_id), EVENTS_SCHEMA)
        meta = {RUN_METADATA_KEY: json.dumps(row).encode()}
        write_table(result.steps, steps_path(corpus, row), STEPS_SCHEMA, extra_metadata=meta)
    except Exception as exc:
        row.update(status="failed", error=_one_line(exc), run_wall_time_s=time.perf_counter() - t0, stop_reason=None)
        log = corpus / LOG_DIR / f"{spec.run_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())
    return row


def run_in_worker(spec: RunSpec, corpus: str, num_threads: int = 1) -> dict[str, Any]:
    """Every backend's entry point: ``run_one`` with the worker's stdout/stderr going to the run's log.

    Native libraries (MuJoCo's compiler, for one) print straight to file descriptors 1
    and 2, which would tear through the progress bar; one run per process (both backends
    guarantee it) makes the redirect safe, and the output is kept in
    ``<corpus>/logs/<run_id>.out``.
    """
    log = Path(corpus, LOG_DIR, f"{spec.run_id}.out")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        return run_one(spec, corpus, num_threads)


def base_row(spec: RunSpec) -> dict[str, Any]:
    """The manifest columns known before the run starts."""
    kind = perturbation_class(spec.perturbation)
    dimension = kind.dimension
    assert dimension in DIMENSIONS
    return {
        "run_id": spec.run_id,
        "domain": spec.domain,
        "algo": spec.algo,
        "env": spec.env,
        "seed": spec.seed,
        "perturbation": spec.perturbation,
        "dimension": dimension,
        "magnitude": spec.magnitude,
        "onset_frac": spec.onset_frac,
        "duration_steps": spec.duration_steps,
        "stochasticity": spec.stochasticity,
        "coherence_window": spec.coherence_window,
        "total_steps": spec.total_steps,
        "status": "running",
        "error": None,
        "code_version": code_version(),
        "schema_version": SCHEMA_VERSION,
        "config_json": json.dumps({"spec": spec.to_dict()}, sort_keys=True),
    }


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


# ------------------------------------------------------------------------------ plan
@dataclass
class Plan:
    """Which specs of a matrix are done and which still have to run."""

    done: list[RunSpec] = field(default_factory=list)
    todo: list[RunSpec] = field(default_factory=list)
    failed_before: list[RunSpec] = field(default_factory=list)  # in todo: failed last time
    recovered: list[dict[str, Any]] = field(default_factory=list)  # rows rebuilt from steps metadata
    rows: list[dict[str, Any]] = field(default_factory=list)  # the current manifest rows


def outputs_valid(corpus: str | os.PathLike[str], row: dict[str, Any]) -> bool:
    """True if the run's steps and events files exist, match schema v1 and agree on size.

    Reads only the Parquet footers (schema + row counts), so checking a large corpus is cheap.
    """
    try:
        steps = pq.ParquetFile(steps_path(corpus, row))
        events = pq.ParquetFile(events_path(corpus, row["run_id"]))
        if not upgrade_schema(steps.schema_arrow, "steps").remove_metadata().equals(STEPS_SCHEMA.remove_metadata()):
            return False
        if not upgrade_schema(events.schema_arrow, "events").remove_metadata().equals(
                EVENTS_SCHEMA.remove_metadata()):
            return False
        expected = row.get("n_updates")
        return expected is None or steps.metadata.num_rows == expected
    except (OSError, ValueError, SchemaError, CorruptFileError):
        return False


def plan(specs: Iterable[RunSpec], corpus: str | os.PathLike[str]) -> Plan:
    corpus = Path(corpus)
    rows = read_manifest(corpus).to_pylist() if corpus.exists() else []
    by_id = {r["run_id"]: r for r in rows}
    result = Plan(rows=rows)
    for spec in specs:
        row = by_id.get(spec.run_id)
        if row is not None and row["status"] == "ok" and outputs_valid(corpus, row):
            result.done.append(spec)
            continue
        if row is None:
            meta = run_metadata(steps_path(corpus, base_row(spec)))
            if meta is not None and outputs_valid(corpus, meta):
                result.done.append(spec)
                result.recovered.append(meta)
                continue
        if row is not None and row["status"] == "failed":
            result.failed_before.append(spec)
        result.todo.append(spec)
    result.rows = rows + result.recovered
    return result


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
    """
    from generate.backends import LocalPool

    corpus = Path(corpus)
    t0 = time.perf_counter()
    the_plan = plan(specs, corpus)
    rows = list(the_plan.rows)
    if the_plan.recovered:
        write_manifest(corpus, rows)
    report = MatrixReport(skipped=len(the_plan.done), recovered=len(the_plan.recovered))

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        write_manifest(corpus, rows)  # atomic rewrite: a killed driver loses at most this row
        report.ran += 1
        if row["status"] == "ok":
            report.ok += 1
        else:
            report.failed += 1
            report.failures.append(row)
        if on_result is not None:
            on_result(row)

    if not the_plan.todo:
        if on_start is not None:
            on_start(the_plan)
    else:
        backend = backend or LocalPool(workers)
        with backend:  # connect first: a backend that cannot start leaves no trace in the corpus
            corpus.mkdir(parents=True, exist_ok=True)
            if on_start is not None:
                on_start(the_plan)
            # longest first, so the matrix does not end waiting on one long run that started last
            backend.execute(longest_first(the_plan.todo, rows), corpus, record)
    report.wall_time_s = time.perf_counter() - t0
    return report


WORKER_DIED = "worker process died (killed or crashed); rerun generate to retry"


def died_row(spec: RunSpec, error: str = WORKER_DIED) -> dict[str, Any]:
    """The manifest row of a run whose worker died before it could return one."""
    row = base_row(spec)
    row.update(status="failed", error=error)
    return row
