"""Reading corpora written with a legacy schema version (:data:`~stabilitybench.data_schema.schema.LEGACY_VERSIONS`).

1.0 -> 1.1 renamed columns (:data:`~stabilitybench.data_schema.schema.RENAMED`) and made the steps files'
partition columns dictionary-encoded; 1.1 -> 1.2 added a nullable steps column, which an
older file reads as null. Every project reader goes through here, so a 1.0 or 1.1 corpus
reads (and resumes) as the current version:

* :func:`upgrade` maps a 1.0 table (pyarrow) onto the current names and types;
* :func:`upgrade_frame` does the same for a polars LazyFrame, :func:`upgrade_select`
  builds the DuckDB projection for a view;
* :func:`stabilitybench.data_schema.migrate.upgrade_corpus` (``python -m stabilitybench.data_schema upgrade
  CORPUS``) rewrites a corpus's legacy files in place, atomically, so readers without project code
  (pandas or pyarrow folder reads) see one schema too. It lives apart because it writes a corpus:
  this module maps tables and imports nothing of the package but the schema, so the writer and
  the readers can import it.
"""

from __future__ import annotations

import os
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from stabilitybench.data_schema.schema import ADDED_COLUMNS, RENAMED, SCHEMAS

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
