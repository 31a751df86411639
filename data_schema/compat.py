"""Reading corpora written with a legacy schema version (:data:`~stabilitybench.data_schema.schema.LEGACY_VERSIONS`).

1.0 -> 1.1 renamed columns (:data:`~stabilitybench.data_schema.schema.RENAMED`) and made the steps files'
partition columns dictionary-encoded; 1.1 -> 1.2 added a nullable steps column, which an
older file reads as null. Every project reader goes through here, so a 1.0 or 1.1 corpus
reads (and resumes) as the current version:

* :func:`upgrade` maps a 1.0 table (pyarrow) onto the current names and types;
* :func:`upgrade_frame` does the same for a polars LazyFrame, :func:`upgrade_select`
  builds the DuckDB projection for a view;
* :func:`upgrade_corpus` (``python -m stabilitybench.data_schema upgrade CORPUS``) rewrites a corpus's
  legacy files in place, atomically, so readers without project code (pandas or pyarrow
  folder reads) see one schema too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from stabilitybench.data_schema.schema import ADDED_COLUMNS, RENAMED, SCHEMA_VERSION, SCHEMAS

VERSION_KEY = b"stabilitybench.schema_version"


def upgrade_row(row: dict[str, Any], table: str = "manifest") -> dict[str, Any]:
    """A manifest/runs row (dict) with legacy keys renamed; other keys untouched."""
    renames = RENAMED[table]
    return {renames.get(k, k): v for k, v in row.items()}


def upgrade(table: pa.Table, name: str) -> pa.Table:
    """``table`` with legacy column names renamed and columns cast to the current schema's types.

    Only renames and lossless casts (string <-> dictionary-encoded string); anything else is
    left for :func:`stabilitybench.data_schema.io.validate` to report.
    """
    version = (table.schema.metadata or {}).get(VERSION_KEY)  # before any step that may drop the metadata
    renames = RENAMED[name]
    if any(c in renames for c in table.column_names):
        table = table.rename_columns([renames.get(c, c) for c in table.column_names])
    schema = SCHEMAS[name]
    for i, column in enumerate(table.column_names):
        idx = schema.get_field_index(column)
        if idx < 0:
            continue
        want, have = schema.field(idx).type, table.schema.field(i).type
        if not have.equals(want) and _same_strings(have, want):
            table = table.set_column(i, schema.field(idx).with_metadata(table.schema.field(i).metadata),
                                     table.column(i).cast(want))
    return _add_newer_columns(table, schema, name, version)


def _add_newer_columns(table: pa.Table, schema: pa.Schema, name: str, raw: bytes | None) -> pa.Table:
    """The columns that versions after the file's added (:data:`ADDED_COLUMNS`), as nulls, in schema order.

    Only for a file that records an older version; any other missing column is left for
    :func:`stabilitybench.data_schema.io.validate` to report, so a damaged file is never read as one with nulls.
    """
    if not raw:
        return table
    have = _version(raw.decode())
    added = {c for v, tables in ADDED_COLUMNS.items() if _version(v) > have for c in tables.get(name, ())}
    missing = [c for c in added if c not in table.column_names and schema.get_field_index(c) >= 0]
    if not missing:
        return table
    for c in missing:
        table = table.append_column(schema.field(c), pa.nulls(table.num_rows, type=schema.field(c).type))
    order = [f.name for f in schema if f.name in table.column_names]
    order += [c for c in table.column_names if c not in order]
    return table.select(order)


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split("."))
    except ValueError:
        return (0,)


def upgrade_schema(schema: pa.Schema, name: str) -> pa.Schema:
    """The schema a file with ``schema`` has once :func:`upgrade`-d (for footer-only checks)."""
    return upgrade(schema.empty_table(), name).schema


def _same_strings(a: pa.DataType, b: pa.DataType) -> bool:
    def base(t: pa.DataType) -> pa.DataType:
        return t.value_type if pa.types.is_dictionary(t) else t

    return pa.types.is_string(base(a)) and pa.types.is_string(base(b))


def upgrade_frame(lf: pl.LazyFrame, name: str) -> pl.LazyFrame:
    """A polars LazyFrame with legacy names renamed (a file set holding both: the new one wins, then the old)."""
    have = set(lf.collect_schema().names())
    for old, new in RENAMED[name].items():
        if old in have and new in have:
            lf = lf.with_columns(pl.coalesce(new, old).alias(new)).drop(old)
        elif old in have:
            lf = lf.rename({old: new})
    return lf


def upgrade_select(columns: list[str], name: str) -> str:
    """DuckDB select list that maps a relation with ``columns`` onto the current names."""
    renames = RENAMED[name]
    old_of = {new: old for old, new in renames.items()}
    have = set(columns)
    out = []
    for col in columns:
        if col in renames:  # a legacy name: renamed, or folded into its successor below
            if renames[col] not in have:
                out.append(f"{_ident(col)} as {_ident(renames[col])}")
        elif old_of.get(col) in have:  # both generations in one file set: the new one wins
            out.append(f"coalesce({_ident(col)}, {_ident(old_of[col])}) as {_ident(col)}")
        else:
            out.append(_ident(col))
    return ", ".join(out)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def file_version(path: str | os.PathLike[str]) -> str | None:
    """The schema version recorded in a corpus file's metadata (None if absent)."""
    raw = (pq.read_schema(path).metadata or {}).get(VERSION_KEY)
    return raw.decode() if raw else None


def upgrade_corpus(corpus: str | os.PathLike[str]) -> list[Path]:
    """Rewrite every legacy file of ``corpus`` in the current schema (atomically); returns what it rewrote.

    The manifest row kept in a steps file's metadata is renamed too. Current files are untouched,
    so running it twice rewrites nothing the second time. Only the files of runs that ``verify``
    accepts are rewritten (:func:`stabilitybench.data_schema.verify.readable_runs`); the others are left as they
    are and named in one :class:`~stabilitybench.data_schema.errors.SkippedRunsWarning`. A damaged ``runs.parquet``
    is a one-line :class:`~stabilitybench.data_schema.errors.CorruptFileError`.
    """
    from stabilitybench.data_schema.corpus import MANIFEST, RUNS
    from stabilitybench.data_schema.errors import CorruptFileError
    from stabilitybench.data_schema.io import RUN_METADATA_KEY, write_table
    from stabilitybench.data_schema.verify import readable_runs

    root = Path(corpus)
    readable = readable_runs(root)
    readable.report()
    jobs = [(root / MANIFEST, "manifest"), (root / RUNS, "runs")]
    jobs += [(p, "steps") for p in readable.steps_files()]
    jobs += [(p, "events") for p in readable.events_files()]
    done = []
    for path, name in jobs:
        if path.name.startswith(".") or not path.exists():
            continue
        try:
            if file_version(path) == SCHEMA_VERSION:
                continue
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise CorruptFileError(f"{path}: not a readable Parquet file ({str(exc).strip().splitlines()[0]}); "
                                   "nothing was rewritten after it") from None
        meta = dict(table.schema.metadata or {})
        extra = {}
        if RUN_METADATA_KEY in meta:
            extra[RUN_METADATA_KEY] = json.dumps(upgrade_row(json.loads(meta[RUN_METADATA_KEY]))).encode()
        write_table(upgrade(table, name), path, SCHEMAS[name], extra_metadata=extra or None)
        done.append(path)
    return done
