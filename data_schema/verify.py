"""``stabilitybench verify``: is every file of the corpus what the manifest says it is?

* Every ``ok`` run has exactly one steps file and one events file, whose sizes and hashes match
  the ones recorded at write time and whose footers match schema v1
  (:func:`data_schema.integrity.check_run`); no data file lacks a manifest row.
* ``deep`` also reads every page with CRC verification and joins manifest, steps and events:
  the steps file holds only its run's ``run_id`` and partition values, its ``step`` column is
  0..n_updates-1 with none missing or repeated, and the events file holds only its run.

``generate`` reruns every run whose files this names (its resume check is the cheap one).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_schema.corpus import EVENTS_DIR, MANIFEST, STEPS_DIR, events_path, read_manifest, require_corpus, steps_path
from data_schema.errors import CorruptFileError, SchemaError
from data_schema.integrity import Problem, check_run
from data_schema.schema import PARTITION_COLUMNS


@dataclass
class VerifyReport:
    runs: int = 0
    files: int = 0
    problems: list[Problem] = field(default_factory=list)


def verify_corpus(corpus: str | os.PathLike[str], deep: bool = False) -> VerifyReport:
    """Check the corpus (see the module doc); every problem names its file."""
    root = require_corpus(corpus)
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
    return report


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
