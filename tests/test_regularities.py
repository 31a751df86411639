"""Regularities 1 (decoupling by equivalence) and 2 (stochasticity buffer as a dose-response shift) on synthetic truth.

Each statistic is checked on data whose answer is known: a logistic dose-response whose ED50 doubles between two
stochasticity levels (or does not move), independent vs correlated (Spearman 0.5) pairs, collapse rates that are
equal or 0.2 vs 0.8, and performance curves whose drawdown is known by construction.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from stabilitybench.analysis.regularities import (
    ED50Ratio,
    SpearmanTOST,
    buffer_verdict,
    dissociation,
    drawdown_depth,
    equivalence_verdict,
    exact_rate_test,
    level_order,
    stochasticity_buffer,
    stratified_spearman,
)

DOSES = np.geomspace(0.35, 5.6, 5)  # 16x range around ED50 = 1 and ED50 = 2
SLOPE = 2.5  # logistic slope on log magnitude


def _dose_runs(rng: np.random.Generator, ed50: dict[str, float], n_seeds: int = 20, doses: np.ndarray = DOSES,
               kind: str = "lr_spike") -> pl.DataFrame:
    """Perturbed runs: every seed at every dose at every level, collapse ~ expit(SLOPE (log m - log ED50))."""
    rows = []
    for lv, e in ed50.items():
        for s in range(n_seeds):
            for m in doses:
                p = 1 / (1 + math.exp(-SLOPE * (math.log(m) - math.log(e))))
                rows.append({"domain": "rl", "algo": "ppo", "env": "Swimmer-v5", "perturbation": kind,
                             "dimension": "optimization", "duration_steps": 320, "stochasticity": lv, "seed": s,
                             "magnitude": float(m), "collapsed": bool(rng.random() < p),
                             "final_performance": float(rng.normal(50, 5))})
    return pl.DataFrame(rows)


def _controls(rng: np.random.Generator, means: dict[str, float], n: int = 10) -> pl.DataFrame:
    return pl.DataFrame([{"domain": "rl", "algo": "ppo", "env": "Swimmer-v5", "perturbation": "none",
                          "dimension": "none", "duration_steps": 0, "stochasticity": lv, "seed": s,
                          "magnitude": None, "collapsed": False, "final_performance": float(rng.normal(mu, 3))}
                         for lv, mu in means.items() for s in range(n)],
                        schema_overrides={"magnitude": pl.Float64, "duration_steps": pl.Int64})


def _ratio(runs: pl.DataFrame, n_boot: int, seed: int = 0) -> ED50Ratio:
    return ED50Ratio(n_boot=n_boot, seed=seed).fit(runs["magnitude"].to_numpy(), runs["collapsed"].to_numpy(),
                                                   runs["seed"].to_numpy(), runs["stochasticity"].to_numpy())


# ---------------------------------------------------------------------------------------- regularity 2
def test_a_doubled_ed50_gives_a_ratio_ci_that_excludes_1() -> None:
    runs = _dose_runs(np.random.default_rng(1), {"low": 1.0, "high": 2.0})
    rf = _ratio(runs, n_boot=300)
    assert rf.status_.ok, rf.status_
    lo, hi = rf.ci_
    assert lo is not None and hi is not None and lo > 1.0, (rf.ratio_, rf.ci_)
    assert lo < 2.0 < hi  # and it is the doubling that it finds
    assert rf.verdict_ == "buffers"
    assert rf.n_valid_ >= 0.9 * 300
    s = rf.summary()
    assert s["value"] == pytest.approx(rf.ratio_) and s["n_seeds_numerator"] == 20 and s["verdict"] == "buffers"
    # the mirror image is the opposite verdict, not "undetermined"
    rev = _ratio(runs.with_columns(pl.col("stochasticity").replace({"low": "high", "high": "low"})), n_boot=300)
    assert rev.verdict_ == "no buffering shown" and rev.ci_[1] < 1.0


def test_equal_ed50s_give_a_ratio_ci_that_covers_1() -> None:
    """Coverage over 20 simulated corpora (20 seeds x 5 doses per level): a 95% CI covers 1 in >= 17."""
    covered, widths = 0, []
    for i in range(20):
        rf = _ratio(_dose_runs(np.random.default_rng(100 + i), {"low": 1.0, "high": 1.0}), n_boot=120, seed=i)
        lo, hi = rf.ci_
        assert lo is not None and hi is not None, rf.status_
        covered += lo <= 1.0 <= hi
        widths.append(hi / lo)
    assert covered >= 17, covered
    assert np.median(widths) < 2.5  # and the CI is informative, not the whole line


def test_one_dose_per_level_is_not_testable_with_a_reason() -> None:
    runs = _dose_runs(np.random.default_rng(2), {"low": 1.0, "high": 2.0}, doses=np.array([1.0]))
    rf = _ratio(runs, n_boot=50)
    assert not rf.status_.ok and "one dose" in rf.status_.reason
    assert rf.ci_ == (None, None) and rf.verdict_ == "undetermined"


def test_too_few_seeds_gives_a_point_but_no_ci() -> None:
    runs = _dose_runs(np.random.default_rng(3), {"low": 1.0, "high": 2.0}, n_seeds=4, doses=np.geomspace(0.1, 20, 8))
    rf = _ratio(runs, n_boot=50)
    assert not rf.status_.ok and "n too small" in rf.status_.reason
    assert rf.ci_ == (None, None)


def test_two_looks_widen_the_ratio_ci_and_the_verdict_to_97_5_percent() -> None:
    """A sequential design (look, add seeds, look again) pays for its second look: the same replicates give the
    97.5% percentile interval, strictly wider than one look's 95%, and the verdict is read from it."""
    runs = _dose_runs(np.random.default_rng(1), {"low": 1.0, "high": 2.0})
    args = (runs["magnitude"].to_numpy(), runs["collapsed"].to_numpy(), runs["seed"].to_numpy(),
            runs["stochasticity"].to_numpy())
    one = ED50Ratio(n_boot=300).fit(*args)
    two = ED50Ratio(n_boot=300, looks=2).fit(*args)
    assert np.array_equal(one.log_ratio_boot_, two.log_ratio_boot_, equal_nan=True)
    assert two.ci_ == one.interval(0.025)
    assert two.ci_[0] < one.ci_[0] and two.ci_[1] > one.ci_[1]
    s = two.summary()
    assert s["looks"] == 2 and "97.5% for 2 looks" in s["interval"] and s["verdict"] == buffer_verdict(*two.ci_)
    buf = stochasticity_buffer(runs, {"status": "ok", "coefficients": []}, n_boot=300, looks=2)
    assert "97.5% CI (2 looks)" in buf["verdict_reason"]
    assert buf["ed50_ratio"][0]["ci_low"] == pytest.approx(two.ci_[0])
    with pytest.raises(ValueError, match="looks"):
        ED50Ratio(looks=0)


def test_buffer_verdicts() -> None:
    assert buffer_verdict(1.2, 3.0) == "buffers"
    assert buffer_verdict(0.3, 0.9) == "no buffering shown"
    assert buffer_verdict(0.8, 1.3) == "undetermined"
    assert buffer_verdict(None, None) == "undetermined"
    assert level_order(["high", "low", "default", "zzz"]) == ["low", "default", "high", "zzz"]


def test_exact_rate_test() -> None:
    p_eq, how2 = exact_rate_test([10, 10], [20, 20])
    assert p_eq == pytest.approx(1.0) and "Fisher exact" in how2
    p, _ = exact_rate_test([4, 16], [20, 20])  # 0.2 vs 0.8 at n = 20 each
    assert p < 0.01
    assert p == pytest.approx(sps.fisher_exact([[4, 16], [16, 4]]).pvalue)
    p3_eq, how3 = exact_rate_test([7, 7, 7], [20, 20, 20])
    assert p3_eq == pytest.approx(1.0) and "Freeman-Halton exact" in how3
    p3, _ = exact_rate_test([4, 10, 16], [20, 20, 20])
    assert p3 < 0.01
    # the enumeration is the exact test scipy samples: agree with its Monte Carlo p within its error
    table = [[8, 2, 3], [1, 5, 4]]
    exact, _ = exact_rate_test([8, 2, 3], [9, 7, 7])
    mc = sps.fisher_exact(table, method=sps.MonteCarloMethod(n_resamples=200_000, rng=np.random.default_rng(0)))
    assert exact == pytest.approx(mc.pvalue, abs=0.004)
    assert exact_rate_test([3], [10])[0] is None


def test_stochasticity_buffer_reads_the_shift_fixed_dose_and_controls() -> None:
    rng = np.random.default_rng(4)
    shifted = _dose_runs(rng, {"low": 1.0, "default": 1.4, "high": 2.0})
    flat = _dose_runs(rng, {"low": 1.0, "default": 1.0, "high": 1.0}, kind="reward_flip")
    ctrl = _controls(rng, {"low": 50.0, "default": 50.0, "high": 50.0})
    runs = pl.concat([shifted, flat, ctrl], how="diagonal_relaxed")
    buf = stochasticity_buffer(runs, {"status": "ok", "coefficients": []}, n_boot=200)
    assert buf["status"] == "ok" and buf["levels"] == ["low", "default", "high"]
    assert {r["level"] for r in buf["collapse_probability"]} == {"low", "default", "high"}  # kept
    assert "cox_hazard_ratios" in buf and "cox_status" in buf
    by_level = {(r["perturbation"], r["level"]): r for r in buf["ed50_by_level"]}
    assert len(by_level) == 6 and all(r["status"] == "ok" for r in by_level.values())
    assert by_level[("lr_spike", "high")]["ed50"]["value"] > by_level[("lr_spike", "low")]["ed50"]["value"]
    ratios = {r["perturbation"]: r for r in buf["ed50_ratio"]}
    assert ratios["lr_spike"]["verdict"] == "buffers" and ratios["lr_spike"]["ci_low"] > 1
    assert ratios["reward_flip"]["ci_low"] <= 1 <= ratios["reward_flip"]["ci_high"]
    assert buf["verdict"] == "buffers" and "Bonferroni over 2" in buf["verdict_reason"]
    fixed = {r["perturbation"]: r for r in buf["fixed_dose"]}
    assert fixed["lr_spike"]["test"].startswith("Fisher-Freeman-Halton")
    assert [r["n"] for r in fixed["lr_spike"]["per_level"]] == [20, 20, 20]
    ctl = buf["controls"][0]
    assert [r["n"] for r in ctl["per_level"]] == [10, 10, 10] and ctl["learning_differs"] is False


def test_collapse_probability_per_level_compares_the_cells_run_at_every_level() -> None:
    """Extra doses at one level (what its own dose-response asked for) must not weigh its rate: two levels with the
    same collapse curve, the low level also run at three high doses, get equal rates over the shared cells."""
    rng = np.random.default_rng(6)
    same = _dose_runs(rng, {"low": 1.0, "high": 1.0}, n_seeds=20, doses=np.array([0.5, 1.0, 2.0]))
    extra = _dose_runs(rng, {"low": 1.0}, n_seeds=20, doses=np.array([8.0, 16.0, 32.0]))
    runs = pl.concat([same, extra, _controls(rng, {"low": 50.0, "high": 50.0})], how="diagonal_relaxed")
    per = {r["level"]: r for r in stochasticity_buffer(runs, {"status": "ok"}, n_boot=20)["collapse_probability"]}
    assert per["low"]["n"] == per["high"]["n"] == 60 and per["low"]["n_left_out"] == 60
    assert per["high"]["n_left_out"] == 0
    assert abs(per["low"]["value"] - per["high"]["value"]) < 0.2  # every run of low: about 0.75
    pooled_low = float(runs.filter((pl.col("stochasticity") == "low") & (pl.col("perturbation") != "none"))[
        "collapsed"].mean())
    assert pooled_low - per["high"]["value"] > 0.15


def test_stochasticity_buffer_at_one_dose_per_level_and_at_one_level() -> None:
    """The profile as it stands (one dose per level): no ED50 per level, the fixed-dose test still runs."""
    rng = np.random.default_rng(5)
    runs = pl.concat([_dose_runs(rng, {"low": 0.5, "high": 2.0}, n_seeds=20, doses=np.array([1.0])),
                      _dose_runs(rng, {"low": 1.0}, n_seeds=5, doses=np.array([1.0, 2.0]), kind="mass_shift"),
                      _controls(rng, {"low": 50.0, "high": 30.0})], how="diagonal_relaxed")
    buf = stochasticity_buffer(runs, {"status": "ok", "coefficients": []}, n_boot=50)
    lr = [r for r in buf["ed50_by_level"] if r["perturbation"] == "lr_spike"]
    assert len(lr) == 2 and all(r["status"] == "not_testable" and "one dose" in r["reason"] for r in lr)
    ratio = {r["perturbation"]: r for r in buf["ed50_ratio"]}["lr_spike"]
    assert ratio["status"] == "not_testable" and buf["verdict"] == "undetermined"
    one_level = {r["perturbation"]: r for r in buf["ed50_ratio"]}["mass_shift"]
    assert one_level["status"] == "not_testable" and "both low and high" in one_level["reason"]
    assert {r["perturbation"]: r for r in buf["fixed_dose"]}["mass_shift"]["status"] == "not_testable"
    fx = {r["perturbation"]: r for r in buf["fixed_dose"]}["lr_spike"]
    assert fx["magnitude"] == 1.0 and fx["test"] == "Fisher exact, two-sided" and fx["p_value"] < 0.05
    assert buf["controls"][0]["learning_differs"] is True  # 50 vs 30: buffering would be confounded here
    one = stochasticity_buffer(runs.filter(pl.col("stochasticity") == "low"), {"status": "ok"})
    assert one["status"] == "not_testable" and one["verdict"] == "undetermined"


# ---------------------------------------------------------------------------------------- regularity 1
def _pairs(rng: np.random.Generator, rho_s: float, n: int = 200, n_seeds: int = 40) -> tuple[np.ndarray, ...]:
    """``n`` Gaussian-copula pairs with Spearman ``rho_s``, ``n / n_seeds`` runs per seed."""
    r = 2 * math.sin(math.pi * rho_s / 6)  # Pearson r of the normal copula with that Spearman rho
    z = rng.multivariate_normal([0, 0], [[1, r], [r, 1]], size=n)
    return z[:, 0], np.exp(z[:, 1]), np.repeat(np.arange(n_seeds), n // n_seeds)


def test_tost_declares_independent_variables_decoupled_and_correlated_ones_coupled() -> None:
    """n = 200 runs (40 seeds x 5), margin 0.2, over 20 simulations. The SE of rho is about 0.075 there, so the
    90% CI (half-width ~0.115) fits inside (-0.2, 0.2) only when |rho_hat| < ~0.085: the test's power is about
    0.65, not 1. Independence must come out "decoupled" in well over a third of the simulations and "coupled" no
    more often than the 5% size allows; Spearman 0.5 must be "coupled" every time (never "decoupled"). At n = 800
    the power is ~1 and one simulation must say "decoupled"."""
    verdicts_ind, verdicts_cor = [], []
    for i in range(20):
        rng = np.random.default_rng(200 + i)
        x, y, seeds = _pairs(rng, 0.0)
        verdicts_ind.append(SpearmanTOST(n_boot=300, seed=i).fit(x, y, seeds).verdict_)
        x, y, seeds = _pairs(rng, 0.5)
        t = SpearmanTOST(n_boot=300, seed=i).fit(x, y, seeds)
        verdicts_cor.append(t.verdict_)
        assert t.rho_ == pytest.approx(sps.spearmanr(x, y).statistic)
    assert verdicts_ind.count("decoupled") >= 9, verdicts_ind
    assert verdicts_ind.count("coupled") <= 3, verdicts_ind
    assert verdicts_cor.count("coupled") == 20, verdicts_cor
    x, y, seeds = _pairs(np.random.default_rng(11), 0.0, n=800, n_seeds=160)
    big = SpearmanTOST(n_boot=300).fit(x, y, seeds)
    assert big.verdict_ == "decoupled", (big.rho_, big.ci90_)
    # absence of evidence is not decoupling: at n = 30 the CI holds 0 but is far wider than the margin
    x, y, seeds = _pairs(np.random.default_rng(12), 0.0, n=30, n_seeds=10)
    small = SpearmanTOST(n_boot=300).fit(x, y, seeds)
    assert small.ci95_[0] < 0 < small.ci95_[1] and small.verdict_ == "undetermined", (small.rho_, small.ci90_)


def test_tost_summary_reports_margin_n_both_cis_and_refuses_small_n() -> None:
    x, y, seeds = _pairs(np.random.default_rng(7), 0.0)
    s = SpearmanTOST(margin=0.2, n_boot=300).fit(x, y, seeds).summary()
    assert s["status"] == "ok" and s["margin"] == 0.2 and s["n_runs"] == 200 and s["n_seeds"] == 40
    assert s["ci95_low"] < s["ci90_low"] < s["rho"] < s["ci90_high"] < s["ci95_high"]
    small = SpearmanTOST(n_boot=50).fit(x[:8], y[:8], seeds[:8]).summary()
    assert small["status"] == "not_testable" and "n too small" in small["reason"]
    assert small["verdict"] == "undetermined"


def test_equivalence_verdict_rule() -> None:
    assert equivalence_verdict((-0.1, 0.15), (-0.12, 0.18), 0.2) == "decoupled"
    assert equivalence_verdict((0.05, 0.25), (0.02, 0.3), 0.2) == "coupled"
    assert equivalence_verdict((-0.1, 0.25), (-0.12, 0.3), 0.2) == "undetermined"
    assert equivalence_verdict((None, None), (None, None), 0.2) == "undetermined"


def test_stratified_spearman_removes_a_scale_confound_between_envs() -> None:
    """Two envs with different return scales and depth scales: pooled Spearman is ~0.6, the within-env one ~0."""
    rng = np.random.default_rng(8)
    n = 300
    env = np.repeat(["swimmer", "pendulum"], n // 2)
    perf = np.where(env == "pendulum", 1000.0, 50.0) + rng.normal(0, 5, n)
    depth = np.where(env == "pendulum", 100.0, 5.0) + rng.normal(0, 1, n)
    assert sps.spearmanr(perf, depth).statistic > 0.5
    assert abs(stratified_spearman(perf, depth, env)) < 0.15
    one = rng.normal(size=50), rng.normal(size=50)
    assert stratified_spearman(*one, np.zeros(50)) == pytest.approx(sps.spearmanr(*one).statistic)


def test_drawdown_depth_is_the_largest_fall_after_onset() -> None:
    steps = np.arange(100)
    perf = np.concatenate([np.linspace(0, 10, 50), np.linspace(10, 4, 20), np.linspace(4, 9, 30)])
    assert drawdown_depth(steps, perf, onset=0, smooth_frac=0.01) == pytest.approx(6.0)
    dip_before = np.concatenate([np.full(20, 5.0), np.full(10, 0.0), np.linspace(5, 10, 70)])
    assert drawdown_depth(steps, dip_before, onset=40, smooth_frac=0.01) == pytest.approx(0.0)
    assert drawdown_depth(steps, np.linspace(0, 1, 100), onset=10) == pytest.approx(0.0)
    sparse = np.full(100, np.nan)
    sparse[[0, 30, 60, 90]] = [1.0, 8.0, 2.0, 3.0]  # reported every 30 updates, forward-filled in between
    assert drawdown_depth(steps, sparse, onset=0, smooth_frac=0.01) == pytest.approx(6.0)
    assert drawdown_depth(steps, np.full(100, np.nan), onset=0) is None


def test_dissociation_rows_carry_the_equivalence_verdict() -> None:
    rng = np.random.default_rng(9)
    n = 200
    seeds = np.repeat(np.arange(40), 5)
    perf = rng.normal(50, 5, n)
    runs = pl.DataFrame({
        "domain": "rl", "algo": "ppo", "env": "Swimmer-v5", "stochasticity": "default", "seed": seeds,
        "perturbation": np.where(np.arange(n) % 5 == 0, "none", "lr_spike"), "dimension": "optimization",
        "magnitude": pl.Series([None if i % 5 == 0 else 2.0 for i in range(n)], dtype=pl.Float64),
        "duration_steps": 320,
        "final_performance": perf, "survival_time": rng.integers(10, 500, n),
        "drawdown_depth": -perf + rng.normal(0, 2, n),  # deep drawdowns end low: coupled
        "max_msd": rng.exponential(1.0, n),  # unrelated: decoupled
    })
    rows = dissociation(runs, n_boot=300)
    eq = {(d["measure"], d["level"]): d["equivalence"] for d in rows}
    assert eq[("drawdown_depth", "run")]["verdict"] == "coupled"
    assert eq[("max_msd", "run")]["status"] == "ok" and eq[("max_msd", "run")]["margin"] == 0.2
    assert eq[("max_msd", "run")]["verdict"] in ("decoupled", "undetermined")
    assert eq[("max_msd", "run")]["verdict"] != "coupled"
    assert eq[("survival_time", "run")]["status"] == "not_applicable"
    assert eq[("drawdown_depth", "configuration")]["status"] == "not_applicable"
    assert all("decoupled" in d for d in rows if d.get("status") == "ok")  # the old key is kept
