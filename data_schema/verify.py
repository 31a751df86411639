"""``stabilitybench verify``: is every file of the corpus what the manifest says it is?

* Every ``ok`` run has exactly one steps file and one events file, whose sizes and hashes match
  the ones recorded at write time and whose footers match schema v1
  (:func:`stabilitybench.data_schema.integrity.check_run`); no data file lacks a manifest row.
* ``deep`` also reads every page with CRC verification and joins manifest, steps and events:
  the steps file holds only its run's ``run_id`` and partition values, its ``step`` column is
  0..n_updates-1 with none missing or repeated, and the events file holds only its run.

``generate`` reruns every run whose files this names (its resume check is the cheap one); a run
written by the public ``Recorder`` API has no profile to rerun it from, so :meth:`VerifyReport.advice`
says what fits each run's origin (:func:`run_origin`).

:func:`readable_runs` is the one answer to "which runs' files may a reader read": the ``ok`` runs
whose files pass the same cheap check. Every reader of the corpus (``scan_steps``, ``connect``,
``analyze``, ``export``, ``report``) reads only those files and lists the runs it left out in one
warning line, instead of globbing a partition folder and crashing on a damaged file.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from stabilitybench.data_schema.errors import CorpusNotFoundError, CorruptFileError, SchemaError, SkippedRunsWarning
from stabilitybench.data_schema.integrity import Problem, check_run
from stabilitybench.data_schema.io import run_metadata
from stabilitybench.data_schema.layout import (
    EVENTS_DIR,
    MANIFEST,
    STEPS_DIR,
    events_path,
    read_manifest,
    require_corpus,
    steps_path,
)
from stabilitybench.data_schema.schema import PARTITION_COLUMNS

#: How a run was written, from its manifest row's ``config_json`` (:func:`run_origin`).
GENERATED, RECORDED, UNKNOWN = "generate", "recorder", "unknown"


@dataclass
class VerifyReport:
    """What :func:`verify_corpus` found: ``runs`` ok runs checked, ``files`` data files seen, every problem,
    and ``origins`` (run_id -> :func:`run_origin`) of the runs with a problem."""

    runs: int = 0
    files: int = 0
    problems: list[Problem] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)

    def advice(self) -> str:
        """What to do about the problems, fitted to how their runs were written; empty when there are none.

        ``generate`` can redo only the runs it generated (from the corpus's profile); a run that a
        script wrote through ``stabilitybench.Recorder`` can only be rewritten by that script.
        """
        if not self.problems:
            return ""
        return rerun_advice({self.origins.get(p.run_id, UNKNOWN) for p in self.problems})


def rerun_advice(origins: set[str]) -> str:
    """What to do about damaged runs whose :func:`run_origin` values are ``origins``; empty for none.

    The one wording of that advice, for ``verify``, ``status`` and ``analyze`` alike.
    """
    parts = []
    if GENERATED in origins:
        parts.append("`stabilitybench generate` with the corpus's profile reruns the generated runs")
    if RECORDED in origins:
        parts.append("runs your own script wrote with stabilitybench.Recorder cannot be regenerated: delete "
                     "their files named above and rerun that script for them (their manifest config_json "
                     "names each run)")
    if UNKNOWN in origins:
        parts.append("files of unknown origin: restore them from a copy or delete them")
    return "; ".join(parts)


def run_origin(row: dict[str, Any] | None) -> str:
    """:data:`GENERATED` for a manifest row written by ``generate`` (``config_json`` holds its ``spec``),
    :data:`RECORDED` for one written by ``stabilitybench.Recorder`` (``config_json`` names the recorder),
    else :data:`UNKNOWN`."""
    try:
        config = json.loads((row or {}).get("config_json") or "{}")
    except (TypeError, ValueError):
        return UNKNOWN
    if not isinstance(config, dict):
        return UNKNOWN
    if "recorder" in config:
        return RECORDED
    return GENERATED if "spec" in config else UNKNOWN


def verify_corpus(corpus: str | os.PathLike[str], deep: bool = False) -> VerifyReport:
    """Check the corpus (see the module doc); every problem names its file.

    A folder without ``manifest.parquet`` is not a corpus: :class:`CorpusNotFoundError` (one line),
    never "all good". A corpus whose manifest has no rows yet (and no data files) verifies clean.
    """
    root = require_corpus(corpus)
    if not Path(root, MANIFEST).is_file():
        n = sum(1 for d in (STEPS_DIR, EVENTS_DIR) for p in Path(root, d).rglob("*.parquet")
                if not p.name.startswith("."))
        raise CorpusNotFoundError(f"{root}: no {MANIFEST} here, so nothing to verify (not a corpus"
                                  + (f"; {n} data file(s) without a manifest" if n else "")
                                  + "; pass the corpus folder with --corpus, or run `stabilitybench generate`)")
    report = VerifyReport()
    try:
        rows = read_manifest(root).to_pylist()
    except (CorruptFileError, SchemaError) as exc:
        report.problems.append(Problem("-", root / MANIFEST, f"{str(exc).split(': ', 1)[-1]} "
                                       "(`generate` moves it aside and rebuilds it)"))
        return report
    ids = Counter(r["run_id"] for r in rows)
    for rid, n in ids.items():
        if n > 1:
            report.problems.append(Problem(rid, root / MANIFEST, f"run {rid} has {n} rows"))
    ok = {r["run_id"]: r for r in rows if r["status"] == "ok"}
    steps_files = [p for p in Path(root, STEPS_DIR).rglob("*.parquet") if not p.name.startswith(".")]
    events_files = [p for p in Path(root, EVENTS_DIR).glob("*.parquet") if not p.name.startswith(".")]
    report.files = len(steps_files) + len(events_files)
    expected = {steps_path(root, r) for r in ok.values()} | {events_path(root, rid) for rid in ok}
    for path in steps_files + events_files:
        rid = path.name.removesuffix(".parquet")
        if path in expected:
            continue
        why = (f"a second steps file of run {rid} (the manifest's is {steps_path(root, ok[rid])})" if rid in ok
               else "no ok manifest row for this run (`generate` recovers or reruns it)")
        report.problems.append(Problem(rid, path, why))
    for row in ok.values():
        report.runs += 1
        problems, _ = check_run(root, row, deep=deep)
        if deep and not problems:
            problems = _join(root, row)
        report.problems += problems
    by_id = {r["run_id"]: r for r in rows}
    for problem in report.problems:
        if problem.run_id not in report.origins:
            row = by_id.get(problem.run_id)
            if row is None and problem.path.suffix == ".parquet" and Path(problem.path).parent != root:
                row = run_metadata(problem.path)  # an orphan steps file carries its row
            report.origins[problem.run_id] = run_origin(row)
    return report


@dataclass
class Readable:
    """The runs a reader may read (:func:`readable_runs`).

    ``rows``: manifest rows (status ``ok``) whose steps and events files pass verify's cheap check;
    ``skipped``: the problems of the ``ok`` runs left out (missing, truncated or altered files).
    """

    root: Path
    rows: list[dict[str, Any]]
    skipped: list[Problem] = field(default_factory=list)

    @property
    def run_ids(self) -> list[str]:
        return [r["run_id"] for r in self.rows]

    def steps_files(self) -> list[Path]:
        """The readable runs' steps files, sorted."""
        return sorted(steps_path(self.root, r) for r in self.rows)

    def events_files(self) -> list[Path]:
        """The readable runs' events files, sorted."""
        return sorted(events_path(self.root, r["run_id"]) for r in self.rows)

    def warning(self) -> str | None:
        """One line naming the skipped runs (the first five with a reason), or None when none was skipped."""
        if not self.skipped:
            return None
        by_run: dict[str, Problem] = {}
        for p in self.skipped:
            by_run.setdefault(p.run_id, p)
        shown = "; ".join(f"{rid} ({p.path.name}: {p.reason})" for rid, p in list(by_run.items())[:5])
        more = f"; and {len(by_run) - 5} more" if len(by_run) > 5 else ""
        return (f"skipped {len(by_run)} run(s) of {self.root} whose files are missing or damaged "
                f"(`stabilitybench verify --corpus {self.root}` names each): {shown}{more}")

    def report(self, notes: list[str] | None = None, stacklevel: int = 3) -> None:
        """Append :meth:`warning` to ``notes`` if given, else issue it as a :class:`SkippedRunsWarning`."""
        line = self.warning()
        if line is None:
            return
        if notes is not None:
            notes.append(line)
        else:
            warnings.warn(line, SkippedRunsWarning, stacklevel=stacklevel)


def readable_runs(corpus: str | os.PathLike[str], rows: list[dict[str, Any]] | None = None) -> Readable:
    """Which runs' files may be read: the ``ok`` rows of ``rows`` (default: the whole manifest) whose files
    pass :func:`stabilitybench.data_schema.integrity.check_run` (exist, size and hash as recorded, schema v1 footer).

    The one owner of "which files are readable" for every reader; files with no ``ok`` manifest row
    (a failed run's leftovers, a second file of one run_id, a planted file) are never read. A manifest
    that cannot be read raises :class:`CorruptFileError` or :class:`SchemaError` (one line).
    """
    root = require_corpus(corpus)
    if rows is None:
        rows = read_manifest(root).to_pylist()
    good, skipped = [], []
    for row in rows:
        if row.get("status") != "ok":
            continue
        key = _accepted_key(root, row)
        if key is not None and _ACCEPTED.get(key[0]) == key[1]:
            good.append(row)  # the same files, unchanged since they passed: no second hash in this process
            continue
        problems, _ = check_run(root, row)
        if problems:
            skipped += problems
        else:
            good.append(row)
            if key is not None and not _racy(key[1]):
                _ACCEPTED[key[0]] = key[1]
    return Readable(root, good, skipped)


#: Runs :func:`readable_runs` accepted in this process: (steps, events path) -> (recorded hashes, file stats).
#: A notebook that scans the corpus again does not hash every file again; any write to a file (new
#: inode, size, mtime or ctime) or a new manifest hash makes it check the run again, and a file written
#: in the last two seconds is never cached (:func:`_racy`). ``verify`` never uses it.
_ACCEPTED: dict[tuple[str, str], tuple[Any, ...]] = {}


#: A file changed this recently may change again within the file system's timestamp granularity
#: without its stats changing ("racy" in git's sense): such a run is checked every time.
_RACY_NS = 2_000_000_000


def _racy(signature: tuple[Any, ...]) -> bool:
    now = time.time_ns()
    return any(now - max(st[2], st[3]) < _RACY_NS for st in signature[3:])


def _accepted_key(root: Path, row: dict[str, Any]) -> tuple[tuple[str, str], tuple[Any, ...]] | None:
    """The cache key and signature of a run's two files, or None when they have no recorded hashes or are missing."""
    if not (row.get("steps_blake2b") and row.get("events_blake2b")):
        return None
    paths = (steps_path(root, row).resolve(), events_path(root, row["run_id"]).resolve())
    try:
        stats = [p.stat() for p in paths]
    except OSError:
        return None
    return ((str(paths[0]), str(paths[1])),
            (row["steps_blake2b"], row["events_blake2b"], row.get("n_updates"),
             *[(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for st in stats]))


def _join(root: Path, row: dict[str, Any]) -> list[Problem]:
    """Deep cross-checks of one run whose files read back whole (see the module doc)."""
    out = []
    rid = row["run_id"]
    path = steps_path(root, row)
    steps = pq.read_table(path, columns=["run_id", "step", *PARTITION_COLUMNS])
    if set(steps.column("run_id").to_pylist()) - {rid}:
        out.append(Problem(rid, path, "holds rows of another run_id"))
    for key in PARTITION_COLUMNS:
        if set(steps.column(key).to_pylist()) - {row[key]}:
            out.append(Problem(rid, path, f"column {key} disagrees with the manifest ({row[key]!r})"))
    step = steps.column("step")
    n = steps.num_rows
    if n and (pc.min(step).as_py() != 0 or pc.max(step).as_py() != n - 1 or pc.count_distinct(step).as_py() != n):
        out.append(Problem(rid, path, f"step column is not 0..{n - 1} without gaps or repeats"))
    epath = events_path(root, rid)
    if set(pq.read_table(epath, columns=["run_id"]).column("run_id").to_pylist()) - {rid}:
        out.append(Problem(rid, epath, "holds events of another run_id"))
    return out
