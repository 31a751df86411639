"""Integrity of a run's files: content hashes recorded at write time, cheap and deep checks.

Every steps and events file's size and BLAKE2b-128 hash are recorded in the run's manifest
row when the run is written (``steps_bytes``, ``steps_blake2b``, ``events_bytes``,
``events_blake2b``). Two levels of checking use them:

* :func:`check_run` (cheap, what ``generate`` uses to resume and what ``status`` and
  ``analyze`` use): the files exist, their size and hash match the manifest, and their
  footers match schema v1. A row written before the hashes were recorded has null hashes;
  its files are then read once with page-checksum verification (:func:`check_pages`), and
  the hashes of files that pass are returned so the caller can record them.
* :func:`check_pages` (deep, ``verify --deep``): every data page is read with CRC
  verification, so a flipped byte inside a page is found even where no hash was recorded.

A problem is a :class:`Problem`: the file, and one line saying what is wrong.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stabilitybench.data_schema.compat import VERSION_KEY, upgrade_schema
from stabilitybench.data_schema.errors import NewerSchemaError, first_line
from stabilitybench.data_schema.layout import events_path, steps_path
from stabilitybench.data_schema.schema import EVENTS_SCHEMA, SCHEMA_VERSION, STEPS_SCHEMA

#: Manifest columns holding each file's (size, hash), by file kind.
HASH_COLUMNS = {"steps": ("steps_bytes", "steps_blake2b"), "events": ("events_bytes", "events_blake2b")}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Problem:
    """One bad file of one run."""

    run_id: str
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def file_digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """``(size in bytes, BLAKE2b-128 hex digest)`` of a file's content."""
    h = hashlib.blake2b(digest_size=16)
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def require_known_version(path: Path, recorded: bytes | None) -> None:
    """Raise :class:`NewerSchemaError` if ``path`` was written by a newer schema than :data:`SCHEMA_VERSION`.

    Such a file is not damaged: this code cannot judge it. Calling it damaged would make ``generate``
    rerun (overwrite) the run and ``analyze`` drop it, so every reader stops with one line instead.
    """
    if not recorded:
        return
    try:
        found = tuple(int(x) for x in recorded.decode().split("."))
        ours = tuple(int(x) for x in SCHEMA_VERSION.split("."))
    except ValueError:
        return  # not a version this code wrote; the column check below judges the file
    if found > ours:
        raise NewerSchemaError(f"{path}: written by corpus schema v{recorded.decode()}, newer than this code's "
                               f"v{SCHEMA_VERSION}; upgrade stabilitybench to read or resume this corpus (nothing "
                               "was changed)")


def check_footer(path: Path, schema: pa.Schema) -> str | None:
    """None if ``path`` is a Parquet file whose footer has ``schema``'s columns and types, else why not."""
    try:
        found = pq.ParquetFile(path).schema_arrow
    except FileNotFoundError:
        return "missing"
    except (pa.ArrowException, OSError) as exc:
        return f"not a readable Parquet file ({first_line(exc)})"
    require_known_version(path, (found.metadata or {}).get(VERSION_KEY))
    table = (schema.metadata or {}).get(b"stabilitybench.table", b"").decode()
    if table:  # an older 1.x file: compare what it reads as (stabilitybench.data_schema.compat)
        found = upgrade_schema(found, table)
    if not found.remove_metadata().equals(schema.remove_metadata()):
        return "columns do not match schema v1"
    return None


def check_pages(path: Path, schema: pa.Schema) -> str | None:
    """None if every page of ``path`` reads back with its CRC verified and the schema matches, else why not."""
    reason = check_footer(path, schema)
    if reason:
        return reason
    try:
        pq.read_table(path, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as exc:
        return f"damaged data page ({first_line(exc)})"
    return None


def check_run(
    corpus: str | os.PathLike[str], row: dict[str, Any], deep: bool = False
) -> tuple[list[Problem], dict[str, Any]]:
    """Check one finished run's steps and events files against its manifest ``row``.

    Returns ``(problems, hashes)``: ``hashes`` holds the size and hash columns of files
    that had none recorded and passed the page-checksum read (an older manifest), so the
    caller can store them. ``deep`` reads every page even when the hashes match.
    """
    problems: list[Problem] = []
    found: dict[str, Any] = {}
    files = {"steps": (steps_path(corpus, row), STEPS_SCHEMA), "events": (events_path(corpus, row["run_id"]),
                                                                         EVENTS_SCHEMA)}
    for kind, (path, schema) in files.items():
        size_col, hash_col = HASH_COLUMNS[kind]
        reason = check_footer(path, schema)
        if reason is None and row.get(hash_col):
            size = path.stat().st_size
            if size != row.get(size_col):
                reason = f"size {size} bytes, the manifest recorded {row.get(size_col)}"
            elif file_digest(path)[1] != row[hash_col]:
                reason = "content hash differs from the one recorded at write time"
        if reason is None and (deep or not row.get(hash_col)):
            reason = check_pages(path, schema)
            if reason is None and not row.get(hash_col):
                found[size_col], found[hash_col] = file_digest(path)
        if reason is None and kind == "steps" and row.get("n_updates") is not None:
            n = pq.ParquetFile(path).metadata.num_rows
            if n != row["n_updates"]:
                reason = f"{n} rows, the manifest recorded n_updates = {row['n_updates']}"
        if reason:
            problems.append(Problem(row["run_id"], path, reason))
    return problems, found
