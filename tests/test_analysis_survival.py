"""Survival models cross-checked against lifelines on the same data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pytest

lifelines = pytest.importorskip("lifelines")
from lifelines import CoxPHFitter, KaplanMeierFitter  # noqa: E402
from lifelines.statistics import logrank_test, multivariate_logrank_test  # noqa: E402
from lifelines.utils import concordance_index  # noqa: E402

from analysis.survival import concordance, cox, design_matrix, kaplan_meier, logrank  # noqa: E402


@pytest.fixture(scope="module")
def runs() -> pl.DataFrame:
    """Exponential times with log-hazard 0.8 log10(magnitude) - 0.6 [dimension == optimization]; random censoring."""
    rng = np.random.default_rng(3)
    n = 120
    x1 = rng.normal(size=n)
    x2 = rng.integers(0, 2, size=n)
    t = rng.exponential(1.0 / np.exp(0.8 * x1 - 0.6 * x2)) * 1000
    c = rng.exponential(1500, size=n)
    return pl.DataFrame({
        "run_id": [f"r{i}" for i in range(n)],
        "perturbation": np.where(x2 == 1, "lr_spike", "none"),
        "magnitude": 10.0**x1,
        "duration_steps": [100] * n,
        "dimension": np.where(x2 == 1, "optimization", "none"),
        "algo": ["ppo"] * n,
        "stochasticity": ["default"] * n,
        "collapse_time": np.round(np.minimum(t, c)).astype(np.int64),
        "collapsed": t <= c,
    })


def test_kaplan_meier_matches_lifelines(runs: pl.DataFrame) -> None:
    t = runs["collapse_time"].to_numpy().astype(float)
    e = runs["collapsed"].to_numpy().astype(float)
    ours = kaplan_meier(t, e)
    kmf = KaplanMeierFitter().fit(t, e)
    times = ours["time"].to_numpy()
    ref = kmf.survival_function_at_times(times).to_numpy()
    np.testing.assert_allclose(ours["survival"].to_numpy(), ref, atol=1e-10)
    ci = kmf.confidence_interval_survival_function_
    lo = ci.iloc[:, 0].reindex(times).to_numpy()
    hi = ci.iloc[:, 1].reindex(times).to_numpy()
    inner = (ours["survival"].to_numpy() > 0) & (ours["survival"].to_numpy() < 1)
    np.testing.assert_allclose(ours["ci_low"].to_numpy()[inner], lo[inner], atol=1e-6)
    np.testing.assert_allclose(ours["ci_high"].to_numpy()[inner], hi[inner], atol=1e-6)


def test_cox_matches_lifelines(runs: pl.DataFrame) -> None:
    res = cox(runs)
    assert res["status"] == "ok"
    assert res["covariates"] == ["log10_magnitude", "dimension=optimization"]
    assert "algo (one level) (constant)" in res["dropped_covariates"]
    X, names, _ = design_matrix(runs)
    df = pd.DataFrame(X, columns=names)
    df["T"] = runs["collapse_time"].to_numpy().astype(float)
    df["E"] = runs["collapsed"].to_numpy().astype(int)
    cph = CoxPHFitter().fit(df, "T", "E")  # Efron ties, like ours
    ours = np.array([c["coef"] for c in res["coefficients"]])
    np.testing.assert_allclose(ours, cph.params_[names].to_numpy(), atol=1e-4)
    np.testing.assert_allclose([c["se"] for c in res["coefficients"]], cph.standard_errors_[names].to_numpy(),
                               rtol=1e-3)
    assert res["concordance"] == pytest.approx(cph.concordance_index_, abs=1e-6)
    # the simulated effects are recovered (true log-HRs 0.8 and -0.6)
    assert ours[0] == pytest.approx(0.8, abs=0.3) and ours[1] == pytest.approx(-0.6, abs=0.4)
    assert all("p_value" in row for row in res["ph_check"])


def test_concordance_matches_lifelines(runs: pl.DataFrame) -> None:
    t = runs["collapse_time"].to_numpy().astype(float)
    e = runs["collapsed"].to_numpy().astype(float)
    risk = np.log10(runs["magnitude"].to_numpy())
    # lifelines scores "higher predicted survival time = longer survival": pass -risk
    assert concordance(t, e, risk) == pytest.approx(concordance_index(t, -risk, e), abs=1e-9)


def test_logrank_matches_lifelines(runs: pl.DataFrame) -> None:
    runs = runs.with_columns(
        pl.when(pl.col("perturbation") == "none").then(1.0).otherwise(100.0).alias("magnitude"))
    rows = {r["comparison"]: r for r in logrank(runs)}
    t = runs["collapse_time"].to_numpy().astype(float)
    e = runs["collapsed"].to_numpy().astype(int)
    g = runs["perturbation"].to_numpy()
    ref = multivariate_logrank_test(t, g, e)
    assert rows["all groups"]["chi2"] == pytest.approx(ref.test_statistic, rel=1e-6)
    pair = logrank_test(t[g == "none"], t[g != "none"], e[g == "none"], e[g != "none"])
    assert rows["lr_spike x100 (100 upd) vs none"]["p_value"] == pytest.approx(pair.p_value, rel=1e-6)


def test_separation_is_reported_not_hidden() -> None:
    n = 12
    runs = pl.DataFrame({
        "run_id": [f"r{i}" for i in range(n)], "perturbation": ["lr_spike"] * n,
        "magnitude": [1.0] * 6 + [100.0] * 6, "duration_steps": [10] * n, "dimension": ["optimization"] * n,
        "algo": ["ppo"] * n, "stochasticity": ["default"] * n,
        "collapse_time": [1000] * 6 + [100, 120, 140, 160, 180, 200], "collapsed": [False] * 6 + [True] * 6,
    })
    res = cox(runs)
    assert res["status"].startswith("monotone likelihood")
    assert res["ridge_coefficients_no_ci"]["log10_magnitude"] > 0


def test_cox_stratifies_by_env_and_matches_lifelines_strata(runs: pl.DataFrame) -> None:
    env = np.where(np.arange(runs.height) % 2 == 0, "A-v0", "B-v0")
    # env B collapses 3x faster: a baseline-hazard difference the strata absorb
    t = runs["collapse_time"].to_numpy() // np.where(env == "B-v0", 3, 1)
    two = runs.with_columns(pl.Series("env", env), pl.lit("rl").alias("domain"), pl.Series("collapse_time", t))
    res = cox(two)
    assert res["strata"] == ["rl/A-v0", "rl/B-v0"]
    X, names, _ = design_matrix(two)
    df = pd.DataFrame(X, columns=names)
    df["T"], df["E"], df["env"] = t.astype(float), two["collapsed"].to_numpy().astype(int), env
    cph = CoxPHFitter().fit(df, "T", "E", strata=["env"])
    np.testing.assert_allclose([c["coef"] for c in res["coefficients"]], cph.params_[names].to_numpy(), atol=1e-4)
