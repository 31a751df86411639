"""``stabilitybench query``: read-only DuckDB SQL over the corpus views.

Two independent guards keep a query from writing anything:

1. **Statement types**, from DuckDB's own parser (:func:`duckdb.extract_statements`), not a
   regex: only SELECT (which covers WITH, DESCRIBE, SHOW, SUMMARIZE, FROM-first and UNPIVOT),
   EXPLAIN and PIVOT (parsed as MULTI) are accepted. COPY, ATTACH, INSTALL/LOAD, SET, CREATE,
   INSERT, EXPORT, PRAGMA, CALL and every other type is refused with one line.
2. **A locked configuration**: after the views are created, file-system access is limited to
   the corpus folder (``allowed_directories`` + ``enable_external_access = false``) and the
   configuration is locked (``lock_configuration = true``), so no statement can reopen it.

To write, use DuckDB itself: ``duckdb.connect()`` plus ``read_parquet('corpus/...')``.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from data_schema.corpus import connect, require_corpus
from data_schema.errors import StabilityBenchError

#: Statement types ``query`` runs. PIVOT parses as MULTI (it creates an enum type, then selects).
READ_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN,
                             duckdb.StatementType.MULTI})


class QueryError(StabilityBenchError):
    """A query that is empty, not read-only, or that DuckDB rejects."""


def check_read_only(sql: str) -> None:
    """Raise :class:`QueryError` unless ``sql`` is one or more read statements (see the module doc)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"query: {_first_line(exc)}") from None
    if not statements:
        raise QueryError("query: empty SQL (e.g. stabilitybench query \"select count(*) from runs\")")
    for st in statements:
        if st.type not in READ_STATEMENTS:
            kind = st.type.name
            raise QueryError(f"query is read-only: {kind} statements are not allowed (only SELECT, WITH, DESCRIBE, "
                             "SHOW, EXPLAIN, PIVOT/UNPIVOT); to write, use duckdb itself")


def read_only_connection(corpus: str | os.PathLike[str]) -> duckdb.DuckDBPyConnection:
    """:func:`data_schema.connect` with file access limited to the corpus and the configuration locked."""
    root = require_corpus(corpus).resolve()
    try:
        con = connect(root)
    except duckdb.Error as exc:
        raise QueryError(f"query: cannot open the corpus views ({_first_line(exc)}); "
                         f"`stabilitybench verify --corpus {corpus}` names damaged files") from None
    allowed = str(root).replace("'", "''") + os.sep
    con.execute(f"set allowed_directories = ['{allowed}']")
    con.execute("set enable_external_access = false")
    con.execute("set lock_configuration = true")
    return con


def run_query(corpus: str | os.PathLike[str], sql: str) -> duckdb.DuckDBPyRelation | None:
    """Check ``sql`` is read-only, then run it on a locked connection; the last statement's relation."""
    check_read_only(sql)
    con = read_only_connection(Path(corpus))
    try:
        return con.sql(sql)
    except duckdb.Error as exc:
        raise QueryError(f"query failed: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
