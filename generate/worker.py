"""One run of a matrix, in its own worker process: train the spec, write its files, return its manifest row.

Every backend (:mod:`stabilitybench.generate.backends`) runs :func:`run_in_worker` (which calls
:func:`run_one`) in a fresh process per run, and makes :func:`died_row` for a worker that died
before returning. The run's files are written by
:func:`stabilitybench.data_schema.run_writer.write_run` (``manifest=False``): the driver
(:func:`stabilitybench.generate.runner.run_matrix`) holds the corpus lock and is the only writer of
the manifest. This module imports neither the runner nor the backends, so the runner can import
the backends and the backends this.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from stabilitybench.data_schema import SCHEMA_VERSION, events_path, remove_stale_temps, steps_path
from stabilitybench.data_schema.run_writer import write_run
from stabilitybench.data_schema.schema import DIMENSIONS
from stabilitybench.generate.perturbations import perturbation_class
from stabilitybench.generate.registry import generator_for
from stabilitybench.generate.spec import RunSpec
from stabilitybench.generate.version import code_version

#: Folder of the corpus holding each run's worker output (``<run_id>.out``) and failure traceback (``.log``).
LOG_DIR = "logs"


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
        # the driver holds the corpus lock and writes the manifest: this worker writes only the run's files
        write_run(corpus, row, result.steps, result.events, manifest=False)
    except Exception as exc:
        row.update(status="failed", error=_one_line(exc), run_wall_time_s=time.perf_counter() - t0, stop_reason=None)
        try:
            log = corpus / LOG_DIR / f"{spec.run_id}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
        except OSError:  # e.g. the disk is full: the row still carries the error
            pass
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


WORKER_DIED = "worker process died (killed or crashed); rerun generate to retry"


def died_row(spec: RunSpec, error: str = WORKER_DIED) -> dict[str, Any]:
    """The manifest row of a run whose worker died before it could return one."""
    row = base_row(spec)
    row.update(status="failed", error=error)
    return row
