"""The evaluation's statistics on synthetic data whose answer is known: conformal FPR, the two questions."""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from stabilitybench.analysis import questions
from stabilitybench.analysis.conformal import ConformalCalibrator, min_calibration_runs
from stabilitybench.analysis.stats import auroc, clopper_pearson, cluster_bootstrap_ci, stratified_auroc


def test_auroc_is_roc_auc_score_with_infinities_and_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        pos = rng.integers(0, 5, size=rng.integers(1, 30)).astype(float)
        neg = rng.integers(0, 5, size=rng.integers(1, 30)).astype(float)
        pos[rng.random(pos.size) < 0.1] = np.inf
        neg[rng.random(neg.size) < 0.1] = -np.inf
        neg[rng.random(neg.size) < 0.1] = np.inf
        both = np.concatenate([pos, neg])
        finite = np.where(np.isposinf(both), 1e9, np.where(np.isneginf(both), -1e9, both))
        ref = roc_auc_score(np.r_[np.ones(pos.size), np.zeros(neg.size)], finite)
        assert auroc(pos, neg) == pytest.approx(ref, abs=1e-12)
    big = rng.normal(size=600), rng.normal(size=600) - 0.5  # the rank path (> 250k pairs)
    ref = roc_auc_score(np.r_[np.ones(600), np.zeros(600)], np.concatenate(big))
    assert auroc(*big) == pytest.approx(ref, abs=1e-12)
    assert auroc([], [1.0]) is None


def test_clopper_pearson_is_statsmodels_beta() -> None:
    lo, hi = clopper_pearson(1, 19)
    assert lo == pytest.approx(0.0013316, abs=1e-6) and hi == pytest.approx(0.2602807, abs=1e-6)
    assert clopper_pearson(0, 0) == (None, None)


def test_conformal_fpr_with_19_calibration_runs_on_200_exchangeable_controls() -> None:
    """19 calibration runs make 5% reachable; on 200 exchangeable controls the empirical FPR is <= 5% within its CI,
    and over many repetitions its mean is the guaranteed bound floor(0.05 * 20) / 20 = 0.05."""
    assert min_calibration_runs(0.05) == 19
    rng = np.random.default_rng(7)
    rates = []
    for rep in range(400):
        cal = ConformalCalibrator(0.05).fit(rng.gumbel(size=19))
        assert cal.claim_ok_ and cal.guaranteed_fpr_ == pytest.approx(0.05)
        test = rng.gumbel(size=200)
        k = int(cal.alarms(test).sum())
        rates.append(k / 200)
        if rep == 0:
            lo, _ = clopper_pearson(k, 200)
            assert lo <= 0.05
    assert np.mean(rates) == pytest.approx(0.05, abs=0.01)


def test_conformal_p_values_and_the_refused_claim_below_19_runs() -> None:
    cal = ConformalCalibrator(0.05).fit([1.0, 2.0, 3.0, np.nan])
    assert cal.n_ == 3 and not cal.claim_ok_
    assert cal.alpha_used_ == pytest.approx(0.25) and cal.guaranteed_fpr_ == pytest.approx(0.25)
    np.testing.assert_allclose(cal.p_value([0.5, 2.0, 3.5, np.inf]), [1.0, 0.75, 0.25, 0.25])
    assert cal.threshold_ == 3.0 and list(cal.alarms([2.9, 3.1, np.nan])) == [False, True, False]


def _rows(score_of: dict[str, float] | None = None, n_seeds: int = 12, seed: int = 0) -> pl.DataFrame:
    """Perturbed test rows in 4 strata (2 kinds x 2 magnitudes); collapse probability rises with magnitude."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_seeds):
        for kind in ("lr_spike", "mass_shift"):
            for mag, p in ((10.0, 0.3), (100.0, 0.7)):
                col = bool(rng.random() < p)
                rows.append({"run_id": f"{kind}-{mag:g}-{s}", "seed": s, "perturbation": kind, "magnitude": mag,
                             "duration_steps": 100, "unperturbed": False, "collapsed": col,
                             "collapse_step": 900 if col else None, "landmark_step": 500,
                             "prediction_score": 1.0})
    return pl.DataFrame(rows)


def test_a_detector_that_fires_at_every_onset_has_prediction_auroc_one_half() -> None:
    pset, n_early = questions.prediction_set(_rows())
    assert n_early == 0
    refs = questions.reference_scores(pset, {})
    res = questions.prediction(pset, refs, n_boot=200)
    assert res["auroc"]["value"] == 0.5 and res["auroc_stratified"]["value"] == 0.5
    assert res["delta_auroc"]["perturbation_on"]["pooled"]["value"] == 0.0
    # a detector that only reads the dose wins the pooled AUROC but not the stratified one
    dose = pset.with_columns(pl.col("magnitude").log10().alias("prediction_score"))
    res = questions.prediction(dose, refs, n_boot=200)
    assert res["auroc"]["value"] > 0.6 and res["auroc_stratified"]["value"] == 0.5
    # the configuration-only reference learns the dose: the dose reader does not beat it
    assert abs(res["delta_auroc"]["config_only"]["pooled"]["value"]) < 0.1


def test_the_configuration_only_reference_is_the_cell_share_and_one_half_within_a_cell() -> None:
    """config_only is the in-sample collapse share of the run's cell: constant within a cell (stratified 0.5
    exactly), and pooled it ranks the cells by their share (the old leave-one-seed-out model scored < 0.4
    within cells and below the true prevalence pooled)."""
    pset, _ = questions.prediction_set(_rows(n_seeds=16, seed=3))
    refs = questions.reference_scores(pset, {})
    y = np.array(pset["label"].to_list(), bool)
    strata = questions._stratum(pset)
    share = refs["config_only"]
    for s in np.unique(strata):
        assert np.allclose(share[strata == s], y[strata == s].mean())
    assert stratified_auroc(share, y, strata)[0] == 0.5
    ref = questions.reference_rows(pset, refs, n_boot=100)["config_only"]
    assert ref["auroc_stratified"]["value"] == 0.5
    raw = auroc(share[y], share[~y])
    opt = questions.cell_share_optimism(y, strata, np.array(pset["seed"].to_list()))
    assert ref["auroc"]["value"] == pytest.approx(raw - opt) and ref["auroc"]["value"] > 0.55
    deltas = []
    for k in range(20):
        noise = pset.with_columns(pl.Series("prediction_score", np.random.default_rng(k).normal(size=pset.height)))
        deltas.append(questions.prediction(noise, refs, n_boot=30)["delta_auroc"]["config_only"]["stratified"]["value"])
    assert abs(float(np.mean(deltas))) < 0.06


def _cells(rng: np.random.Generator, n_cells: int = 30, n_seeds: int = 8, spread: tuple[float, float] = (0.1, 0.9)
           ) -> tuple[pl.DataFrame, np.ndarray]:
    """A prediction set of ``n_cells`` cells (3 groups x kinds x magnitudes) with ``n_seeds`` runs each and unequal
    true collapse probabilities drawn from ``spread``; returns (rows with ``label``, true probability per run)."""
    p = rng.uniform(*spread, n_cells)
    rows, truth = [], []
    for c in range(n_cells):
        for s in range(n_seeds):
            col = bool(rng.random() < p[c])
            rows.append({"run_id": f"c{c}-s{s}", "seed": s, "group": f"rl/ppo/env{c % 3}/default",
                         "perturbation": f"kind{c % 5}", "magnitude": float(c // 5 + 1), "duration_steps": 100,
                         "unperturbed": False, "collapsed": col, "label": col, "collapse_step": 900 if col else None,
                         "landmark_step": 500})
            truth.append(p[c])
    return pl.DataFrame(rows), np.array(truth)


def test_pooled_deltas_against_the_references_are_unbiased_for_a_noise_detector() -> None:
    """Synthetic truth: over many cells with unequal collapse probability, a pure-noise score's pooled Delta
    against config_only (and against kick_size with a kick of noise) equals, on average within 0.02, its
    Delta against the cells' *true* probabilities. The old leave-one-seed-out reference scored 0.43 where the
    truth scored 0.65, so noise "beat" it; the in-sample share without its jackknife correction is too good."""
    rng = np.random.default_rng(11)
    bias = {"config_only": [], "kick_size": []}
    raw_bias = []
    for _ in range(10):
        pset, truth = _cells(rng)
        y = np.array(pset["label"].to_list(), bool)
        noise = rng.normal(size=pset.height)
        kick = {r: rng.normal(size=3) for r in pset["run_id"].to_list()}
        refs, within = questions.references(pset, kick)
        res = questions.prediction(pset.with_columns(pl.Series("prediction_score", noise)), refs, n_boot=20,
                                   within=within)
        target = auroc(noise[y], noise[~y]) - auroc(truth[y], truth[~y])
        for name in bias:
            bias[name].append(res["delta_auroc"][name]["pooled"]["value"] - target)
        share = refs["config_only"]
        raw_bias.append(auroc(noise[y], noise[~y]) - auroc(share[y], share[~y]) - target)
    for name, b in bias.items():
        assert abs(float(np.mean(b))) < 0.02, (name, np.mean(b))
    assert float(np.mean(raw_bias)) < -0.03  # the uncorrected in-sample share is optimistic at 8 runs per cell


def test_a_score_that_knows_the_configuration_ties_the_configuration_reference_pooled() -> None:
    """A detector whose score is the cell's true collapse probability (plus within-cell noise) neither beats nor
    loses to config_only pooled (within 0.02 on average), and gains nothing stratified."""
    rng = np.random.default_rng(5)
    pooled, strat = [], []
    for _ in range(12):
        pset, truth = _cells(rng)
        refs = questions.reference_scores(pset, {})
        score = truth + 1e-3 * rng.normal(size=truth.size)
        res = questions.prediction(pset.with_columns(pl.Series("prediction_score", score)), refs, n_boot=20)
        pooled.append(res["delta_auroc"]["config_only"]["pooled"]["value"])
        strat.append(res["auroc_stratified"]["value"])
    assert abs(float(np.mean(pooled))) < 0.02 and abs(float(np.mean(strat)) - 0.5) < 0.03


def test_the_strata_include_the_group() -> None:
    """Two groups with the same kind x magnitude x duration are two cells, not one."""
    frame = pl.DataFrame({"group": ["a", "b", "a"], "perturbation": ["k"] * 3, "magnitude": [1.0] * 3,
                          "duration_steps": [10] * 3})
    s = questions._stratum(frame)
    assert s[0] == s[2] != s[1]
    # without a group column the group keys are used
    frame = frame.drop("group").with_columns(pl.Series("env", ["x", "y", "x"]))
    s = questions._stratum(frame)
    assert s[0] == s[2] != s[1]


def test_the_kick_size_reference_is_one_half_within_a_cell_when_the_kick_says_nothing_there() -> None:
    """Kick sizes that track the dose across cells but are noise within them: refitted leave-one-cell-out the
    reference is 0.5 within cells (the leave-one-seed-out fit anti-correlated with the label there), pooled it
    ranks by the cell share first, and a kick that does carry within-cell information still shows it."""
    pset, _ = questions.prediction_set(_rows(n_seeds=16, seed=3))
    y = np.array(pset["label"].to_list(), bool)
    strata = questions._stratum(pset)
    lmag = np.log10(np.array(pset["magnitude"].to_list(), float))
    ids = pset["run_id"].to_list()
    lo_cell, lo_pooled = [], []
    for k in range(10):
        noise = np.random.default_rng(k).normal(size=(pset.height, 3)) * 0.05
        kick = {r: lmag[i] + noise[i] for i, r in enumerate(ids)}
        refs = questions.reference_scores(pset, kick)
        lo_cell.append(stratified_auroc(questions.within_cell_scores(pset, kick, refs)["kick_size"], y, strata)[0])
        lo_pooled.append(stratified_auroc(refs["kick_size"], y, strata)[0])
        share = refs["config_only"]
        order = np.argsort(refs["kick_size"], kind="stable")
        assert np.all(np.diff(share[order]) >= 0)  # pooled: the cell share first
    assert abs(np.mean(lo_cell) - 0.5) < 0.06 and abs(np.mean(lo_pooled) - 0.5) < 0.06
    informative = {r: np.r_[lmag[i] + 0.5 * y[i], 0.0, 0.0] for i, r in enumerate(ids)}
    refs = questions.reference_scores(pset, informative)
    within = questions.within_cell_scores(pset, informative, refs)
    assert stratified_auroc(within["kick_size"], y, strata)[0] > 0.9
    assert questions.reference_rows(pset, refs, n_boot=50, within=within)["kick_size"]["auroc_stratified"][
        "value"] > 0.9


def test_runs_collapsed_before_the_landmark_are_left_to_detection() -> None:
    rows = _rows().with_columns(pl.when(pl.col("collapsed") & (pl.col("seed") == 0)).then(400)
                                .otherwise(pl.col("collapse_step")).alias("collapse_step"))
    pset, n_early = questions.prediction_set(rows)
    assert n_early == int(rows.filter(pl.col("seed") == 0)["collapsed"].sum()) and pset.height == rows.height - n_early


def test_stratified_auroc_and_the_cluster_bootstrap() -> None:
    score = np.array([1, 0, 5, 4, 9, 9.0])
    label = np.array([1, 0, 1, 0, 1, 0], bool)
    a, pairs = stratified_auroc(score, label, np.array([0, 0, 1, 1, 2, 2]))
    assert pairs == 3 and a == pytest.approx((1 + 1 + 0.5) / 3)
    rng = np.random.default_rng(1)
    x = rng.normal(size=60)
    seeds = np.repeat(np.arange(20), 3)
    lo, hi, how = cluster_bootstrap_ci(lambda i: float(x[i].mean()), seeds, 500)
    assert how.startswith("BCa") and lo < x.mean() < hi
    assert cluster_bootstrap_ci(lambda i: float(x[i].mean()), np.zeros(60), 100)[0] is None


@pytest.mark.parametrize("pairwise", [True, False])
def test_stratified_auroc_is_the_pair_weighted_mean_of_per_stratum_roc_auc(pairwise: bool, monkeypatch) -> None:
    """Both counting paths against sklearn per stratum, with ties, +inf (non-finite runs) and NaN scores."""
    from sklearn.metrics import roc_auc_score

    import stabilitybench.analysis.stats as stats

    if not pairwise:
        monkeypatch.setattr(stats, "PAIRWISE_MAX", 0)
    rng = np.random.default_rng(3)
    n = 300
    score = rng.integers(0, 6, n).astype(float)  # many ties
    score[rng.choice(n, 8, replace=False)] = np.inf
    score[rng.choice(n, 5, replace=False)] = np.nan
    label = rng.random(n) < 0.4
    strata = rng.integers(0, 7, n)
    strata[strata == 6] = 5
    label[strata == 0] = True  # one stratum with a single outcome: it holds no pair and must not count
    num = den = 0.0
    for s in np.unique(strata):
        m = strata == s
        if label[m].all() or not label[m].any():
            continue
        finite = np.where(np.isnan(score[m]), -np.inf, score[m])
        finite = np.where(np.isinf(finite), np.sign(finite) * 1e9, finite)  # sklearn rejects inf; same order
        w = int(label[m].sum() * (~label[m]).sum())
        num += roc_auc_score(label[m], finite) * w
        den += w
    a, pairs = stats.stratified_auroc(score, label, strata)
    assert pairs == den and a == pytest.approx(num / den, abs=1e-12)
    assert stats.stratified_auroc(score, label, np.arange(n)) == (None, 0)


def test_the_bootstrap_falls_back_to_the_percentiles_of_the_same_replicates() -> None:
    """A statistic undefined on some replicates (one class drawn) has no BCa interval; the percentile interval
    returned is that of an explicit percentile bootstrap with the same seed."""
    import scipy.stats as sps

    rng = np.random.default_rng(4)
    score = rng.normal(size=24)
    label = np.zeros(24, bool)
    label[:3] = True  # 3 positives on 3 seeds: many replicates draw none
    seeds = np.arange(24) // 2

    def stat(idx):
        return auroc(score[idx][label[idx]], score[idx][~label[idx]])

    lo, hi, how = cluster_bootstrap_ci(stat, seeds, 400, seed=7)
    assert how.startswith("percentile")
    members = [np.flatnonzero(seeds == c) for c in np.unique(seeds)]

    def f(sample):
        v = stat(np.concatenate([members[int(i)] for i in sample]))
        return np.nan if v is None else v

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about the NaN replicates
        ref = sps.bootstrap((np.arange(12),), f, method="percentile", vectorized=False, n_resamples=400,
                            rng=np.random.default_rng(7)).bootstrap_distribution
    ref = ref[np.isfinite(ref)]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(ref, [0.025, 0.975])))


def test_the_calibrated_excess_keeps_the_order_the_p_value_ties() -> None:
    """With 6 calibration runs every score above them all gets p = 1/7; (b) must still rank them."""
    from stabilitybench.analysis.early_warning import calibrated_excess

    cal = ConformalCalibrator(0.05).fit([1.0, 1.2, 0.8, 1.1, 0.9, 1.0])
    scores = np.array([5.0, 6.0, 7.0, 0.5])
    p = cal.p_value(scores)
    assert np.allclose(p[:3], 1 / 7)  # the tie
    ex = calibrated_excess(scores, cal)
    assert ex[0] < ex[1] < ex[2] and ex[3] < 0 < ex[0]
    assert ex[1] - ex[0] == pytest.approx(1 / np.std([1.0, 1.2, 0.8, 1.1, 0.9, 1.0]))
    rows = pl.DataFrame({"prediction_score": -np.log10(p), "prediction_excess": ex})
    assert list(questions.prediction_scores(rows)) == list(ex)


def test_the_bootstrap_spearman_is_scipys() -> None:
    import scipy.stats as sps

    from stabilitybench.analysis.regularities import spearman_rho

    rng = np.random.default_rng(5)
    x = rng.integers(0, 8, 40).astype(float)  # ties
    y = x + rng.normal(size=40)
    y[3] = np.nan
    ok = np.isfinite(y)
    assert spearman_rho(x, y) == pytest.approx(sps.spearmanr(x[ok], y[ok]).statistic, abs=1e-12)
    assert spearman_rho(np.ones(5), np.arange(5.0)) is None


def test_prediction_at_one_block_either_side_of_the_landmark() -> None:
    """Runs that collapse within the block after L are positives at L and at L - 1 block but collapsed before
    the landmark at L + 1 block; each landmark ranks its own column (here only L + 1 block's is informative)."""
    rng = np.random.default_rng(8)
    rows = _rows(n_seeds=20, seed=8)
    y = np.array(rows["collapsed"].to_list(), bool)
    soon = y & (rng.random(y.size) < 0.3)  # these collapse at L + 5, inside the next block (10 updates)
    rows = rows.with_columns(pl.Series("collapse_step", np.where(soon, 505, np.where(y, 900, 0))).cast(pl.Int64),
                             pl.lit(10).alias("block_updates"),
                             pl.Series("prediction_excess_lm1", rng.normal(size=y.size)),
                             pl.Series("prediction_excess", rng.normal(size=y.size)),
                             pl.Series("prediction_excess_lp1", y + 0.3 * rng.normal(size=y.size)))
    rows = rows.with_columns(pl.when(pl.col("collapsed")).then(pl.col("collapse_step")).alias("collapse_step"))
    sens = questions.prediction_sensitivity(rows, {}, n_boot=30)
    assert [sens[k]["offset_blocks"] for k in ("L-1 block", "L", "L+1 block")] == [-1, 0, 1]
    assert sens["L-1 block"]["n_collapsed_before_landmark"] == 0 == sens["L"]["n_collapsed_before_landmark"]
    assert sens["L+1 block"]["n_collapsed_before_landmark"] == int(soon.sum())
    assert sens["L"]["n_pos"] == int(y.sum()) and sens["L+1 block"]["n_pos"] == int(y.sum() - soon.sum())
    assert sens["L+1 block"]["auroc_stratified"]["value"] > 0.85
    assert abs(sens["L-1 block"]["auroc_stratified"]["value"] - 0.5) < 0.2
    assert "delta_auroc_kick_size" in sens["L"]
    assert questions.prediction_sensitivity(rows.drop("block_updates"), {})["status"] == "not_testable"
