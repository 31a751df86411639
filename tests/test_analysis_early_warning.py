"""Early-warning metrics, statistics helpers and baseline detectors, checked by hand."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from stabilitybench.analysis import questions
from stabilitybench.analysis.baselines import (
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
    feats = ["loss", "grad_norm", "grad_coherence", "update_norm"]
    train = [rng.normal(size=(300, 4)) for _ in range(2)]
    test = rng.normal(size=(300, 4))
    test[200:, 1] += 8  # grad norm jump
    test[200:, 0] += 8  # loss jump
    test[200:, 2] -= 8  # coherence drop
    for cls in (GradNormZ, LossSpike, CoherenceDrop):
        det = cls(feats, window=20, smooth=3).fit(train)
        s = det.score(test)
        assert np.nanmax(s[200:205]) > 2 * np.nanmax(np.abs(s[25:195])), cls.__name__
    pca = PCAReconstruction(feats, smooth=3).fit(train)
    assert np.nanmean(pca.score(test)[205:]) > 5 * np.nanmean(pca.score(test)[:195])
    ews = EWSDetector(feats, window=20, trend=20).fit(train)
    assert np.nanmax(np.abs(ews.score(test))) <= 1.0
    assert not GradNormZ(["loss"]).available


def _row(rid: str, unperturbed: bool, collapsed: bool, cstep: int | None, score: np.ndarray,
         kind: str | None = None) -> dict:
    steps = np.arange(0, 1000, 10)
    r = {"seed": 0, "perturbation": "none" if unperturbed else "lr_spike", "magnitude": 1.0 if unperturbed else 10.0,
         "duration_steps": 1 if unperturbed else 50, "unperturbed": unperturbed, "collapsed": collapsed,
         "collapse_step": cstep, "onset_step": 300,
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
        _row("a", False, True, 600, early),
        _row("b", False, True, 600, late),
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
    m = questions.detection(pl.DataFrame(rows), 0.05, n_boot=100)
    assert m["frac_collapses_preceded"]["value"] == 0.5 and m["frac_collapses_preceded"]["n"] == 2
    assert m["median_lead_updates"]["value"] == 250 and m["median_lead_updates"]["n"] == 1
    fpr = m["fpr_held_out_controls"]
    assert fpr["value"] == 0.5 and fpr["n_test"] == 2 and fpr["n_calibration"] == 1
    assert fpr["claim"]["status"] == "refused" and fpr["runs_needed"]["calibration_controls_per_fold"] == 19
    assert m["nonfinite"]["n"] == 1 and m["nonfinite"]["value"] == 0.0
    # detection scores: a = -log10(1/2), b = 0 (its spike is at the collapse, outside its window) vs c = d = 0
    pos = [got["a"]["detection_score"], got["b"]["detection_score"]]
    assert m["auroc"]["value"] == pytest.approx(auroc(pos, [got["c"]["detection_score"], got["d"]["detection_score"]]))
