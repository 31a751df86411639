"""Lag-free collapse dates (issue 25, item 1): a simulated instant break is dated within one episode.

The simulated runs copy what the SB3 adapter records: ``episode_return`` is the return of the most
recently completed episode, forward-filled, and ``performance`` the mean of the last 5 episode
returns (``perf_window``). On a policy that breaks *instantly*, the old date (the centred smoother
of ``performance``, now ``collapse_step_smoothed``) lags by several episodes; the new
``collapse_step`` must not.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from stabilitybench.analysis.collapse import (
    OUTCOME_SCHEMA,
    CollapseConfig,
    RunCurves,
    collapse_group,
    detect,
    episode_date,
    observations,
    smooth,
)

CFG = CollapseConfig()  # the analysis' defaults: smoothing window 2% of the run, W = 10%
T, ONSET, DUR = 7840, 2352, 320  # the quick profile's PPO Swimmer run: 7,840 updates, onset at 30%
E, JIT = 156, 20  # updates per episode (Swimmer), +- jitter
PERF_WINDOW = 5  # episodes in the adapter's performance mean
STEPS = np.arange(T)
WINDOW = max(1, round(CFG.smooth_frac * T))


def level(t: np.ndarray) -> np.ndarray:
    """The controls' per-episode return at update ``t``: a learning curve from 10 to about 40."""
    return 10 + 30 * (1 - np.exp(-np.asarray(t, dtype=float) / 2000))


def record(ends: np.ndarray, rets: np.ndarray, n: int = T) -> tuple[np.ndarray, np.ndarray]:
    """``(episode_return, performance)``, each ``(n,)``, as the SB3 adapter records them: at update ``ends[k]``
    episode k's return becomes the last return and enters the mean of the last :data:`PERF_WINDOW`."""
    ep, perf = np.full(n, np.nan), np.full(n, np.nan)
    win: deque[float] = deque(maxlen=PERF_WINDOW)
    for e, r in zip(ends, rets, strict=True):
        win.append(float(r))
        ep[e:] = r
        perf[e:] = np.mean(win)
    return ep, perf


def episodic_run(rng: np.random.Generator, brk: int | None = None, low: float = 0.0,
                 noise: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A PPO-like run with an episode ending every E +- JIT updates: ``(episode_return, performance, ends)``.

    With ``brk`` the policy breaks instantly at that update: an episode's return is the control
    level for the part of it played before ``brk`` and ``low`` for the part after.
    """
    lengths = rng.integers(E - JIT, E + JIT + 1, size=T // (E - JIT) + 2)
    ends = np.cumsum(lengths) - int(rng.integers(0, E))
    ends = ends[(ends > 0) & (ends < T)]
    starts = np.r_[max(0, ends[0] - lengths[0]), ends[:-1]]
    rets = level(ends) + rng.normal(0, noise, ends.size)
    if brk is not None:
        after = np.clip((ends - brk) / (ends - starts), 0.0, 1.0)  # fraction of the episode after the break
        rets = (1 - after) * rets + after * (low + rng.normal(0, noise, ends.size))
    ep, perf = record(ends, rets)
    return ep, perf, ends


def controls(rng: np.random.Generator, n: int = 8) -> list[np.ndarray]:
    """Smoothed performance curves of ``n`` matched controls (no break)."""
    return [smooth(episodic_run(rng)[1], WINDOW) for _ in range(n)]


def test_instant_break_is_dated_within_one_episode_and_the_smoothed_date_lags() -> None:
    lags_smoothed = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        ctrl = controls(rng)
        brk = ONSET + int(rng.integers(0, 1500))
        ep, perf, ends = episodic_run(rng, brk)
        out = detect(STEPS, perf, ONSET, ctrl, None, CFG, ONSET + DUR, episode_return=ep)
        assert out["collapsed"] and out["collapse_kind"] == "performance", seed
        assert out["collapse_date_source"] == "episode_return", seed
        one_episode = int(np.diff(ends).max())
        assert abs(out["collapse_step"] - brk) <= one_episode, (seed, brk, out["collapse_step"])
        assert out["collapse_step"] >= ONSET
        assert out["collapse_time"] == out["collapse_step"] - ONSET == out["survival_time"]
        lags_smoothed.append(out["collapse_step_smoothed"] - brk)
        # only the date changes: the decision and the online confirmation are those of performance alone
        old = detect(STEPS, perf, ONSET, ctrl, None, CFG, ONSET + DUR)
        assert old["collapse_date_source"] == "performance"
        assert old["collapse_step"] == old["collapse_step_smoothed"] == out["collapse_step_smoothed"]
        for col in ("collapsed", "collapse_kind", "collapse_confirmed_step", "censored", "transient"):
            assert out[col] == old[col], (seed, col)
    # the bug this fixes: the 5-episode trailing mean made the smoothed date lag by more than 2 episodes
    assert sum(lag > 2 * E for lag in lags_smoothed) >= 18, lags_smoothed


def rollout_run(rng: np.random.Generator, brk: int | None, n_steps: int = 2048, ep_len: int = 1000,
                per_rollout: int = 320, noise: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """SB3 PPO as it really records: rollout j (n_steps env steps, with the policy after train call j-1)
    is followed by train call j (updates ``[per_rollout * j, per_rollout * (j + 1))``); fixed-length
    episodes end inside rollouts and become known at the train call's first update, where
    ``episode_return`` shows only the rollout's last episode. A break inside train call j spoils every
    env step from rollout j + 1 on. Returns ``(episode_return, performance)``, each ``(T,)``."""
    n_roll = T // per_rollout + 1
    broken_from = None if brk is None else brk // per_rollout + 1  # first rollout played by the broken policy
    ends, rets = [], []
    for k in range(1, n_roll * n_steps // ep_len + 1):
        t_env = np.arange((k - 1) * ep_len, k * ep_len)  # the episode's env steps
        roll = t_env // n_steps
        if roll[-1] >= n_roll:
            break
        frac_bad = 0.0 if broken_from is None else float(np.mean(roll >= broken_from))
        known = int(roll[-1]) * per_rollout  # its return is first recorded at that train call's first update
        good = level(known) + rng.normal(0, noise)
        rets.append((1 - frac_bad) * good + frac_bad * rng.normal(0, noise))
        ends.append(known)
    ep, perf = record(np.array(ends), np.array(rets))
    return ep, perf


def test_break_inside_a_train_call_is_dated_to_that_call_within_one_rollout() -> None:
    """With episodes visible once per rollout the resolution is one rollout (320 updates), never a lag."""
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        ctrl = [smooth(rollout_run(rng, None)[1], WINDOW) for _ in range(8)]
        brk = ONSET + int(rng.integers(0, 1500))
        ep, perf = rollout_run(rng, brk)
        out = detect(STEPS, perf, ONSET, ctrl, None, CFG, ONSET + DUR, episode_return=ep)
        assert out["collapsed"] and out["collapse_date_source"] == "episode_return"
        assert 0 <= brk - out["collapse_step"] < 320, (seed, brk, out["collapse_step"])
        assert out["collapse_step"] == max(ONSET, brk // 320 * 320)  # the start of the train call that broke it
        assert out["collapse_step_smoothed"] - brk > 320


def test_matched_controls_do_not_collapse_and_have_no_date() -> None:
    rng = np.random.default_rng(7)
    ctrl = controls(rng)
    for _ in range(5):
        ep, perf, _ = episodic_run(rng)
        out = detect(STEPS, perf, ONSET, ctrl, None, CFG, ONSET, episode_return=ep)
        assert not out["collapsed"] and out["censored"]
        assert out["collapse_step"] is None and out["collapse_step_smoothed"] is None
        assert out["collapse_date_source"] is None


def test_eval_return_dates_when_there_is_no_episode_return_and_episodes_come_first() -> None:
    rng = np.random.default_rng(3)
    ctrl = controls(rng)
    brk = 3000
    ep, perf, _ = episodic_run(rng, brk)
    every = 400  # deterministic evaluations on the rows where one ran (null elsewhere)
    ev = np.full(T, np.nan)
    ev[every - 1::every] = np.where(STEPS[every - 1::every] < brk, level(STEPS[every - 1::every]), 0.0)
    out = detect(STEPS, perf, ONSET, ctrl, None, CFG, ONSET + DUR, eval_return=ev)
    assert out["collapse_date_source"] == "eval_return"
    assert 0 <= brk - out["collapse_step"] < every  # the last evaluation above the line
    both = detect(STEPS, perf, ONSET, ctrl, None, CFG, ONSET + DUR, episode_return=ep, eval_return=ev)
    assert both["collapse_date_source"] == "episode_return"
    assert both["collapse_step"] == detect(STEPS, perf, ONSET, ctrl, None, CFG, ONSET + DUR,
                                           episode_return=ep)["collapse_step"]


def test_runs_without_episode_returns_are_dated_on_performance_as_before() -> None:
    """Old corpora (no episode_return, or an all-null column) give exactly the smoothed date."""
    rng = np.random.default_rng(11)
    ctrl = controls(rng)
    _, perf, _ = episodic_run(rng, 3000)
    base = detect(STEPS, perf, ONSET, ctrl, None, CFG, ONSET + DUR)
    for missing in (None, np.full(T, np.nan)):
        out = detect(STEPS, perf, ONSET, ctrl, None, CFG, ONSET + DUR, episode_return=missing, eval_return=missing)
        assert out == base
    assert base["collapsed"] and base["collapse_date_source"] == "performance"
    assert base["collapse_step"] == base["collapse_step_smoothed"]
    assert base["collapse_step"] - 3000 > 2 * E  # and so it keeps the trailing mean's lag


def test_lm_run_without_episodes_is_dated_on_performance_unchanged() -> None:
    """An LM-like run: -val_loss every 25 updates (no trailing mean), a drop at update 600."""
    n, onset, every = 2000, 500, 25
    steps = np.arange(n)
    rng = np.random.default_rng(5)

    def lm(drop: bool) -> np.ndarray:
        p = np.full(n, np.nan)
        rows = steps[::every]
        val = -(6.0 - 3.0 * (1 - np.exp(-rows / 400))) + rng.normal(0, 0.05, rows.size)
        if drop:
            val[rows >= 600] -= 4.0
        p[rows] = val
        return p

    cfg = CollapseConfig()
    w = max(1, round(cfg.smooth_frac * n))
    ctrl = [smooth(lm(False), w) for _ in range(4)]
    out = detect(steps, lm(True), onset, ctrl, None, cfg, onset + 50)
    assert out["collapsed"] and out["collapse_date_source"] == "performance"
    assert out["collapse_step"] == out["collapse_step_smoothed"]
    assert abs(out["collapse_step"] - 600) <= w // 2 + every  # half a centred window plus one evaluation


def test_nonfinite_keeps_its_step_and_kind_is_judged_against_the_new_date() -> None:
    rng = np.random.default_rng(2)
    ctrl = controls(rng)
    brk = 3000
    ep, perf, _ = episodic_run(rng, brk)
    out = detect(STEPS, perf, ONSET, ctrl, 2500, CFG, ONSET + DUR, episode_return=ep)  # non-finite first
    assert out["collapse_kind"] == "nonfinite" and out["collapse_date_source"] == "nonfinite"
    assert out["collapse_step"] == out["collapse_step_smoothed"] == out["collapse_confirmed_step"] == 2500
    # non-finite after the returns broke but before the smoothed date: the performance collapse came first;
    # the smoothed date and the online confirmation stay what they were (the non-finite update)
    smoothed = detect(STEPS, perf, ONSET, ctrl, None, CFG, ONSET + DUR)["collapse_step_smoothed"]
    late = brk + E + 30
    assert late < smoothed
    out = detect(STEPS, perf, ONSET, ctrl, late, CFG, ONSET + DUR, episode_return=ep)
    assert out["collapse_kind"] == "performance" and out["collapse_date_source"] == "episode_return"
    assert abs(out["collapse_step"] - brk) <= E + JIT
    assert out["collapse_step_smoothed"] == out["collapse_confirmed_step"] == late


def test_episode_date_by_hand() -> None:
    line = np.full(100, 5.0)
    obs = np.array([10, 20, 30, 40, 50, 60, 70, 80])
    vals = np.array([9.0, 9.0, 0.0, 9.0, 9.0, 1.0, 0.0, 1.0])  # a single bad episode at 30, then a break at 60
    assert episode_date(obs, vals, line, 15, 75, 90) == 50  # the last observation above before the stretch
    assert episode_date(obs, vals, line, 55, 75, 90) == 55  # not before onset
    assert episode_date(obs, vals, line, 15, 55, 90) == 50  # crossing before the stretch: the first one after
    assert episode_date(obs, vals, line, 15, 55, 58) is None  # nothing below up to the confirmation
    assert episode_date(obs, vals, line, 15, 75, 90, width=1) == 50
    x = np.array([np.nan, np.nan, 3.0, 3.0, 4.0, 4.0, np.nan, 4.0])
    np.testing.assert_array_equal(observations(x)[0], [2, 4, 7])


def test_collapse_group_dates_runs_with_curves_and_keeps_plain_pairs() -> None:
    rng = np.random.default_rng(4)
    runs = pl.DataFrame({"run_id": ["c0", "c1", "c2", "c3", "p_new", "p_old"], "seed": [0, 1, 2, 3, 1, 1],
                         "onset_step": [ONSET] * 6, "duration_steps": [1, 1, 1, 1, DUR, DUR]})
    perf: dict[str, RunCurves | tuple[np.ndarray, np.ndarray]] = {}
    for i in range(4):
        ep, pf, _ = episodic_run(rng)
        perf[f"c{i}"] = RunCurves(STEPS, pf, ep)
    ep, pf, _ = episodic_run(rng, 3000)
    perf["p_new"] = RunCurves(STEPS, pf, ep)
    perf["p_old"] = (STEPS, pf)  # a corpus without episode_return
    out = collapse_group(runs, perf, {}, np.array([True] * 4 + [False] * 2), CFG)
    assert list(out.schema) == list(OUTCOME_SCHEMA)
    got = {r["run_id"]: r for r in out.iter_rows(named=True)}
    assert [got[f"c{i}"]["collapse_date_source"] for i in range(4)] == [None] * 4
    new, old = got["p_new"], got["p_old"]
    assert new["collapsed"] and new["collapse_date_source"] == "episode_return"
    assert abs(new["collapse_step"] - 3000) <= E + JIT
    # same seed, same fold: the plain pair is dated on performance, as the curves were before
    assert old["collapse_date_source"] == "performance" and old["collapse_step"] == new["collapse_step_smoothed"]
    assert new["collapse_confirmed_step"] == old["collapse_confirmed_step"]


def test_collapse_curves_reads_the_columns_it_has() -> None:
    from stabilitybench.analysis.data import collapse_curves

    frame = pl.DataFrame({"step": [0, 1, 2], "performance": [None, 1.0, 2.0], "episode_return": [None, 3.0, 3.0],
                          "eval_return": pl.Series([None, None, None], dtype=pl.Float64)})
    c = collapse_curves(frame)
    np.testing.assert_array_equal(c.steps, [0, 1, 2])
    np.testing.assert_array_equal(c.performance, [np.nan, 1.0, 2.0])
    np.testing.assert_array_equal(c.episode_return, [np.nan, 3.0, 3.0])
    assert c.eval_return is None  # all null: the run does not record it
    assert collapse_curves(frame.select("step", "performance")).episode_return is None  # an older file


def _write_corpus(root: Path) -> Path:
    """Four controls and two runs broken at update 800 (E = 40): one with episode_return, one without."""
    from stabilitybench.data_schema import (
        EVENTS_SCHEMA,
        STEPS_SCHEMA,
        events_path,
        steps_path,
        write_manifest,
        write_table,
    )

    n, onset, ep_len = 2000, 600, 40
    rows = []
    for rid, seed, kind in [*[(f"none-{s}", s, "none") for s in range(4)], ("spike-0", 0, "lr_spike"),
                            ("spike-1-old", 1, "lr_spike")]:
        rng = np.random.default_rng(seed + 10 * (kind != "none") + (rid.endswith("old")))
        ends = np.arange(int(rng.integers(1, ep_len)), n, ep_len)
        rets = level(ends * 4) + rng.normal(0, 1.0, ends.size)
        if kind != "none":
            rets[ends > 800] = rng.normal(0, 1.0, int((ends > 800).sum()))
        ep, perf = record(ends, rets, n)
        row = {"run_id": rid, "domain": "rl", "algo": "ppo", "env": "Toy-v0", "seed": seed, "perturbation": kind,
               "dimension": "none" if kind == "none" else "optimization", "magnitude": 1.0, "onset_frac": 0.3,
               "onset_step": onset, "duration_steps": 1 if kind == "none" else 50, "stochasticity": "default",
               "total_steps": n * 10, "planned_updates": n, "n_updates": n, "stop_reason": "completed",
               "status": "ok", "code_version": "test", "schema_version": "1.0", "config_json": "{}"}
        cols = {"run_id": [rid] * n, "step": np.arange(n), "samples_seen": np.arange(n) * 10,
                "wall_time_s": np.arange(n) * 0.01, "lr": np.full(n, 3e-4),
                "perturbation_active": np.zeros(n, dtype=bool),
                "grad_norm": np.exp(0.1 * rng.normal(size=n)), "performance": pa.array(perf, from_pandas=True),
                "domain": ["rl"] * n, "algo": ["ppo"] * n, "env": ["Toy-v0"] * n, "perturbation": [kind] * n}
        if not rid.endswith("old"):
            cols["episode_return"] = pa.array(ep, from_pandas=True)
        write_table(pa.table(cols), steps_path(root, row), STEPS_SCHEMA)
        write_table(pa.Table.from_pylist([], schema=EVENTS_SCHEMA), events_path(root, rid), EVENTS_SCHEMA)
        rows.append(row)
    write_manifest(root, rows)
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("dating") / "corpus")


def test_the_analysis_reads_episode_returns_and_dates_on_them(corpus: Path) -> None:
    """groups: the telemetry read for the rule carries episode_return; a file without it falls back."""
    from stabilitybench.analysis.config import AnalysisConfig
    from stabilitybench.analysis.groups import _read_group, collapse_outcomes, load_corpus

    loaded = load_corpus(corpus)
    cfg = AnalysisConfig()
    tel = _read_group(corpus, loaded.runs, ["grad_norm"], cfg, {})
    assert tel.performance["spike-0"].episode_return is not None
    assert tel.performance["spike-1-old"].episode_return is None
    out, sens = collapse_outcomes(loaded.runs, tel, loaded.events, cfg)
    got = {r["run_id"]: r for r in out.iter_rows(named=True)}
    new, old = got["spike-0"], got["spike-1-old"]
    assert new["collapsed"] and new["collapse_date_source"] == "episode_return"
    assert abs(new["collapse_step"] - 800) <= 40  # one episode
    assert new["collapse_step_smoothed"] - 800 > 80  # the trailing mean of 5 episodes: more than 2 episodes late
    assert old["collapsed"] and old["collapse_date_source"] == "performance"
    assert old["collapse_step"] == old["collapse_step_smoothed"]
    assert sens.height == 12 * loaded.runs.height
