"""Atomic Parquet writing and schema validation.

There is exactly one way to write a corpus file: :func:`write_table`. It conforms the
table to its declared schema, writes it zstd-compressed to a dot-prefixed temporary
file in the destination folder and ``os.replace``-s it into place, so a reader (or a
resumed run) sees either the complete old file, the complete new file, or nothing.
Readers ignore dot-files and the temporary name does not end in ``.parquet``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stabilitybench.data_schema.compat import upgrade
from stabilitybench.data_schema.errors import CorruptFileError, OutputPathError, SchemaError, first_line
from stabilitybench.data_schema.schema import SCHEMA_VERSION, SCHEMAS

#: Key of the Parquet key-value metadata that carries a run's manifest row (JSON).
RUN_METADATA_KEY = b"stabilitybench.run"


def conform(table: pa.Table, schema: pa.Schema, where: str = "<table>") -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, order and types.

    Missing nullable columns are filled with nulls; a missing non-nullable column, an
    unexpected column, an uncastable type or a null in a non-nullable column raises
    :class:`SchemaError` naming ``where`` and the column.
    """
    extra = [n for n in table.column_names if schema.get_field_index(n) < 0]
    if extra:
        raise SchemaError(f"{where}: unexpected column {extra[0]!r} (not in schema v{SCHEMA_VERSION})")
    arrays = []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise SchemaError(f"{where}: missing required column {field.name!r}")
            arrays.append(pa.nulls(table.num_rows, type=field.type))
            continue
        col = table.column(field.name)
        if not col.type.equals(field.type):
            if not _safe_cast(col.type, field.type):
                raise SchemaError(f"{where}: column {field.name!r}: expected {field.type}, found {col.type}")
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(f"{where}: column {field.name!r}: cannot cast {col.type} to {field.type}") from exc
        if not field.nullable and col.null_count:
            raise SchemaError(f"{where}: column {field.name!r}: {col.null_count} null(s) in a required column")
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=schema)


def _safe_cast(src: pa.DataType, dst: pa.DataType) -> bool:
    """Casts we accept silently: null to anything, ints to wider ints or floats, large/small strings."""
    if pa.types.is_null(src):
        return True
    if pa.types.is_dictionary(dst):  # the steps files' partition columns
        return _safe_cast(src, dst.value_type)
    if pa.types.is_integer(src) and (pa.types.is_integer(dst) or pa.types.is_floating(dst)):
        return True
    if pa.types.is_floating(src) and pa.types.is_floating(dst):
        return True
    if (pa.types.is_string(src) or pa.types.is_large_string(src)) and pa.types.is_string(dst):
        return True
    if pa.types.is_dictionary(src):
        return _safe_cast(src.value_type, dst)
    return False


def write_table(
    table: pa.Table,
    path: str | os.PathLike[str],
    schema: pa.Schema,
    extra_metadata: dict[bytes, bytes] | None = None,
    *,
    atomic: bool = True,
) -> Path:
    """Validate ``table`` against ``schema`` and write it atomically to ``path`` (zstd).

    ``extra_metadata`` is merged into the file's key-value metadata (e.g. the run's
    manifest row under :data:`RUN_METADATA_KEY`). ``atomic=False`` writes straight to
    ``path``: only for a ``path`` that is itself a temporary name from :func:`atomic_path`
    (:func:`stabilitybench.data_schema.run_writer.write_run` hashes its files before publishing them).
    """
    path = Path(path)
    table = conform(table, schema, where=str(path))
    if extra_metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra_metadata})
    path.parent.mkdir(parents=True, exist_ok=True)
    if not atomic:
        pq.write_table(table, path, compression="zstd", write_page_checksum=True)
        return path
    with atomic_path(path, fsync=True) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_page_checksum=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success ``os.replace`` it onto ``path``.

    The temporary name is dot-prefixed and ends in ``.tmp``, so readers and globs skip it;
    if the write raises, it is removed. ``fsync`` makes the bytes durable before the
    rename publishes them. Every atomic file write of the project goes through here.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temps(path: str | os.PathLike[str]) -> int:
    """Delete the temporary files :func:`atomic_path` left beside ``path`` when killed mid-write.

    Only the caller knows that no writer of ``path`` is alive (the runner: the one attempt
    of a run that is about to write it). Returns how many were removed.
    """
    path = Path(path)
    stale = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def remove_stale_temps_tree(root: str | os.PathLike[str]) -> list[Path]:
    """Delete every temporary file :func:`atomic_path` left anywhere under ``root``; returns them.

    For a writer that holds the corpus lock (:mod:`stabilitybench.data_schema.lock`): no other writer of
    the corpus is alive, so every ``.<name>.<hex>.tmp`` file is a dead writer's leftover.
    """
    stale = [p for p in Path(root).rglob(".*.tmp") if p.is_file()] if Path(root).is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def writable_dir(path: str | os.PathLike[str], option: str) -> Path:
    """Create ``path`` if needed and check that a file can be written in it; else one-line :class:`OutputPathError`.

    ``option`` names the command-line option the path came from (e.g. ``--out``).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{option} {path}: is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test.{uuid.uuid4().hex}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputPathError(f"{option} {path}: cannot write here ({exc.strerror or exc})") from None
    return path


def read_table(path: str | os.PathLike[str], table_name: str) -> pa.Table:
    """Read a corpus file and validate it against the named schema.

    A file written with a legacy schema version is upgraded on read (:func:`stabilitybench.data_schema.compat.upgrade`).
    Raises :class:`CorruptFileError` if it is not readable Parquet and
    :class:`SchemaError` (naming file and column) if the columns do not match.
    """
    path = Path(path)
    try:
        table = pq.read_table(path, page_checksum_verification=True)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise CorruptFileError(f"{path}: not a readable Parquet file ({first_line(exc)})") from exc
    table = upgrade(table, table_name)
    validate(table, table_name, where=str(path))
    return table


def validate(table: pa.Table, table_name: str, where: str = "<table>") -> None:
    """Check that ``table`` has exactly the columns and types of schema ``table_name``."""
    schema = SCHEMAS[table_name]
    for field in schema:
        idx = table.schema.get_field_index(field.name)
        if idx < 0:
            raise SchemaError(f"{where}: missing column {field.name!r}")
        found = table.schema.field(idx).type
        if not found.equals(field.type):
            raise SchemaError(f"{where}: column {field.name!r}: expected {field.type}, found {found}")
        if not field.nullable and table.column(idx).null_count:
            raise SchemaError(f"{where}: column {field.name!r}: nulls in a required column")
    extra = [n for n in table.column_names if schema.get_field_index(n) < 0]
    if extra:
        raise SchemaError(f"{where}: unexpected column {extra[0]!r}")


def run_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest row stored in a steps file's metadata, or None if absent/unreadable."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError):
        return None
    raw = meta.get(RUN_METADATA_KEY)
    return json.loads(raw) if raw else None
