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

from stabilitybench.analysis.survival import (  # noqa: E402
    LANDMARK_COLUMN,
    concordance,
    cox,
    design_matrix,
    kaplan_meier,
    landmark_runs,
    logrank,
)

DOSE = "dose[lr_spike] (log10 magnitude, centred within kind)"
DOSE2 = "dose[mass_shift] (log10 magnitude, centred within kind)"


def simulate(n: int, seed: int, beta: float = 0.8, kind_effect: float = -0.6) -> pl.DataFrame:
    """Perturbed runs of two kinds; log-hazard = beta log10(magnitude) + kind_effect [mass_shift]; censoring."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.integers(0, 2, size=n)
    t = rng.exponential(1.0 / np.exp(beta * x1 + kind_effect * x2)) * 1000
    c = rng.exponential(1500, size=n)
    return pl.DataFrame({
        "run_id": [f"r{i}" for i in range(n)],
        "perturbation": np.where(x2 == 1, "mass_shift", "lr_spike"),
        "magnitude": 10.0**x1,
        "duration_steps": [100] * n,
        "dimension": np.where(x2 == 1, "environmental", "optimization"),
        "domain": ["rl"] * n, "algo": ["ppo"] * n, "env": ["Toy-v0"] * n,
        "stochasticity": ["default"] * n,
        "survival_time": np.round(np.minimum(t, c)).astype(np.int64),
        "collapsed": t <= c,
    })


@pytest.fixture(scope="module")
def runs() -> pl.DataFrame:
    return simulate(120, 3)


def test_kaplan_meier_matches_lifelines(runs: pl.DataFrame) -> None:
    t = runs["survival_time"].to_numpy().astype(float)
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


def _lifelines_fit(runs: pl.DataFrame, strata: list[str] | None = None) -> tuple[CoxPHFitter, list[str]]:
    labels = runs["env"].to_list()
    X, names, _ = design_matrix(runs, np.unique(labels, return_inverse=True)[1])
    df = pd.DataFrame(X, columns=names)
    df["T"] = runs["survival_time"].to_numpy().astype(float)
    df["E"] = runs["collapsed"].to_numpy().astype(int)
    if strata:
        df["env"] = labels
    return CoxPHFitter().fit(df, "T", "E", strata=strata), names  # Efron ties, like ours


def test_cox_recovers_a_known_log_hazard_ratio_within_its_ci_and_matches_lifelines() -> None:
    runs = simulate(400, 11)
    res = cox(runs)
    assert res["status"] == "ok" and res["population"] == "perturbed runs only"
    assert res["covariates"] == ["kind=mass_shift", DOSE, DOSE2]
    assert res["events_per_covariate"] == pytest.approx(res["n_events"] / 3)
    for c in res["coefficients"]:
        if c["covariate"].startswith("dose"):  # true log-HR 0.8 per decade of magnitude, within each kind
            assert c["ci_low"] <= np.exp(0.8) <= c["ci_high"]
    cph, names = _lifelines_fit(runs)
    ours = np.array([c["coef"] for c in res["coefficients"]])
    np.testing.assert_allclose(ours, cph.params_[names].to_numpy(), atol=1e-4)
    np.testing.assert_allclose([c["se"] for c in res["coefficients"]], cph.standard_errors_[names].to_numpy(),
                               rtol=1e-3)
    assert res["concordance"] == pytest.approx(cph.concordance_index_, abs=1e-6)
    assert all("p_value" in row for row in res["ph_check"])


def test_cox_uses_perturbed_runs_only_and_drops_unidentifiable_covariates(runs: pl.DataFrame) -> None:
    ctrl = runs.head(10).with_columns(pl.lit("none").alias("perturbation"), pl.lit("none").alias("dimension"),
                                      pl.lit(False).alias("collapsed"), pl.lit(1.0).alias("magnitude"))
    both = pl.concat([runs, ctrl]).with_columns((pl.col("perturbation") == "none").alias("unperturbed"))
    res = cox(both)
    assert res["n"] == runs.height
    # one magnitude for a kind: its dose does not vary, so it is not identifiable and is listed
    one = runs.with_columns(pl.when(pl.col("perturbation") == "mass_shift").then(10.0).otherwise(pl.col("magnitude"))
                            .alias("magnitude"))
    res = cox(one)
    assert any(d.startswith("dose[mass_shift]") and "not identifiable" in d for d in res["dropped_covariates"])


def test_concordance_matches_lifelines(runs: pl.DataFrame) -> None:
    t = runs["survival_time"].to_numpy().astype(float)
    e = runs["collapsed"].to_numpy().astype(float)
    risk = np.log10(runs["magnitude"].to_numpy())
    # lifelines scores "higher predicted survival time = longer survival": pass -risk
    assert concordance(t, e, risk) == pytest.approx(concordance_index(t, -risk, e), abs=1e-9)


def test_logrank_against_matched_controls_matches_lifelines(runs: pl.DataFrame) -> None:
    runs = runs.with_columns(
        pl.when(pl.col("perturbation") == "mass_shift").then(pl.lit("none")).otherwise(pl.col("perturbation"))
        .alias("perturbation"),
        pl.when(pl.col("perturbation") == "mass_shift").then(1.0).otherwise(100.0).alias("magnitude"))
    rows = {r["comparison"]: r for r in logrank(runs)}
    t = runs["survival_time"].to_numpy().astype(float)
    e = runs["collapsed"].to_numpy().astype(int)
    g = runs["perturbation"].to_numpy()
    ref = multivariate_logrank_test(t, g, e)
    assert rows["all groups"]["chi2"] == pytest.approx(ref.test_statistic, rel=1e-6)
    pair = logrank_test(t[g == "none"], t[g != "none"], e[g == "none"], e[g != "none"])
    assert rows["lr_spike x100 (100 upd) vs matched none"]["p_value"] == pytest.approx(pair.p_value, rel=1e-6)
    # a second env's controls are matched within their own stratum
    other = runs.with_columns(pl.lit("B-v0").alias("env"))
    two = {r["comparison"]: r for r in logrank(pl.concat([runs, other]))}
    assert two["lr_spike x100 (100 upd) vs matched none"]["strata"] == ["rl/ppo/B-v0", "rl/ppo/Toy-v0"]


def test_separation_is_reported_with_a_stated_penalty() -> None:
    n = 12
    runs = pl.DataFrame({
        "run_id": [f"r{i}" for i in range(n)], "perturbation": ["lr_spike"] * n,
        "magnitude": [1.0] * 6 + [100.0] * 6, "duration_steps": [10] * n, "dimension": ["optimization"] * n,
        "algo": ["ppo"] * n, "stochasticity": ["default"] * n,
        "survival_time": [1000] * 6 + [100, 120, 140, 160, 180, 200], "collapsed": [False] * 6 + [True] * 6,
    })
    res = cox(runs)
    assert res["status"] == "separated" and "alpha=0.1" in res["penalty"]
    assert res["ridge_coefficients_no_ci"][DOSE] > 0
    # the headline carries the penalised estimate without CI or p; the diverging MLE only under its own key
    (row,) = res["coefficients"]
    assert row["estimable"] is False and row["coef"] == pytest.approx(res["ridge_coefficients_no_ci"][DOSE])
    assert row["value"] == pytest.approx(np.exp(row["coef"]))
    assert row["ci_low"] is None and row["ci_high"] is None and row["p_value"] is None and row["se"] is None
    (raw,) = res["unpenalised_separated"]["coefficients"]
    assert raw["covariate"] == DOSE and raw["value"] != pytest.approx(row["value"])
    assert abs(raw["coef"]) > 8 or raw["se"] > 50  # what made it "separated": never quoted as the headline


def test_cox_stratifies_by_env_and_matches_lifelines_strata(runs: pl.DataFrame) -> None:
    env = np.where(np.arange(runs.height) % 2 == 0, "A-v0", "B-v0")
    # env B collapses 3x faster: a baseline-hazard difference the strata absorb
    t = runs["survival_time"].to_numpy() // np.where(env == "B-v0", 3, 1)
    two = runs.with_columns(pl.Series("env", env), pl.Series("survival_time", t))
    res = cox(two)
    assert res["strata"] == ["rl/ppo/A-v0", "rl/ppo/B-v0"]
    cph, names = _lifelines_fit(two, strata=["env"])
    np.testing.assert_allclose([c["coef"] for c in res["coefficients"]], cph.params_[names].to_numpy(), atol=1e-4)


# ------------------------------------------------------------------------------------------------ landmark model
EARLY = "early_msd (per SD)"


def simulate_landmark(n: int, seed: int, beta: float = 0.7, L: int = 100) -> pl.DataFrame:
    """Perturbed runs whose hazard (from onset, exponential, so memoryless) is exp(beta x) / 1000 with x the early
    score; a run that collapses before its landmark L has its collapse inside the early window, so its early score
    is +inf there (the non-finite block), as in the corpus."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = rng.exponential(1000 / np.exp(beta * x))
    c = rng.exponential(2000, size=n)
    time = np.round(np.minimum(t, c)) + 1
    event = t <= c
    early = np.where(event & (time <= L), np.inf, x)
    return pl.DataFrame({
        "run_id": [f"r{i}" for i in range(n)], "perturbation": ["lr_spike"] * n, "magnitude": [10.0] * n,
        "duration_steps": [100] * n, "dimension": ["optimization"] * n, "domain": ["rl"] * n, "algo": ["ppo"] * n,
        "env": ["Toy-v0"] * n, "stochasticity": ["default"] * n, "survival_time": time.astype(np.int64),
        "collapsed": event, "early_msd": early, LANDMARK_COLUMN: [L] * n,
    })


def test_landmark_cox_excludes_and_counts_runs_with_an_event_before_the_landmark() -> None:
    runs = simulate_landmark(400, 5)
    time, ev = runs["survival_time"].to_numpy(), runs["collapsed"].to_numpy()
    res = cox(runs)
    assert res["status"] == "ok" and res["time_origin"] == "landmark"
    assert res["n_excluded_before_landmark"] == int(((time <= 100) & ev).sum()) > 0
    assert res["n_censored_before_landmark"] == int(((time <= 100) & ~ev).sum())
    assert res["n"] == int((time > 100).sum()) and res["n_perturbed"] == 400
    # the +inf early scores belonged to the excluded runs: the covariate is kept (today's code drops it as
    # "missing") and its log-HR (0.7 per unit; the column is per SD) is recovered from the landmark
    assert res["covariates"] == [EARLY]
    (row,) = res["coefficients"]
    kept, _ = landmark_runs(runs)
    sd = kept["early_msd"].std(ddof=0)
    assert row["ci_low"] <= np.exp(0.7 * sd) <= row["ci_high"]
    # the same fit as lifelines on the landmark data set (time counted from the landmark)
    X, names, _ = design_matrix(kept, None)
    df = pd.DataFrame(X, columns=names)
    df["T"] = kept["survival_time"].to_numpy().astype(float)
    df["E"] = kept["collapsed"].to_numpy().astype(int)
    assert df["T"].min() > 0 and df["T"].max() == time.max() - 100
    cph = CoxPHFitter().fit(df, "T", "E")
    assert row["coef"] == pytest.approx(float(cph.params_[EARLY]), abs=1e-4)


def test_a_nonfinite_early_covariate_never_reaches_the_fit() -> None:
    runs = simulate_landmark(200, 6)
    at_risk = runs.filter(pl.col("survival_time") > 100)["run_id"].head(3).to_list()
    bad = runs.with_columns(pl.when(pl.col("run_id").is_in(at_risk)).then(np.inf).otherwise(pl.col("early_msd"))
                            .alias("early_msd"))
    res = cox(bad)
    assert res["n_excluded_nonfinite_early"] == 3
    assert res["n"] == cox(runs)["n"] - 3 and EARLY in res["covariates"]
    assert all(np.isfinite([c["coef"], c["value"]]).all() for c in res["coefficients"])
    kept, counts = landmark_runs(bad)
    assert not set(at_risk) & set(kept["run_id"].to_list()) and np.isfinite(kept["early_msd"].to_numpy()).all()
    assert counts["n_excluded_nonfinite_early"] == 3


def test_without_a_landmark_the_model_counts_from_onset_and_leaves_the_early_covariates_out() -> None:
    runs = simulate_landmark(200, 7).drop(LANDMARK_COLUMN).with_columns(
        pl.Series("magnitude", 10 ** np.random.default_rng(0).normal(size=200)))
    res = cox(runs)
    assert res["time_origin"] == "onset" and res["n"] == 200 and "n_excluded_before_landmark" not in res
    assert EARLY not in res["covariates"]
    assert any(d.startswith("early_msd") and "landmark" in d for d in res["dropped_covariates"])


def test_landmark_is_ten_blocks_or_the_coherence_window_whichever_is_longer() -> None:
    from stabilitybench.analysis.config import AnalysisConfig
    from stabilitybench.analysis.stages import landmark_updates

    runs = pl.DataFrame({"domain": ["rl"] * 3, "algo": ["ppo"] * 3, "env": ["A-v0", "A-v0", "B-v0"],
                         "stochasticity": ["default"] * 3, "n_updates": [5000, 4000, 100_000]})
    notes = [{"domain": "rl", "algo": "ppo", "env": "A-v0", "stochasticity": "default", "block_updates": 7}]
    cfg = AnalysisConfig()
    got = landmark_updates(runs, notes, cfg).to_list()
    # A: 10 blocks of 7 = 70 < 2% of 5000 = 100 (the coherence window); 2% of 4000 = 80
    # B: no note, so B = 100000 // 500 = 200 as stage 2 computes it: 10 blocks = 2000 = 2% of 100000
    assert got == [100, 80, 2000]
