"""Question (c), time to event, on synthetic truth: labels by hand, a precursor planted 200 updates before each
collapse, the calibrated false-alarm rate on fresh controls, the no-kick reference and the null twin."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from scipy.signal import lfilter

from stabilitybench.analysis.errors import InsufficientDataError
from stabilitybench.analysis.stats import auroc
from stabilitybench.analysis.summary import dumps
from stabilitybench.analysis.time_to_event import (
    _score_groups,
    _weighted_auroc,
    ar1_fit,
    ar1_twin,
    auroc_difference,
    calibrate_threshold,
    calibrated_thresholds,
    false_alarm_rate,
    label_blocks,
    time_since_start,
    time_to_event_summary,
    twin_check,
    warned_fraction,
    warning_curve,
)

B = 10  # updates per block; blocks end at updates 9, 19, 29, ...


def run(rid: str, score: np.ndarray, collapse: int | None = None, control: bool = False) -> pl.DataFrame:
    steps = np.arange(score.size) * B + B - 1
    return pl.DataFrame({"run_id": rid, "block_end_step": steps, "score": score.astype(float),
                         "collapse_step": collapse, "is_control": control},
                        schema_overrides={"collapse_step": pl.Int64})


def corpus(seed: int, n_ctrl: int = 20, n_coll: int = 20, n_surv: int = 5, T: int = 300,
           precursor_lead: int = 200) -> pl.DataFrame:
    """Background scores U[0, 1) everywhere; in each collapsed run the blocks from ``precursor_lead`` updates before
    the collapse on score U[2, 3) (above every background score). Collapses at a block end + 10, so the blocks'
    leads are 10, 20, ... updates; they fall between 50% and 97% of the run."""
    rng = np.random.default_rng(seed)
    frames = [run(f"ctrl{i}", rng.random(T), control=True) for i in range(n_ctrl)]
    frames += [run(f"surv{i}", rng.random(T)) for i in range(n_surv)]
    for i in range(n_coll):
        k = int(rng.integers(T // 2, T - 10))
        collapse = k * B + B - 1 + B
        s = rng.random(T)
        lead = collapse - (np.arange(T) * B + B - 1)
        s[(lead > 0) & (lead <= precursor_lead)] += 2.0
        frames.append(run(f"coll{i}", s, collapse))
    return pl.concat(frames)


def test_labels_drop_the_collapse_and_mark_the_horizon() -> None:
    b = pl.concat([run("a", np.arange(13.0), collapse=100), run("c", np.zeros(3), control=True)])
    lab = label_blocks(b, h=30)
    a = lab.filter(pl.col("run_id") == "a")
    assert a["block_end_step"].to_list() == [9, 19, 29, 39, 49, 59, 69, 79, 89, 99]  # 109.. dropped (s >= 100 ...)
    assert a["lead"].to_list() == [91, 81, 71, 61, 51, 41, 31, 21, 11, 1]
    assert a["y"].to_list() == [False] * 7 + [True] * 3  # 0 < lead <= 30
    assert a["stable"].to_list() == [True] * 7 + [False] * 3
    assert a["updates"].to_list() == [10.0] * 10 and set(a["run_class"]) == {"collapsed"}
    c = lab.filter(pl.col("run_id") == "c")
    assert c["y"].to_list() == [False] * 3 and c["stable"].all() and set(c["run_class"]) == {"control"}


def test_calibration_allows_the_target_count_by_hand() -> None:
    s = np.array([5.0, 4, 3, 2, 1, np.nan])
    u = np.full(6, 10_000.0)  # 60,000 stable updates
    assert calibrate_threshold(s, u, 0.5) == 2.0  # 3 alarms allowed: 5, 4 and 3 exceed 2
    assert calibrate_threshold(s, u, 0.25) == 4.0  # 1 allowed: only 5 exceeds 4
    assert calibrate_threshold(s, u, 1.0) == -np.inf  # 6 allowed, 5 scored blocks: every one may alarm
    assert calibrate_threshold(np.array([3.0, 3, 3, 1]), np.full(4, 10_000.0), 0.5) == 3.0  # ties never alarm


def test_weighted_auroc_is_the_mann_whitney_auroc() -> None:
    rng = np.random.default_rng(1)
    score = np.round(rng.normal(size=400), 1)  # ties
    score[:5] = np.nan
    y = rng.random(400) < 0.3
    g, ng = _score_groups(score)
    assert _weighted_auroc(g, y.astype(float), ng, np.ones(400)) == pytest.approx(auroc(score[y], score[~y]), abs=1e-12)
    w = rng.integers(0, 3, 400).astype(float)  # a bootstrap's multiplicities = the data repeated
    rep = np.repeat(np.arange(400), w.astype(int))
    assert _weighted_auroc(g, y.astype(float), ng, w) == pytest.approx(auroc(score[rep][y[rep]], score[rep][~y[rep]]),
                                                                       abs=1e-12)


def test_a_precursor_planted_200_updates_ahead_is_found_as_planted() -> None:
    """Exact consequences of the planted structure (precursor on every block with lead <= 200, background below):

    * h = 200: every positive block carries the precursor, every negative is background: AUROC = 1;
    * h = 500: 20 of the 50 positive blocks carry it, the other 30 are background like the negatives:
      AUROC = 0.4 * 1 + 0.6 * 0.5 = 0.7 (up to sampling);
    * at the calibrated threshold (below 2, background alarms about once per 10k updates), every collapse is
      warned with a lead in [200, 500] (the block at lead 200 alarms), and none with lead in [210, 500] beyond
      the background's chance alarms.
    """
    out = time_to_event_summary(corpus(0), (200, 500), min_leads=(200, 210), n_boot=200)
    json.loads(dumps(out))  # JSON-ready (summary.json)
    assert out["n"] == {"runs": 45, "collapsed_runs": 20, "control_runs": 20, "survivor_runs": 5, "blocks": 13_500,
                        "unscored_blocks": 0}
    assert 0.99 < out["calibration"]["threshold"] < 1.0
    h200, h500 = out["horizons"]["200"], out["horizons"]["500"]
    assert h200["auroc"]["value"] == 1.0 and h200["n_pos_blocks"] == 20 * 20
    assert h500["auroc"]["value"] == pytest.approx(0.7, abs=0.03) and h500["n_pos_blocks"] == 20 * 50
    assert h500["auroc"]["ci_low"] < 0.7 < h500["auroc"]["ci_high"] and h500["auroc"]["n"] == 20
    assert h500["warned"]["200"]["value"] == 1.0 and h500["warned"]["200"]["k"] == 20
    assert h500["warned"]["200"]["ci_low"] == pytest.approx(0.8316, abs=1e-4)  # Clopper-Pearson 20/20
    assert h500["warned"]["210"]["value"] <= 0.15
    assert h200["warned"]["200"]["value"] == 1.0 and h200["warned"]["1"]["first_warning_lead_median"] == 200
    fa = h500["false_alarms_per_10k"]
    assert fa["controls"]["ci_low"] <= 1.0 <= fa["controls"]["ci_high"]
    assert fa["pre_collapse"]["count"] <= 10 and fa["pre_collapse"]["n_runs"] == 20
    for name in ("auroc", "reference_auroc", "auroc_minus_reference"):
        assert h500[name]["ci_low"] is not None and h500[name]["ci_high"] is not None


def test_the_calibrated_threshold_keeps_one_false_alarm_per_10k_on_fresh_controls() -> None:
    """Calibrated on 40 control runs (400,000 updates, so 40 alarms allowed), scored on 40 fresh ones: the rate is
    about 1 per 10k (a threshold set per 10k *blocks* would give 0.1, one ignoring the exposure far more)."""
    rng = np.random.default_rng(7)

    def controls(prefix: str) -> pl.DataFrame:
        out = []
        for i in range(40):  # autocorrelated scores, as a smoothed detector's are
            e = rng.normal(size=1000)
            out.append(run(f"{prefix}{i}", np.convolve(e, np.ones(5) / 5, mode="same"), control=True))
        return pl.concat(out)

    cal = label_blocks(controls("cal"), 500)
    thr = calibrate_threshold(cal["score"].to_numpy(), cal["updates"].to_numpy(), 1.0)
    fresh = label_blocks(controls("new"), 500)
    fa = false_alarm_rate(fresh, thr, n_boot=300)
    assert fa["stable_updates"] == 400_000 and fa["n"] == 40
    assert 0.4 <= fa["value"] <= 1.6 and fa["ci_low"] <= 1.0 <= fa["ci_high"]
    assert fa["ci_low"] <= fa["ci_poisson_exact"][0] and fa["ci_high"] >= fa["ci_poisson_exact"][1]  # envelope


def test_a_time_since_start_detector_scores_what_the_reference_scores() -> None:
    """A "detector" that counts updates since the regime began gives the reference's numbers, to the digit."""
    b = corpus(3)
    out = time_to_event_summary(time_since_start(b), (200, 500), n_boot=100)
    assert out["calibration"]["threshold"] == out["reference_calibration"]["threshold"]
    for h in ("200", "500"):
        e = out["horizons"][h]
        assert e["auroc"] == e["reference_auroc"] and e["warned"] == e["reference_warned"]
        d = e["auroc_minus_reference"]
        assert d["value"] == 0.0 and d["ci_low"] == 0.0 and d["ci_high"] == 0.0
    assert out["horizons"]["500"]["reference_auroc"]["value"] > 0.6  # collapses come late: time alone predicts
    # and a detector that is not the reference differs from it
    other = time_to_event_summary(b, (500,), n_boot=100)["horizons"]["500"]
    assert other["auroc"]["value"] != other["reference_auroc"]["value"]


def test_ar1_fit_recovers_phi_and_sigma_and_the_twin_keeps_them() -> None:
    rng = np.random.default_rng(4)
    x = 3.0 + lfilter([1.0], [1.0, -0.8], rng.normal(0, 0.5, 20_000))  # x_t - 3 = 0.8 (x_{t-1} - 3) + N(0, 0.5)
    mu, phi, sigma = ar1_fit(x)
    assert mu == pytest.approx(3.0, abs=0.05) and phi == pytest.approx(0.8, abs=0.02)
    assert sigma == pytest.approx(0.5, abs=0.02)
    X = np.column_stack([x, np.full(x.size, 2.0)])
    tw = ar1_twin(X, seed=1)
    assert tw.shape == X.shape and tw[0, 0] == x[0] and (tw[:, 1] == 2.0).all()  # constant stays constant
    _, phi2, sigma2 = ar1_fit(tw[:, 0])
    assert phi2 == pytest.approx(0.8, abs=0.02) and sigma2 == pytest.approx(0.5, abs=0.02)
    np.testing.assert_array_equal(tw, ar1_twin(X, seed=1))
    assert not np.array_equal(tw, ar1_twin(X, seed=2))


def test_the_null_twin_check_flags_a_detector_that_alarms_on_twins() -> None:
    b = corpus(5)
    lab = label_blocks(b, 500)
    per, cal = calibrated_thresholds(lab, 1.0)
    thr = np.array([per.get(r, cal["threshold"]) for r in lab["run_id"].to_list()])
    rng = np.random.default_rng(9)
    quiet = pl.concat([run(f"t{i}", rng.random(300)) for i in range(20)])
    ok = twin_check(quiet, lab, thr, cal["threshold"])
    assert ok["passes"] and ok["n_twin_runs"] == 20 and ok["n_control_runs"] == 20
    assert ok["ci_low"] is None or ok["ci_low"] <= 1.0 <= (ok["ci_high"] or np.inf)
    noisy = pl.concat([run(f"t{i}", rng.random(300) + (rng.random(300) < 0.02) * 5) for i in range(20)])
    bad = twin_check(noisy, lab, thr, cal["threshold"])
    assert not bad["passes"] and bad["ci_low"] > 1.0 and bad["p_twins_alarm_more"] < 0.001
    assert bad["twin_fa_per_10k"] > 10 * max(bad["control_fa_per_10k"], 0.5)
    out = time_to_event_summary(b, (500,), twins=noisy, n_boot=50)
    assert out["null_twin"]["passes"] is False


def test_warning_curve_and_not_testable_cases() -> None:
    b = corpus(6, n_ctrl=4, n_coll=6, n_surv=0, T=100)
    curve = warning_curve(b, 200, min_lead=1, n_points=20)
    assert curve["warned_fraction"][0] == 1.0 and curve["fa_per_10k"][0] > 100  # threshold -inf: all alarm
    assert (curve["fa_per_10k"].diff().drop_nulls() <= 1e-12).all()  # monotone in the threshold
    assert curve["warned_fraction"][-1] == 1.0  # the precursor (>= 2) exceeds every background score
    lab = label_blocks(b, 200)
    assert warned_fraction(lab.filter(pl.col("run_class") != "collapsed"), 0.5, 200)["status"] == "not_testable"
    one_control = b.filter(~pl.col("run_id").is_in(["ctrl1", "ctrl2", "ctrl3"]))
    assert time_to_event_summary(one_control, (200,))["status"]["status"] == "not_testable"
    with pytest.raises(InsufficientDataError):
        calibrated_thresholds(label_blocks(one_control, 200))


def setting_only_corpus(seed: int, n_ctrl: int = 20, n_coll: int = 20, n_surv: int = 20, T: int = 300
                        ) -> pl.DataFrame:
    """A score that knows only the setting: U[0, 1) on controls, U[1, 2) on every block of every regime run
    (collapsed or not), blind to when a collapse comes. Collapse dates as in :func:`corpus`."""
    rng = np.random.default_rng(seed)
    frames = [run(f"ctrl{i}", rng.random(T), control=True) for i in range(n_ctrl)]
    frames += [run(f"surv{i}", 1 + rng.random(T)) for i in range(n_surv)]
    for i in range(n_coll):
        k = int(rng.integers(T // 2, T - 10))
        frames.append(run(f"coll{i}", 1 + rng.random(T), k * B + B - 1 + B))
    return pl.concat(frames)


def test_within_regime_gives_a_setting_only_score_no_credit_the_pooled_reading_gives() -> None:
    out = json.loads(dumps(time_to_event_summary(setting_only_corpus(4), horizons=(100, 500), n_boot=200)))
    pooled, within = out["horizons"]["100"], out["within_regime"]["horizons"]["100"]
    assert pooled["auroc"]["ci_low"] > 0.6                    # the pooled reading rewards recognising the setting
    assert pooled["warned"]["1"]["value"] == 1.0              # and it "warns" every collapse, alarming all the time
    assert pooled["false_alarms_per_10k"]["survivors"]["value"] > 500
    assert abs(within["auroc"]["value"] - 0.5) < 0.1
    assert within["false_alarms_per_10k"]["survivors"]["value"] < 5  # calibrated on survivors, cross-fitted
    assert within["warned"]["1"]["value"] < 0.5
    assert out["within_regime"]["calibration"]["calibration_runs"] == "survivor"


def test_within_regime_finds_a_planted_precursor_and_keeps_its_rate_on_held_out_survivors() -> None:
    rates = []
    for seed in range(3):
        out = json.loads(dumps(time_to_event_summary(corpus(seed, n_surv=30), horizons=(100, 500), n_boot=200)))
        assert out["within_regime"]["horizons"]["100"]["auroc"]["ci_low"] > 0.9  # every positive carries it
        w = out["within_regime"]["horizons"]["500"]
        assert w["warned"]["1"]["value"] == 1.0
        rates.append(w["false_alarms_per_10k"]["survivors"]["value"])
    assert np.mean(rates) < 3.0  # target 1 per 10k; cross-fitted halves of 15 survivors each


def test_within_regime_is_not_testable_without_survivors() -> None:
    b = corpus(0, n_surv=1)
    out = json.loads(dumps(time_to_event_summary(b, horizons=(100,), n_boot=50)))
    assert out["within_regime"]["status"] == "not_testable" and "n too small" in out["within_regime"]["reason"]


def test_within_regime_auroc_of_a_setting_only_score_is_centred_on_half_and_its_ci_covers_it() -> None:
    vals, cover = [], 0
    for seed in range(20):
        a = time_to_event_summary(setting_only_corpus(seed, n_ctrl=4), horizons=(100,), n_boot=200
                                  )["within_regime"]["horizons"]["100"]["auroc"]
        vals.append(a["value"])
        cover += a["ci_low"] <= 0.5 <= a["ci_high"]
    assert abs(np.mean(vals) - 0.5) < 0.02
    assert cover >= 16  # nominal 95%: P(<= 15 of 20) = 0.003


def test_auroc_difference_pairs_two_detectors_on_the_same_blocks() -> None:
    """A detector carrying the planted precursor against pure noise on the same runs: the difference is the two
    AUROCs computed by hand, its run-clustered CI excludes 0, it changes sign when swapped, and a detector against
    itself differs by exactly 0."""
    truth = corpus(5)
    rng = np.random.default_rng(9)
    noise = truth.with_columns(pl.Series("score", rng.random(truth.height)))
    d = auroc_difference(truth, noise, 200, n_boot=300)  # h = the planted lead: every positive block carries it
    lab_t, lab_n = label_blocks(truth, 200), label_blocks(noise, 200)
    y = lab_t["y"].to_numpy()
    by_hand = auroc(lab_t["score"].to_numpy()[y], lab_t["score"].to_numpy()[~y]) - \
        auroc(lab_n["score"].to_numpy()[y], lab_n["score"].to_numpy()[~y])
    assert d["value"] == pytest.approx(by_hand) and d["value"] > 0.4 and d["ci_low"] > 0.3, d
    assert d["n"] == 20 and d["n_runs"] == 45 and d["horizon"] == 200
    assert auroc_difference(noise, truth, 200, n_boot=300)["value"] == pytest.approx(-by_hand)
    same = auroc_difference(truth, truth, 200, n_boot=300)
    assert (same["value"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
    # only the blocks both scored count: a detector that scored half the runs is compared on those
    half = truth.filter(pl.col("run_id").is_in([f"coll{i}" for i in range(10)] + [f"ctrl{i}" for i in range(10)]))
    assert auroc_difference(half, noise, 200, n_boot=100)["n_runs"] == 20
    assert auroc_difference(truth.head(0), noise, 200)["status"] == "not_testable"

