"""Trustworthy under faults (issue 15): each defect that was reproduced, as a test.

Damaged pages, a missing steps file, writing through ``query``, two writers, a corrupt
manifest, stale temporary files, Ctrl-C / SIGTERM, a killed driver, a full disk and the
tracebacks that had to become one line. The runs are tiny real PPO runs (4 updates).
The randomised fault-injection suite is ``tests/test_faults.py`` (``make faults``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpus_tools import can_mount_tmpfs, flip_byte_in_page, pids_writing_to, tmpfs, truncate
from test_cli import assert_user_error, cli
from test_runner import DRIVER, GOOD_A, GOOD_B, file_stamps, manifest_rows, steps_file, tiny
from typer.testing import CliRunner

from stabilitybench.analysis.data import load_runs
from stabilitybench.cli import app
from stabilitybench.data_schema import MANIFEST, events_path, read_manifest, write_manifest
from stabilitybench.data_schema.errors import DiskFullError
from stabilitybench.data_schema.integrity import HASH_COLUMNS
from stabilitybench.data_schema.lock import CorpusLock, CorpusLockedError
from stabilitybench.data_schema.query import QueryError, run_query
from stabilitybench.data_schema.verify import verify_corpus
from stabilitybench.generate.matrix import load_profile
from stabilitybench.generate.runner import plan, run_matrix
from stabilitybench.generate.worker import LOG_DIR

SPECS = [GOOD_A, GOOD_B]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = tmp_path_factory.mktemp("reliability") / "corpus"
    report = run_matrix(SPECS, corpus, workers=2)
    assert report.ok == 2
    return corpus


@pytest.fixture
def corpus(base: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "corpus"
    shutil.copytree(base, dst, copy_function=shutil.copy2)
    return dst


def run_cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.output


def strip_hashes(corpus: Path) -> None:
    """Make the manifest look like one written before hashes were recorded."""
    rows = read_manifest(corpus).to_pylist()
    for row in rows:
        for cols in HASH_COLUMNS.values():
            row.update(dict.fromkeys(cols))
    write_manifest(corpus, rows)


# ------------------------------------------------------------------- 1. integrity
def test_hashes_are_recorded_at_write_time(base: Path) -> None:
    for row in manifest_rows(base).values():
        for size_col, hash_col in HASH_COLUMNS.values():
            assert row[size_col] > 0 and len(row[hash_col]) == 32
        assert row["steps_bytes"] == steps_file(base, GOOD_A if row["run_id"] == GOOD_A.run_id else GOOD_B
                                                ).stat().st_size
    assert verify_corpus(base, deep=True).problems == []


@pytest.mark.parametrize("legacy", [False, True], ids=["hashed", "manifest-without-hashes"])
def test_a_flipped_byte_in_a_data_page_is_found_and_rerun(corpus: Path, legacy: bool) -> None:
    """Was: validation read only the footer, so status and generate counted the run done."""
    if legacy:
        strip_hashes(corpus)
    path = steps_file(corpus, GOOD_B)
    flip_byte_in_page(path)
    pq.ParquetFile(path)  # the footer is intact: a footer-only check passes

    p = plan(SPECS, corpus)
    assert p.todo == [GOOD_B] and [d.path for d in p.damaged] == [path]
    assert [pr.path for pr in verify_corpus(corpus).problems] == [path]
    code, output = run_cli("status", "--corpus", str(corpus))
    assert code == 1 and path.name in output and "damaged" in output

    report = run_matrix(SPECS, corpus, workers=1)
    assert (report.ran, report.ok, report.skipped) == (1, 1, 1)
    assert verify_corpus(corpus, deep=True).problems == []
    if legacy:  # the resume check recorded the hashes of the files it read whole
        assert all(r["steps_blake2b"] and r["events_blake2b"] for r in manifest_rows(corpus).values())


def test_a_manifest_written_before_the_hash_columns_still_resumes(corpus: Path) -> None:
    """Old corpora keep their run_ids and resume: the new columns read as null, then get filled in."""
    table = pq.read_table(corpus / MANIFEST)
    old = table.drop_columns([c for cols in HASH_COLUMNS.values() for c in cols])
    pq.write_table(old, corpus / MANIFEST)
    stamps = file_stamps(corpus)
    report = run_matrix(SPECS, corpus, workers=1)
    assert (report.ran, report.skipped) == (0, 2)
    assert file_stamps(corpus) == stamps
    rows = manifest_rows(corpus)
    assert set(rows) == {GOOD_A.run_id, GOOD_B.run_id}
    assert all(r["steps_blake2b"] and r["events_bytes"] for r in rows.values())


def test_verify_deep_reads_every_page(corpus: Path) -> None:
    strip_hashes(corpus)  # no hash to compare: only the page checksums can tell
    path = events_path(corpus, GOOD_A.run_id)
    flip_byte_in_page(path, column="event")
    code, output = run_cli("verify", "--corpus", str(corpus), "--deep")
    assert code == 1 and path.name in output.replace("\n", "")


def test_verify_names_orphan_and_missing_files(corpus: Path) -> None:
    steps_file(corpus, GOOD_A).unlink()
    rows = [r for r in read_manifest(corpus).to_pylist() if r["run_id"] != GOOD_B.run_id]
    write_manifest(corpus, rows)  # GOOD_B's files now have no manifest row
    problems = {(p.path.name, p.reason.split(" ")[0]) for p in verify_corpus(corpus).problems}
    assert (f"{GOOD_A.run_id}.parquet", "missing") in problems
    assert {n for n, _ in problems} >= {f"{GOOD_B.run_id}.parquet"}
    code, _ = run_cli("verify", "--corpus", str(corpus))
    assert code == 1


# ------------------------------------------------------------------- 2. analyze
@pytest.mark.parametrize("damage", ["delete", "page", "truncate"])
def test_analyze_excludes_a_run_without_a_valid_steps_file(corpus: Path, damage: str) -> None:
    """Was: a deleted steps file made the run a censored survivor, with empty data_notes."""
    path = steps_file(corpus, GOOD_B)
    {"delete": Path.unlink, "page": flip_byte_in_page, "truncate": truncate}[damage](path)
    notes: list[str] = []
    excluded: list[dict[str, str]] = []
    runs = load_runs(corpus, notes, excluded)
    assert runs["run_id"].to_list() == [GOOD_A.run_id]
    assert [e["run_id"] for e in excluded] == [GOOD_B.run_id] and excluded[0]["file"] == str(path)
    assert any("1 run(s) excluded" in n and str(path) in n for n in notes)


# ------------------------------------------------------------------- 3. read-only query
@pytest.mark.parametrize("sql", [
    "copy (select * from manifest limit 0) to '{corpus}/manifest.parquet'",
    "copy (select 1) to '{tmp}/elsewhere.csv'",
    "attach '{tmp}/new.duckdb' as x",
    "install httpfs",
    "load httpfs",
    "set threads = 1",
    "create table t as select 1",
    "insert into manifest select * from manifest",
    "export database '{tmp}/dump'",
    "pragma threads = 1",
    "select 1; copy (select 1) to '{tmp}/second.csv'",
])
def test_query_refuses_anything_but_reading(corpus: Path, tmp_path: Path, sql: str) -> None:
    """Was: COPY ... TO emptied the manifest, COPY and ATTACH created files anywhere."""
    before = file_stamps(corpus), (corpus / MANIFEST).read_bytes()
    listing = sorted(tmp_path.rglob("*"))
    with pytest.raises(QueryError, match="read-only"):
        run_query(corpus, sql.format(corpus=corpus, tmp=tmp_path))
    assert (file_stamps(corpus), (corpus / MANIFEST).read_bytes()) == before
    assert sorted(tmp_path.rglob("*")) == listing


@pytest.mark.parametrize("sql", [
    "select count(*) from steps",
    "with r as (select * from runs) select count(*) from r",
    "describe steps",
    "show tables",
    "explain select * from events",
    "pivot steps on algo using count(*) group by perturbation",
    "unpivot (select run_id, loss, grad_norm from steps) on loss, grad_norm into name k value v",
    "summarize manifest",
])
def test_query_runs_read_statements(corpus: Path, sql: str) -> None:
    assert run_query(corpus, sql).pl().height > 0


def test_query_configuration_is_locked(corpus: Path, tmp_path: Path) -> None:
    """A SELECT cannot read outside the corpus or reopen the configuration."""
    (tmp_path / "outside.csv").write_text("a\n1\n")
    with pytest.raises(QueryError, match=r"disabled by configuration|Permission"):
        run_query(corpus, f"select * from read_csv('{tmp_path}/outside.csv')")
    with pytest.raises(QueryError, match="read-only"):
        run_query(corpus, "set enable_external_access = true")


def test_query_one_line_errors(corpus: Path) -> None:
    """Was: ``query ""`` and any query on a corpus with a truncated steps file were tracebacks."""
    assert_user_error(cli("query", "", "--corpus", str(corpus), cwd=corpus.parent), "empty")
    truncate(steps_file(corpus, GOOD_A))  # since issue 30: the query goes on without the run, one warning names it
    res = cli("query", "select distinct run_id from steps", "--corpus", str(corpus), "--format", "csv",
              cwd=corpus.parent)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert res.stdout.split() == ["run_id", GOOD_B.run_id]
    (line,) = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert line.startswith("warning: skipped 1 run(s)") and GOOD_A.run_id in line and "verify" in line, line


# ------------------------------------------------------------------- 4. the corpus lock
HOLDER = """\
import sys, time
from stabilitybench.data_schema.lock import CorpusLock
with CorpusLock(sys.argv[1], "test holder"):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(corpus: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(corpus)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_writer_gets_one_line_naming_the_holder(corpus: Path, holder: subprocess.Popen[str]) -> None:
    """Was: two drivers on one corpus both exited 0 and the manifest lost runs."""
    shutil.rmtree(corpus / "steps")
    with pytest.raises(CorpusLockedError, match=f"pid {holder.pid} on"):
        run_matrix(SPECS, corpus, workers=1)
    line = assert_user_error(cli("generate", "--profile", "smoke", "--out", str(corpus), cwd=corpus.parent),
                             f"pid {holder.pid}", "test holder")
    assert "one writer per corpus" in line
    assert_user_error(cli("analyze", "--corpus", str(corpus), "--out", str(corpus.parent / "res"),
                          cwd=corpus.parent), f"pid {holder.pid}")
    # the kernel drops the lock with its holder: no stale lock after a kill -9
    holder.kill()
    holder.wait()
    with CorpusLock(corpus, "after the holder died"):
        pass


def test_lock_excludes_within_one_process_too(corpus: Path) -> None:
    with CorpusLock(corpus, "first"), pytest.raises(CorpusLockedError, match=f"pid {os.getpid()}"):
        CorpusLock(corpus, "second").acquire()


# ------------------------------------------------------------------- 5. recovery
@pytest.mark.parametrize("damage", ["truncate", "page"])
def test_a_corrupt_manifest_is_moved_aside_and_rebuilt(corpus: Path, damage: str) -> None:
    """Was: a truncated manifest made generate exit 2 with no way out."""
    original = manifest_rows(corpus)
    if damage == "truncate":
        truncate(corpus / MANIFEST)
    else:
        flip_byte_in_page(corpus / MANIFEST, column="config_json")
    stamps = file_stamps(corpus)
    seen: list[list[str]] = []
    report = run_matrix(SPECS, corpus, workers=1, on_start=lambda p: seen.append(p.notes))
    assert report.ran == 0 and report.skipped == 2
    assert file_stamps(corpus) == stamps  # nothing retrained
    aside = list(corpus.glob(f"{MANIFEST}.corrupt-*"))
    assert len(aside) == 1
    assert any("moved it aside" in n and aside[0].name in n for n in seen[0])
    rebuilt = manifest_rows(corpus)
    assert set(rebuilt) == set(original)
    for rid, row in original.items():
        for col in ("status", "n_updates", "config_json", "steps_blake2b", "events_blake2b", "steps_bytes"):
            assert rebuilt[rid][col] == row[col], col


def test_stale_temp_files_are_removed_at_the_start_of_generate(corpus: Path) -> None:
    stale = [corpus / f".{MANIFEST}.0123abcd.tmp", steps_file(corpus, GOOD_A).parent / ".x.parquet.99.tmp",
             corpus / "events" / f".{GOOD_B.run_id}.parquet.ff.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    notes: list[list[str]] = []
    run_matrix(SPECS, corpus, workers=1, on_start=lambda p: notes.append(p.notes))
    assert not any(p.exists() for p in stale)
    assert any("removed 3 temporary file(s)" in n for n in notes[0])


# ------------------------------------------------------------------- 6. clean stops
def tiny_profile(tmp_path: Path) -> Path:
    """Three tiny runs and one longer one: two workers, so some finish while another still trains."""
    path = tmp_path / "tiny.toml"
    path.write_text("""
[defaults]
domain = "rl"
algo = "ppo"
env = "HalfCheetah-v5"
perturbation = "none"
hparams = { n_steps = 128, batch_size = 64, n_epochs = 1, hidden = 16 }

[[matrix]]
seed = [0, 1, 2]
total_steps = 256

[[matrix]]
seed = 3
total_steps = 8192
""")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.faults)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_records_finished_runs_and_stops_the_workers(tmp_path: Path, sig: signal.Signals) -> None:
    """Was: Ctrl-C exited 130 silently and a run that finished meanwhile was not recorded."""
    profile = tiny_profile(tmp_path)
    corpus = tmp_path / "corpus"
    specs = load_profile(str(profile))
    proc = subprocess.Popen([sys.executable, "-m", "stabilitybench", "generate", "--profile", str(profile),
                             "--out", str(corpus), "--workers", "2"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait for one finished run
            assert proc.poll() is None, proc.communicate()
            if (corpus / MANIFEST).exists() and len(read_manifest(corpus)) >= 1:
                break
            time.sleep(0.1)
        workers = [pid for s in specs for pid in pids_writing_to(corpus / LOG_DIR / f"{s.run_id}.out")]
        assert workers
        os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)  # Ctrl-C hits the group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    done = manifest_rows(corpus)
    line = [ln for ln in err.splitlines() if ln.startswith("interrupted:")]
    assert line == [f"interrupted: {len(done)} done, {len(specs) - len(done)} left; rerun to resume"]
    # every run whose files landed is in the manifest, and no worker outlives the driver
    on_disk = {p.stem for p in (corpus / "steps").rglob("*.parquet") if not p.name.startswith(".")}
    assert on_disk <= set(done)
    time.sleep(0.5)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()
                and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]]


@pytest.mark.slow
def test_workers_die_with_a_killed_driver(tmp_path: Path) -> None:
    """Was: a kill -9 of the driver left its worker training; a rerun trained the same run twice."""
    corpus = tmp_path / "corpus"
    victim = tiny(seed=11, total_steps=8192)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(driver), str(corpus), json.dumps([victim.to_dict()])],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    log = corpus / LOG_DIR / f"{victim.run_id}.out"
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while not workers and time.monotonic() < deadline:
        workers = pids_writing_to(log) if log.exists() else []
        time.sleep(0.05)
    assert workers, "the worker never started"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{workers[0]}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{workers[0]}").exists(), "the worker outlived its driver"


# ------------------------------------------------------------------- 6b. disk full
@pytest.mark.slow
def test_disk_full_stops_with_one_line_and_the_corpus_stays_consistent(base: Path, tmp_path: Path) -> None:
    """Was: ENOSPC killed the driver with an OSError / _RemoteTraceback."""
    if not can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs here")
    with tmpfs(tmp_path / "small", "1m") as mnt:
        corpus = mnt / "corpus"
        shutil.copytree(base, corpus)
        steps_file(corpus, GOOD_B).unlink()  # one run to redo
        filler = mnt / "filler"
        with open(filler, "wb", buffering=0) as fh:  # fill the disk to the last block
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * 4096)
        with pytest.raises(DiskFullError, match=f"no space left on device writing {corpus}") as info:
            run_matrix(SPECS, corpus, workers=1)
        assert "MB free" in str(info.value) and "rerun to resume" in str(info.value)
        assert verify_corpus(corpus).problems == [] or all(p.run_id == GOOD_B.run_id
                                                           for p in verify_corpus(corpus).problems)
        filler.unlink()
        report = run_matrix(SPECS, corpus, workers=1)
        assert report.ok == 1 and verify_corpus(corpus, deep=True).problems == []


# ------------------------------------------------------------------- 7. one-line errors
def test_one_line_errors_for_bad_output_paths(corpus: Path, tmp_path: Path) -> None:
    """Was: tracebacks for analyze/generate --out <a file> (and --dry-run said all was fine)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert_user_error(cli("analyze", "--corpus", str(corpus), "--out", str(a_file), cwd=tmp_path), "--out", "file")
    for extra in ([], ["--dry-run"]):
        assert_user_error(cli("generate", "--profile", "smoke", "--out", str(a_file), *extra, cwd=tmp_path),
                          "--out", "file")


@pytest.mark.slow
def test_analyze_out_on_a_read_only_filesystem(corpus: Path, tmp_path: Path) -> None:
    if not can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs here")
    with tmpfs(tmp_path / "ro", "64k", read_only=True) as ro:
        assert_user_error(cli("analyze", "--corpus", str(corpus), "--out", str(ro / "results"), cwd=tmp_path),
                          "--out", "Read-only file system")


def test_report_on_corrupt_results(tmp_path: Path) -> None:
    """Was: a traceback for a corrupt summary.json or a truncated results table."""
    from stabilitybench.analysis.results import ResultsCorruptError, load_table

    results = tmp_path / "results"
    results.mkdir()
    (results / "summary.json").write_text('{"corpus": "x", "n_runs": ')
    assert_user_error(cli("report", "--results", str(results), "--out", str(tmp_path / "out"), cwd=tmp_path),
                      "summary.json", "not valid JSON")
    (results / "summary.json").write_bytes(b"\xff\xfe{}")
    assert_user_error(cli("report", "--results", str(results), "--out", str(tmp_path / "out"), cwd=tmp_path),
                      "summary.json")
    (results / "summary.json").write_text('{"corpus": "x", "n_runs": 1}')  # valid JSON, not a summary
    assert_user_error(cli("report", "--results", str(results), "--out", str(tmp_path / "out"), cwd=tmp_path),
                      "summary.json", "missing top-level field")
    table = results / "dose_response.parquet"
    pq.write_table(pa.table({"config": [f"c{i}" for i in range(200)], "n_runs": list(range(200))}), table)
    truncate(table)
    with pytest.raises(ResultsCorruptError, match=r"dose_response\.parquet: not a readable Parquet file"):
        load_table(results, "dose_response")


def test_profile_errors(tmp_path: Path) -> None:
    """Was: a non-UTF-8 profile was a traceback, and a path ending in .TOML was refused."""
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('description = "caf\xe9"\n'.encode("latin-1"))
    assert_user_error(cli("generate", "--profile", str(bad), "--out", str(tmp_path / "c"), cwd=tmp_path),
                      "not UTF-8")
    assert not (tmp_path / "c").exists()
    upper = tmp_path / "SMOKE.TOML"
    shutil.copy(Path(__file__).parent.parent / "generate" / "profiles" / "smoke.toml", upper)
    assert load_profile(str(upper)) == load_profile("smoke")


def test_a_worker_task_that_raises_is_a_failed_row(tmp_path: Path) -> None:
    """A worker that cannot even open its log (a file where logs/ should be) is a failed row, not a driver crash."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / LOG_DIR).write_text("a file where the log folder should be")
    report = run_matrix([GOOD_A], corpus, workers=1)
    assert (report.ran, report.failed) == (1, 1)
    error = report.failures[0]["error"]
    assert "in the worker process" in error and "\n" not in error
