"""Early-warning metrics, statistics helpers and baseline detectors, checked by hand."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from stabilitybench.analysis import questions
from stabilitybench.analysis.baselines import (
    Z_FLOOR,
    AdamRMSRise,
    CoherenceDrop,
    EWSDetector,
    GradNormZ,
    LossSpike,
    PCAReconstruction,
    rolling_kendall,
    rolling_var_ac1,
    trailing_z,
)
from stabilitybench.analysis.conformal import ConformalCalibrator
from stabilitybench.analysis.early_warning import EarlyWarningConfig, _run_row
from stabilitybench.analysis.stats import auroc, bootstrap_ci, clopper_pearson


def test_auroc_by_hand() -> None:
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([2], [2]) == 0.5
    assert auroc([3, 1], [2]) == 0.5
    assert auroc([np.inf], [5.0]) == 1.0
    assert auroc([], [1.0]) is None


def test_clopper_pearson_matches_scipy() -> None:
    for k, n in ((0, 3), (2, 3), (3, 3), (7, 20)):
        ref = sps.binomtest(k, n).proportion_ci(method="exact")
        lo, hi = clopper_pearson(k, n)
        assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)
    assert clopper_pearson(0, 0) == (None, None)


def test_stratified_bootstrap_keeps_both_classes() -> None:
    labels = np.array([1, 0, 0, 0, 0, 0])
    scores = np.array([5.0, 1, 2, 3, 4, 0])
    lo, hi = bootstrap_ci(lambda i: auroc(scores[i][labels[i] == 1], scores[i][labels[i] == 0]), 6, 200,
                          strata=labels)
    assert lo == hi == 1.0


def test_trailing_z_and_ews_helpers_by_hand() -> None:
    x = np.array([1.0, 2, 3, 2, 1, 10])
    z = trailing_z(x, 3)
    assert np.isnan(z[:3]).all()
    win = x[2:5]  # 3, 2, 1 precede the 10
    assert z[5] == pytest.approx((10 - win.mean()) / win.std())
    tau = rolling_kendall(np.arange(10.0), 5)
    assert np.isnan(tau[:4]).all() and np.allclose(tau[4:], 1.0)
    assert np.allclose(rolling_kendall(-np.arange(10.0), 5)[4:], -1.0)
    var, ac1 = rolling_var_ac1(np.array([1.0, -1, 1, -1, 1, -1]), 4)
    assert var[3] == pytest.approx(1.0) and ac1[3] == pytest.approx(-1.0)


def test_baselines_fire_on_their_signal() -> None:
    rng = np.random.default_rng(0)
    feats = ["loss", "grad_norm", "grad_coherence", "update_norm", "adam_update_ratio_rms"]
    train = [rng.normal(size=(300, 5)) for _ in range(2)]
    test = rng.normal(size=(300, 5))
    test[200:, 1] += 8  # grad norm jump
    test[200:, 0] += 8  # loss jump
    test[200:, 2] -= 8  # coherence drop
    test[200:, 4] += 8  # Adam's RMS update ratio rises
    for cls in (GradNormZ, LossSpike, CoherenceDrop, AdamRMSRise):
        det = cls(feats, window=20, smooth=3).fit(train)
        s = det.score(test)
        assert np.nanmax(s[200:205]) > 2 * np.nanmax(np.abs(s[25:195])), cls.__name__
    pca = PCAReconstruction(feats, smooth=3).fit(train)
    assert np.nanmean(pca.score(test)[205:]) > 5 * np.nanmean(pca.score(test)[:195])
    ews = EWSDetector(feats, window=20, trend=20).fit(train)
    assert np.nanmax(np.abs(ews.score(test))) <= 1.0
    assert not GradNormZ(["loss"]).available and not AdamRMSRise(["loss"]).available
    # the Adam detector reads its own column only: the same z-score as the column's trailing z
    det = AdamRMSRise(feats, window=20, smooth=1).fit(train)
    z = (test - det.mean_) / det.scale_
    np.testing.assert_allclose(det.score(test), trailing_z(z[:, 4], 20, Z_FLOOR), equal_nan=True)


def _row(rid: str, unperturbed: bool, collapsed: bool, cstep: int | None, score: np.ndarray,
         kind: str | None = None, smoothed: int | None = None) -> dict:
    steps = np.arange(0, 1000, 10)
    r = {"seed": 0, "perturbation": "none" if unperturbed else "lr_spike", "magnitude": 1.0 if unperturbed else 10.0,
         "duration_steps": 1 if unperturbed else 50, "unperturbed": unperturbed, "collapsed": collapsed,
         "collapse_step": cstep, "onset_step": 300, "collapse_step_smoothed": smoothed,
         "collapse_kind": kind or ("performance" if collapsed else "none")}
    conf = ConformalCalibrator(0.05).fit([1.0])  # one calibration run: alarms at p <= 1/2, i.e. score > 1
    return _run_row(rid, r, 0, "det", conf, steps, conf.p_value(score), EarlyWarningConfig(), block=10)


def test_run_rows_and_detection_by_hand() -> None:
    base = np.zeros(100)
    early = base.copy()
    early[35:] = 5.0  # alarm at step 350 (inside the 10% horizon, 99 updates from onset), collapse at 600: lead 250
    late = base.copy()
    late[60:] = 5.0  # alarm exactly at the collapse step 600: not a warning (strictly before only)
    fp = base.copy()
    fp[20] = 5.0  # before onset (300): not counted
    fp2 = base.copy()
    fp2[90] = 5.0  # after onset: a false alarm
    nonf = base.copy()
    nonf[50] = np.inf  # the non-finite step itself: lead 0, never a warning
    rows = [
        _row("a", False, True, 600, early, smoothed=1000),  # the old smoothed date lagged: lead 650 from it
        _row("b", False, True, 600, late, smoothed=1000),
        _row("c", True, False, None, fp),
        _row("d", True, False, None, fp2),
        _row("e", False, False, None, base),
        _row("f", False, True, 500, nonf, kind="nonfinite"),
    ]
    got = {r["run_id"]: r for r in rows}
    assert got["a"]["first_alarm_step"] == 350 and got["a"]["lead_updates"] == 250 and got["a"]["alarm_before_collapse"]
    assert got["b"]["first_alarm_step"] == 600 and got["b"]["lead_updates"] is None
    assert not got["b"]["alarm_before_collapse"]
    assert got["b"]["window_score"] == pytest.approx(0.0)  # -log10(p = 1): the window stops before the collapse
    assert got["a"]["detection_score"] == pytest.approx(-np.log10(0.5))
    assert got["c"]["first_alarm_step"] is None
    assert got["d"]["first_alarm_step"] == 900
    assert not got["f"]["alarm_before_collapse"] and got["f"]["first_alarm_step"] == 500
    assert got["a"]["landmark_step"] == 300 + 50 + 10  # end of the window + one block
    assert got["a"]["lead_updates_smoothed"] == 650 and got["b"]["lead_updates_smoothed"] == 400
    assert got["c"]["lead_updates_smoothed"] is None and got["a"]["block_updates"] == 10
    m = questions.detection(pl.DataFrame(rows), 0.05, n_boot=100)
    # one calibration run: the fold is small, so no pooled alarm-based number; its numbers are apart
    assert m["frac_collapses_preceded"]["value"] is None and m["frac_collapses_preceded"]["n"] == 0
    assert m["median_lead_updates"]["n"] == 0 and m["fpr_held_out_controls"]["n"] == 0
    assert m["fpr_held_out_controls"]["claim"]["status"] == "refused"
    small = m["small_folds"]
    assert small["n_folds"] == 1 and small["n_folds_total"] == 1 and small["n_calibration_per_fold"] == [1]
    assert small["frac_collapses_preceded"]["value"] == 0.5 and small["frac_collapses_preceded"]["n"] == 2
    assert small["median_lead_updates"]["value"] == 250 and small["median_lead_updates"]["n"] == 1
    assert small["median_lead_updates_smoothed"]["value"] == 525  # (650 + 400) / 2: b's alarm precedes the old date
    fpr = small["fpr_held_out_controls"]
    assert fpr["value"] == 0.5 and fpr["n_test"] == 2 and fpr["n_calibration"] == 1
    assert fpr["claim"]["status"] == "refused" and fpr["runs_needed"]["calibration_controls_per_fold"] == 19
    assert m["nonfinite"]["n"] == 0 and small["nonfinite"]["n"] == 1 and small["nonfinite"]["value"] == 0.0
    # detection scores: a = -log10(1/2), b = 0 (its spike is at the collapse, outside its window) vs c = d = 0;
    # 2 collapses and 2 held-out controls are too few for an AUROC (>= 3 of each)
    assert "n too small: 2 performance collapses, 2 held-out controls" in m["auroc"]["reason"]
    m3 = questions.detection(pl.DataFrame([*rows, _row("g", True, False, None, base),
                                           _row("h", False, True, 600, early, smoothed=1000)]), 0.05, n_boot=100)
    pos = [got["a"]["detection_score"], got["b"]["detection_score"], got["a"]["detection_score"]]
    neg = [got["c"]["detection_score"], got["d"]["detection_score"], 0.0]
    assert m3["auroc"]["value"] == pytest.approx(auroc(pos, neg))


# ------------------------------------------------------------------ feature sets, folds, small folds, Delta vs on
RL_FEATURES = ["loss", "grad_norm", "grad_coherence", "grad_coherence_fixed", "update_norm", "param_norm", "lr",
               "approx_kl", "clip_fraction", "entropy", "value_loss", "actor_grad_norm", "actor_grad_coherence"]


def test_the_named_feature_sets() -> None:
    from stabilitybench.analysis.early_warning import kick_columns, named_feature_sets

    sets = named_feature_sets(RL_FEATURES, "rl")
    assert sets["all"] == RL_FEATURES
    assert sets["no_echo"] == [c for c in RL_FEATURES if c not in ("lr", "update_norm", "param_norm")]
    assert sets["no_kick"] == ["loss", "grad_coherence_fixed", "entropy", "value_loss"]
    # LM's grad_coherence is the fixed-point estimator: it stays; an unknown domain counts it as rolling
    assert "grad_coherence" in named_feature_sets(RL_FEATURES, "lm")["no_kick"]
    assert "grad_coherence" in kick_columns(RL_FEATURES, None)


def test_detector_variants_add_the_no_kick_set_where_it_changes_the_input() -> None:
    from stabilitybench.analysis.early_warning import detector_variants

    cfg = EarlyWarningConfig(detectors=("kalman", "grad_norm_z", "loss_spike", "pca_recon", "coherence_drop"))
    got = {label: cols for label, _, cols in detector_variants(RL_FEATURES, cfg, "rl")}
    assert set(got) == {"kalman", "kalman+echo", "kalman/no_kick", "grad_norm_z", "loss_spike", "pca_recon",
                        "pca_recon/no_kick", "coherence_drop"}  # the single-column baselines: same column or none
    assert got["kalman/no_kick"] == ["loss", "grad_coherence_fixed", "entropy", "value_loss"]
    assert got["kalman+echo"] == RL_FEATURES and "lr" not in got["kalman"]
    off = EarlyWarningConfig(detectors=("kalman",), with_no_kick=False)
    assert [v[0] for v in detector_variants(RL_FEATURES, off, "rl")] == ["kalman", "kalman+echo"]
    quiet = EarlyWarningConfig(detectors=("kalman",), with_echo=False)  # None follows with_echo
    assert [v[0] for v in detector_variants(RL_FEATURES, quiet, "rl")] == ["kalman"]
    assert [v[0] for v in detector_variants(RL_FEATURES, cfg, "rl", no_kick=False)][:2] == ["kalman", "kalman+echo"]


def test_seed_folds_with_several_calibration_chunks() -> None:
    from stabilitybench.analysis.early_warning import seed_folds

    folds = seed_folds(list(range(10)), max_folds=5, calibration_chunks=2)
    assert [len(f["calibration"]) for f in folds] == [4] * 5 and [len(f["train"]) for f in folds] == [4] * 5
    for f in folds:
        assert not set(f["train"]) & set(f["calibration"]) and not set(f["test"]) & set(f["calibration"] + f["train"])
    assert sorted(s for f in folds for s in f["test"]) == list(range(10))
    assert seed_folds(list(range(10)), 5) == seed_folds(list(range(10)), 5, 1)
    assert [len(f["train"]) for f in seed_folds(list(range(6)), 3, calibration_chunks=9)] == [2, 2, 2]  # capped


def test_auto_calibration_chunks_give_every_fold_19_controls_where_the_group_has_them() -> None:
    """standard's Swimmer group (60 control seeds, 20 of them also perturbed): one chunk of 12 seeds calibrates on
    12 controls, fewer than the 19 a 5% FPR claim needs; the automatic choice takes 2 chunks (24). quick's 30
    controls (chunks of 6) never reach 19 with a chunk left to train on: 1, as before."""
    from stabilitybench.analysis.early_warning import regime_folds

    def group(n_controls: int, n_perturbed: int) -> pl.DataFrame:
        return pl.DataFrame({"seed": list(range(n_controls)) + list(range(n_perturbed)),
                             "perturbation": ["none"] * n_controls + ["lr_spike"] * n_perturbed})

    standard = group(60, 20)
    auto = regime_folds(standard, 5, None, 19)
    assert auto == regime_folds(standard, 5, 2) and min(len(f["calibration"]) for f in auto) == 24
    assert min(len(f["train"]) for f in auto) == 24
    assert regime_folds(group(30, 8), 5, None, 19) == regime_folds(group(30, 8), 5, 1)
    assert regime_folds(group(100, 8), 5, None, 19) == regime_folds(group(100, 8), 5, 1)  # 20 per chunk: enough
    assert EarlyWarningConfig().calibration_chunks is None


def _fold_rows(fold: int, n_cal: int, n_ctrl: int, ctrl_alarms: int, n_pos: int, preceded: int, lead: int
               ) -> list[dict]:
    rows = []
    for i in range(n_ctrl):
        rows.append({"run_id": f"f{fold}c{i}", "seed": 100 * fold + i, "fold": fold, "group": "g",
                     "n_calibration": n_cal, "alpha_used": 0.05, "guaranteed_fpr_bound": 0.05, "unperturbed": True,
                     "collapsed": False, "collapse_kind": "none", "collapse_step": None, "onset_step": 100,
                     "first_alarm_step": 150 if i < ctrl_alarms else None, "alarm_before_collapse": False,
                     "lead_updates": None, "detection_score": float(i < ctrl_alarms)})
    for i in range(n_pos):
        rows.append({"run_id": f"f{fold}p{i}", "seed": 100 * fold + i, "fold": fold, "group": "g",
                     "n_calibration": n_cal, "alpha_used": 0.05, "guaranteed_fpr_bound": 0.05, "unperturbed": False,
                     "collapsed": True, "collapse_kind": "performance", "collapse_step": 100 + 2 * lead,
                     "onset_step": 100, "first_alarm_step": 100 + lead if i < preceded else None,
                     "alarm_before_collapse": i < preceded, "lead_updates": lead if i < preceded else None,
                     "detection_score": 1.0 + (i < preceded)})
    return rows


def test_a_fold_with_too_few_calibration_controls_enters_no_pooled_alarm_number() -> None:
    """Synthetic truth: fold 0 has 25 calibration controls (1 false alarm in 20, 8 of 10 collapses preceded by
    100 updates); fold 1 has 10 (every control alarms, every collapse preceded by 900). The pooled FPR, share
    preceded and lead are fold 0's; fold 1's are reported apart (pooled, they were 11/30 and a mixed lead)."""
    rows = pl.DataFrame(_fold_rows(0, 25, 20, 1, 10, 8, 100) + _fold_rows(1, 10, 10, 10, 5, 5, 900))
    m = questions.detection(rows, 0.05, n_boot=50)
    fpr = m["fpr_held_out_controls"]
    assert fpr["value"] == pytest.approx(1 / 20) and fpr["n_test"] == 20 and fpr["claim"]["status"] == "ok"
    assert m["frac_collapses_preceded"]["value"] == pytest.approx(0.8) and m["frac_collapses_preceded"]["n"] == 10
    assert m["median_lead_updates"]["value"] == 100 and m["median_lead_updates"]["n"] == 8
    small = m["small_folds"]
    assert small["n_folds"] == 1 and small["n_folds_total"] == 2 and small["n_calibration_per_fold"] == [10]
    assert small["fpr_held_out_controls"]["value"] == 1.0 and small["fpr_held_out_controls"]["n_test"] == 10
    assert small["median_lead_updates"]["value"] == 900 and small["n_collapsed"] == 5
    assert m["auroc"]["n"] == 45  # the AUROC is not alarm-based: every fold
    on = questions.perturbation_on_detection(rows, 0.05)
    assert on["frac_collapses_preceded"]["n"] == 10 and on["small_folds"]["frac_collapses_preceded"]["n"] == 5
    assert on["median_lead_updates"]["value"] == 200 and on["fpr_held_out_controls"]["value"] == 0.0


def test_detection_is_reported_as_a_difference_from_perturbation_on() -> None:
    """A detector that scores exactly "perturbed or not" ties perturbation_on (Delta 0, CI covering 0); one that
    misses half the collapses falls short of it with a CI below 0."""
    rows = pl.DataFrame(_fold_rows(0, 25, 30, 0, 30, 30, 100))
    same = rows.with_columns((~pl.col("unperturbed")).cast(pl.Float64).alias("detection_score"))
    d = questions.detection(same, 0.05, n_boot=200)["delta_vs_perturbation_on"]
    assert d["value"] == 0.0 and d["ci_low"] <= 0.0 <= d["ci_high"]
    half = same.with_columns(pl.when(pl.col("run_id").str.contains("p") & (pl.col("seed") % 2 == 0)).then(0.0)
                             .otherwise(pl.col("detection_score")).alias("detection_score"))
    d = questions.detection(half, 0.05, n_boot=200)["delta_vs_perturbation_on"]
    assert d["value"] == pytest.approx(-0.25) and d["ci_high"] < 0
    assert questions.perturbation_on_detection(rows, 0.05)["delta_vs_perturbation_on"]["value"] == 0.0


def test_one_collapse_against_sixty_controls_is_n_too_small() -> None:
    """standard's weight_noise row held out: 1 collapse vs 60 controls printed AUROC 0.00 [0.00, 0.00], the seed
    bootstrap resampling the one ordering. Below 3 runs of a class (a) now says n too small; at 3 it is a number."""
    one = pl.DataFrame(_fold_rows(0, 25, 60, 0, 1, 0, 100))
    m = questions.detection(one, 0.05, n_boot=50)
    assert m["auroc"]["status"] != "ok" and "n too small" in m["auroc"]["reason"]
    three = pl.DataFrame(_fold_rows(0, 25, 60, 0, 3, 0, 100))
    assert "value" in questions.detection(three, 0.05, n_boot=50)["auroc"]


def test_run_rows_score_the_landmark_one_block_either_side() -> None:
    from stabilitybench.analysis.early_warning import calibrated_excess

    steps = np.arange(0, 1000, 10)
    score = np.linspace(0.0, 5.0, steps.size)  # rising: the later the landmark, the higher the max
    conf = ConformalCalibrator(0.05).fit([1.0, 2.0, 1.5])
    r = {"seed": 0, "perturbation": "lr_spike", "magnitude": 10.0, "duration_steps": 50, "unperturbed": False,
         "collapsed": False, "collapse_step": None, "onset_step": 300, "collapse_kind": "none"}
    row = _run_row("x", r, 0, "det", conf, steps, conf.p_value(score), EarlyWarningConfig(), block=20, score=score)
    ex = calibrated_excess(score, conf)
    L = 300 + 50 + 20
    assert row["landmark_step"] == L and row["block_updates"] == 20
    for col, stop in (("prediction_excess_lm1", L - 20), ("prediction_excess", L), ("prediction_excess_lp1", L + 20)):
        assert row[col] == pytest.approx(ex[(steps >= 300) & (steps <= stop)].max())
    assert row["prediction_excess_lm1"] < row["prediction_excess"] < row["prediction_excess_lp1"]


def test_evaluate_group_scores_the_no_kick_set_and_keeps_the_calibrated_excess(tmp_path) -> None:
    from stabilitybench.analysis.early_warning import evaluate_group

    rng = np.random.default_rng(0)
    feats = ["loss", "grad_norm", "grad_coherence", "entropy", "update_norm", "lr"]
    rows, arrays = [], {}
    for seed in range(6):
        for pert in ("none", "lr_spike"):
            rid = f"{pert}-{seed}"
            X = rng.normal(size=(80, len(feats)))
            if pert != "none":
                X[30:35, 4] += 6.0  # the kick moves update_norm only
            arrays[rid] = (np.arange(0, 800, 10, dtype=np.int64), X, np.zeros(80, dtype=bool))
            rows.append({"run_id": rid, "seed": seed, "perturbation": pert, "magnitude": 10.0,
                         "duration_steps": 50, "onset_step": 300, "unperturbed": pert == "none", "collapsed": False,
                         "collapse_kind": None, "collapse_step": None, "domain": "rl"})
    cfg = EarlyWarningConfig(detectors=("kalman", "pca_recon"), kalman_iter=3, smooth=3, max_folds=3, n_jobs=1)
    table, traces, notes = evaluate_group(pl.DataFrame(rows), arrays, feats, cfg, save_dir=tmp_path, block=10)
    assert set(table["detector"]) == {"kalman", "kalman+echo", "kalman/no_kick", "pca_recon", "pca_recon/no_kick"}
    assert notes[0]["detectors"]["kalman/no_kick"]["features"] == ["loss", "entropy"]
    assert sorted(f.name for f in tmp_path.glob("kalman-no_kick_fold*")) == [
        f"kalman-no_kick_fold{i}.monitor.npz" for i in range(3)]
    tr = traces.filter(pl.col("detector") == "kalman")
    assert "excess" in traces.columns and tr["excess"].null_count() == 0
    one = table.filter((pl.col("detector") == "kalman") & (pl.col("run_id") == "lr_spike-0")).row(0, named=True)
    t1 = tr.filter((pl.col("run_id") == "lr_spike-0") & pl.col("step").is_between(300, one["landmark_step"]))
    assert one["prediction_excess"] == pytest.approx(t1["excess"].max())


def test_collapses_with_no_block_after_onset_are_left_out_of_detection_and_counted() -> None:
    """A collapse dated before the first block after onset ends leaves no window to score (detection_score NaN).
    Scored as a miss, it capped every detector's AUROC at the share of the other collapses: InvertedPendulum's 6
    collapses, all at onset, gave every detector AUROC 0.00 [0.00, 0.00]. Now (a) leaves them out and counts them."""
    rows = pl.DataFrame(_fold_rows(0, 25, 30, 0, 30, 30, 100)).with_columns(
        (~pl.col("unperturbed")).cast(pl.Float64).alias("detection_score"), pl.lit(3).alias("detection_window_blocks"))
    at_onset = pl.col("run_id").str.contains("p") & (pl.col("seed") < 10)
    cut = rows.with_columns(pl.when(at_onset).then(float("nan")).otherwise(pl.col("detection_score"))
                            .alias("detection_score"),
                            pl.when(at_onset).then(0).otherwise(pl.col("detection_window_blocks"))
                            .alias("detection_window_blocks"))
    m = questions.detection(cut, 0.05, n_boot=100)
    assert m["n_collapsed"] == 20 and m["n_collapsed_no_window"] == 10 and m["auroc"]["value"] == 1.0
    assert m["frac_collapses_preceded"]["n"] == 20
    assert questions.roc_points(cut)["n_pos"][0] == 20
    on = questions.perturbation_on_detection(cut, 0.05)
    assert on["frac_collapses_preceded"]["n"] == 20
    # every collapse at onset: nothing to score, "n too small" with the count, not an AUROC of 0
    none_left = cut.with_columns(pl.when(pl.col("run_id").str.contains("p")).then(0)
                                 .otherwise(pl.col("detection_window_blocks")).alias("detection_window_blocks"))
    m0 = questions.detection(none_left, 0.05, n_boot=50)
    assert m0["auroc"]["status"] == "not_testable" and "30 more collapsed before a block" in m0["auroc"]["reason"]
    # rows written before the column existed are read as before
    assert questions.detection(rows.drop("detection_window_blocks"), 0.05, n_boot=50)["n_collapsed"] == 30
