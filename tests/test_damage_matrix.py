"""Damage never crashes a reader (issue 30, item 3): every damage kind x every command.

One run of the smoke corpus (the PPO control, which shares its ``algo=ppo`` partition with the
LR-spike run) gets one kind of damage in its steps or its events file: truncated to half, one
byte flipped in the Parquet footer, one byte flipped in a data page, or the file deleted. Then
every command and every ``data_schema`` reader runs on the copy, in-process through the same
wrapper as the console entry point (:func:`stabilitybench.data_schema.errors.exit_on_user_error`), so a
traceback fails the test. Each must either go on without the damaged run (exit 0, one
``warning:`` line naming it) or refuse in one line; ``verify`` and ``status`` name the file and exit 1.

Was: a truncated steps file or a flipped footer byte made ``analyze`` fail with a polars
``ComputeError`` (``feature_columns`` read every file of the ``algo=ppo`` partition before it
filtered by run_id), ``export --tensorboard`` with a pyarrow ``ArrowInvalid``, and the
``data_schema`` readers globbed whatever lay in the folders.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest
from corpus_tools import flip_byte_in_page, truncate

from stabilitybench.analysis.data import FeatureConfig, feature_columns, load_events, load_runs, load_steps
from stabilitybench.cli import app
from stabilitybench.data_schema import connect, events_path, read_manifest, scan_steps, steps_path, write_manifest
from stabilitybench.data_schema.errors import SkippedRunsWarning, exit_on_user_error
from stabilitybench.data_schema.migrate import upgrade_corpus
from stabilitybench.data_schema.verify import readable_runs

DAMAGES = ("truncate", "footer", "page", "delete")
FILES = ("steps", "events")
CASES = [(d, f) for f in FILES for d in DAMAGES]
IDS = [f"{f}-{d}" for d, f in CASES]


def flip_footer_byte(path: Path) -> int:
    """Flip one bit in the middle of the Parquet footer (the file metadata); returns the offset."""
    footer = pq.ParquetFile(path).metadata.serialized_size
    data = bytearray(path.read_bytes())
    offset = len(data) - 8 - footer // 2
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))
    return offset


def damage(path: Path, kind: str, column: str) -> None:
    if kind == "truncate":
        truncate(path)
    elif kind == "footer":
        flip_footer_byte(path)
    elif kind == "page":
        flip_byte_in_page(path, column=column)
    else:
        path.unlink()


@pytest.fixture(scope="module")
def clean_results(local_smoke: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``analyze`` of the undamaged smoke corpus (for ``report`` on a corpus damaged after the analysis)."""
    root = tmp_path_factory.mktemp("clean")
    corpus = root / "corpus"
    shutil.copytree(local_smoke, corpus)
    code, _, err = invoke("analyze", "--corpus", str(corpus), "--out", str(root / "results"))
    assert code == 0, err
    return root / "results"


@pytest.fixture
def case(request: pytest.FixtureRequest, local_smoke: Path, tmp_path: Path) -> dict[str, Any]:
    """A copy of the smoke corpus with one file of the PPO control run damaged (``request.param``)."""
    kind, which = request.param
    corpus = tmp_path / "corpus"
    shutil.copytree(local_smoke, corpus)
    rows = read_manifest(corpus).to_pylist()
    victim = next(r for r in rows if r["algo"] == "ppo" and r["perturbation"] == "none")
    assert any(r["algo"] == "ppo" and r["run_id"] != victim["run_id"] for r in rows)  # a partition neighbour
    path = steps_path(corpus, victim) if which == "steps" else events_path(corpus, victim["run_id"])
    damage(path, kind, "grad_norm" if which == "steps" else "event")
    return {"corpus": corpus, "victim": victim["run_id"], "path": path, "rows": rows, "kind": kind, "tmp": tmp_path}


def invoke(*args: str) -> tuple[int, str, str]:
    """Run ``stabilitybench ARGS`` in-process as the console entry point does; (exit code, stdout, stderr).

    A bug's exception propagates (and fails the test) exactly where the real CLI would print a traceback.
    """
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("always")
        try:
            exit_on_user_error(lambda: app(list(args), prog_name="stabilitybench"))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    text = out.getvalue() + err.getvalue()
    assert "Traceback" not in text, text
    return code, out.getvalue(), err.getvalue()


def one_warning(err: str, victim: str) -> None:
    """stderr holds exactly one ``warning:`` line, and it names the skipped run."""
    flat = " ".join(err.split())
    assert flat.count("warning:") == 1, err
    assert "skipped 1 run(s)" in flat and victim in flat, err


def others(c: dict[str, Any]) -> set[str]:
    return {r["run_id"] for r in c["rows"]} - {c["victim"]}


# --------------------------------------------------------------------------- commands
@pytest.mark.parametrize("case", CASES, ids=IDS, indirect=True)
def test_verify_names_the_file(case: dict[str, Any]) -> None:
    code, out, _ = invoke("verify", "--corpus", str(case["corpus"]))
    flat = "".join(out.split())
    assert code == 1 and case["path"].name in flat and "1run(s)" in flat, out
    assert "generate" in out and "Recorder" not in out  # a generated corpus: generate reruns it


@pytest.mark.parametrize("case", CASES, ids=IDS, indirect=True)
def test_status_names_the_damaged_run(case: dict[str, Any]) -> None:
    code, out, _ = invoke("status", "--corpus", str(case["corpus"]))
    assert code == 1 and "damaged" in out and case["path"].name in "".join(out.split()), out


@pytest.mark.parametrize("case", CASES, ids=IDS, indirect=True)
def test_query_reads_only_the_readable_runs(case: dict[str, Any]) -> None:
    code, out, err = invoke("query", "select distinct run_id from steps union all select distinct run_id from events",
                            "--corpus", str(case["corpus"]), "--format", "csv")
    assert code == 0, err
    assert set(out.split()[1:]) == others(case)
    one_warning(err, case["victim"])


@pytest.mark.parametrize("case", CASES, ids=IDS, indirect=True)
def test_export_tensorboard_skips_the_damaged_run(case: dict[str, Any]) -> None:
    pytest.importorskip("tensorboard")
    tb = case["tmp"] / "tb"
    code, _, err = invoke("export", "--tensorboard", str(tb), "--corpus", str(case["corpus"]))
    assert code == 0, err
    exported = {p.name.rsplit("-", 1)[-1] for p in tb.glob("*/*/*") if p.is_dir()}
    assert exported == others(case)
    one_warning(err, case["victim"])


@pytest.mark.parametrize("case", CASES, ids=IDS, indirect=True)
def test_analyze_excludes_the_damaged_run(case: dict[str, Any]) -> None:
    results = case["tmp"] / "results"
    code, out, err = invoke("analyze", "--corpus", str(case["corpus"]), "--out", str(results))
    assert code == 0, err
    summary = json.loads((results / "summary.json").read_text())
    assert summary["excluded_runs"]["n"] == 1
    assert {f["run_id"] for f in summary["excluded_runs"]["files"]} == {case["victim"]}
    assert set(pl.read_parquet(results / "runs.parquet")["run_id"]) == others(case)
    assert "excluded 1 run(s)" in " ".join(out.split())


REPORT_CASES = [("truncate", "steps"), ("footer", "steps"), ("delete", "events")]  # F1 is one code path


@pytest.mark.parametrize("case", REPORT_CASES, ids=[f"{f}-{d}" for d, f in REPORT_CASES], indirect=True)
def test_report_on_a_corpus_damaged_after_analyze(case: dict[str, Any], clean_results: Path) -> None:
    """The report reads results only (F1's telemetry is analysis's ``onset_telemetry`` table): damage to the corpus
    after analyze cannot reach it, so it builds without a warning or a traceback."""
    out_dir = case["tmp"] / "report"
    code, _, err = invoke("report", "--results", str(clean_results), "--out", str(out_dir),
                            "--corpus", str(case["corpus"]))
    assert code == 0, err
    assert (out_dir / "index.html").is_file()
    assert "Traceback" not in err and "warning" not in err.lower(), err


# --------------------------------------------------------------------------- python readers
@pytest.mark.parametrize("case", CASES, ids=IDS, indirect=True)
def test_data_schema_readers_skip_the_damaged_run(case: dict[str, Any]) -> None:
    corpus, victim = case["corpus"], case["victim"]
    with pytest.warns(SkippedRunsWarning, match=victim):
        got = scan_steps(corpus).collect()
    assert set(got["run_id"]) == others(case) and got.height > 0
    with pytest.warns(SkippedRunsWarning, match=victim):  # the partition the damaged file lies in
        ppo = scan_steps(corpus, algo="ppo").select("run_id", "grad_norm").collect()
    assert set(ppo["run_id"]) == others(case) & {r["run_id"] for r in case["rows"] if r["algo"] == "ppo"}
    notes: list[str] = []
    con = connect(corpus, notes=notes)
    try:
        steps_ids = {r[0] for r in con.sql("select distinct run_id from steps").fetchall()}
        events_ids = {r[0] for r in con.sql("select distinct run_id from events").fetchall()}
    finally:
        con.close()
    assert steps_ids == others(case) and events_ids <= others(case)
    assert len(notes) == 1 and victim in notes[0]
    readable = readable_runs(corpus)
    assert set(readable.run_ids) == others(case) and {p.run_id for p in readable.skipped} == {victim}
    with pytest.warns(SkippedRunsWarning, match=victim):  # `data_schema upgrade`: a current corpus
        assert upgrade_corpus(corpus) == []


@pytest.mark.parametrize("case", CASES, ids=IDS, indirect=True)
def test_analysis_readers_skip_the_damaged_run(case: dict[str, Any]) -> None:
    """The issue's repro: ``feature_columns`` on the runs ``load_runs`` kept read the whole partition."""
    corpus = case["corpus"]
    notes: list[str] = []
    runs = load_runs(corpus, notes)
    assert set(runs["run_id"]) == others(case) and any(case["victim"] in n for n in notes)
    ppo = runs.filter(pl.col("algo") == "ppo")
    assert feature_columns(corpus, ppo, FeatureConfig())
    steps = load_steps(corpus, ppo, ["grad_norm"])
    assert set(steps["run_id"]) == set(ppo["run_id"])
    assert set(load_events(corpus, runs)["run_id"]) <= others(case)
    with pytest.warns(SkippedRunsWarning, match=case["victim"]):
        events = load_events(corpus)
    assert set(events["run_id"]) <= others(case)


def test_footer_flips_anywhere_never_crash_the_readers(local_smoke: Path, tmp_path: Path) -> None:
    """A sweep of bit flips over the whole footer of one steps file: the readers skip it every time."""
    corpus = tmp_path / "corpus"
    shutil.copytree(local_smoke, corpus)
    victim = next(r for r in read_manifest(corpus).to_pylist() if r["algo"] == "ppo" and r["perturbation"] == "none")
    path = steps_path(corpus, victim)
    original = path.read_bytes()
    footer = pq.ParquetFile(path).metadata.serialized_size
    for offset in range(len(original) - 8 - footer, len(original), max(1, footer // 40)):
        data = bytearray(original)
        data[offset] ^= 0x40
        path.write_bytes(bytes(data))
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            got = set(scan_steps(corpus, algo="ppo").select("run_id").collect()["run_id"])
        assert victim["run_id"] not in got, offset
        assert any(issubclass(w.category, SkippedRunsWarning) for w in seen), offset


def test_files_without_an_ok_manifest_row_are_never_read(local_smoke: Path, tmp_path: Path) -> None:
    """A planted file, or one left by a failed run, is not part of any reader's view of the corpus."""
    corpus = tmp_path / "corpus"
    shutil.copytree(local_smoke, corpus)
    rows = read_manifest(corpus).to_pylist()
    victim = next(r for r in rows if r["algo"] == "ppo" and r["perturbation"] == "none")
    planted = steps_path(corpus, victim).with_name("planted.parquet")
    shutil.copy(steps_path(corpus, victim), planted)
    want = sum(r["n_updates"] for r in rows)
    assert scan_steps(corpus).select(pl.len()).collect().item() == want
    write_manifest(corpus, [{**r, "status": "failed"} if r["run_id"] == victim["run_id"] else r for r in rows])
    got = scan_steps(corpus).collect()
    assert victim["run_id"] not in set(got["run_id"]) and got.height == want - victim["n_updates"]


# --------------------------------------------------------------------------- verify: advice and what is a corpus
def recorder_corpus(root: Path) -> Path:
    """Two runs written by the public Recorder API (no profile, no ``generate``)."""
    from stabilitybench import Recorder

    corpus = root / "mine"
    for seed in (0, 1):
        with Recorder(corpus, "my-loop", algo="sgd", env="digits", seed=seed, config={"lr": 0.01}) as rec:
            for i in range(20):
                rec.append(loss=1.0 / (i + 1), performance=float(i), grad_norm=0.5, perturbation_active=False)
    return corpus


def test_verify_advice_fits_a_recorder_corpus(tmp_path: Path) -> None:
    """Was: "`stabilitybench generate` with the corpus's profile reruns them" for runs no profile made."""
    corpus = recorder_corpus(tmp_path)
    rows = read_manifest(corpus).to_pylist()
    assert len(rows) == 2
    truncate(steps_path(corpus, rows[0]))
    code, out, _ = invoke("verify", "--corpus", str(corpus))
    flat = " ".join(out.split())
    assert code == 1 and "1 problem(s) in 1 run(s)" in flat, out
    assert "profile" not in flat and "Recorder" in flat and "rerun that script" in flat, out
    code, out, _ = invoke("status", "--corpus", str(corpus))  # status gives the same advice (was: "rerun generate")
    flat = " ".join(out.split())
    assert code == 1 and "Recorder" in flat and "rerun that script" in flat, out
    assert "stabilitybench generate" not in flat, out
    with pytest.warns(SkippedRunsWarning, match=rows[0]["run_id"]):  # and the readers go on without it
        assert set(scan_steps(corpus).collect()["run_id"]) == {rows[1]["run_id"]}


def test_verify_advice_names_both_origins_in_a_mixed_corpus(local_smoke: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(local_smoke, corpus)
    mine = recorder_corpus(tmp_path)
    generated = read_manifest(corpus).to_pylist()
    recorded = read_manifest(mine).to_pylist()
    for row in recorded:  # a user's runs recorded into the generated corpus
        for src, dst in ((steps_path(mine, row), steps_path(corpus, row)),
                         (events_path(mine, row["run_id"]), events_path(corpus, row["run_id"]))):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    write_manifest(corpus, generated + recorded)
    events_path(corpus, generated[0]["run_id"]).unlink()
    truncate(steps_path(corpus, recorded[0]))
    code, out, _ = invoke("verify", "--corpus", str(corpus))
    flat = " ".join(out.split())
    assert code == 1 and "2 problem(s) in 2 run(s)" in flat
    assert "generate` with the corpus's profile reruns the generated runs" in flat and "Recorder" in flat, out


def test_verify_a_folder_without_a_manifest_is_an_error(tmp_path: Path, local_smoke: Path) -> None:
    """Was: "verified 0 ok run(s) ... all good", exit 0, for any folder at all."""
    code, out, err = invoke("verify", "--corpus", str(tmp_path))
    assert code == 2 and out == "", out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(" ".join(lines).split("error:")) == 2 and "no manifest.parquet" in " ".join(err.split()), err
    stray = tmp_path / "copy"  # data files but no manifest: still not a corpus, and it says how many files
    shutil.copytree(local_smoke, stray)
    (stray / "manifest.parquet").unlink()
    code, _, err = invoke("verify", "--corpus", str(stray))
    assert code == 2 and "8 data file(s) without a manifest" in " ".join(err.split()), err


def test_verify_an_empty_corpus_is_all_good(tmp_path: Path) -> None:
    write_manifest(tmp_path, [])
    code, out, _ = invoke("verify", "--corpus", str(tmp_path))
    assert code == 0 and "verified 0 ok run(s), 0 data file(s)" in out and "all good" in out, out


def test_a_run_checked_once_is_checked_again_after_any_write(local_smoke: Path, tmp_path: Path) -> None:
    """readable_runs caches accepted runs per process (a notebook scans often); damage after that still shows."""
    import time

    from stabilitybench.data_schema import verify

    corpus = tmp_path / "corpus"
    shutil.copytree(local_smoke, corpus)
    time.sleep(verify._RACY_NS / 1e9 + 0.1)  # fresh files are never cached (the racy window)
    rows = read_manifest(corpus).to_pylist()
    assert set(readable_runs(corpus).run_ids) == {r["run_id"] for r in rows}
    victim = next(r for r in rows if r["algo"] == "ppo" and r["perturbation"] == "none")
    assert str(steps_path(corpus, victim).resolve()) in {k[0] for k in verify._ACCEPTED}
    flip_byte_in_page(steps_path(corpus, victim))  # same size, same inode: only the stats' times change
    with pytest.warns(SkippedRunsWarning, match=victim["run_id"]):
        assert victim["run_id"] not in set(scan_steps(corpus).collect()["run_id"])
