"""Corpus loaders: the steps as a polars LazyFrame, and DuckDB views of every table.

The layout (where each file lives) and the manifest's reader and writer are
:mod:`stabilitybench.data_schema.layout`'s, re-exported here. The loaders read only the runs that
:func:`stabilitybench.data_schema.verify.readable_runs` accepts.

The loaders here are conveniences; the files read just as well with plain
``polars.scan_parquet``, ``duckdb`` or ``pandas``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from stabilitybench.data_schema.compat import upgrade_frame, upgrade_select
from stabilitybench.data_schema.layout import (
    EVENTS_DIR,
    EVENTS_GLOB,
    MANIFEST,
    RUNS,
    STEPS_DIR,
    STEPS_GLOB,
    events_path,
    read_manifest,
    require_corpus,
    steps_path,
    write_manifest,
)
from stabilitybench.data_schema.schema import (
    EVENTS_SCHEMA,
    MANIFEST_SCHEMA,
    PARTITION_COLUMNS,
    RENAMED,
    RUNS_SCHEMA,
    SCHEMA_VERSION,
    STEPS_SCHEMA,
)
from stabilitybench.data_schema.verify import readable_runs

__all__ = [
    "EVENTS_DIR",
    "EVENTS_GLOB",
    "MANIFEST",
    "RUNS",
    "STEPS_DIR",
    "STEPS_GLOB",
    "connect",
    "events_path",
    "read_manifest",
    "require_corpus",
    "scan_steps",
    "steps_path",
    "write_manifest",
]


def scan_steps(corpus: str | os.PathLike[str], *, runs: Iterable[dict[str, Any]] | pl.DataFrame | None = None,
               notes: list[str] | None = None, **filters: Any) -> pl.LazyFrame:
    """A polars LazyFrame over the steps files of the corpus's readable runs, Hive-partitioned, in the current schema.

    ``filters`` are equality filters (or a list/tuple for ``is_in``) on any column,
    e.g. ``scan_steps("corpus", algo="ppo", perturbation=["none", "lr_spike"])``.
    Filters on partition columns and ``run_id`` prune whole files; projections are pushed
    down, so ``.select([...])`` reads only those columns. The partition columns come
    back as ``pl.String``. Files of a legacy schema version (the manifest's
    ``schema_version``) are scanned apart and their columns renamed.

    Only the files of runs that ``verify`` accepts are read (:func:`stabilitybench.data_schema.verify.readable_runs`):
    a run whose steps or events file is missing or damaged is left out and named in one line,
    appended to ``notes`` or issued as a :class:`~stabilitybench.data_schema.errors.SkippedRunsWarning`; a file with
    no ``ok`` manifest row is never read. ``runs`` (manifest rows or a frame of them) skips that
    check and scans exactly those runs' files: for a caller that already checked them (``analyze``).
    """
    root = require_corpus(corpus)
    if runs is None:
        rows = [r for r in read_manifest(root).to_pylist() if _may_match(r, filters)]
        readable = readable_runs(root, rows)
        readable.report(notes)
        rows = readable.rows
    else:
        rows = list(runs.iter_rows(named=True)) if isinstance(runs, pl.DataFrame) else list(runs)
    files = sorted({str(steps_path(root, r)): r for r in rows}.items())
    if not files:
        return _filtered(pl.from_arrow(STEPS_SCHEMA.empty_table()).lazy(), filters)
    legacy = [f for f, r in files if r.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION]
    groups = [[f for f, r in files if r.get("schema_version", SCHEMA_VERSION) == SCHEMA_VERSION], legacy]
    frames = [_filtered(upgrade_frame(pl.scan_parquet(group, hive_partitioning=True), "steps"), filters)
              for group in groups if group]
    lf = pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]
    have = set(lf.collect_schema().names())
    declared = pl.from_arrow(STEPS_SCHEMA.empty_table()).schema  # a column newer than every file: null
    return lf.with_columns(pl.lit(None, dtype=t).alias(c) for c, t in declared.items() if c not in have)


def _may_match(row: dict[str, Any], filters: dict[str, Any]) -> bool:
    """False when a manifest row's partition values or run_id rule out every row of its steps file."""
    for name, value in filters.items():
        if name not in (*PARTITION_COLUMNS, "run_id"):
            continue
        wanted = {str(v) for v in value} if isinstance(value, (list, tuple, set)) else {str(value)}
        if str(row.get(name)) not in wanted:
            return False
    return True


def _filtered(lf: pl.LazyFrame, filters: dict[str, Any]) -> pl.LazyFrame:
    for name, value in filters.items():
        if isinstance(value, (list, tuple, set)):
            lf = lf.filter(pl.col(name).is_in([str(v) for v in value] if name in PARTITION_COLUMNS else list(value)))
        else:
            lf = lf.filter(pl.col(name) == value)
    return lf.with_columns(pl.col(c).cast(pl.String) for c in PARTITION_COLUMNS)


def connect(corpus: str | os.PathLike[str], database: str = ":memory:",
            notes: list[str] | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with views ``runs``, ``manifest``, ``steps`` and ``events``.

    ``runs`` is ``runs.parquet`` when analysis has written it, else the manifest (so
    outcome columns are null until then). ``steps`` and ``events`` read only the files of
    runs that ``verify`` accepts (:func:`stabilitybench.data_schema.verify.readable_runs`); the runs left out
    are named in one line, appended to ``notes`` or issued as a
    :class:`~stabilitybench.data_schema.errors.SkippedRunsWarning`.
    """
    root = require_corpus(corpus).resolve()
    readable = readable_runs(root)
    readable.report(notes)
    con = duckdb.connect(database)
    manifest = root / MANIFEST
    runs = root / RUNS
    _view(con, "manifest", f"read_parquet('{_sql(manifest)}')" if manifest.exists() else None, MANIFEST_SCHEMA)
    if runs.exists():
        _view(con, "runs", f"read_parquet('{_sql(runs)}')", RUNS_SCHEMA)
    else:
        _view(con, "runs", "manifest" if manifest.exists() else None, MANIFEST_SCHEMA, upgraded=True)
    steps, events = readable.steps_files(), readable.events_files()
    steps_src = f"read_parquet({_sql_list(steps)}, hive_partitioning=true, union_by_name=true)"
    _view(con, "steps", steps_src if steps else None, STEPS_SCHEMA)
    _view(con, "events", f"read_parquet({_sql_list(events)}, union_by_name=true)" if events else None, EVENTS_SCHEMA)
    return con


def _view(con: duckdb.DuckDBPyConnection, name: str, source: str | None, schema: pa.Schema,
          upgraded: bool = False) -> None:
    """View ``name`` over ``source``, with legacy column names mapped onto the current ones."""
    if source is None:  # no files yet: an empty relation with the declared columns
        con.register(f"_empty_{name}", schema.empty_table())
        source = f"_empty_{name}"
    columns = [row[0] for row in con.execute(f"describe select * from {source}").fetchall()]
    table = schema.metadata[b"stabilitybench.table"].decode()
    select = "*" if upgraded else upgrade_select(columns, table)
    have = set(columns) | set(RENAMED.get(table, {}).values())
    newer = [f"cast(null as {_DUCKDB_TYPES[str(f.type)]}) as \"{f.name}\"" for f in schema
             if f.name not in have and str(f.type) in _DUCKDB_TYPES]  # newer than every file: null
    select = ", ".join([select, *newer])
    con.execute(f"create or replace view {name} as select {select} from {source}")


#: DuckDB type of a declared column that no file has yet (nullable columns are plain types).
_DUCKDB_TYPES = {"double": "DOUBLE", "int64": "BIGINT", "string": "VARCHAR", "bool": "BOOLEAN"}


def _sql(path: Path) -> str:
    return str(path).replace("'", "''")


def _sql_list(paths: list[Path]) -> str:
    """A DuckDB list literal of file paths: ``['a.parquet', 'b.parquet']``."""
    return "[" + ", ".join(f"'{_sql(p)}'" for p in paths) + "]"
