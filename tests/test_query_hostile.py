"""``stabilitybench query`` cannot write anywhere (issue 30, item 5): hostile queries through the CLI.

Each hostile query must exit non-zero with one ``error:`` line naming what it was refused for, leave
the corpus byte-for-byte unchanged and create no file in the corpus or the working directory.
Was: ``explain analyze copy (select * from manifest) to '<corpus>/steps/...'`` exited 0 and planted a
file that every folder read then picked up; ``copy (pivot ...) to`` (parsed as MULTI) wrote too; and
INSTALL was refused with the LOAD message.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest

from stabilitybench.cli import main


@pytest.fixture(scope="module")
def corpus(local_smoke: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the session's smoke corpus (a query that did write must not spoil other modules)."""
    dst = tmp_path_factory.mktemp("hostile") / "corpus"
    shutil.copytree(local_smoke, dst)
    return dst


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (dot-files included) -> its content hash: the tree, byte for byte."""
    return {str(p.relative_to(root)): hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``stabilitybench ARGS`` in-process, through the console entry point (one-line errors, exit codes)."""
    monkeypatch.setattr(sys, "argv", ["stabilitybench", *args])
    code = 0
    try:
        main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def steps_dir(corpus: Path) -> Path:
    return next((corpus / "steps").rglob("*.parquet")).parent


# (sql, a word the one-line error must contain); {c} = the corpus, {s} = a steps partition folder in it
HOSTILE = [
    ("copy (select * from manifest) to '{s}/evil.parquet' (format parquet)", "COPY"),
    ("explain analyze copy (select * from manifest) to '{s}/evil.parquet' (format parquet)", "EXPLAIN ANALYZE of COPY"),
    ("EXPLAIN (FORMAT JSON) copy (select 1) to '{c}/plan.csv'", "EXPLAIN of COPY"),
    ("explain analyze create table t as select * from steps", "EXPLAIN ANALYZE of CREATE"),
    ("attach '{c}/new.duckdb' as x", "ATTACH"),
    ("install httpfs", "INSTALL"),
    ("load httpfs", "LOAD"),
    ("force install httpfs", "FORCE INSTALL"),
    ("update extensions", "UPDATE EXTENSIONS"),
    ("set enable_external_access = true", "SET"),
    ("set allowed_directories = ['/']", "SET"),
    ("reset lock_configuration", "RESET"),
    ("pragma enable_profiling", "PRAGMA"),
    ("export database '{c}/dump'", "EXPORT"),
    ("import database '{c}'", "IMPORT"),
    ("create table runs_copy as select * from runs", "CREATE"),
    ("insert into manifest select * from manifest", "INSERT"),
    ("update manifest set seed = 1", "UPDATE"),
    ("delete from events", "DELETE"),
    ("drop view steps", "DROP"),
    ("select * from read_text('/etc/passwd')", "Permission"),
    ("select * from read_csv('/etc/passwd')", "Permission"),
    ("select * from glob('/*')", "Permission"),
    ("copy manifest from '{c}/manifest.parquet'", "COPY"),
    ("select 1; copy (select 1) to 'second.csv'", "COPY"),
    ("/* harmless */ CoPy (select 1) to 'tricky.csv'", "COPY"),
    ("-- a comment\n  ExPlAiN /* é */ AnAlYzE CoPy (select 1) to 'tricky2.csv'", "EXPLAIN ANALYZE of COPY"),
    ("call pragma_version()", "CALL"),
    ("checkpoint", "CHECKPOINT"),
    ("with x as (select * from manifest) insert into manifest select * from x", "INSERT"),
    ("copy (pivot steps on algo using count(*)) to '{c}/pivot.csv'", "COPY"),
    ("explain analyze copy (pivot steps on algo using count(*)) to '{c}/pivot2.csv'", "EXPLAIN ANALYZE of COPY"),
    ("create table t as pivot steps on algo using count(*)", "CREATE"),
    ("select * from query('copy (select 1) to ''{c}/q.csv''')", "SELECT"),
    ("copy (select 1) to '{c}/manifest.parquet' (format parquet, use_tmp_file false)", "COPY"),
]


@pytest.mark.parametrize("sql, needle", HOSTILE, ids=[f"{i:02d}-{n.split()[-1]}" for i, (_, n) in
                                                       enumerate(HOSTILE)])
def test_a_hostile_query_is_refused_and_writes_nothing(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], sql: str,
                                                       needle: str) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = tree(corpus)
    code, out, err = run_cli(monkeypatch, capsys, "query", "--corpus", str(corpus), "--",
                             sql.format(c=corpus, s=steps_dir(corpus)))
    assert code == 2, (code, out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in out + err
    assert needle in lines[0], lines[0]
    assert tree(corpus) == before
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("kind", ["INSTALL", "LOAD", "ATTACH", "COPY", "PRAGMA", "SET", "CALL", "EXPORT"])
def test_each_refused_kind_has_its_own_message(corpus: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str], kind: str) -> None:
    """Was: INSTALL was refused with the LOAD message (both are DuckDB's statement type LOAD)."""
    sql = {"INSTALL": "install json", "LOAD": "load json", "ATTACH": "attach ':memory:' as m",
           "COPY": "copy manifest to 'x.csv'", "PRAGMA": "pragma version", "SET": "set threads = 1",
           "CALL": "call pragma_version()", "EXPORT": "export database 'd'"}[kind]
    monkeypatch.chdir(corpus.parent)
    _, _, err = run_cli(monkeypatch, capsys, "query", sql, "--corpus", str(corpus))
    others = {"INSTALL", "LOAD", "ATTACH", "COPY", "PRAGMA", "SET", "CALL", "EXPORT"} - {kind}
    assert f"read-only: {kind} is not allowed" in err
    assert not any(f"{o} is not allowed" in err for o in others), err


@pytest.mark.parametrize("sql", [
    "select magnitude, avg(performance) from steps join runs using (run_id) group by magnitude",  # README
    "select algo, ent_coef, count(*) as updates, avg(performance) as mean_performance "
    "from steps natural join runs group by algo, ent_coef order by algo",  # README
    "select count(*) from steps s join runs r using (run_id) join events e using (run_id)",
    "select r.algo, count(distinct e.event) from runs r join events e using (run_id) group by r.algo",
    "with r as (select * from runs) select count(*) from r",
    "from manifest select run_id, status",
    "describe steps",
    "show tables",
    "summarize manifest",
    "explain select * from events",
    "explain analyze select count(*) from steps",
    "pivot steps on algo using count(*) group by perturbation",
    "explain analyze pivot steps on algo using count(*)",
    "unpivot (select run_id, loss, grad_norm from steps) on loss, grad_norm into name k value v",
    "/* a comment */ select count(*) as n from steps -- and another",
    "select 1 as a; select count(*) from runs",
])
def test_reading_queries_still_run(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str], sql: str) -> None:
    monkeypatch.chdir(tmp_path)
    before = tree(corpus)
    code, out, err = run_cli(monkeypatch, capsys, "query", sql, "--corpus", str(corpus), "--format", "csv")
    assert code == 0, err
    assert len(out.strip().splitlines()) >= 2, out  # a header and at least one row
    assert tree(corpus) == before
    assert list(tmp_path.iterdir()) == []
