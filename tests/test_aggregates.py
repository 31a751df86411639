"""rliable-style aggregates of final performance (stabilitybench.analysis.aggregates): hand-checkable cases."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats

from stabilitybench.analysis.aggregates import iqm_table, normalised_scores, performance_profiles


def _runs(rows: list[tuple[str, str, float, float]]) -> pl.DataFrame:
    """(env, perturbation, magnitude, final_performance) -> a runs frame of one algo."""
    return pl.DataFrame([{"domain": "rl", "algo": "ppo", "stochasticity": "default", "env": e, "perturbation": p,
                          "magnitude": m, "duration_steps": 10 if p != "none" else None, "final_performance": x}
                         for e, p, m, x in rows])


def test_scores_are_normalised_by_the_matched_control_median():
    runs = _runs([("A", "none", 1.0, 100.0), ("A", "none", 1.0, 300.0), ("A", "lr_spike", 10.0, 100.0),
                  ("B", "none", 1.0, -50.0), ("B", "lr_spike", 10.0, -100.0), ("C", "lr_spike", 10.0, 5.0)])
    s = normalised_scores(runs)
    got = dict(zip(zip(s["env"], s["perturbation"], s["final_performance"], strict=True), s["score"], strict=True))
    assert got[("A", "lr_spike", 100.0)] == pytest.approx(0.5)  # half the control median (200)
    assert got[("A", "none", 300.0)] == pytest.approx(1.5)
    assert got[("B", "none", -50.0)] == pytest.approx(1.0)
    assert got[("B", "lr_spike", -100.0)] == pytest.approx(0.0)  # twice as negative: one |m0| below
    assert got[("C", "lr_spike", 5.0)] is None  # no matched control


def test_iqm_matches_scipy_trimmed_mean_and_the_ci_covers_it():
    rng = np.random.default_rng(0)
    ctrl = [("A", "none", 1.0, 100.0)] * 3 + [("B", "none", 1.0, 10.0)] * 3
    x_a, x_b = rng.uniform(20, 120, 9), rng.uniform(2, 12, 9)
    runs = _runs(ctrl + [("A", "lr_spike", 10.0, float(v)) for v in x_a] +
                 [("B", "lr_spike", 10.0, float(v)) for v in x_b])
    row = iqm_table(runs, n_boot=500, seed=1).filter(pl.col("perturbation") == "lr_spike").row(0, named=True)
    pooled = np.concatenate([x_a / 100, x_b / 10])
    assert row["iqm"] == pytest.approx(stats.trim_mean(pooled, 0.25))
    assert row["ci_low"] < row["iqm"] < row["ci_high"]
    assert (row["n_runs"], row["n_envs"], row["config"]) == (18, 2, "lr_spike x10 (10 upd)")


def test_bootstrap_is_stratified_by_env():
    """Env A always scores 2, env B always 0, two runs each: every stratified resample holds two of each
    (IQM 1 exactly); resampling the pooled runs would not."""
    runs = _runs([("A", "none", 1.0, 1.0), ("B", "none", 1.0, 1.0),
                  ("A", "lr_spike", 3.0, 2.0), ("A", "lr_spike", 3.0, 2.0),
                  ("B", "lr_spike", 3.0, 0.0), ("B", "lr_spike", 3.0, 0.0)])
    row = iqm_table(runs, n_boot=300).filter(pl.col("perturbation") == "lr_spike").row(0, named=True)
    assert row["iqm"] == row["ci_low"] == row["ci_high"] == pytest.approx(1.0)


def test_performance_profile_is_the_fraction_above_tau():
    runs = _runs([("A", "none", 1.0, 10.0)] + [("A", "weight_noise", 1.0, v) for v in (0.0, 5.0, 10.0, 20.0)])
    prof = performance_profiles(runs, taus=[0.0, 0.25, 0.75, 1.5], n_boot=200).filter(
        pl.col("perturbation") == "weight_noise").sort("tau")
    assert prof["fraction"].to_list() == [0.75, 0.75, 0.5, 0.25]  # scores 0, 0.5, 1, 2
    assert all(lo <= f <= hi for lo, f, hi in zip(prof["ci_low"], prof["fraction"], prof["ci_high"], strict=True))
    assert prof["fraction"].is_sorted(descending=True)


def test_agrees_with_the_rliable_package_where_it_imports():
    rly = pytest.importorskip("rliable.library")  # not a dependency (see analysis.aggregates); a cross-check
    metrics = pytest.importorskip("rliable.metrics")
    rng = np.random.default_rng(3)
    scores = rng.uniform(0, 2, size=(8, 3))  # runs x envs, every env has a control median of 1
    runs = _runs([(e, "none", 1.0, 1.0) for e in "ABC"] +
                 [(e, "obs_noise", 0.5, float(scores[i, j])) for i in range(8) for j, e in enumerate("ABC")])
    row = iqm_table(runs, n_boot=4000).filter(pl.col("perturbation") == "obs_noise").row(0, named=True)
    point, ci = rly.get_interval_estimates({"x": scores}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=4000,
                                           random_state=np.random.RandomState(0))
    assert row["iqm"] == pytest.approx(float(point["x"][0]))
    assert row["ci_low"] == pytest.approx(float(ci["x"][0, 0]), abs=0.03)
    assert row["ci_high"] == pytest.approx(float(ci["x"][1, 0]), abs=0.03)
