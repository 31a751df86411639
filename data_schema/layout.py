"""Where a corpus's files live, and the manifest through which every other file is found.

Layout (schema v1)::

    corpus/
      manifest.parquet                     one row per run (spec, status, timings, versions)
      runs.parquet                         manifest + outcomes (written by analysis)
      steps/domain=<d>/algo=<a>/env=<e>/perturbation=<p>/<run_id>.parquet
      events/<run_id>.parquet
      README.md                            dataset card

This module sits below the checks (:mod:`~stabilitybench.data_schema.integrity`,
:mod:`~stabilitybench.data_schema.verify`) and the readers (:mod:`~stabilitybench.data_schema.corpus`,
which re-exports every name here): the readers read only what the checks accept, and the checks
need only the paths and the manifest, so the imports run one way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq

from stabilitybench.data_schema.compat import upgrade, upgrade_row
from stabilitybench.data_schema.errors import CorpusNotFoundError, SchemaError
from stabilitybench.data_schema.io import conform, read_table, write_table
from stabilitybench.data_schema.schema import MANIFEST_SCHEMA, PARTITION_COLUMNS

MANIFEST = "manifest.parquet"
RUNS = "runs.parquet"
STEPS_DIR = "steps"
EVENTS_DIR = "events"
STEPS_GLOB = "steps/**/*.parquet"
EVENTS_GLOB = "events/*.parquet"


def steps_path(corpus: str | os.PathLike[str], run: dict[str, Any]) -> Path:
    """Where the steps file of ``run`` (a mapping with the partition keys and run_id) lives.

    Partition values are percent-encoded (``phys2d/CartPole-v1`` -> ``phys2d%2FCartPole-v1``),
    as Hive readers (polars, DuckDB, pyarrow) expect: a raw ``/`` would add a directory
    level and the readers would report the partition value as ``phys2d``.
    """
    parts = [f"{key}={quote(str(run[key]), safe='')}" for key in PARTITION_COLUMNS]
    return Path(corpus, STEPS_DIR, *parts, f"{run['run_id']}.parquet")


def events_path(corpus: str | os.PathLike[str], run_id: str) -> Path:
    return Path(corpus, EVENTS_DIR, f"{run_id}.parquet")


def require_corpus(corpus: str | os.PathLike[str]) -> Path:
    path = Path(corpus)
    if not path.is_dir():
        raise CorpusNotFoundError(f"{path}: no corpus here (run `stabilitybench generate` first or pass --corpus)")
    return path


def read_manifest(corpus: str | os.PathLike[str], notes: list[str] | None = None) -> pa.Table:
    """The manifest table; an empty table with the manifest schema if none was written yet.

    A manifest written before a nullable column was added to schema v1 is read with that
    column as nulls (the next write upgrades it) and a line is appended to ``notes``;
    anything else that does not match the schema is a :class:`SchemaError` naming the
    file and the column.
    """
    path = Path(corpus, MANIFEST)
    if not path.exists():
        return MANIFEST_SCHEMA.empty_table()
    try:
        return read_table(path, "manifest")
    except SchemaError:
        raw = upgrade(pq.read_table(path), "manifest")
        table = conform(raw, MANIFEST_SCHEMA, where=str(path))  # raises unless only nullable columns are missing
        if notes is not None:
            missing = [f.name for f in MANIFEST_SCHEMA if f.name not in raw.column_names]
            notes.append(f"{path}: written with an older schema; missing nullable column(s) read as null: "
                         f"{', '.join(missing)}")
        return table


def write_manifest(corpus: str | os.PathLike[str], rows: list[dict[str, Any]]) -> Path:
    """Atomically (re)write the manifest from ``rows``; later rows win on duplicate run_id."""
    by_id: dict[str, dict[str, Any]] = {}
    for row in rows:
        by_id[row["run_id"]] = upgrade_row(row)  # e.g. a row recovered from a 1.0 steps file's metadata
    ordered = sorted(by_id.values(), key=lambda r: r["run_id"])
    table = pa.Table.from_pylist(ordered, schema=MANIFEST_SCHEMA) if ordered else MANIFEST_SCHEMA.empty_table()
    return write_table(table, Path(corpus, MANIFEST), MANIFEST_SCHEMA)
