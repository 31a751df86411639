"""``stabilitybench query``: read-only DuckDB SQL over the corpus views.

Two independent guards keep a query from writing anything:

1. **Statement types**, from DuckDB's own parser (:func:`duckdb.extract_statements` and
   :func:`duckdb.tokenize`), not a regex. Accepted: SELECT (which covers WITH, FROM-first, VALUES,
   DESCRIBE, SHOW, SUMMARIZE, UNPIVOT and PIVOT with an IN list); EXPLAIN and EXPLAIN ANALYZE only
   of an accepted statement (EXPLAIN ANALYZE *runs* its statement: ``explain analyze copy ... to``
   wrote a file); and a PIVOT without an IN list, which DuckDB parses as several statements (MULTI),
   only when its main statement is a query (``copy (pivot ...) to`` is also MULTI). Everything else
   is refused in one line that names the kind (COPY, INSTALL, LOAD, ATTACH, SET, CREATE, ...).
2. **A locked connection** that can create no file. DuckDB has no read-only file access: measured
   on duckdb 2.0, ``allowed_directories`` = the corpus lets ``COPY ... TO '<corpus>/steps/...'``
   write, and ``enable_external_access = false`` alone stops the views themselves (they read their
   files when a query runs, not when they are created). So file access is limited to
   ``allowed_paths``: exactly the files the views read (taken from the views' own SQL, so also any
   glob pattern they use). A new file cannot be created anywhere, in the corpus or out of it, and
   nothing outside the views' files can be read; extensions cannot be installed or auto-loaded; and
   the configuration is locked (``lock_configuration = true``) so no statement can reopen it.
   (``allowed_paths`` still lets DuckDB open a listed file for writing: that is why guard 1 is
   the primary one.)

To write, use DuckDB itself: ``duckdb.connect()`` plus ``read_parquet('corpus/...')``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import duckdb

from stabilitybench.data_schema.corpus import connect, require_corpus
from stabilitybench.data_schema.errors import StabilityBenchError, first_line

#: The statement types ``query`` runs as they are (PIVOT with an IN list, DESCRIBE, SHOW, ... parse as SELECT).
READ_STATEMENTS = frozenset({duckdb.StatementType.SELECT})
#: Main keywords of a query (a MULTI statement, i.e. a PIVOT without an IN list, must have one of these).
QUERY_KEYWORDS = frozenset({"SELECT", "FROM", "VALUES", "TABLE", "PIVOT", "PIVOT_WIDER", "PIVOT_LONGER", "UNPIVOT",
                            "DESCRIBE", "SHOW", "SUMMARIZE"})
#: Keywords that begin a statement (to find the main statement after WITH's common table expressions).
STATEMENT_KEYWORDS = QUERY_KEYWORDS | frozenset({
    "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "CREATE", "DROP", "ALTER", "ATTACH", "DETACH", "EXPORT",
    "IMPORT", "INSTALL", "LOAD", "SET", "RESET", "PRAGMA", "CALL", "TRUNCATE", "EXPLAIN"})

#: What each refused kind of statement would do: the reason in its one-line error.
REFUSED = {
    "COPY": "COPY writes (or bulk-loads) files",
    "EXPORT": "EXPORT DATABASE writes files",
    "IMPORT": "IMPORT DATABASE loads files into tables",
    "ATTACH": "ATTACH opens, or creates, a database file",
    "DETACH": "DETACH changes the attached databases",
    "INSTALL": "INSTALL downloads an extension and stores it on disk",
    "FORCE INSTALL": "FORCE INSTALL downloads an extension and stores it on disk",
    "FORCE CHECKPOINT": "FORCE CHECKPOINT writes a database file",
    "UPDATE EXTENSIONS": "UPDATE EXTENSIONS downloads extensions",
    "LOAD": "LOAD runs an extension's code in the query process",
    "SET": "SET changes a setting, and the query connection's settings are locked",
    "RESET": "RESET changes a setting, and the query connection's settings are locked",
    "USE": "USE changes the default database",
    "PRAGMA": "PRAGMA changes settings or runs commands",
    "CALL": "CALL runs a procedure (a table function reads as SELECT * FROM f(...))",
    "CHECKPOINT": "CHECKPOINT writes a database file",
    "VACUUM": "VACUUM rewrites storage",
    "ANALYZE": "ANALYZE rewrites table statistics",
    "CREATE": "CREATE defines a table, view, macro, type or secret",
    "INSERT": "INSERT modifies a table",
    "UPDATE": "UPDATE modifies a table",
    "DELETE": "DELETE modifies a table",
    "MERGE": "MERGE INTO modifies a table",
    "TRUNCATE": "TRUNCATE empties a table",
    "DROP": "DROP removes a view, table or prepared statement",
    "DEALLOCATE": "DEALLOCATE removes a prepared statement",
    "ALTER": "ALTER changes a table or view",
    "COMMENT": "COMMENT ON changes the catalog",
    "BEGIN": "transactions are not needed to read",
    "START": "transactions are not needed to read",
    "COMMIT": "transactions are not needed to read",
    "END": "transactions are not needed to read",
    "ROLLBACK": "transactions are not needed to read",
    "ABORT": "transactions are not needed to read",
    "PREPARE": "prepared statements are not supported (write the values into the SELECT)",
    "EXECUTE": "prepared statements are not supported (write the values into the SELECT)",
}
_ALLOWED_TEXT = ("only SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE, PIVOT/UNPIVOT and EXPLAIN [ANALYZE] of "
                 "those run; to write, use duckdb itself (duckdb.connect() and read_parquet('corpus/...'))")


class QueryError(StabilityBenchError):
    """A query that is empty, not read-only, or that DuckDB rejects."""


@dataclass(frozen=True)
class _Token:
    start: int  # byte offset in the UTF-8 text (what duckdb.tokenize reports)
    text: str  # upper-cased, stripped
    kind: str  # duckdb token_type name: keyword, identifier, operator, comment, ...


def _tokens(sql: str) -> tuple[bytes, list[_Token]]:
    """DuckDB's tokens of ``sql``, comments dropped, each with its text (tokenize reports byte offsets)."""
    raw = sql.encode("utf-8")
    found = duckdb.tokenize(sql)
    out = []
    for i, (start, kind) in enumerate(found):
        end = found[i + 1][0] if i + 1 < len(found) else len(raw)
        name = getattr(kind, "name", str(kind)).split(".")[-1]
        if name != "comment":
            out.append(_Token(start, raw[start:end].decode("utf-8", "replace").strip().upper(), name))
    return raw, out


def _main_keyword(tokens: list[_Token]) -> tuple[str, int]:
    """The keyword that makes the statement what it is, and its index: the first one, past opening
    parentheses and past WITH's common table expressions (``with x as (...) insert ...`` is an INSERT)."""
    i = 0
    while i < len(tokens) and tokens[i].text.startswith("("):
        i += 1
    if i >= len(tokens):
        return "", i
    if tokens[i].text != "WITH":
        return tokens[i].text, i
    depth = 0
    for j in range(i + 1, len(tokens)):
        text = tokens[j].text
        depth += text.count("(") - text.count(")")
        if depth == 0 and tokens[j].kind == "keyword" and text in STATEMENT_KEYWORDS:
            return text, j
    return "WITH", i


def _describe(tokens: list[_Token], fallback: str) -> str:
    """The refused statement's kind as the user wrote it (INSTALL and LOAD share DuckDB's type LOAD)."""
    kind, i = _main_keyword(tokens)
    two = f"{kind} {tokens[i + 1].text}" if i + 1 < len(tokens) else kind
    if two in REFUSED:  # UPDATE EXTENSIONS, FORCE INSTALL, FORCE CHECKPOINT
        return two
    if kind in REFUSED:
        return kind
    return fallback.replace("_", " ")


def _refuse(kind: str, context: str = "") -> QueryError:
    reason = REFUSED.get(kind, f"{kind} is not a read statement")
    if context.startswith("EXPLAIN ANALYZE"):
        reason += "; EXPLAIN ANALYZE runs the statement it explains"
    return QueryError(f"query is read-only: {context}{kind} is not allowed ({reason}); {_ALLOWED_TEXT}")


def _check_statement(text: str, stype: duckdb.StatementType | None, context: str = "") -> None:
    """Raise :class:`QueryError` unless the one statement ``text`` (of type ``stype``) only reads."""
    raw, tokens = _tokens(text)
    if stype in READ_STATEMENTS:
        return
    kind, _ = _main_keyword(tokens)
    # EXPLAIN [ANALYZE] of a PIVOT without an IN list parses as MULTI, not EXPLAIN
    if stype == duckdb.StatementType.EXPLAIN or (stype == duckdb.StatementType.MULTI and kind == "EXPLAIN"):
        # EXPLAIN [ANALYZE | ANALYSE] [(options)] <statement>: the statement must itself be a read
        i = 1
        analyze = i < len(tokens) and tokens[i].text in ("ANALYZE", "ANALYSE")
        i += analyze
        if i < len(tokens) and tokens[i].text.startswith("("):
            depth = 0
            while i < len(tokens):
                depth += tokens[i].text.count("(") - tokens[i].text.count(")")
                i += 1
                if depth <= 0:
                    break
        if i >= len(tokens):
            raise QueryError("query: EXPLAIN of nothing")
        inner = raw[tokens[i].start:].decode("utf-8")
        label = f"{context}EXPLAIN {'ANALYZE ' if analyze else ''}of "
        statements = _extract(inner)
        if len(statements) != 1:
            raise QueryError(f"query: {label}more than one statement")
        _check_statement(statements[0].query, _type(statements[0]), label)
        return
    if stype == duckdb.StatementType.MULTI:  # a PIVOT without an IN list: only its main statement tells
        if kind in QUERY_KEYWORDS:
            return
        raise _refuse(_describe(tokens, "MULTI"), context)
    raise _refuse(_describe(tokens, stype.name if stype is not None else "this statement"), context)


def _type(statement: duckdb.Statement) -> duckdb.StatementType | None:
    """The statement's type; None for one the Python API cannot name (``update extensions`` raises ValueError)."""
    try:
        return statement.type
    except ValueError:
        return None


def _extract(sql: str) -> list[duckdb.Statement]:
    try:
        return duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"query: {first_line(exc)}") from None


def check_read_only(sql: str) -> None:
    """Raise :class:`QueryError` unless ``sql`` is one or more read statements (see the module doc)."""
    statements = _extract(sql)
    if not statements:
        raise QueryError("query: empty SQL (e.g. stabilitybench query \"select count(*) from runs\")")
    for st in statements:
        _check_statement(st.query, _type(st))


def _view_sources(con: duckdb.DuckDBPyConnection, root: Path) -> set[str]:
    """The paths and glob patterns under ``root`` that the views name (string literals in their SQL)."""
    prefix = str(root)
    found: set[str] = set()
    for (sql,) in con.execute("select sql from duckdb_views() where not internal").fetchall():
        found.update(s for s in _string_literals(sql or "") if s.startswith(prefix))
    return found


def _string_literals(sql: str) -> list[str]:
    raw = sql.encode("utf-8")
    tokens = duckdb.tokenize(sql)
    out = []
    for i, (start, kind) in enumerate(tokens):
        if getattr(kind, "name", str(kind)).endswith("string_const"):
            end = tokens[i + 1][0] if i + 1 < len(tokens) else len(raw)
            text = raw[start:end].decode("utf-8").strip()
            if len(text) >= 2 and text[0] == text[-1] == "'":
                out.append(text[1:-1].replace("''", "'"))
    return out


def _sql_list(paths: set[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in sorted(paths)) + "]"


def read_only_connection(corpus: str | os.PathLike[str]) -> duckdb.DuckDBPyConnection:
    """:func:`data_schema.connect`, then file access limited to exactly the views' files (no new file can be
    created), extensions off and the configuration locked (see the module doc)."""
    root = require_corpus(corpus).resolve()
    try:
        con = connect(root)
        allowed = _view_sources(con, root)
        con.execute("set autoinstall_known_extensions = false")
        con.execute("set autoload_known_extensions = false")
        if allowed:
            con.execute(f"set allowed_paths = {_sql_list(allowed)}")
        con.execute("set enable_external_access = false")
        con.execute("set lock_configuration = true")
    except duckdb.Error as exc:
        raise QueryError(f"query: cannot open the corpus views ({first_line(exc)}); "
                         f"`stabilitybench verify --corpus {corpus}` names damaged files") from None
    return con


def run_query(corpus: str | os.PathLike[str], sql: str) -> duckdb.DuckDBPyRelation | None:
    """Check ``sql`` is read-only, then run it on a locked connection; the last statement's relation."""
    check_read_only(sql)
    con = read_only_connection(Path(corpus))
    try:
        return con.sql(sql)
    except duckdb.PermissionException as exc:
        raise QueryError(f"query: {first_line(exc)} (a query reads the views runs, manifest, steps and events, "
                         "and their files; nothing else)") from None
    except duckdb.Error as exc:
        raise QueryError(f"query failed: {first_line(exc)}") from None
