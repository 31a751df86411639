"""Writing one run into a corpus, and hashing its identity: the one owner of both.

Two writers put runs into a corpus: the runner's worker (:mod:`stabilitybench.generate.worker`, one
process per run of a matrix) and :class:`stabilitybench.generate.recorder.Recorder` (a user's own
training loop). Both build their manifest row and their two tables, then call :func:`write_run`,
so the files, the digests and the manifest row of a run are written one way:

* both tables are conformed to schema v1 first: a bad column raises, naming the file, before
  anything is written;
* the events file, then the steps file (carrying the manifest row, events digest included, in its
  metadata) are written under dot-prefixed temporary names, fsynced and hashed
  (:func:`~stabilitybench.data_schema.integrity.file_digest`): the digests are those of the bytes
  as written, so later damage shows;
* both are renamed into place, events first and steps last: a steps file marks a complete run
  (``generate`` recovers a lost manifest row from it);
* a steps file of the same run_id in another partition is removed: a run_id has one steps file;
* with ``manifest=True`` all of this happens under the corpus lock
  (:class:`~stabilitybench.data_schema.lock.CorpusLock`), and the row then replaces any row of its
  run_id in ``manifest.parquet``. The runner passes ``manifest=False``: its driver holds the lock
  for the whole matrix and is the one writer of the manifest.

:func:`hash_run_id` is the one hash of a run's identity; :class:`~stabilitybench.generate.spec.RunSpec`
and the Recorder each say what their identity is, and both hash it here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from stabilitybench.data_schema.integrity import file_digest
from stabilitybench.data_schema.io import RUN_METADATA_KEY, atomic_path, conform, write_table
from stabilitybench.data_schema.layout import STEPS_DIR, events_path, read_manifest, steps_path, write_manifest
from stabilitybench.data_schema.lock import CorpusLock, CorpusLockedError
from stabilitybench.data_schema.schema import EVENTS_SCHEMA, PARTITION_COLUMNS, STEPS_SCHEMA


def hash_run_id(identity: Mapping[str, Any], version: str) -> str:
    """The 16-hex-digit run_id of ``identity``: SHA-256 of its sorted-key JSON with ``schema_version`` added.

    ``version`` is the schema version the ids of that kind of run hash (the generators'
    :data:`~stabilitybench.data_schema.schema.RUN_ID_VERSION`; the Recorder's, the schema version
    it was written with). The inputs of existing ids must never change: a corpus whose ids no
    longer match would be generated again from scratch.
    """
    payload = json.dumps({**identity, "schema_version": version}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run_steps_files(corpus: str | os.PathLike[str], run_id: str) -> list[Path]:
    """Every steps file named after ``run_id``, in any partition (normally none or one)."""
    pattern = "/".join(["*"] * len(PARTITION_COLUMNS) + [f"{run_id}.parquet"])
    return sorted(Path(corpus, STEPS_DIR).glob(pattern))


def write_run(
    corpus: str | os.PathLike[str],
    row: dict[str, Any],
    steps: pa.Table,
    events: pa.Table,
    *,
    manifest: bool = True,
    check: Callable[[], None] | None = None,
    owner: str = "write_run",
    wait_s: float = 30.0,
    stacklevel: int = 2,
) -> dict[str, Any]:
    """Write one run (its events and steps files, their digests, its manifest row) into ``corpus``.

    ``row`` is the run's manifest row (with the partition columns and ``run_id``); the
    ``steps_bytes``/``steps_blake2b``/``events_bytes``/``events_blake2b`` columns are set on it,
    and it is returned. See the module docstring for the order of the steps.

    With ``manifest=True`` the corpus lock is taken (``owner`` names this writer to a second
    one), waiting up to ``wait_s`` for another writer; ``check`` is then called before anything
    is written (raise from it to write nothing, e.g. a run_id the corpus already holds). If the
    lock stays held (a ``generate`` is running on this corpus), the files are still written (they
    carry the row in their metadata) without ``check``, and a warning (``stacklevel`` as for
    :func:`warnings.warn`, counted from here) says the manifest was not updated. With ``manifest=False`` no lock is
    taken and ``check`` is not called: the caller owns the corpus and records the row itself.
    """
    corpus = Path(corpus)
    spath, epath = steps_path(corpus, row), events_path(corpus, row["run_id"])
    # a bad column or a null in a required one raises here, naming the file, before anything is written
    steps = conform(steps, STEPS_SCHEMA, where=str(spath))
    events = conform(events, EVENTS_SCHEMA, where=str(epath))
    corpus.mkdir(parents=True, exist_ok=True)
    lock = CorpusLock(corpus, owner)
    busy = _acquire(lock, wait_s) if manifest else None
    try:
        if manifest and busy is None and check is not None:
            check()
        spath.parent.mkdir(parents=True, exist_ok=True)
        epath.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as publish:  # leaves last-in first-out: events renamed first, then steps
            stmp = publish.enter_context(atomic_path(spath, fsync=True))
            etmp = publish.enter_context(atomic_path(epath, fsync=True))
            write_table(events, etmp, EVENTS_SCHEMA, atomic=False)
            row["events_bytes"], row["events_blake2b"] = file_digest(etmp)
            write_table(steps, stmp, STEPS_SCHEMA, extra_metadata={RUN_METADATA_KEY: json.dumps(row).encode()},
                        atomic=False)
            row["steps_bytes"], row["steps_blake2b"] = file_digest(stmp)  # hashed as written: later damage shows
        for old in run_steps_files(corpus, row["run_id"]):
            if old != spath:
                old.unlink(missing_ok=True)
        if not manifest:
            return row
        if busy is not None:
            warnings.warn(f"run {row['run_id']} written, but not added to the manifest: {busy}",
                          stacklevel=stacklevel)
            return row
        rows = [r for r in read_manifest(corpus).to_pylist() if r["run_id"] != row["run_id"]]
        write_manifest(corpus, [*rows, row])
        return row
    finally:
        lock.release()


def _acquire(lock: CorpusLock, wait_s: float) -> CorpusLockedError | None:
    """Take ``lock``, waiting up to ``wait_s`` for another writer; the last refusal if it stays held."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            lock.acquire()
            return None
        except CorpusLockedError as exc:
            if time.monotonic() >= deadline:
                return exc
            time.sleep(0.5)
