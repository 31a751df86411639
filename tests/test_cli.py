"""End to end through the CLI: ``python -m stabilitybench`` in a subprocess, corpus read back without project code."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from stabilitybench.generate.matrix import load_profile, parse_only, select


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stabilitybench", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def assert_user_error(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, one 'error:' line on stderr, no traceback; returns that line."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert line.startswith("error:"), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def stamps(corpus: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for path in sorted(corpus.rglob("*.parquet")):
        st = path.stat()
        out[str(path.relative_to(corpus))] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


SMOKE_MAGNITUDES = {s.magnitude for s in load_profile("smoke")}


@pytest.fixture(scope="module")
def smoke(local_smoke: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's ``generate --profile smoke`` corpus (conftest), copied: the tests here rerun generate on it."""
    return Path(shutil.copytree(local_smoke, tmp_path_factory.mktemp("cli") / "corpus"))


# ------------------------------------------------------------------------ generate
def test_generate_smoke_reads_back_with_plain_duckdb(smoke: Path) -> None:
    steps = smoke / "steps" / "**" / "*.parquet"
    manifest = smoke / "manifest.parquet"
    rows = duckdb.sql(
        f"select magnitude, avg(performance) as perf, count(*) as n "
        f"from read_parquet('{steps}', hive_partitioning=true) s "
        f"join read_parquet('{manifest}') m using (run_id) group by magnitude order by magnitude"
    ).fetchall()
    assert [r[0] for r in rows] == sorted(SMOKE_MAGNITUDES)
    for _, perf, n in rows:
        assert n > 0
        assert perf is not None and perf == perf  # a number, not null/NaN
    [(statuses,)] = duckdb.sql(f"select list(distinct status) from read_parquet('{manifest}')").fetchall()
    assert statuses == ["ok"]


def test_generate_smoke_reads_back_with_plain_polars(smoke: Path) -> None:
    steps = pl.scan_parquet(str(smoke / "steps" / "**" / "*.parquet"), hive_partitioning=True)
    manifest = pl.read_parquet(smoke / "manifest.parquet")
    per_run = (steps.join(manifest.lazy().select("run_id", "magnitude", "n_updates"), on="run_id")
               .group_by("run_id").agg((pl.col("performance").drop_nulls().len()
                                        + pl.col("eval_return").drop_nulls().len()).alias("with_perf"),
                                       pl.len().alias("n"), pl.col("n_updates").first(), pl.col("magnitude").first())
               .collect())
    assert set(per_run["magnitude"].to_list()) == SMOKE_MAGNITUDES
    assert per_run.height == len(load_profile("smoke"))
    assert per_run["n"].to_list() == per_run["n_updates"].to_list()
    assert (per_run["with_perf"] > 0).all()  # every run has a finished episode or an evaluation
    # partition values are real columns too: a flat read without Hive still has them
    flat = pl.read_parquet(next((smoke / "steps").rglob("*.parquet")))
    assert {"domain", "algo", "env", "perturbation"} <= set(flat.columns)


def test_second_generate_trains_nothing(smoke: Path) -> None:
    before = stamps(smoke)
    assert len(before) >= 2 * len(load_profile("smoke")) + 1  # steps + events per run, and the manifest
    res = cli("generate", "--profile", "smoke", "--out", str(smoke), cwd=smoke.parent, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "nothing to train" in res.stdout + res.stderr
    assert stamps(smoke) == before


def test_status_against_the_profile(smoke: Path) -> None:
    n = len(load_profile("smoke"))
    res = cli("status", "--corpus", str(smoke), "--profile", "smoke", cwd=smoke.parent)
    assert res.returncode == 0, res.stderr
    assert f"total: {n} runs, {n} done, 0 failed, 0 missing" in res.stdout

    res = cli("status", "--corpus", str(smoke), cwd=smoke.parent)
    assert res.returncode == 0, res.stderr
    assert f"{n} runs in the manifest: ok {n}" in res.stdout


def test_query_counts_steps(smoke: Path) -> None:
    [(expected,)] = duckdb.sql(f"select count(*) from read_parquet('{smoke}/steps/**/*.parquet')").fetchall()
    assert expected > 0
    res = cli("query", "select count(*) as n from steps", "--corpus", str(smoke), "--format", "csv", cwd=smoke.parent)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["n", str(expected)]

    res = cli("query", "select count(*) from steps", "--corpus", str(smoke), cwd=smoke.parent)
    assert res.returncode == 0, res.stderr
    assert str(expected) in res.stdout


def test_query_bad_sql_is_a_one_line_error(smoke: Path) -> None:
    res = cli("query", "select nope from steps", "--corpus", str(smoke), cwd=smoke.parent)
    assert_user_error(res, "nope")


def test_status_prints_the_profile_cost_in_pre(tmp_path: Path) -> None:
    from stabilitybench.generate.costs import estimate

    res = cli("status", "--corpus", str(tmp_path / "none"), "--profile", "quick", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"cost in plain-PPO-run equivalents: {estimate(load_profile('quick')).pre:,.0f} PRE" in res.stdout


# -------------------------------------------------------------------- user errors
def test_status_on_a_missing_corpus(tmp_path: Path) -> None:
    missing = tmp_path / "no_corpus_here"
    assert_user_error(cli("status", "--corpus", str(missing), cwd=tmp_path), str(missing))


def test_query_on_a_missing_corpus(tmp_path: Path) -> None:
    missing = tmp_path / "no_corpus_here"
    assert_user_error(cli("query", "select 1", "--corpus", str(missing), cwd=tmp_path), str(missing))


def test_generate_unknown_profile(tmp_path: Path) -> None:
    assert_user_error(cli("generate", "--profile", "nosuch", "--out", str(tmp_path / "c"), cwd=tmp_path), "nosuch")
    assert not (tmp_path / "c").exists()


def test_generate_bad_profile_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[defaults]\ndomain = "rl"\nalgo = "ppo"\nenv = "HalfCheetah-v5"\nseed = 0\n'
                   '[[matrix]]\nperturbation = "lr_spike"\nmagnitud = 10\n')
    res = cli("generate", "--profile", str(bad), "--out", str(tmp_path / "c"), cwd=tmp_path)
    assert_user_error(res, str(bad), "magnitud")
    assert not (tmp_path / "c").exists()


def test_generate_bad_only_filter(tmp_path: Path) -> None:
    res = cli("generate", "--profile", "smoke", "--only", "bogus=1", "--out", str(tmp_path / "c"), cwd=tmp_path)
    assert_user_error(res, "bogus")
    assert not (tmp_path / "c").exists()


def test_generate_only_matching_nothing_trains_nothing(tmp_path: Path) -> None:
    res = cli("generate", "--profile", "smoke", "--only", "perturbation=mass_shift", "--out", str(tmp_path / "c"),
              cwd=tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "c").exists()


def test_dry_run_lists_the_quick_profile(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    res = cli("generate", "--dry-run", "--profile", "quick", "--out", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    ids = {s.run_id for s in load_profile("quick")}
    assert f"{len(ids)} runs, 0 done, {len(ids)} to run" in res.stdout
    listed = [ln.split()[0] for ln in res.stdout.splitlines() if re.match(r"\s*[0-9a-f]{16}\s", ln)]
    assert len(listed) == len(ids)
    assert set(listed) == ids
    assert not out.exists() or not any(out.rglob("*.parquet"))


def test_dry_run_with_only(tmp_path: Path) -> None:
    res = cli("generate", "--dry-run", "--profile", "quick", "--only", "magnitude=10|100|1000,seed=0",
              "--out", str(tmp_path / "c"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    n = len(select(load_profile("quick"), parse_only("magnitude=10|100|1000,seed=0")))
    assert n >= 3
    assert f"{n} runs, 0 done, {n} to run" in res.stdout


@pytest.mark.parametrize("dirname", ["runs[exp]", "runs[/x]"])
def test_error_text_is_printed_verbatim(tmp_path: Path, dirname: str) -> None:
    missing = tmp_path / dirname / "corpus"
    assert_user_error(cli("status", "--corpus", str(missing), cwd=tmp_path), str(missing))


def test_dry_run_on_a_finished_corpus(smoke: Path) -> None:
    n = len(load_profile("smoke"))
    before = stamps(smoke)
    res = cli("generate", "--dry-run", "--profile", "smoke", "--out", str(smoke), cwd=smoke.parent)
    assert res.returncode == 0, res.stderr
    assert f"{n} runs, {n} done, 0 to run" in res.stdout
    assert stamps(smoke) == before


def test_generate_refuses_a_profile_whose_monitor_files_are_missing(tmp_path: Path) -> None:
    res = cli("generate", "--profile", "intervention", "--out", str(tmp_path / "c"), "--dry-run", cwd=tmp_path)
    assert_user_error(res, "monitors/ppo_swimmer/kalman.monitor.npz", "fit-monitor")
    assert not (tmp_path / "c").exists()


def test_fit_monitor_on_a_missing_template_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "manifest.parquet").write_bytes(b"")
    res = cli("fit-monitor", "nope.monitor.npz", "-o", "k.monitor.npz", "-c", "corpus", cwd=tmp_path)
    assert_user_error(res, "nope.monitor.npz", "not a readable monitor file")


# ------------------------------------------------------------- issue 30: CLI edge cases
def test_query_limit_must_not_be_negative_and_zero_prints_every_row(local_smoke: Path, tmp_path: Path) -> None:
    """Was: ``query --limit -5`` printed every row, silently."""
    assert_user_error(cli("query", "select step from steps", "--corpus", str(local_smoke), "--limit", "-5",
                          cwd=tmp_path), "--limit -5", ">= 0")
    [(n,)] = duckdb.sql(f"select count(*) from read_parquet('{local_smoke}/steps/**/*.parquet')").fetchall()
    assert n > 12  # more rows than the limit below, so the elision is visible
    res = cli("query", "select step from steps", "--corpus", str(local_smoke), "--limit", "0", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "…" not in res.stdout and f"shape: ({n}, 1)" in res.stdout
    assert len([ln for ln in res.stdout.splitlines() if re.fullmatch(r"│ \d+\s*│", ln)]) == n
    res = cli("query", "select step from steps", "--corpus", str(local_smoke), "--limit", "4", cwd=tmp_path)
    assert res.returncode == 0 and "…" in res.stdout


def test_status_cpus_zero_is_refused(tmp_path: Path) -> None:
    """Was: ``status --cpus 0`` was accepted (and printed no estimate)."""
    assert_user_error(cli("status", "--profile", "smoke", "--cpus", "0", "--corpus", str(tmp_path / "c"),
                          cwd=tmp_path), "--cpus 0", "at least 1")
    res = cli("status", "--profile", "smoke", "--cpus", "8", "--corpus", str(tmp_path / "c"), cwd=tmp_path)
    assert res.returncode == 0 and "on 8 CPUs" in res.stdout


def test_analyze_on_an_empty_folder_creates_nothing(tmp_path: Path) -> None:
    """Was: a traceback-free error, but only after it had left a ``.lock`` and an empty output folder."""
    empty = tmp_path / "empty"
    empty.mkdir()
    line = assert_user_error(cli("analyze", "--corpus", str(empty), "--out", str(tmp_path / "res"), cwd=tmp_path),
                             str(empty), "manifest.parquet")
    assert "--corpus" in line
    assert list(empty.iterdir()) == []
    assert not (tmp_path / "res").exists()


def test_fit_monitor_without_corpus_says_what_to_pass(tmp_path: Path) -> None:
    """Was: ``fit-monitor x.npz`` in a folder without ./corpus said only "corpus: no corpus here"."""
    res = cli("fit-monitor", "x.monitor.npz", "-o", "k.monitor.npz", cwd=tmp_path)
    line = assert_user_error(res, "--corpus", "./corpus", str(tmp_path))
    assert "no corpus here" not in line
    assert not (tmp_path / "k.monitor.npz").exists()


def test_bare_generate_says_what_it_is_about_to_do(tmp_path: Path) -> None:
    """Was: bare ``generate`` silently started the 88-run quick profile into ./corpus."""
    from stabilitybench.generate.costs import estimate

    res = cli("generate", "--dry-run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    quick = load_profile("quick")
    notice = res.stderr
    assert "no --profile given" in notice and "'quick'" in notice
    assert f"{len(quick)} runs into corpus/" in notice
    assert f"{estimate(quick).pre:,.0f} plain-PPO-run equivalents" in notice
    assert "--profile {" in notice and "smoke" in notice and "standard" in notice
    # the explicit form stays quiet
    res = cli("generate", "--dry-run", "--profile", "quick", cwd=tmp_path)
    assert res.returncode == 0 and "no --profile given" not in res.stderr
