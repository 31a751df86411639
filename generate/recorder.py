"""The public run recorder: buffers ``steps``/``events`` rows and writes them into a corpus.

A :class:`Recorder` is one run. It fills in the columns every row needs (``run_id``,
``step``, ``samples_seen``, ``wall_time_s``, the partition columns), and :meth:`Recorder.close`
writes the events file, then the steps file (carrying the manifest row in its metadata, as the
runner does), then the manifest row, all through :func:`~stabilitybench.data_schema.run_writer.write_run`. The
corpus then reads with ``stabilitybench query``/``analyze``/``report`` and with plain DuckDB.

``close`` runs on leaving a ``with Recorder(...)`` block, including on an exception or a
``KeyboardInterrupt``: the rows recorded so far are written (``stop_reason`` ``interrupted``
or ``error``), so an interrupted run leaves a valid, shorter steps file. The project's own
generators use a Recorder without a corpus (``corpus=None``) and hand its tables to the runner.

**Divergence is data.** Once an update went non-finite (:meth:`Recorder.mark_nonfinite`, which the
:class:`~generate.probe.Probe` calls; or a :class:`~generate.errors.NonFiniteTraining` leaving the
``with`` block), the run ends as ``stop_reason = "nonfinite"`` with status ok and one ``nonfinite``
event, whatever stopped the loop afterwards, exactly as a generated run that diverged.

**run_ids cannot collide.** ``run_id`` hashes everything that distinguishes a run: the name, domain,
algo, env, seed, config and the perturbation (kind, magnitude, onset, duration, its seed). When the
identity is complete (at construction if ``perturbation=`` or ``run_id=`` is given, else when a Probe
attaches, else at the first row), a run_id the corpus already holds (an ok manifest row or a steps
file) is refused with :class:`~stabilitybench.generate.errors.RunExistsError`, before training; ``overwrite=True``
replaces the old run instead. A refused Recorder never writes.

**Writing is one step.** ``close`` builds its manifest row and both tables and hands them to
:func:`stabilitybench.data_schema.run_writer.write_run`, the corpus's one run writer (the runner's
workers use it too): a bad column raises before anything is written; holding the corpus lock, the
run_id is checked once more, the events and steps files are written under temporary names, renamed
into place and the manifest row upserted; with ``overwrite=True`` a steps file of the old run in
another partition is removed in the same step.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from stabilitybench.data_schema import (
    EVENTS_SCHEMA,
    SCHEMA_VERSION,
    STEPS_SCHEMA,
    read_manifest,
)
from stabilitybench.data_schema.keys import NO_PERTURBATION, ConfigKey
from stabilitybench.data_schema.run_writer import hash_run_id, run_steps_files, write_run
from stabilitybench.data_schema.schema import DOMAINS, RECORDER_RUN_ID_VERSION
from stabilitybench.generate.errors import NonFiniteTraining, RunExistsError


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
    perturbation:
        The run's controlled perturbation (``stabilitybench.perturbation(...)``), if known now; a
        :class:`~stabilitybench.generate.probe.Probe` attached without one applies it. Passing it here lets the
        run_id check happen at construction; otherwise the Probe hands its perturbation over.
    overwrite:
        Replace a run with the same run_id already in ``corpus`` (its steps, events and manifest
        row) instead of refusing with :class:`~stabilitybench.generate.errors.RunExistsError`.
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
        perturbation: Any = None,
        overwrite: bool = False,
    ) -> None:
        if domain not in DOMAINS:
            raise ValueError(f"domain={domain!r} must be one of {', '.join(DOMAINS)}")
        self.corpus = None if corpus is None else Path(corpus)
        self.run_name, self.domain, self.algo, self.env, self.seed = run_name, domain, algo, env, int(seed)
        self.config = dict(config or {})
        self.total_steps = total_steps
        self.perturbation: Any = perturbation
        self.overwrite = bool(overwrite)
        self._fixed_id = run_id is not None
        self.run_id = run_id or self._hash_id(perturbation)
        #: The identity (run_id, partition) is final: set by :meth:`seal`.
        self.sealed = False
        #: The corpus already held this run_id and ``overwrite`` was off: this Recorder writes nothing.
        self.refused = False
        #: The first update that went non-finite (None while the run is finite).
        self.nonfinite_step: int | None = None
        #: Samples (env steps or tokens) consumed so far; set it from the loop. Until it is set,
        #: rows count optimizer updates.
        self.samples_seen: int | None = None
        self.rows: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.closed = False
        self.manifest_row: dict[str, Any] | None = None
        if self.corpus is not None and (perturbation is not None or run_id is not None):
            self.seal()  # the identity is complete now: refuse a run_id the corpus holds before training

    # -- buffering ----------------------------------------------------------------------------
    def _hash_id(self, perturbation: Any) -> str:
        return _run_id(self.run_name, self.domain, self.algo, self.env, self.seed, self.config, perturbation)

    @property
    def partition(self) -> dict[str, str]:
        kind = "none" if self.perturbation is None else self.perturbation.kind
        return {"domain": self.domain, "algo": self.algo, "env": self.env, "perturbation": kind}

    def set_perturbation(self, perturbation: Any) -> None:
        """Set the run's perturbation (the Probe and the adapters hand theirs over); part of the identity.

        Once the identity is sealed (a Probe attached, a row or event was recorded), a different
        perturbation would change the run_id under rows already recorded: ``ValueError``.
        """
        if perturbation is None or perturbation == self.perturbation:
            return
        changes_id = not self._fixed_id and self._hash_id(perturbation) != self.run_id
        if self.sealed and (self.rows or self.events or changes_id):
            raise ValueError(f"run {self.run_id} ({self.run_name!r}) already has its identity "
                             f"(perturbation {getattr(self.perturbation, 'kind', 'none')}); "
                             "pass the perturbation when the Recorder or the Probe is made, once")
        self.perturbation = perturbation
        if not self._fixed_id:
            self.run_id = self._hash_id(perturbation)

    def seal(self) -> None:
        """Fix the run's identity and, with a corpus, refuse a run_id the corpus already holds.

        Called at construction when ``perturbation=`` or ``run_id=`` is given, by a Probe when it
        attaches, and at the first row or event; idempotent. Raises
        :class:`~stabilitybench.generate.errors.RunExistsError` (and the Recorder then never writes) unless
        ``overwrite=True``.
        """
        if self.sealed:
            return
        self.sealed = True
        if self.corpus is None:
            return
        existing = self._existing()
        if existing and not self.overwrite:
            self.refused = True
            raise RunExistsError(
                f"{self.corpus}: run {self.run_id} ({self.run_name!r}) is already in this corpus ({existing}); "
                "pass overwrite=True to replace it, or change run_name, seed, config or the perturbation")

    def mark_nonfinite(self, step: int, what: str) -> None:
        """Update ``step`` went non-finite (``what``: gradient, parameters, loss): the run has diverged.

        Adds one ``nonfinite`` event (the first time only) and makes the run end as
        ``stop_reason = "nonfinite"``, status ok, however the loop stops afterwards.
        """
        self.event(step, "nonfinite", detail=what)

    def now(self) -> dict[str, Any]:
        """``samples_seen`` and ``wall_time_s`` of this moment."""
        samples = self.samples_seen if self.samples_seen is not None else len(self.rows)
        return {"samples_seen": int(samples), "wall_time_s": time.perf_counter() - self.t0}

    def append(self, **values: Any) -> None:
        """Add one ``steps`` row (schema column -> value); ``step``/``samples_seen``/``wall_time_s`` default."""
        if not self.sealed:
            self.seal()
        samples = self.samples_seen if self.samples_seen is not None else len(self.rows)
        row = {"step": len(self.rows), "samples_seen": int(samples), "wall_time_s": time.perf_counter() - self.t0,
               **values}
        self.rows.append(row)

    def update_last(self, **values: Any) -> None:
        """Set columns on the latest row (values known only after the update, e.g. an eval)."""
        if self.rows:
            self.rows[-1].update(values)

    def event(self, step: int, kind: str, *, detail: str | None = None, value: float | None = None) -> None:
        """Add one ``events`` row. A run has at most one ``nonfinite`` event: its first non-finite update."""
        if not self.sealed:
            self.seal()
        if kind == "nonfinite":
            if self.nonfinite_step is not None:
                return
            self.nonfinite_step = int(step)
        self.events.append({"run_id": self.run_id, "step": int(step), "event": kind, "detail": detail,
                            "value": value, **self.now()})

    def __len__(self) -> int:
        return len(self.rows)

    # -- tables -------------------------------------------------------------------------------
    def steps_table(self) -> pa.Table:
        constants = {"run_id": self.run_id, **self.partition}
        unknown = {k for r in self.rows for k in r} - set(STEPS_SCHEMA.names)
        if unknown:
            raise ValueError(f"unknown steps column(s) {sorted(unknown)} "
                             "(declared columns: stabilitybench.data_schema.schema)")
        return pa.Table.from_pylist([{**constants, **r} for r in self.rows], schema=STEPS_SCHEMA)

    def events_table(self) -> pa.Table:
        return pa.Table.from_pylist(self.events, schema=EVENTS_SCHEMA)

    # -- writing --------------------------------------------------------------------------------
    def close(self, stop_reason: str = "completed", error: str | None = None) -> dict[str, Any] | None:
        """Write events, steps and the manifest row (once; later calls do nothing). Returns the row.

        A run that went non-finite is closed as ``stop_reason = "nonfinite"``, status ok, whatever
        ``stop_reason`` the caller passes. A refused Recorder (:attr:`refused`) writes nothing.
        """
        if self.closed:
            return self.manifest_row
        self.closed = True
        if self.nonfinite_step is not None:
            stop_reason, error = "nonfinite", None
        if self.corpus is None or self.refused:
            return None
        self.seal()
        row = self._manifest_row(stop_reason, error)
        # under the corpus lock: conformed (a bad column raises before anything is written), the run_id
        # checked again, events and steps written, renamed into place, the manifest row upserted; a steps
        # file of the old run in another partition goes in the same step
        write_run(self.corpus, row, self.steps_table(), self.events_table(), check=self._refuse_if_written,
                  owner=f"Recorder({self.run_name})", stacklevel=4)
        self.manifest_row = row
        return row

    def _refuse_if_written(self) -> None:
        """Under the corpus lock, just before writing: a run_id another process wrote since :meth:`seal`."""
        existing = self._existing()
        if existing and not self.overwrite:
            self.refused = True
            raise RunExistsError(
                f"{self.corpus}: run {self.run_id} ({self.run_name!r}) was written by another process while "
                f"this one ran ({existing}); not overwritten (pass overwrite=True to replace it)")

    def _existing(self) -> str:
        """What of this run_id the corpus holds ("" for nothing): an ok manifest row or a steps file."""
        if self.corpus is None or not self.corpus.is_dir():
            return ""
        rows = [r for r in read_manifest(self.corpus).to_pylist() if r["run_id"] == self.run_id]
        if any(r["status"] == "ok" for r in rows):
            row = next(r for r in rows if r["status"] == "ok")
            return f"an ok manifest row, stop_reason {row['stop_reason']}, {row['n_updates']} updates"
        files = run_steps_files(self.corpus, self.run_id)
        if files:
            status = f", manifest status {rows[0]['status']}" if rows else ", no manifest row"
            return f"steps file {files[0].relative_to(self.corpus)}{status}"
        return ""

    def _manifest_row(self, stop_reason: str, error: str | None) -> dict[str, Any]:
        from stabilitybench.generate.version import code_version

        p = self.perturbation
        failed = stop_reason == "error"
        samples = self.now()["samples_seen"]
        control = p is None or ConfigKey(p.kind).is_control
        onset = None if control else p.onset_step  # a control's onset resolves to 0 (data_schema.keys.onset_step)
        return {
            **self.partition, "run_id": self.run_id, "seed": self.seed,
            "dimension": "none" if p is None else p.dimension,
            "magnitude": 1.0 if control else p.magnitude,  # 1.0: as the generators' controls
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
        elif issubclass(exc_type, NonFiniteTraining):  # divergence is data, not a failure
            self.mark_nonfinite(exc.step, exc.what)
            self.close("nonfinite")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("interrupted", error="KeyboardInterrupt")
        else:
            self.close("error", error=f"{exc_type.__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")


def _run_id(run_name: str, domain: str, algo: str, env: str, seed: int, config: dict[str, Any],
            perturbation: Any = None) -> str:
    """The run_id of a recorded run: the hash of what distinguishes it (``data_schema.run_writer.hash_run_id``).

    An unperturbed run (no perturbation, or kind ``none``) hashes as it did before perturbations were
    part of the identity, so its run_id is unchanged; a perturbed one adds kind, magnitude, onset,
    duration and the perturbation's own seed. The hash includes a version frozen at schema 1.2
    (:data:`~stabilitybench.data_schema.schema.RECORDER_RUN_ID_VERSION`), so a schema bump that only adds
    columns does not change a recorded run's id.
    """
    ident: dict[str, Any] = {"run_name": run_name, "domain": domain, "algo": algo, "env": env, "seed": seed,
                             "config": config}
    kind = getattr(perturbation, "kind", NO_PERTURBATION)
    if perturbation is not None and not ConfigKey(kind).is_control:
        ident["perturbation"] = {"kind": kind, "magnitude": float(perturbation.magnitude),
                                 "onset_step": int(perturbation.onset_step),
                                 "duration_steps": int(perturbation.duration_steps),
                                 "seed": int(getattr(perturbation, "seed", 0))}
    return hash_run_id(ident, RECORDER_RUN_ID_VERSION)
