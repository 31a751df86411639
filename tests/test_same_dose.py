"""Same-dose detection (question a'): each collapsed run against each surviving run of its cell, both scored over
the window from onset to the collapsed run's break.

Synthetic truth: collapse probability rises with the dose, so a score that reads only the dose separates
collapsed from surviving runs pooled, yet within a cell it knows nothing (share of pairs 0.5); a score that
carries the run's own latent risk does better; a score that only moves after the run's own collapse is not
let into the window; a collapse at onset drops its own pairs only (the cell's other collapses still count).
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
    runs = questions.same_dose_runs(rows, {r: T for r in rows["run_id"].to_list()}, 0.5)
    pairs = questions.same_dose_pairs(runs, traces)
    pos = pairs.unique("run_pos")["score_pos"].to_numpy()
    neg = np.array([questions.window_score(questions._running_max(traces, runs).get(r), 300)
                    for r in runs.filter(~pl.col("label"))["run_id"].to_list()])
    assert auroc(pos, neg) > 0.65
    assert res["n_cells"] == 12 and res["n_cells_contributing"] == 12 and res["n_runs"] == 12 * 60
    assert res["n_pos"] + res["n_neg"] == res["n_runs"] and a["n_pos"] == res["n_pos"]
    assert res["n_pairs"] == pairs.height == sum(
        int(c["n_pos"]) * int(c["n_neg"]) for c in res["cells"])


def test_a_score_that_carries_the_run_s_own_risk_scores_above_one_half() -> None:
    rows, traces = _corpus(np.random.default_rng(1), 30, "latent")
    a = questions.same_dose_detection(rows, traces, horizon_frac=0.5, target_fpr=0.05, n_boot=100)[
        "auroc_stratified"]
    assert a["value"] > 0.75 and a["ci_low"] > 0.6


def test_a_score_that_moves_only_after_the_run_s_own_collapse_is_not_in_the_window() -> None:
    """Each pair's window ends at its collapsed run's break: a jump at that run's own collapse never enters."""
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


def test_the_pairs_and_what_cannot_contribute() -> None:
    """By hand: a pair's window is the collapsed run's break (from onset), capped at the horizon; both runs are
    scored over exactly it; a cell with one outcome contributes nothing; a collapse at onset drops its own pairs
    only, and is counted."""
    rng = np.random.default_rng(3)
    cells = [("lr_spike", 10.0, 0.5), ("lr_spike", 1.0, 0.0), ("mass_shift", 3.0, 0.5)]
    rows, traces = _corpus(rng, 12, "dose", cells=cells, groups=("g",))
    ms = rows.filter((pl.col("perturbation") == "mass_shift") & pl.col("collapsed"))["run_id"][0]
    rows = rows.with_columns(pl.when(pl.col("run_id") == ms).then(ONSET).otherwise(pl.col("collapse_step"))
                             .alias("collapse_step"))
    runs = questions.same_dose_runs(rows, {r: T for r in rows["run_id"].to_list()}, horizon_frac=0.2)
    assert runs.filter(pl.col("cell") == "g|lr_spike|1.0|100")["why"].unique().to_list() == ["one outcome"]
    assert runs.filter(pl.col("run_id") == ms)["why"].to_list() == ["collapse at onset"]
    lr = rows.filter((pl.col("magnitude") == 10.0) & pl.col("collapsed"))
    want = {r: min(c - ONSET, int(0.2 * T)) for r, c in lr.select("run_id", "collapse_step").iter_rows()}
    got = dict(runs.filter(pl.col("run_id").is_in(list(want))).select("run_id", "window_updates").iter_rows())
    assert got == want
    pairs = questions.same_dose_pairs(runs, traces)
    ms_cell = rows.filter(pl.col("perturbation") == "mass_shift")
    n_ms_pos, n_ms_neg = int(ms_cell["collapsed"].sum()), int((~ms_cell["collapsed"]).sum())
    assert pairs.filter(pl.col("cell") == "g|mass_shift|3.0|100").height == (n_ms_pos - 1) * n_ms_neg
    assert ms not in pairs["run_pos"].to_list()
    # both runs of a pair scored strictly before onset + w
    _cell, rp, rn, w, sp, sn = pairs.row(0)
    for rid, val in ((rp, sp), (rn, sn)):
        exp = traces.filter((pl.col("run_id") == rid) & (pl.col("step") >= ONSET)
                            & (pl.col("step") < ONSET + w))["excess"].max()
        assert val == pytest.approx(exp)
    res = questions.same_dose_detection(rows, traces, horizon_frac=0.2, target_fpr=0.05, n_boot=50)
    assert res["n_cells"] == 3 and res["n_cells_contributing"] == 2 and res["n_cells_one_outcome"] == 1
    assert res["n_collapses_at_onset"] == 1 and res["n_pairs"] == pairs.height
    assert {c["excluded"] for c in res["cells"]} == {None, "one outcome"}


def test_a_cell_whose_every_collapse_is_at_onset_has_no_pairs() -> None:
    rows, traces = _corpus(np.random.default_rng(5), 12, "dose", cells=[("lr_spike", 10.0, 0.5)], groups=("g",))
    rows = rows.with_columns(pl.when(pl.col("collapsed")).then(ONSET).otherwise(pl.col("collapse_step"))
                             .alias("collapse_step"))
    res = questions.same_dose_detection(rows, traces, horizon_frac=0.2, target_fpr=0.05, n_boot=20)
    assert res["n_pairs"] == 0 and res["n_cells_no_window"] == 1 and "n too small" in res["auroc_stratified"]["reason"]


def test_same_dose_leads_new_and_old_and_small_folds_apart() -> None:
    rows, traces = _corpus(np.random.default_rng(4), 12, "dose", n_cal=25)
    small = rows.with_columns(pl.when(pl.col("fold") == 2).then(10).otherwise(pl.col("n_calibration"))
                              .alias("n_calibration"))
    res = questions.same_dose_detection(small, traces, horizon_frac=0.5, target_fpr=0.05, n_boot=50)
    assert res["median_lead_updates"]["value"] == 120 and res["median_lead_updates_smoothed"]["value"] == 570
    n_small = res["small_folds"]["median_lead_updates"]["n"]
    assert res["small_folds"]["n_folds"] == 2 and n_small > 0  # fold 2 of each of the two groups
    assert res["median_lead_updates"]["n"] + n_small == res["n_pos"]
