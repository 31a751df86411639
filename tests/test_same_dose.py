"""Same-dose detection (question a'): collapsed vs surviving perturbed runs of one cell, scored over one window.

Synthetic truth: collapse probability rises with the dose, so a score that reads only the dose separates
collapsed from surviving runs pooled, yet within a cell it knows nothing (stratified AUROC 0.5); a score that
carries the run's own latent risk does better; a score that only moves after the run's own collapse is not
let into the window.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.stats import norm

from stabilitybench.analysis import questions
from stabilitybench.analysis.stats import auroc

ONSET, STEP, T = 500, 10, 2000
CELLS = [("lr_spike", m, 0.15 + 0.7 * i / 3) for i, m in enumerate((2.0, 5.0, 10.0, 20.0))] + \
    [("mass_shift", 3.0, 0.3), ("mass_shift", 8.0, 0.7)]


def _corpus(rng: np.random.Generator, n_seeds: int, score: str, cells=CELLS, groups=("rl/ppo/A/default",
            "rl/ppo/B/default"), n_cal: int = 25) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows, traces) of one detector: every (group, cell, seed) a perturbed run, plus controls to ignore.

    A run collapses iff its latent risk ``z ~ N(0, 1)`` exceeds the cell's quantile, so P(collapse) is the
    cell's; its date is 300-600 updates after onset. ``score``: ``dose`` (magnitude + noise on every block),
    ``latent`` (magnitude + 0.8 z + noise after onset) or ``leak`` (magnitude + noise, +10 from the run's own
    collapse on).
    """
    rows, traces = [], []
    steps = np.arange(0, T, STEP)
    for g in groups:
        for kind, mag, p in cells:
            for s in range(n_seeds):
                z = rng.normal()
                col = bool(z > norm.ppf(1 - p)) if p > 0 else False
                date = ONSET + int(rng.integers(30, 61)) * STEP if col else None
                rid = f"{g}|{kind}|{mag:g}|{s}"
                x = np.log(mag) + 0.5 * rng.normal(size=steps.size)
                if score == "latent":
                    x = x + 0.8 * z * (steps >= ONSET)
                if score == "leak" and col:
                    x = x + 10.0 * (steps >= date)
                rows.append({"run_id": rid, "seed": f"{g}|seed={s}", "group": g, "fold": s % 3,
                             "n_calibration": n_cal, "perturbation": kind, "magnitude": mag, "duration_steps": 100,
                             "unperturbed": False, "collapsed": col, "collapse_kind": "performance" if col else "none",
                             "collapse_step": date, "collapse_step_smoothed": date + 450 if col else None,
                             "onset_step": ONSET, "lead_updates": 120 if col else None,
                             "lead_updates_smoothed": 570 if col else None})
                traces.append(pl.DataFrame({"run_id": rid, "step": steps, "excess": x}))
        for s in range(n_seeds):  # controls: never a case of same-dose detection
            rid = f"{g}|none|{s}"
            rows.append({"run_id": rid, "seed": f"{g}|seed={s}", "group": g, "fold": s % 3, "n_calibration": n_cal,
                         "perturbation": "none", "magnitude": 1.0, "duration_steps": 1, "unperturbed": True,
                         "collapsed": False, "collapse_kind": "none", "collapse_step": None,
                         "collapse_step_smoothed": None, "onset_step": ONSET, "lead_updates": None,
                         "lead_updates_smoothed": None})
            traces.append(pl.DataFrame({"run_id": rid, "step": steps, "excess": 100.0 + 0 * steps}))
    return pl.DataFrame(rows), pl.concat(traces)


def test_a_score_that_reads_only_the_dose_gets_one_half() -> None:
    rows, traces = _corpus(np.random.default_rng(0), 60, "dose")
    res = questions.same_dose_detection(rows, traces, horizon_frac=0.5, target_fpr=0.05, n_boot=100)
    a = res["auroc_stratified"]
    assert abs(a["value"] - 0.5) < 0.05, a
    assert a["ci_low"] < 0.5 < a["ci_high"]
    # ... although pooled over cells the same windowed scores separate the outcomes: the dose predicts collapse
    win = questions.same_dose_windows(rows, {r: T for r in rows["run_id"].to_list()}, 0.5)
    sc = questions.same_dose_scores(win, rows, traces)
    y = np.array(win["label"].to_list(), bool)
    assert auroc(sc[y], sc[~y]) > 0.65
    assert res["n_cells"] == 12 and res["n_cells_contributing"] == 12 and res["n_runs"] == 12 * 60
    assert res["n_pos"] + res["n_neg"] == res["n_runs"] and a["n_pos"] == res["n_pos"]


def test_a_score_that_carries_the_run_s_own_risk_scores_above_one_half() -> None:
    rows, traces = _corpus(np.random.default_rng(1), 30, "latent")
    a = questions.same_dose_detection(rows, traces, horizon_frac=0.5, target_fpr=0.05, n_boot=100)[
        "auroc_stratified"]
    assert a["value"] > 0.75 and a["ci_low"] > 0.6


def test_a_score_that_moves_only_after_the_run_s_own_collapse_is_not_in_the_window() -> None:
    """The window ends before the cell's earliest collapse: a jump at each run's own collapse never enters."""
    rows, traces = _corpus(np.random.default_rng(2), 60, "leak")
    res = questions.same_dose_detection(rows, traces, horizon_frac=0.5, target_fpr=0.05, n_boot=50)
    assert abs(res["auroc_stratified"]["value"] - 0.5) < 0.05
    # a window that ran to each run's own collapse date (inclusive) would have seen it
    first = rows.filter(~pl.col("unperturbed")).with_columns(
        pl.col("collapse_step").fill_null(T).alias("_end"))
    got = (traces.join(first.select("run_id", "_end", "collapsed"), on="run_id")
           .filter(pl.col("step").is_between(ONSET, pl.col("_end"))).group_by("run_id", "collapsed")
           .agg(pl.col("excess").max()))
    y = np.array(got["collapsed"].to_list(), bool)
    x = np.array(got["excess"].to_list(), float)
    assert auroc(x[y], x[~y]) > 0.9


def test_the_window_and_the_cells_that_cannot_contribute() -> None:
    """By hand: the window is the smaller of the first collapse (from onset) and the horizon; a cell with one
    outcome, and a cell whose first collapse is at onset, contribute nothing and are counted."""
    rng = np.random.default_rng(3)
    cells = [("lr_spike", 10.0, 0.5), ("lr_spike", 1.0, 0.0), ("mass_shift", 3.0, 0.5)]
    rows, traces = _corpus(rng, 12, "dose", cells=cells, groups=("g",))
    # in the mass_shift cell, one collapse at onset itself
    ms = rows.filter((pl.col("perturbation") == "mass_shift") & pl.col("collapsed"))["run_id"][0]
    rows = rows.with_columns(pl.when(pl.col("run_id") == ms).then(ONSET).otherwise(pl.col("collapse_step"))
                             .alias("collapse_step"))
    win = questions.same_dose_windows(rows, {r: T for r in rows["run_id"].to_list()}, horizon_frac=0.1)
    lr = rows.filter((pl.col("magnitude") == 10.0) & pl.col("collapsed"))
    first = int((lr["collapse_step"] - lr["onset_step"]).min())
    w = win.filter(pl.col("cell") == "g|lr_spike|10.0|100")["window_updates"].unique().to_list()
    assert w == [min(first, int(0.1 * T))]
    assert win.filter(pl.col("cell") == "g|lr_spike|1.0|100")["why"].unique().to_list() == ["one outcome"]
    assert win.filter(pl.col("cell") == "g|mass_shift|3.0|100")["why"].unique().to_list() == ["collapse at onset"]
    res = questions.same_dose_detection(rows, traces, horizon_frac=0.1, target_fpr=0.05, n_boot=50)
    assert res["n_cells"] == 3 and res["n_cells_contributing"] == 1
    assert res["n_cells_one_outcome"] == 1 and res["n_cells_no_window"] == 1
    assert res["n_runs"] == 12 and {c["excluded"] for c in res["cells"]} == {None, "one outcome", "collapse at onset"}
    # the scores are taken strictly before onset + w
    sc = questions.same_dose_scores(win.filter(pl.col("window_updates").is_not_null()), rows, traces)
    keep = win.filter(pl.col("window_updates").is_not_null())
    rid = keep["run_id"][0]
    want = traces.filter((pl.col("run_id") == rid) & (pl.col("step") >= ONSET)
                         & (pl.col("step") < ONSET + w[0]))["excess"].max()
    assert sc[0] == pytest.approx(want)


def test_same_dose_leads_new_and_old_and_small_folds_apart() -> None:
    rows, traces = _corpus(np.random.default_rng(4), 12, "dose", n_cal=25)
    small = rows.with_columns(pl.when(pl.col("fold") == 2).then(10).otherwise(pl.col("n_calibration"))
                              .alias("n_calibration"))
    res = questions.same_dose_detection(small, traces, horizon_frac=0.5, target_fpr=0.05, n_boot=50)
    assert res["median_lead_updates"]["value"] == 120 and res["median_lead_updates_smoothed"]["value"] == 570
    n_small = res["small_folds"]["median_lead_updates"]["n"]
    assert res["small_folds"]["n_folds"] == 2 and n_small > 0  # fold 2 of each of the two groups
    assert res["median_lead_updates"]["n"] + n_small == res["n_pos"]
