"""Progress without a terminal (issue 30, item 7): one plain line per finished run or stage, rate-limited.

Was: ``make quick > log`` printed the profile line and then nothing for over an hour (rich's live bar
is off without a terminal and nothing replaced it).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from stabilitybench.data_schema.progress import INTERVAL_ENV, ProgressReporter, format_duration, output_is_terminal

LINE = re.compile(r"^(?P<label>[\w ]+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+) done"
                  r"(?: \(ok (?P<ok>\d+), failed (?P<failed>\d+)[^)]*\))?, elapsed \S+, ETA \S+")


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def reporter(total: int, interval: float = 5.0, **kw) -> tuple[ProgressReporter, io.StringIO, Clock]:
    out, clock = io.StringIO(), Clock()
    rep = ProgressReporter("generate quick", total, console=Console(file=io.StringIO()), stream=out, live=False,
                           interval=interval, clock=clock, **kw)
    return rep, out, clock


def test_plain_lines_are_rate_limited_but_the_first_and_final_always_print() -> None:
    rep, out, clock = reporter(5)
    with rep:
        for t, status in [(1, "ok"), (2, "failed"), (3, "ok"), (7, "ok"), (8, "ok")]:
            clock.t = 100.0 + t
            rep.advance(status)
    lines = out.getvalue().splitlines()
    assert [LINE.match(ln)["done"] for ln in lines] == ["1", "4", "5"]  # t=1 first, t=7 (>= 5 s later), final
    last = LINE.match(lines[-1])
    assert (last["total"], last["ok"], last["failed"]) == ("5", "4", "1")
    assert lines[1].endswith("ETA 2s")  # 4 done in 7 s: 1.75 s per run, 1 left
    assert lines[-1].endswith("ETA 0s")


def test_stop_prints_the_state_the_rate_limit_held_back() -> None:
    """An interrupted or short run still ends its log with where it got to."""
    rep, out, clock = reporter(10)
    with rep:
        for _ in range(3):
            clock.t += 0.5
            rep.advance()
    assert [LINE.match(ln)["done"] for ln in out.getvalue().splitlines()] == ["1", "3"]


def test_interval_zero_prints_every_unit_and_counts_non_finite_runs() -> None:
    rep, out, _ = reporter(3, interval=0)
    with rep:
        rep.result({"status": "ok", "stop_reason": None})
        rep.result({"status": "ok", "stop_reason": "nonfinite"})
        rep.result({"status": "failed", "error": "boom"})
    lines = out.getvalue().splitlines()
    assert [LINE.match(ln)["done"] for ln in lines] == ["1", "2", "3"]
    assert "non-finite 1" in lines[-1] and "failed 1" in lines[-1]


def test_the_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "0")
    assert ProgressReporter("x", 1, live=False).interval == 0
    monkeypatch.setenv(INTERVAL_ENV, "nonsense")
    assert ProgressReporter("x", 1, live=False).interval == 5.0


def test_a_live_bar_writes_no_plain_lines() -> None:
    out, screen = io.StringIO(), io.StringIO()
    rep = ProgressReporter("generate quick", 2, console=Console(file=screen, force_terminal=True), stream=out,
                           live=True)
    with rep:
        rep.advance()
        rep.advance()
    assert out.getvalue() == ""
    assert "2/2" in screen.getvalue()


def test_output_is_a_terminal_only_when_both_streams_are() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert output_is_terminal(Console(file=Tty(), force_terminal=True), Tty())
    assert not output_is_terminal(Console(file=Tty(), force_terminal=True), io.StringIO())  # make quick > log
    assert not output_is_terminal(Console(file=io.StringIO()), Tty())


def test_format_duration() -> None:
    assert [format_duration(s) for s in (None, 0.4, 42, 185, 3723)] == ["?", "0s", "42s", "3m05s", "1h02m03s"]


# ------------------------------------------------------------------ end to end, output to a pipe
def run_piped(*args: str, cwd: Path, interval: str = "0", timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, INTERVAL_ENV: interval}
    return subprocess.run([sys.executable, "-m", "stabilitybench", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)  # pipes: not a terminal


def progress_lines(text: str, label: str) -> list[re.Match[str]]:
    return [m for ln in text.splitlines() if (m := LINE.match(ln)) and m["label"] == label]


@pytest.mark.slow
def test_generate_prints_a_line_per_finished_run_into_a_pipe(tmp_path: Path) -> None:
    res = run_piped("generate", "--profile", "smoke", "--only", "algo=ppo", "--out", str(tmp_path / "c"),
                    "--workers", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = progress_lines(res.stdout, "generate smoke")
    assert [(m["done"], m["total"]) for m in lines] == [("1", "2"), ("2", "2")], res.stdout
    assert lines[-1]["ok"] == "2" and lines[-1]["failed"] == "0"
    assert "\r" not in res.stdout + res.stderr and "\x1b[" not in res.stdout  # no live-bar redraws


@pytest.mark.slow
def test_analyze_prints_a_line_per_stage_into_a_pipe(local_smoke: Path, tmp_path: Path) -> None:
    res = run_piped("analyze", "--corpus", str(local_smoke), "--out", str(tmp_path / "res"), "--no-update-corpus",
                    cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = [m for m in progress_lines(res.stdout, "analyze") if m["unit"] == "stages"]
    done = [int(m["done"]) for m in lines]
    total = int(lines[-1]["total"])
    assert done == sorted(done) and done[-1] == total >= 7, res.stdout  # loading, algos, PCA, ..., writing
    assert set(range(1, total + 1)) <= set(done)  # interval 0: every stage has its line
    assert "\r" not in res.stdout


@pytest.mark.slow
def test_calibrate_prints_a_line_per_finished_run_into_a_pipe(tmp_path: Path) -> None:
    design = tmp_path / "tiny.toml"
    design.write_text("""
[defaults]
domain = "rl"
algo = "ppo"
env = "HalfCheetah-v5"
total_steps = 256
hparams = { n_steps = 128, batch_size = 64, n_epochs = 1 }
[design]
controls = 2
first_doses = 2
seeds_per_dose = 1
max_runs = 2
max_stages = 1
[[target]]
perturbation = "lr_spike"
duration_steps = 2
m_min = 2.0
m_max = 100.0
""")
    res = run_piped("calibrate", str(design), "--corpus", str(tmp_path / "cal"), "--budget", "2", "--workers", "2",
                    cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = progress_lines(res.stdout, "calibrate stage")
    assert [(m["done"], m["total"]) for m in lines] == [("1", "2"), ("2", "2")], res.stdout
