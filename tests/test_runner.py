"""The runner: one run's files, failures as rows, resume, recovery, no duplicates, dead workers.

The runs are tiny real PPO runs (256 env steps, 4 optimizer updates); nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stabilitybench.data_schema import (
    MANIFEST,
    events_path,
    read_manifest,
    read_table,
    run_metadata,
    steps_path,
    write_manifest,
)
from stabilitybench.generate.runner import MatrixReport, outputs_valid, plan, run_matrix
from stabilitybench.generate.spec import RunSpec
from stabilitybench.generate.worker import LOG_DIR, base_row, run_one

TINY = {"n_steps": 128, "batch_size": 64, "n_epochs": 1}  # 2 rollouts x 2 minibatches = 4 updates


def tiny(seed: int = 0, perturbation: str = "none", magnitude: float = 1.0, **kw: Any) -> RunSpec:
    kw.setdefault("total_steps", 256)
    kw.setdefault("hparams", TINY)
    kw.setdefault("env", "HalfCheetah-v5")
    return RunSpec(domain="rl", algo="ppo", seed=seed, perturbation=perturbation, magnitude=magnitude, **kw)


GOOD_A = tiny(seed=0, perturbation="lr_spike", magnitude=10.0, duration_steps=2)
GOOD_B = tiny(seed=1)
BAD = tiny(seed=0, env="NoSuchEnv-v5")  # bypasses profile validation on purpose


# ------------------------------------------------------------------------------ helpers
def manifest_rows(corpus: Path) -> dict[str, dict[str, Any]]:
    rows = read_manifest(corpus).to_pylist()
    ids = [r["run_id"] for r in rows]
    assert len(ids) == len(set(ids)), f"duplicate manifest rows: {ids}"
    return {r["run_id"]: r for r in rows}


def steps_file(corpus: Path, spec: RunSpec) -> Path:
    return steps_path(corpus, base_row(spec))


def file_stamps(corpus: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, mtime_ns, size) of every data file: an os.replace or rewrite changes it."""
    stamps = {}
    for path in sorted(corpus.rglob("*.parquet")):
        if path.name == MANIFEST:
            continue
        st = path.stat()
        stamps[str(path.relative_to(corpus))] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return stamps


def assert_no_duplicates(corpus: Path, specs: list[RunSpec]) -> None:
    """One manifest row per run_id, and exactly one steps file (and events file) per ok run."""
    rows = manifest_rows(corpus)
    all_steps = [p for p in (corpus / "steps").rglob("*.parquet") if not p.name.startswith(".")]
    names = [p.name for p in all_steps]
    assert len(names) == len(set(names)), f"a run has more than one steps file: {sorted(names)}"
    for spec in specs:
        if rows.get(spec.run_id, {}).get("status") == "ok":
            assert names.count(f"{spec.run_id}.parquet") == 1
            assert events_path(corpus, spec.run_id).is_file()
    # every steps file on disk belongs to a manifest row
    assert {n.removesuffix(".parquet") for n in names} <= set(rows)


def assert_valid_run(corpus: Path, spec: RunSpec, row: dict[str, Any]) -> None:
    assert row["status"] == "ok", row.get("error")
    steps = read_table(steps_file(corpus, spec), "steps")
    events = read_table(events_path(corpus, spec.run_id), "events")
    assert steps.num_rows == row["n_updates"] == row["planned_updates"] > 0
    assert steps.column("step").to_pylist() == list(range(steps.num_rows))
    assert set(steps.column("run_id").to_pylist()) == {spec.run_id}
    assert set(events.column("run_id").to_pylist()) <= {spec.run_id}
    assert outputs_valid(corpus, row)


# ------------------------------------------------------------------------------ run_one
def test_run_one_writes_valid_files(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    row = run_one(GOOD_A, corpus)

    assert row["status"] == "ok", row["error"]
    assert row["error"] is None
    assert row["run_id"] == GOOD_A.run_id
    assert (row["algo"], row["env"], row["perturbation"], row["dimension"]) == (
        "ppo", "HalfCheetah-v5", "lr_spike", "optimization")
    assert row["planned_updates"] == 4
    assert row["stop_reason"] == "completed"
    assert row["onset_step"] == round(GOOD_A.onset_frac * row["planned_updates"])
    assert row["run_wall_time_s"] > 0
    assert json.loads(row["config_json"])["spec"] == GOOD_A.to_dict()
    assert_valid_run(corpus, GOOD_A, row)

    path = steps_file(corpus, GOOD_A)
    assert path.parts[-5:-1] == ("domain=rl", "algo=ppo", "env=HalfCheetah-v5", "perturbation=lr_spike")
    steps = read_table(path, "steps")
    # the perturbation acts for exactly duration_steps updates from onset
    active = [i for i, a in enumerate(steps.column("perturbation_active").to_pylist()) if a]
    assert active == list(range(row["onset_step"], row["onset_step"] + GOOD_A.duration_steps))
    # the manifest row travels in the steps file's metadata (used for recovery)
    meta = run_metadata(path)
    assert meta is not None
    assert meta["run_id"] == GOOD_A.run_id and meta["status"] == "ok" and meta["n_updates"] == row["n_updates"]
    # no temporary files left behind
    assert not [p for p in corpus.rglob(".*") if p.is_file()]


def test_run_one_failure_is_a_row_not_an_exception(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    row = run_one(BAD, corpus)

    assert row["status"] == "failed"
    assert row["run_id"] == BAD.run_id
    assert row["error"] and "\n" not in row["error"]
    assert "NoSuchEnv-v5" in row["error"]
    log = corpus / LOG_DIR / f"{BAD.run_id}.log"
    assert log.is_file()
    text = log.read_text()
    assert "Traceback" in text and "NoSuchEnv-v5" in text
    assert not steps_file(corpus, BAD).exists()
    assert not events_path(corpus, BAD.run_id).exists()


# ---------------------------------------------------------------- a matrix, then resume
@pytest.fixture(scope="module")
def base_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MatrixReport]:
    """A failing spec first, then two good ones: the matrix must go on past the failure."""
    corpus = tmp_path_factory.mktemp("runner") / "corpus"
    results: list[dict[str, Any]] = []
    report = run_matrix([BAD, GOOD_A, GOOD_B], corpus, workers=2, on_result=results.append)
    assert sorted(r["run_id"] for r in results) == sorted(s.run_id for s in (BAD, GOOD_A, GOOD_B))
    return corpus, report


@pytest.fixture
def corpus(base_corpus: tuple[Path, MatrixReport], tmp_path: Path) -> Path:
    """A private copy of the base corpus (mtimes preserved) for tests that modify it."""
    dst = tmp_path / "corpus"
    shutil.copytree(base_corpus[0], dst, copy_function=shutil.copy2)
    return dst


def test_matrix_goes_on_past_a_failure(base_corpus: tuple[Path, MatrixReport]) -> None:
    corpus, report = base_corpus
    assert (report.ran, report.ok, report.failed, report.skipped) == (3, 2, 1, 0)
    assert [r["run_id"] for r in report.failures] == [BAD.run_id]

    rows = manifest_rows(corpus)
    assert set(rows) == {BAD.run_id, GOOD_A.run_id, GOOD_B.run_id}
    bad = rows[BAD.run_id]
    assert bad["status"] == "failed"
    assert bad["error"] and "\n" not in bad["error"] and "NoSuchEnv-v5" in bad["error"]
    assert "Traceback" in (corpus / LOG_DIR / f"{BAD.run_id}.log").read_text()
    for spec in (GOOD_A, GOOD_B):
        assert_valid_run(corpus, spec, rows[spec.run_id])
    assert_no_duplicates(corpus, [BAD, GOOD_A, GOOD_B])


def test_pool_worker_output_survives_the_skipped_teardown(base_corpus: tuple[Path, MatrixReport],
                                                          tmp_path: Path) -> None:
    """Pool workers exit with ``os._exit``: what the run printed (MuJoCo writes to fd 2 from C) must still
    reach its log, byte for byte as in a process that exits normally."""
    code = ("import sys; from stabilitybench.generate.worker import run_in_worker; "
            "from stabilitybench.generate.spec import RunSpec; "
            "import json; run_in_worker(RunSpec.from_dict(json.loads(sys.argv[1])), sys.argv[2])")
    other = tmp_path / "corpus"
    subprocess.run([sys.executable, "-c", code, json.dumps(GOOD_B.to_dict()), str(other)], check=True, timeout=300)
    normal_exit = (other / LOG_DIR / f"{GOOD_B.run_id}.out").read_bytes()
    if not normal_exit:
        pytest.skip("this MuJoCo build prints nothing during a run, so there is no output to lose")
    pool = (base_corpus[0] / LOG_DIR / f"{GOOD_B.run_id}.out").read_bytes()
    assert pool == normal_exit


def test_resume_runs_nothing_and_touches_nothing(corpus: Path) -> None:
    before = file_stamps(corpus)
    assert len(before) == 4  # 2 steps + 2 events files
    manifest_before = manifest_rows(corpus)

    report = run_matrix([GOOD_A, GOOD_B], corpus, workers=2)

    assert (report.ran, report.skipped, report.ok, report.failed, report.recovered) == (0, 2, 0, 0, 0)
    assert file_stamps(corpus) == before
    assert manifest_rows(corpus) == manifest_before
    assert_no_duplicates(corpus, [GOOD_A, GOOD_B])


def corrupt_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_garbage(path: Path) -> None:
    path.write_bytes(b"this is not parquet" * 100)


def corrupt_short(path: Path) -> None:
    """A perfectly readable steps file that lost rows: the row count no longer matches."""
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 1), path)


def corrupt_extra_column(path: Path) -> None:
    table = pq.read_table(path)
    pq.write_table(table.append_column("junk", pa.array([1] * table.num_rows)), path)


@pytest.mark.parametrize("damage", [corrupt_truncate, corrupt_garbage, corrupt_short, corrupt_extra_column,
                                    Path.unlink])
def test_plan_sees_a_damaged_steps_file(corpus: Path, damage: Any) -> None:
    damage(steps_file(corpus, GOOD_B))
    p = plan([GOOD_A, GOOD_B], corpus)
    assert p.done == [GOOD_A]
    assert p.todo == [GOOD_B]
    assert p.failed_before == [] and p.recovered == []


@pytest.mark.parametrize("damage", [corrupt_garbage, Path.unlink])
def test_plan_sees_a_damaged_events_file(corpus: Path, damage: Any) -> None:
    damage(events_path(corpus, GOOD_A.run_id))
    p = plan([GOOD_A, GOOD_B], corpus)
    assert p.done == [GOOD_B]
    assert p.todo == [GOOD_A]


def test_corrupt_steps_file_reruns_only_that_run(corpus: Path) -> None:
    damaged = steps_file(corpus, GOOD_B)
    corrupt_truncate(damaged)
    before = file_stamps(corpus)
    untouched = {k: v for k, v in before.items() if GOOD_A.run_id in k}
    assert len(untouched) == 2

    report = run_matrix([GOOD_A, GOOD_B], corpus, workers=2)

    assert (report.ran, report.ok, report.skipped) == (1, 1, 1)
    after = file_stamps(corpus)
    assert {k: v for k, v in after.items() if GOOD_A.run_id in k} == untouched
    assert after[str(damaged.relative_to(corpus))] != before[str(damaged.relative_to(corpus))]
    rows = manifest_rows(corpus)
    assert_valid_run(corpus, GOOD_B, rows[GOOD_B.run_id])
    assert_no_duplicates(corpus, [BAD, GOOD_A, GOOD_B])


def test_lost_manifest_is_recovered_from_steps_metadata(corpus: Path) -> None:
    """A driver killed after the worker wrote its files but before the manifest row."""
    original = manifest_rows(corpus)
    (corpus / MANIFEST).unlink()
    before = file_stamps(corpus)

    p = plan([GOOD_A, GOOD_B], corpus)
    assert len(p.recovered) == 2 and len(p.done) == 2 and p.todo == []
    assert {r["run_id"] for r in p.recovered} == {GOOD_A.run_id, GOOD_B.run_id}

    report = run_matrix([GOOD_A, GOOD_B], corpus, workers=2)
    assert (report.ran, report.recovered, report.skipped) == (0, 2, 2)
    assert file_stamps(corpus) == before

    rows = manifest_rows(corpus)
    assert set(rows) == {GOOD_A.run_id, GOOD_B.run_id}
    for spec in (GOOD_A, GOOD_B):
        got, want = rows[spec.run_id], original[spec.run_id]
        for col in ("status", "n_updates", "planned_updates", "onset_step", "config_json", "magnitude", "seed",
                    "code_version", "run_wall_time_s"):
            assert got[col] == want[col], col
        assert_valid_run(corpus, spec, got)
    # and now it is an ordinary complete corpus
    assert run_matrix([GOOD_A, GOOD_B], corpus, workers=1).ran == 0
    assert_no_duplicates(corpus, [GOOD_A, GOOD_B])


def test_failed_rows_are_rerun(corpus: Path) -> None:
    p = plan([BAD, GOOD_A, GOOD_B], corpus)
    assert p.todo == [BAD] and p.failed_before == [BAD]

    # a run whose files are fine but whose manifest row says failed is re-run too
    rows = manifest_rows(corpus)
    rows[GOOD_A.run_id] = {**rows[GOOD_A.run_id], "status": "failed", "error": "pretend"}
    write_manifest(corpus, list(rows.values()))
    p = plan([BAD, GOOD_A, GOOD_B], corpus)
    assert p.todo == [BAD, GOOD_A] and p.failed_before == [BAD, GOOD_A] and p.done == [GOOD_B]

    report = run_matrix([BAD, GOOD_A, GOOD_B], corpus, workers=2)
    assert (report.ran, report.ok, report.failed, report.skipped) == (2, 1, 1, 1)
    rows = manifest_rows(corpus)
    assert rows[GOOD_A.run_id]["status"] == "ok" and rows[GOOD_A.run_id]["error"] is None
    assert rows[BAD.run_id]["status"] == "failed"
    assert_valid_run(corpus, GOOD_A, rows[GOOD_A.run_id])
    assert_no_duplicates(corpus, [BAD, GOOD_A, GOOD_B])


def test_plan_on_a_missing_corpus() -> None:
    p = plan([GOOD_A], "/nonexistent/stabilitybench/corpus")
    assert p.todo == [GOOD_A] and p.done == [] and p.rows == []


# ---------------------------------------------------------------------- a killed worker
DRIVER = """\
import json
import sys

from stabilitybench.generate.runner import run_matrix
from stabilitybench.generate.spec import RunSpec

if __name__ == "__main__":
    specs = [RunSpec.from_dict(d) for d in json.loads(sys.argv[2])]
    report = run_matrix(specs, sys.argv[1], workers=1)
    print(json.dumps({"ran": report.ran, "ok": report.ok, "failed": report.failed}))
"""


def child_processes(pid: int) -> list[tuple[int, str]]:
    """(pid, cmdline) of the direct children of ``pid``, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        found.append((int(entry.name), cmd))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_killed_worker_is_recorded_and_the_matrix_goes_on(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    # the victim: long enough that it is certainly still running when killed
    victim = tiny(seed=7, total_steps=2048, hparams={"n_steps": 256, "batch_size": 64, "n_epochs": 1})
    other = tiny(seed=8)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    payload = json.dumps([victim.to_dict(), other.to_dict()])
    proc = subprocess.Popen([sys.executable, str(driver), str(corpus), payload], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = corpus / LOG_DIR / f"{victim.run_id}.out"  # the worker has picked up the victim
        deadline = time.monotonic() + 60
        worker = None
        while worker is None and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            if started.exists():
                workers = [pid for pid, cmd in child_processes(proc.pid) if "spawn_main" in cmd]
                if workers:
                    assert len(workers) == 1, workers
                    worker = workers[0]
                    break
            time.sleep(0.02)
        assert worker is not None, "the worker never started the victim run"
        assert not steps_file(corpus, victim).exists()  # still running
        os.kill(worker, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"ran": 2, "ok": 1, "failed": 1}

    rows = manifest_rows(corpus)
    assert rows[victim.run_id]["status"] == "failed"
    assert "worker process died" in rows[victim.run_id]["error"]
    # the closing message points to logs/<run_id>.log: it exists even though the worker wrote no traceback
    assert "worker process died" in (corpus / LOG_DIR / f"{victim.run_id}.log").read_text()
    assert not steps_file(corpus, victim).exists()
    assert_valid_run(corpus, other, rows[other.run_id])

    # rerunning completes the victim and leaves the other alone
    before = file_stamps(corpus)
    report = run_matrix([victim, other], corpus, workers=1)
    assert (report.ran, report.ok, report.skipped) == (1, 1, 1)
    rows = manifest_rows(corpus)
    assert_valid_run(corpus, victim, rows[victim.run_id])
    assert {k: v for k, v in file_stamps(corpus).items() if other.run_id in k} == {
        k: v for k, v in before.items() if other.run_id in k}
    assert_no_duplicates(corpus, [victim, other])
