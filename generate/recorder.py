"""The public run recorder: buffers ``steps``/``events`` rows and writes them into a corpus.

A :class:`Recorder` is one run. It fills in the columns every row needs (``run_id``,
``step``, ``samples_seen``, ``wall_time_s``, the partition columns), and :meth:`Recorder.close`
writes the events file, then the steps file (carrying the manifest row in its metadata, as the
runner does), then the manifest row, all through :mod:`data_schema`'s atomic writers. The
corpus then reads with ``stabilitybench query``/``analyze``/``report`` and with plain DuckDB.

``close`` runs on leaving a ``with Recorder(...)`` block, including on an exception or a
``KeyboardInterrupt``: the rows recorded so far are written (``stop_reason`` ``interrupted``
or ``error``), so an interrupted run leaves a valid, shorter steps file. The project's own
generators use a Recorder without a corpus (``corpus=None``) and hand its tables to the runner.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from data_schema import (
    EVENTS_SCHEMA,
    RUN_METADATA_KEY,
    SCHEMA_VERSION,
    STEPS_SCHEMA,
    events_path,
    read_manifest,
    steps_path,
    write_manifest,
    write_table,
)
from data_schema.integrity import file_digest
from data_schema.lock import CorpusLock, CorpusLockedError
from data_schema.schema import DOMAINS


class Recorder:
    """One run's telemetry buffer and, with a ``corpus``, its writer.

    Parameters
    ----------
    corpus:
        Corpus folder to write into on :meth:`close` (created if missing), or None to only buffer.
    run_name:
        A human name; with the other identity fields it determines ``run_id`` (a stable hash).
    domain, algo, env, seed:
        Manifest/partition values. ``domain`` is ``rl`` or ``lm``; ``algo``/``env`` are free text.
    config:
        Anything JSON-serialisable describing the run (hyperparameters); stored in ``config_json``.
    total_steps:
        Planned samples (env steps or tokens), if known; else the final ``samples_seen``.
    run_id:
        Use this id instead of hashing (the generators pass their spec's ``run_id``).
    """

    def __init__(
        self,
        corpus: str | os.PathLike[str] | None,
        run_name: str = "run",
        *,
        domain: str = "rl",
        algo: str = "custom",
        env: str = "custom",
        seed: int = 0,
        config: dict[str, Any] | None = None,
        total_steps: int | None = None,
        run_id: str | None = None,
    ) -> None:
        if domain not in DOMAINS:
            raise ValueError(f"domain={domain!r} must be one of {', '.join(DOMAINS)}")
        self.corpus = None if corpus is None else Path(corpus)
        self.run_name, self.domain, self.algo, self.env, self.seed = run_name, domain, algo, env, int(seed)
        self.config = dict(config or {})
        self.total_steps = total_steps
        self.perturbation: Any = None
        self.run_id = run_id or _run_id(run_name, domain, algo, env, self.seed, self.config)
        #: Samples (env steps or tokens) consumed so far; set it from the loop. Until it is set,
        #: rows count optimizer updates.
        self.samples_seen: int | None = None
        self.rows: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.closed = False
        self.manifest_row: dict[str, Any] | None = None

    # -- buffering ----------------------------------------------------------------------------
    @property
    def partition(self) -> dict[str, str]:
        kind = "none" if self.perturbation is None else self.perturbation.kind
        return {"domain": self.domain, "algo": self.algo, "env": self.env, "perturbation": kind}

    def set_perturbation(self, perturbation: Any) -> None:
        self.perturbation = perturbation

    def now(self) -> dict[str, Any]:
        """``samples_seen`` and ``wall_time_s`` of this moment."""
        samples = self.samples_seen if self.samples_seen is not None else len(self.rows)
        return {"samples_seen": int(samples), "wall_time_s": time.perf_counter() - self.t0}

    def append(self, **values: Any) -> None:
        """Add one ``steps`` row (schema column -> value); ``step``/``samples_seen``/``wall_time_s`` default."""
        row = {"step": len(self.rows), **self.now(), **values}
        self.rows.append(row)

    def update_last(self, **values: Any) -> None:
        """Set columns on the latest row (values known only after the update, e.g. an eval)."""
        if self.rows:
            self.rows[-1].update(values)

    def event(self, step: int, kind: str, *, detail: str | None = None, value: float | None = None) -> None:
        self.events.append({"run_id": self.run_id, "step": int(step), "event": kind, "detail": detail,
                            "value": value, **self.now()})

    def __len__(self) -> int:
        return len(self.rows)

    # -- tables -------------------------------------------------------------------------------
    def steps_table(self) -> pa.Table:
        constants = {"run_id": self.run_id, **self.partition}
        unknown = {k for r in self.rows for k in r} - set(STEPS_SCHEMA.names)
        if unknown:
            raise ValueError(f"unknown steps column(s) {sorted(unknown)} (declared columns: data_schema.schema)")
        return pa.Table.from_pylist([{**constants, **r} for r in self.rows], schema=STEPS_SCHEMA)

    def events_table(self) -> pa.Table:
        return pa.Table.from_pylist(self.events, schema=EVENTS_SCHEMA)

    # -- writing --------------------------------------------------------------------------------
    def close(self, stop_reason: str = "completed", error: str | None = None) -> dict[str, Any] | None:
        """Write events, steps and the manifest row (once; later calls do nothing). Returns the row."""
        if self.closed:
            return self.manifest_row
        self.closed = True
        if self.corpus is None:
            return None
        row = self._manifest_row(stop_reason, error)
        events = write_table(self.events_table(), events_path(self.corpus, self.run_id), EVENTS_SCHEMA)
        row["events_bytes"], row["events_blake2b"] = file_digest(events)
        steps = write_table(self.steps_table(), steps_path(self.corpus, row), STEPS_SCHEMA,
                            extra_metadata={RUN_METADATA_KEY: json.dumps(row).encode()})
        row["steps_bytes"], row["steps_blake2b"] = file_digest(steps)  # as in generate.runner.run_one
        self.manifest_row = row
        self._add_to_manifest(row)
        return row

    def _add_to_manifest(self, row: dict[str, Any], wait_s: float = 30.0) -> None:
        """Upsert ``row`` under the corpus's writer lock (waiting up to ``wait_s`` for another writer).

        If the lock stays held (a ``generate`` is running on this corpus), the files are already written
        and carry the row in their metadata: warn instead of losing the run or racing the other writer.
        """
        deadline = time.monotonic() + wait_s
        while True:
            try:
                with CorpusLock(self.corpus, f"Recorder({self.run_name})"):
                    rows = [r for r in read_manifest(self.corpus).to_pylist() if r["run_id"] != self.run_id]
                    write_manifest(self.corpus, [*rows, row])
                return
            except CorpusLockedError as exc:
                if time.monotonic() >= deadline:
                    warnings.warn(f"run {self.run_id} written, but not added to the manifest: {exc}", stacklevel=3)
                    return
                time.sleep(0.5)

    def _manifest_row(self, stop_reason: str, error: str | None) -> dict[str, Any]:
        from generate.version import code_version

        p = self.perturbation
        failed = stop_reason == "error"
        samples = self.now()["samples_seen"]
        onset = None if p is None or p.kind == "none" else p.onset_step
        return {
            **self.partition, "run_id": self.run_id, "seed": self.seed,
            "dimension": "none" if p is None else p.dimension,
            "magnitude": 1.0 if p is None or p.kind == "none" else p.magnitude,  # 1.0: as the generators' controls
            "onset_step": onset, "duration_steps": None if onset is None else p.duration_steps,
            "stochasticity": "default", "total_steps": int(self.total_steps or samples),
            "n_updates": len(self.rows), "stop_reason": None if failed else stop_reason,
            "status": "failed" if failed else "ok", "error": error,
            "run_wall_time_s": time.perf_counter() - self.t0, "started_at": self.started_at,
            "code_version": code_version(), "schema_version": SCHEMA_VERSION,
            "config_json": json.dumps({"run_name": self.run_name, "recorder": "stabilitybench.Recorder",
                                       "config": self.config}, sort_keys=True, default=str),
        }

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("interrupted", error="KeyboardInterrupt")
        else:
            self.close("error", error=f"{exc_type.__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")


def _run_id(run_name: str, domain: str, algo: str, env: str, seed: int, config: dict[str, Any]) -> str:
    payload = json.dumps({"run_name": run_name, "domain": domain, "algo": algo, "env": env, "seed": seed,
                          "config": config, "schema_version": SCHEMA_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
