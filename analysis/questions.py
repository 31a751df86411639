"""The questions asked of every detector (monitors, baselines and references), reported separately.

They read the per-(test run, detector) rows of :func:`stabilitybench.analysis.early_warning.evaluate_group`, whose
scores are already conformal p-values (pooled across folds and groups only as ``-log10 p``) or calibrated
excesses (``(score - threshold)`` in SDs of the fold's calibration maxima). ``collapse_step`` is the lag-free
offline collapse date; where the rows carry ``collapse_step_smoothed`` (the date on the smoothed performance,
which lags the break by about the smoothing window) the leads are also given from it, side by side.

(a) **Detection.** Positives: perturbed test runs with a *performance* collapse; negatives: the
held-out unperturbed test runs. An alarm counts only if it comes strictly before the offline
collapse date; lead = date - first alarm. AUROC of ``detection_score`` (``[onset, collapse)``
capped at a fixed horizon for positives, ``[onset, onset + horizon]`` for controls) and its **Delta against
``perturbation_on``** (the trivial "alarm = perturbation active" detector, which scores 1 on these runs by
construction: positives are perturbed, negatives are not), paired over the same runs with a cluster
bootstrap over seeds. So (a) can only show how far a detector falls short of knowing that the run was
perturbed; whether it knows more than that is asked by same-dose detection. **Alarm-based numbers** (share of
collapses preceded, median lead, FPR, the non-finite line) pool only the folds with >= 19 calibration controls
(the conformal FPR claim needs them; with fewer the attainable level is ``1/(n+1)`` and alarms are
permissive): folds with fewer are reported apart under ``small_folds``, and the entry says how many there
were. FPR on the held-out controls with a Clopper-Pearson CI, its ``n_calibration``/``n_test`` and the
conformal guarantee. Non-finite collapses get their own line: an alarm at the non-finite step is lead 0 and
never a warning.

(a') **Same-dose detection.** Within one cell (group = domain/algo/env/stochasticity x kind x magnitude x
duration), every collapsed perturbed run against every perturbed run of the same cell that did not collapse, the
two scored over the *same window relative to onset*: ``[onset, onset + w)`` with ``w`` the collapsed run's break
(updates from onset to its lag-free collapse date), capped at the detection horizon. The window ends strictly
before that run's break, so its score sees no collapse, and the survivor is scored over the same span, so within a
pair the window cannot differ by outcome. Score: the max calibrated excess over the window. The AUROC is the share
of pairs the collapsed run wins (ties half), so a score that reads the dose ties every pair: 0.5; CI: cluster
bootstrap over seeds. Cells with one outcome contribute nothing, a collapse at onset has no window (its pairs are
dropped), and both are counted. (The first version fixed ``w`` per cell at the cell's earliest collapse: at 20 seeds
most kick cells hold a collapse at onset, which left every such cell out.)

(b) **Prediction.** Among *perturbed* test runs still standing at the landmark L (end of the
perturbation window + 1 block; the definition is kept with the lag-free dates: runs that break during the
kick now collapse before L and count under detection), does the score over ``[onset, L]`` predict which
collapse after L? The score ranked is ``prediction_excess``: the conformal p-value has only n + 1 levels and
ties every run above all n calibration runs. AUROC pooled and **stratified by cell** (group x kind x
magnitude x duration), against three references scored on the same runs:

* ``config_only``: the in-sample collapse share of the run's cell, what any function of the configuration
  can know at best on these runs. Constant within a cell: stratified AUROC exactly 0.5. Pooled, its
  in-sample AUROC is optimistic (the share is fitted to the labels it ranks), so its pooled AUROC and every
  pooled Delta against it are corrected by a delete-one-seed jackknife (:func:`cell_share_optimism`):
  unbiased in simulation when the cells differ, still conservative (the reference too good) when they differ
  little. (A model of the configuration fitted leave-one-seed-out anti-correlates with the label: under the
  null it scored 0.43 pooled against 0.65 for the true cell prevalence, which inflated every pooled Delta.)
* ``kick_size``: a logistic model of the peak ``update_norm``, ``param_norm`` and loss excursion inside
  ``[onset, L]`` (pre-onset z-scores), refitted *leave-one-cell-out*: each cell is scored by the model of the
  other cells, which cannot know that cell's label balance and ranks its runs by their kick sizes alone
  (:func:`within_cell_scores`). Pooled, it ranks by the cell share first and by that score within a cell
  (configuration plus kick; the same jackknife correction), so that a score which knows neither gets the
  pooled Delta of pure noise;
* ``perturbation_on``: 1 for every perturbed run.

Delta AUROC against each, with a cluster bootstrap over seeds (``scipy.stats.bootstrap``, BCa), and (b)'s
sensitivity to the landmark at L - 1 block, L and L + 1 block (:func:`prediction_sensitivity`). Every entry
carries ``n`` per class; where a class or stratum is empty it says "n too small" and how many runs it would
need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stabilitybench.analysis.conformal import min_calibration_runs
from stabilitybench.analysis.detectors import reference_names
from stabilitybench.analysis.stats import auroc, clopper_pearson, cluster_bootstrap_ci, iqr, stratified_auroc
from stabilitybench.analysis.summary import Status, StatusKind, not_testable, number
from stabilitybench.data_schema.keys import GROUP_KEYS

REFERENCES = reference_names()  # the registry's references (stabilitybench.analysis.detectors), scored below
QUESTION_A = ("(a) detection: alarms strictly before the lag-free offline collapse date vs FPR on held-out controls, "
              "as a difference from perturbation_on (which scores 1 here by construction); alarm-based numbers "
              "from folds with >= 19 calibration controls only")
QUESTION_SAME_DOSE = ("(a') same-dose detection: within one group x kind x magnitude x duration cell, does a run that "
                      "collapses score above one that does not, both scored over the same window from onset to the "
                      "collapsing run's break (share of pairs, a stratified AUROC)")
QUESTION_B = ("(b) prediction: at the landmark L (end of the perturbation window + 1 block), do scores over [onset, L] "
              "predict collapse after L among perturbed runs still standing (stratified by cell; L +- 1 block as "
              "sensitivity)")
#: Question ids (summary.json ``early_warning.questions``) -> text.
QUESTION_TEXTS = {"a": QUESTION_A, "a_same_dose": QUESTION_SAME_DOSE, "b": QUESTION_B}
CELL_COLUMNS = ("perturbation", "magnitude", "duration_steps")


def cell_labels(frame: pl.DataFrame) -> list[str]:
    """Each row's cell: its group (the ``group`` column, else the :data:`GROUP_KEYS` present) and kind x
    magnitude x duration, as ``"group|kind|magnitude|duration"``; one string per row."""
    if "group" in frame.columns:
        group = [str(g) for g in frame["group"].to_list()]
    else:
        keys = [k for k in GROUP_KEYS if k in frame.columns]
        group = ["/".join(map(str, r)) for r in frame.select(keys).iter_rows()] if keys else [""] * frame.height
    cells = frame.select(CELL_COLUMNS).iter_rows() if frame.height else []
    return [f"{g}|{k}|{m}|{d}" for g, (k, m, d) in zip(group, cells, strict=True)]


def _stratum(frame: pl.DataFrame) -> np.ndarray:
    """Each row's cell (:func:`cell_labels`: group x kind x magnitude x duration) as an integer code, ``(n,)``."""
    labels = cell_labels(frame)
    return np.unique(np.array(labels, dtype=str), return_inverse=True)[1].reshape(-1) if labels else \
        np.zeros(0, dtype=np.int64)


def _fpr_entry(ctrl: pl.DataFrame, target: float, why_empty: str | None = None) -> dict[str, Any]:
    """FPR on held-out controls: value, CP CI, ``n_calibration`` and ``n_test``; refused below 19 runs.

    ``why_empty``: the refusal's reason when ``ctrl`` has no row (e.g. every fold had too few calibration runs).
    """
    n_test = ctrl.height
    n_cal = sorted(set(int(x) for x in ctrl["n_calibration"].to_list())) if n_test else []
    fp = int(ctrl["first_alarm_step"].is_not_null().sum()) if n_test else 0
    need = min_calibration_runs(target)
    bound = float(ctrl["guaranteed_fpr_bound"].max()) if n_test else None
    entry = number(fp / n_test if n_test else None, n_test, clopper_pearson(fp, n_test), target=target,
                   n_calibration=min(n_cal) if n_cal else 0, n_calibration_per_fold=n_cal, n_test=n_test,
                   guaranteed_fpr_bound=bound, alpha_used=float(ctrl["alpha_used"].max()) if n_test else None)
    if not n_cal or min(n_cal) < need:
        reason = why_empty if not n_test and why_empty else (
            f"{min(n_cal) if n_cal else 0} calibration run(s) per fold < {need} needed for an FPR claim at "
            f"{target:g}; the empirical rate is at the attainable level alpha_used")
        entry["claim"] = Status(StatusKind.REFUSED, reason).to_json()
        entry["runs_needed"] = {"calibration_controls_per_fold": need}
    else:
        entry["claim"] = Status(StatusKind.OK, f"conformal FPR <= {bound:g} guaranteed for exchangeable controls"
                                ).to_json()
    return entry


def _auroc_with_ci(score: np.ndarray, label: np.ndarray, seeds: np.ndarray, n_boot: int, seed: int,
                   strata: np.ndarray | None = None) -> dict[str, Any]:
    """AUROC (stratified when ``strata`` is given) with a cluster bootstrap CI over ``seeds``; all ``(n,)``."""
    def stat(idx: np.ndarray) -> float | None:
        if strata is None:
            return auroc(score[idx][label[idx]], score[idx][~label[idx]])
        return stratified_auroc(score[idx], label[idx], strata[idx])[0]

    a = stat(np.arange(score.size))
    lo, hi, how = cluster_bootstrap_ci(stat, seeds, n_boot, seed=seed) if a is not None else (None, None, None)
    return number(a, int(score.size), (lo, hi), n_pos=int(label.sum()), n_neg=int((~label).sum()), interval=how)


def paired_delta_auroc(score: np.ndarray, ref: np.ndarray, label: np.ndarray, seeds: np.ndarray, n_boot: int,
                       seed: int, strata: np.ndarray | None = None, ref_optimism: float = 0.0) -> dict[str, Any]:
    """AUROC(score) - AUROC(ref) on the same runs (stratified when ``strata`` is given), with a cluster bootstrap
    CI over ``seeds`` that resamples both scores together (paired); all arrays ``(n,)``.

    ``ref_optimism``: an estimate of how much ``ref``'s in-sample AUROC exceeds what it would score on new runs
    (:func:`cell_share_optimism`); it is added to the difference and to both ends of its CI.
    """
    def stat(idx: np.ndarray) -> float | None:
        if strata is None:
            a = auroc(score[idx][label[idx]], score[idx][~label[idx]])
            b = auroc(ref[idx][label[idx]], ref[idx][~label[idx]])
        else:
            a = stratified_auroc(score[idx], label[idx], strata[idx])[0]
            b = stratified_auroc(ref[idx], label[idx], strata[idx])[0]
        return None if a is None or b is None else a - b

    d = stat(np.arange(score.size))
    if d is None:
        return not_testable("n too small: no pair of runs to compare")
    lo, hi, how = cluster_bootstrap_ci(stat, seeds, n_boot, seed=seed)
    if not ref_optimism:
        return number(d, int(score.size), (lo, hi), interval=how)
    lo, hi = (None if lo is None else lo + ref_optimism), (None if hi is None else hi + ref_optimism)
    return number(d + ref_optimism, int(score.size), (lo, hi), interval=how, reference_optimism=ref_optimism)


#: Fewest collapsed and fewest surviving runs, counted in strata that hold both outcomes, for a stratified AUROC:
#: below it the within-stratum bootstrap degenerates (e.g. one collapse in one cell gives a CI of [1, 1]).
MIN_STRATIFIED_PER_CLASS = 3  # also the pooled detection AUROC's minimum per class


def stratified_entry(score: np.ndarray, y: np.ndarray, seeds: np.ndarray, strata: np.ndarray, n_boot: int,
                     seed: int) -> dict[str, Any]:
    """The stratified AUROC entry (within-stratum pairs only) with its seed-clustered CI, or "n too small" when
    the strata holding both outcomes have fewer than :data:`MIN_STRATIFIED_PER_CLASS` runs of either class.

    ``score``, ``y``, ``seeds``, ``strata``: shape ``(n,)``.
    """
    both = np.zeros(y.size, bool)
    for s_ in np.unique(strata):
        m = strata == s_
        if y[m].any() and (~y[m]).any():
            both |= m
    k_pos, k_neg = int((y & both).sum()), int((~y & both).sum())
    pairs = stratified_auroc(score, y, strata)[1]
    if min(k_pos, k_neg) < MIN_STRATIFIED_PER_CLASS:
        return not_testable(f"n too small: the strata that hold both outcomes have {k_pos} collapsed and {k_neg} "
                            f"surviving runs (need >= {MIN_STRATIFIED_PER_CLASS} of each)", n_pairs=pairs,
                            n_pos_within=k_pos, n_neg_within=k_neg)
    return _auroc_with_ci(score, y, seeds, n_boot, seed, strata) | {"n_pairs": pairs, "n_pos_within": k_pos,
                                                                     "n_neg_within": k_neg}


def detection_cases(rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Question (a)'s two classes among one detector's rows: ``(positives, negatives)``.

    Positives: perturbed test runs with a *performance* collapse that left a window to score, at least one block
    between onset and the collapse date (:func:`no_window_collapses` are the others); negatives: held-out
    unperturbed runs that did not collapse. The one definition that :func:`detection` and :func:`roc_points` share,
    so the curve a report draws and the AUROC it prints are of the same runs.
    """
    ctrl = rows.filter(pl.col("unperturbed") & ~pl.col("collapsed"))
    pos = rows.filter(_performance_collapse() & ~_no_window(rows))
    return pos, ctrl


def _performance_collapse() -> pl.Expr:
    return ~pl.col("unperturbed") & (pl.col("collapse_kind") == "performance")


def _no_window(rows: pl.DataFrame) -> pl.Expr:
    """No block between onset and the collapse date (rows written before ``detection_window_blocks``: none)."""
    if "detection_window_blocks" not in rows.columns:
        return pl.lit(False)
    return pl.col("detection_window_blocks").fill_null(1) == 0


def no_window_collapses(rows: pl.DataFrame) -> int:
    """Performance collapses of perturbed runs dated before the first block after onset ended: no detector can
    score before them, so question (a) leaves them out (scoring them as misses would cap every detector's AUROC
    at the share of the others, and the ``perturbation_on`` reference's at 1)."""
    return rows.filter(_performance_collapse() & _no_window(rows)).height


def roc_points(rows: pl.DataFrame) -> pl.DataFrame:
    """The empirical ROC of one detector's ``detection_score`` over question (a)'s cases (:func:`detection_cases`).

    One row per distinct score, highest first, after a leading ``(0, 0)``: ``threshold`` (null for the
    leading point), ``fpr`` and ``tpr`` (share of negatives / positives scoring ``>= threshold``). A NaN
    score counts as ``-inf``, as in :func:`~stabilitybench.analysis.stats.auroc`, so the trapezoidal area
    under these points is the ``auroc`` of :func:`detection`. Empty when a class is empty.
    """
    pos, ctrl = detection_cases(rows)
    schema = {"threshold": pl.Float64, "fpr": pl.Float64, "tpr": pl.Float64, "n_pos": pl.Int64, "n_neg": pl.Int64}
    if not pos.height or not ctrl.height:
        return pl.DataFrame(schema=schema)
    sp = np.array(pos["detection_score"].to_list(), float)
    sn = np.array(ctrl["detection_score"].to_list(), float)
    sp, sn = np.where(np.isnan(sp), -np.inf, sp), np.where(np.isnan(sn), -np.inf, sn)
    thr = np.unique(np.r_[sp, sn])[::-1]
    return pl.DataFrame({"threshold": [None, *thr.tolist()],
                         "fpr": [0.0, *[float((sn >= t).mean()) for t in thr]],
                         "tpr": [0.0, *[float((sp >= t).mean()) for t in thr]],
                         "n_pos": pos.height, "n_neg": ctrl.height}, schema=schema)


def _folds(rows: pl.DataFrame) -> pl.DataFrame:
    """The distinct folds of ``rows`` (``group`` where present, ``fold``) with their ``n_calibration``."""
    keys = [c for c in ("group", "fold") if c in rows.columns]
    if not keys or not rows.height:
        return pl.DataFrame({"n_calibration": []}, schema={"n_calibration": pl.Int64})
    return rows.group_by(keys).agg(pl.col("n_calibration").min()).sort(keys)


def split_small_folds(rows: pl.DataFrame, target_fpr: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(rows of folds with >= min_calibration_runs(target) calibration controls, rows of the other folds)``.

    Only the first enter alarm-based pooled numbers: below 19 calibration runs (at 5%) the conformal threshold
    sits at the attainable level ``1/(n+1)``, so its alarms are permissive and its FPR has no guarantee.
    """
    need = min_calibration_runs(target_fpr)
    if "n_calibration" not in rows.columns:
        return rows, rows.head(0)
    big = pl.col("n_calibration").fill_null(0) >= need
    return rows.filter(big), rows.filter(~big)


def _lead_entry(pos: pl.DataFrame, column: str, n_boot: int, seed: int, measured_from: str) -> dict[str, Any]:
    """Median of ``pos[column]`` (leads in updates; nulls are runs without a warning) with a cluster CI and IQR."""
    if column not in pos.columns:
        return number(None, 0, None, measured_from=measured_from, note="not in the rows")
    vals = pos[column].to_list()
    leads = np.array([x for x in vals if x is not None], float)
    seeds = np.array([s for s, x in zip(pos["seed"].to_list(), vals, strict=True) if x is not None])
    if not leads.size:
        return number(None, 0, None, measured_from=measured_from)
    lo, hi, how = cluster_bootstrap_ci(lambda i: float(np.median(leads[i])), seeds, n_boot, seed=seed) \
        if n_boot > 0 else (None, None, None)
    q1, q3 = iqr(leads)
    return number(float(np.median(leads)), int(leads.size), (lo, hi), iqr_low=q1, iqr_high=q3, interval=how,
                  measured_from=measured_from)


NEW_DATE = "collapse_step (lag-free offline collapse date)"
OLD_DATE = "collapse_step_smoothed (date on the smoothed performance, as before the lag-free dating)"


def _alarm_numbers(pos: pl.DataFrame, ctrl: pl.DataFrame, target_fpr: float, n_boot: int, seed: int,
                   why_empty: str | None = None) -> dict[str, Any]:
    """The alarm-based numbers of (a) over ``pos`` (collapses) and ``ctrl`` (held-out controls): share of
    collapses preceded, median lead from the new and (where carried) the old date, FPR."""
    k = int(pos["alarm_before_collapse"].sum()) if pos.height else 0
    out: dict[str, Any] = {"frac_collapses_preceded": number(k / pos.height if pos.height else None, pos.height,
                                                             clopper_pearson(k, pos.height)),
                           "median_lead_updates": _lead_entry(pos, "lead_updates", n_boot, seed, NEW_DATE)}
    if "collapse_step_smoothed" in pos.columns and pos["collapse_step_smoothed"].null_count() < pos.height:
        out["median_lead_updates_smoothed"] = _lead_entry(pos, "lead_updates_smoothed", n_boot, seed, OLD_DATE)
    out["fpr_held_out_controls"] = _fpr_entry(ctrl, target_fpr, why_empty)
    return out


def _small_folds_entry(rows: pl.DataFrame, small: pl.DataFrame, target_fpr: float,
                       numbers: Callable[[pl.DataFrame], dict[str, Any]]) -> dict[str, Any]:
    """``small_folds``: how many folds had too few calibration controls, and ``numbers(their rows)`` apart."""
    need = min_calibration_runs(target_fpr)
    folds, small_f = _folds(rows), _folds(small)
    entry: dict[str, Any] = {
        "n_folds": small_f.height, "n_folds_total": folds.height,
        "n_calibration_per_fold": sorted(int(x) for x in small_f["n_calibration"].to_list()),
        "note": f"folds with fewer than {need} calibration controls: their alarms sit at the attainable conformal "
                "level 1/(n+1) (permissive, no FPR guarantee), so they enter no pooled alarm-based number "
                "(FPR, share preceded, lead, non-finite share) and are reported here apart"}
    if small.height:
        entry.update(numbers(small))
    return entry


def detection(rows: pl.DataFrame, target_fpr: float, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Question (a) for one detector's rows (one per test run).

    ``auroc`` over every fold; ``delta_vs_perturbation_on`` paired on the same runs; the alarm-based numbers
    (``frac_collapses_preceded``, ``median_lead_updates`` [``_smoothed``], ``fpr_held_out_controls``) over
    the folds with >= 19 calibration controls only, those of the other folds under ``small_folds``.
    """
    pos, ctrl = detection_cases(rows)
    out: dict[str, Any] = {"question": QUESTION_A, "n_runs": pos.height + ctrl.height,
                           "n_collapsed": pos.height, "n_controls": ctrl.height,
                           "n_collapsed_no_window": no_window_collapses(rows)}
    both = pl.concat([pos, ctrl])
    score = np.array(both["detection_score"].to_list(), float)
    label = np.r_[np.ones(pos.height, bool), np.zeros(ctrl.height, bool)]
    seeds = np.array(both["seed"].to_list())
    if min(pos.height, ctrl.height) >= MIN_STRATIFIED_PER_CLASS:
        out["auroc"] = _auroc_with_ci(score, label, seeds, n_boot, seed)
        out["delta_vs_perturbation_on"] = {
            **paired_delta_auroc(score, label.astype(float), label, seeds, n_boot, seed),
            "note": "AUROC minus perturbation_on's on the same runs (1 by construction: positives are perturbed, "
                    "negatives are not), cluster bootstrap over seeds; same-dose detection asks what a detector "
                    "knows beyond the perturbation"}
    else:
        no_window = f" ({out['n_collapsed_no_window']} more collapsed before a block after onset ended)" \
            if out["n_collapsed_no_window"] else ""
        out["auroc"] = not_testable(f"n too small: {pos.height} performance collapses{no_window}, {ctrl.height} "
                                    f"held-out controls (need >= {MIN_STRATIFIED_PER_CLASS} of each: with one, the "
                                    "seed bootstrap's CI collapses onto the one ordering; ~10 of each for a CI "
                                    "narrower than +-0.2)")
        out["delta_vs_perturbation_on"] = out["auroc"]
    need = min_calibration_runs(target_fpr)
    big, small = split_small_folds(rows, target_fpr)
    bpos, bctrl = detection_cases(big)
    out.update(_alarm_numbers(bpos, bctrl, target_fpr, n_boot, seed,
                              why_empty=f"no fold had >= {need} calibration controls: see small_folds"))
    out["nonfinite"] = _nonfinite_entry(big)
    out["small_folds"] = _small_folds_entry(
        rows, small, target_fpr,
        lambda sm: {"n_collapsed": detection_cases(sm)[0].height, "n_controls": detection_cases(sm)[1].height,
                    **_alarm_numbers(*detection_cases(sm), target_fpr, n_boot, seed),
                    "nonfinite": _nonfinite_entry(sm)})
    out["alarm_numbers_from"] = (f"{_folds(big).height} of {_folds(rows).height} folds (those with >= {need} "
                                 "calibration controls); the others are under small_folds")
    return out


def _nonfinite_entry(rows: pl.DataFrame) -> dict[str, Any]:
    """Share of the non-finite collapses of ``rows`` with an alarm strictly before the non-finite step."""
    nonf = rows.filter(~pl.col("unperturbed") & (pl.col("collapse_kind") == "nonfinite"))
    kn = int(nonf["alarm_before_collapse"].sum()) if nonf.height else 0
    return {"n": nonf.height, **number(kn / nonf.height if nonf.height else None, nonf.height,
                                       clopper_pearson(kn, nonf.height)),
            "what": "share of non-finite collapses with an alarm strictly before the non-finite step; "
                    "detection at that step is lead 0 and never counts as a warning"}


def cv_scores(X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Leave-one-group-out predicted collapse probability of a standardised logistic model, ``(n,)``.

    ``X`` ``(n, q)``, ``y`` and ``groups`` ``(n,)``. A training split with one class predicts its prevalence
    (the model has nothing to learn); rows with a non-finite feature get NaN.
    """
    out = np.full(y.size, np.nan)
    ok = np.isfinite(X).all(axis=1)
    for g in np.unique(groups):
        test = (groups == g) & ok
        train = (groups != g) & ok
        if not test.any():
            continue
        if train.sum() == 0:
            continue
        if np.unique(y[train]).size < 2:
            out[test] = float(y[train].mean())
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        model.fit(X[train], y[train])
        out[test] = model.predict_proba(X[test])[:, 1]
    return out


def prediction_scores(rows: pl.DataFrame) -> np.ndarray:
    """What (b) ranks: ``prediction_excess`` (continuous, calibrated) where the rows have it, else the p-based
    ``prediction_score``; shape ``(n,)``. A non-finite run (+inf) ranks above every other."""
    col = "prediction_excess" if "prediction_excess" in rows.columns and rows["prediction_excess"].null_count() < \
        rows.height else "prediction_score"
    return np.array(rows[col].to_list(), float)


def prediction_set(rows: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Perturbed rows still standing at their landmark (label: collapsed after L), and how many were not."""
    pert = rows.filter(~pl.col("unperturbed"))
    early = pert.filter(pl.col("collapsed") & (pl.col("collapse_step") <= pl.col("landmark_step")))
    keep = pert.filter(~(pl.col("collapsed") & (pl.col("collapse_step") <= pl.col("landmark_step"))))
    return keep.with_columns(pl.col("collapsed").alias("label")), early.height


def _kick_matrix(frame: pl.DataFrame, kick: dict[str, np.ndarray]) -> np.ndarray:
    """The runs' kick sizes (NaN where a run has none), shape ``(n, 3)``."""
    K = np.array([kick.get(r, np.full(3, np.nan)) for r in frame["run_id"].to_list()], float)
    return K.reshape(frame.height, -1) if frame.height else np.zeros((0, 3))  # no run standing at its landmark


def cell_prevalence(y: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """The in-sample share of positives of each row's stratum, shape ``(n,)`` (``y``, ``strata``: ``(n,)``).

    The best any function of the configuration can rank these runs pooled (it orders the cells by their
    likelihood ratio); constant within a cell, so its stratified AUROC is exactly 0.5.
    """
    y, strata = np.asarray(y, float), np.asarray(strata)
    out = np.empty(y.size)
    for s in np.unique(strata):
        m = strata == s
        out[m] = y[m].mean()
    return out


def _share_auroc(y: np.ndarray, strata: np.ndarray) -> float | None:
    share = cell_prevalence(y, strata)
    return auroc(share[y], share[~y])


def cell_share_optimism(y: np.ndarray, strata: np.ndarray, seeds: np.ndarray) -> float:
    """How much the pooled AUROC of the in-sample cell share (:func:`cell_prevalence`) exceeds what the cells'
    true collapse probabilities would score on these runs: its delete-one-seed jackknife bias estimate,
    ``(g - 1) (mean_s A_{-s} - A)`` over the ``g`` seeds (clusters); 0 with fewer than 3 seeds. All ``(n,)``.

    The in-sample share ranks the cells by labels that include the runs being ranked, so it is optimistic:
    in simulation, with 8 runs per cell, +0.05 when the cells' probabilities spread over 0.1-0.9 (the
    jackknife leaves +0.00 +- 0.02), more when they differ little (+0.19 when they are all equal; the
    jackknife leaves +0.10 there: the reference stays conservative, harder for a detector to beat).
    """
    y, strata, seeds = np.asarray(y, bool), np.asarray(strata), np.asarray(seeds)
    a = _share_auroc(y, strata)
    groups = np.unique(seeds)
    if a is None or groups.size < 3:
        return 0.0
    loo = [_share_auroc(y[seeds != g], strata[seeds != g]) for g in groups]
    loo = [v for v in loo if v is not None]
    if len(loo) < groups.size:
        return 0.0
    return float((groups.size - 1) * (np.mean(loo) - a))


def lexicographic(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """A score that orders by ``primary`` and, among equal ``primary``, by ``secondary``; shape ``(n,)``.

    ``dense rank of primary + rank of secondary / (n + 1)``: the second term stays in ``(0, 1)``, so it never
    reorders different ``primary`` values; a NaN ``secondary`` sits at the middle (no information).
    """
    primary, secondary = np.asarray(primary, float), np.asarray(secondary, float)
    if not primary.size:
        return primary.copy()
    p = rankdata(np.where(np.isnan(primary), -np.inf, primary), method="dense")
    ok = np.isfinite(secondary)
    t = np.full(primary.size, 0.5)
    if ok.any():
        t[ok] = rankdata(secondary[ok]) / (ok.sum() + 1)
    return p + t


def references(frame: pl.DataFrame, kick: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(pooled, within)``: the references' scores for the runs of ``frame`` (a :func:`prediction_set`), each
    ``(n,)``, as the pooled comparisons use them (:func:`reference_scores`) and as the stratified ones do
    (:func:`within_cell_scores`); the leave-one-cell-out kick model is fitted once for both."""
    y = np.array(frame["label"].to_list(), bool)
    strata = _stratum(frame)
    prev = cell_prevalence(y, strata)
    K = _kick_matrix(frame, kick)
    loco = cv_scores(K, y, strata) if K.size else np.full(y.size, np.nan)
    pooled = {"config_only": prev, "kick_size": lexicographic(prev, loco), "perturbation_on": np.ones(y.size)}
    return pooled, {"config_only": prev, "kick_size": loco, "perturbation_on": pooled["perturbation_on"]}


def reference_scores(frame: pl.DataFrame, kick: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pooled scores of the three references for the runs of ``frame`` (a :func:`prediction_set`), each ``(n,)``.

    ``config_only``: the in-sample cell share (:func:`cell_prevalence`); ``kick_size``: the cell share, then
    within a cell the leave-one-cell-out kick model (:func:`within_cell_scores`); ``perturbation_on``: 1.
    """
    return references(frame, kick)[0]


CELL_CONSTANT = frozenset({"config_only"})  # references that are functions of the configuration alone
CELL_SHARE = frozenset({"config_only", "kick_size"})  # pooled references that rank the cells by their in-sample share


def within_cell_scores(frame: pl.DataFrame, kick: dict[str, np.ndarray], refs: dict[str, np.ndarray]
                       ) -> dict[str, np.ndarray]:
    """The references as the *stratified* comparisons use them, for the runs of ``frame`` (same order).

    A model fitted leave-one-seed-out still sees the held-out run's cell, minus that run: a positive
    held out leaves its cell's training prevalence lower, so within a cell its score anti-correlates with
    the label. So ``config_only`` is its cell mean (:func:`cell_constant`), and ``kick_size`` is fitted
    *leave-one-cell-out*: each cell is scored by the model of the other cells' runs, which cannot know that
    cell's label balance and ranks its runs by their kick sizes alone.
    """
    strata = _stratum(frame)
    out = _within_or_default(None, refs, strata)
    if "kick_size" in refs and frame.height:
        out["kick_size"] = cv_scores(_kick_matrix(frame, kick), np.array(frame["label"].to_list(), bool), strata)
    return out


def cell_constant(score: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """``score`` replaced by its mean within each stratum (NaN-aware), shape ``(n,)``.

    For a configuration-only score this leaves what such a score can know: one value per cell (stratified
    AUROC exactly 0.5).
    """
    score, strata = np.asarray(score, float), np.asarray(strata)
    out = np.full(score.size, np.nan)
    for s in np.unique(strata):
        m = strata == s
        if np.isfinite(score[m]).any():
            out[m] = float(np.nanmean(score[m]))
    return out


def _within_or_default(within: dict[str, np.ndarray] | None, refs: dict[str, np.ndarray], strata: np.ndarray
                       ) -> dict[str, np.ndarray]:
    """``within`` if given, else ``refs`` with the cell-constant ones replaced by their cell means."""
    if within is not None:
        return within
    return {name: cell_constant(ref, strata) if name in CELL_CONSTANT else ref for name, ref in refs.items()}


def runs_needed(n_pos: int, n_neg: int) -> str:
    """A plain statement of how many runs a stratified AUROC needs."""
    return (f"have {n_pos} collapsing and {n_neg} surviving perturbed runs at the landmark; a stratified AUROC needs "
            "both outcomes within one group x kind x magnitude x duration cell: doses near each kind's ED50 with >= 8 "
            "seeds per cell (~4 of each outcome) give a CI of about +-0.25, >= 20 seeds per cell about +-0.15")


def prediction(rows: pl.DataFrame, refs: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0,
               within: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Question (b) for one detector's :func:`prediction_set` rows, against the reference scores (same order).

    ``refs``: the pooled references (:func:`reference_scores`); ``within``: those of the stratified
    comparisons (:func:`within_cell_scores`); without it, ``config_only`` is replaced by its cell mean and the
    others are used as they are.
    """
    y = np.array(rows["label"].to_list(), bool)
    score = prediction_scores(rows)
    seeds = np.array(rows["seed"].to_list())
    strata = _stratum(rows)
    within = _within_or_default(within, refs, strata)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    out: dict[str, Any] = {"question": QUESTION_B, "n_runs": rows.height, "n_pos": n_pos, "n_neg": n_neg}
    out["runs_needed"] = runs_needed(n_pos, n_neg)
    if not n_pos or not n_neg:
        out["auroc"] = not_testable("n too small: one outcome only at the landmark")
        out["auroc_stratified"] = out["auroc"]
        return out
    out["auroc"] = _auroc_with_ci(score, y, seeds, n_boot, seed)
    out["auroc_stratified"] = stratified_entry(score, y, seeds, strata, n_boot, seed)
    opt = cell_share_optimism(y, strata, seeds) if CELL_SHARE & set(refs) else 0.0
    out["delta_auroc"] = {name: {"pooled": paired_delta_auroc(score, ref, y, seeds, n_boot, seed,
                                                              ref_optimism=opt if name in CELL_SHARE else 0.0),
                                 "stratified": paired_delta_auroc(score, within[name], y, seeds, n_boot, seed, strata)}
                          for name, ref in refs.items()}
    if out["auroc_stratified"].get("status") == StatusKind.NOT_TESTABLE.value:  # the same n limits the deltas
        for d in out["delta_auroc"].values():
            d["stratified"] = out["auroc_stratified"]
    return out


def reference_rows(rows: pl.DataFrame, refs: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0,
                   within: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Question (b) for the references themselves (their own AUROC on the same runs; ``within`` as in
    :func:`prediction`)."""
    y = np.array(rows["label"].to_list(), bool)
    seeds = np.array(rows["seed"].to_list())
    strata = _stratum(rows)
    within = _within_or_default(within, refs, strata)
    opt = cell_share_optimism(y, strata, seeds) if rows.height and y.any() and not y.all() else 0.0
    out = {}
    for name, sc in refs.items():
        entry: dict[str, Any] = {"question": QUESTION_B, "n_runs": rows.height, "n_pos": int(y.sum()),
                                 "n_neg": int((~y).sum())}
        if y.all() or not y.any():  # both readings share the limit, as in :func:`prediction`
            entry["auroc"] = entry["auroc_stratified"] = not_testable("n too small: one outcome only")
        else:
            entry["auroc"] = _auroc_with_ci(sc, y, seeds, n_boot, seed)
            if name in CELL_SHARE and opt:
                a = entry["auroc"]
                entry["auroc"] = {**a, **{k: a[k] - opt for k in ("value", "ci_low", "ci_high")
                                          if a.get(k) is not None}, "reference_optimism": opt,
                                  "note": "in-sample AUROC less its jackknife optimism (cell_share_optimism)"}
            sc_st = within[name]
            entry["auroc_stratified"] = stratified_entry(sc_st, y, seeds, strata, n_boot, seed)
        out[name] = entry
    return out


#: Question (b)'s landmarks for its sensitivity: label -> (score column, shift in blocks).
LANDMARKS = {"L-1 block": ("prediction_excess_lm1", -1), "L": ("prediction_excess", 0),
             "L+1 block": ("prediction_excess_lp1", 1)}


def at_landmark(rows: pl.DataFrame, shift: int) -> pl.DataFrame:
    """``rows`` as if the landmark were ``L + shift`` blocks: ``landmark_step`` moved and ``prediction_excess``
    taken from that landmark's column (:data:`LANDMARKS`); ``prediction_score`` (p-based) is only at L."""
    col = next(c for c, k in LANDMARKS.values() if k == shift)
    if shift == 0:
        return rows
    return rows.with_columns((pl.col("landmark_step") + shift * pl.col("block_updates")).alias("landmark_step"),
                             pl.col(col).alias("prediction_excess"), pl.lit(None, pl.Float64).alias("prediction_score"))


def prediction_sensitivity(rows: pl.DataFrame, kick: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0,
                           at_l: dict[str, Any] | None = None) -> dict[str, Any]:
    """Question (b) at L - 1 block, L and L + 1 block for one detector's rows (all test runs).

    At each landmark: who is still standing (``n_collapsed_before_landmark`` go to detection), the
    pooled and stratified AUROC and the Delta against ``kick_size`` (pooled and stratified; the kick is the
    one measured over ``[onset, L]`` at every landmark). ``at_l``: question (b)'s entry at L, reused as it is.
    """
    need = ("block_updates", "prediction_excess_lm1", "prediction_excess_lp1")
    if any(c not in rows.columns for c in need):
        return not_testable("the rows carry no scores at L +- 1 block")
    out: dict[str, Any] = {"what": "question (b) with the landmark moved by one block either way; L = end of the "
                                   "perturbation window + 1 block. The kick_size reference keeps its kick over "
                                   "[onset, L]."}
    for label, (_, shift) in LANDMARKS.items():
        if shift == 0 and at_l is not None:
            entry = at_l
        else:
            pset, n_early = prediction_set(at_landmark(rows, shift))
            pooled, inside = references(pset, kick)
            refs, within = {"kick_size": pooled["kick_size"]}, {"kick_size": inside["kick_size"]}
            entry = {**prediction(pset, refs, n_boot, seed, within), "n_collapsed_before_landmark": n_early}
        out[label] = {"offset_blocks": shift, **{k: entry.get(k) for k in (
            "n_runs", "n_pos", "n_neg", "n_collapsed_before_landmark", "auroc", "auroc_stratified")},
            "delta_auroc_kick_size": (entry.get("delta_auroc") or {}).get("kick_size")}
    return out


def _as_alarm_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` rescored as perturbation_on: an alarm at onset on every perturbed run, none on a control."""
    onset = pl.col("onset_step")
    pert = ~pl.col("unperturbed")
    cols = [pl.when(pert).then(onset).otherwise(None).alias("first_alarm_step"),
            (pert & pl.col("collapse_step").is_not_null() & (pl.col("collapse_step") > onset)
             ).fill_null(False).alias("alarm_before_collapse"),
            pl.when(pert & (pl.col("collapse_step") > onset)).then(pl.col("collapse_step") - onset)
            .otherwise(None).alias("lead_updates")]
    if "collapse_step_smoothed" in rows.columns:
        cols.append(pl.when(pert & (pl.col("collapse_step_smoothed") > onset))
                    .then(pl.col("collapse_step_smoothed") - onset).otherwise(None).alias("lead_updates_smoothed"))
    return rows.with_columns(cols)


def perturbation_on_detection(runs: pl.DataFrame, target_fpr: float, n_boot: int = 0, seed: int = 0
                              ) -> dict[str, Any]:
    """Question (a) for the trivial "alarm = perturbation active" detector (alarm at onset, never on controls).

    ``runs``: one detector's rows (their folds decide which runs enter the pooled alarm-based numbers, as for
    every detector); ``n_boot`` > 0 gives the leads a CI.
    """
    rows = _as_alarm_rows(runs)
    pos, ctrl = detection_cases(rows)

    def fpr0(c: pl.DataFrame) -> dict[str, Any]:
        return number(0.0 if c.height else None, c.height, clopper_pearson(0, c.height), n_calibration=0,
                      n_test=c.height, target=target_fpr, guaranteed_fpr_bound=None, alpha_used=None,
                      claim=Status(StatusKind.NOT_APPLICABLE, "never alarms on a control").to_json())

    def numbers(r: pl.DataFrame) -> dict[str, Any]:
        p, c = detection_cases(r)
        return {"n_collapsed": p.height, "n_controls": c.height,
                **_alarm_numbers(p, c, target_fpr, n_boot, seed), "fpr_held_out_controls": fpr0(c)}

    big, small = split_small_folds(rows, target_fpr)
    need = min_calibration_runs(target_fpr)
    out = {"question": QUESTION_A, "n_runs": pos.height + ctrl.height, "n_collapsed": pos.height,
           "n_controls": ctrl.height,
           "auroc": number(1.0 if pos.height and ctrl.height else None, pos.height + ctrl.height, None,
                           note="perfect by construction: controls are never perturbed"),
           "delta_vs_perturbation_on": number(0.0 if pos.height and ctrl.height else None, pos.height + ctrl.height,
                                              None, note="itself"),
           **{k: v for k, v in numbers(big).items() if k not in ("n_collapsed", "n_controls")},
           "small_folds": _small_folds_entry(rows, small, target_fpr, numbers),
           "alarm_numbers_from": f"{_folds(big).height} of {_folds(rows).height} folds (those with >= {need} "
                                 "calibration controls among the detectors' folds), as for every detector"}
    return out


# ----------------------------------------------------------------------------------------- same-dose detection
SAME_DOSE_WINDOW = ("[onset, onset + w) per pair (collapsed run c, surviving run s of one cell): w = c's collapse date "
                    "in updates from onset, capped at the detection horizon (horizon_frac of the runs' updates, the "
                    "smallest in the cell); s is scored over the same span, so each comparison is of one window, "
                    "which ends before c's break; a collapse at onset leaves no window (its pairs are dropped and "
                    "counted)")


def same_dose_runs(rows: pl.DataFrame, n_updates: dict[str, int], horizon_frac: float) -> pl.DataFrame:
    """The perturbed runs of ``rows`` (one detector's rows) as (a') sees them.

    ``n_updates``: run -> its length in updates (the horizon is ``horizon_frac`` of it). Returns ``run_id``,
    ``cell``, ``label`` (collapsed, any kind), ``seed``, ``onset_step``, ``window_updates`` (a collapsed run's window
    ``w``, see :data:`SAME_DOSE_WINDOW`; null for a survivor, and where the collapse is at onset), ``horizon`` (the
    cell's cap) and ``why`` (null, ``one outcome``: the cell has one; ``collapse at onset``: a collapsed run with no
    window).
    """
    pert = rows.filter(~pl.col("unperturbed"))
    schema = {"run_id": pl.String, "cell": pl.String, "label": pl.Boolean, "seed": pl.String,
              "onset_step": pl.Int64, "window_updates": pl.Int64, "horizon": pl.Int64, "why": pl.String}
    if not pert.height:
        return pl.DataFrame(schema=schema)
    frame = pert.select("run_id", pl.Series("cell", cell_labels(pert), pl.String),
                        pl.col("collapsed").fill_null(False).alias("label"), pl.col("seed").cast(pl.String),
                        pl.col("onset_step").cast(pl.Int64),
                        pl.when(pl.col("collapsed")).then(pl.col("collapse_step") - pl.col("onset_step"))
                        .otherwise(None).cast(pl.Int64).alias("_after"),
                        pl.col("run_id").replace_strict(n_updates, default=None, return_dtype=pl.Int64)
                        .alias("_len"))
    per = frame.group_by("cell").agg(
        pl.col("label").any().alias("_pos"), (~pl.col("label")).any().alias("_neg"),
        (pl.col("_len").min().cast(pl.Float64) * horizon_frac).floor().cast(pl.Int64).alias("horizon"))
    frame = frame.join(per, on="cell", how="left").with_columns(
        pl.min_horizontal("_after", "horizon").alias("_w"))
    return frame.with_columns(
        pl.when(pl.col("label") & (pl.col("_w") > 0)).then(pl.col("_w")).otherwise(None).alias("window_updates"),
        pl.when(~(pl.col("_pos") & pl.col("_neg"))).then(pl.lit("one outcome"))
        .when(pl.col("label") & ~(pl.col("_w") > 0)).then(pl.lit("collapse at onset")).otherwise(None).alias("why"),
    ).select(*schema)


def _running_max(traces: pl.DataFrame, runs: pl.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per run: (block steps from onset, running max of its ``excess`` (else ``-log10 p_value``) from onset on)."""
    val = pl.col("excess") if "excess" in traces.columns else -pl.col("p_value").log10()
    got = (traces.select("run_id", "step", val.alias("_v"))
           .join(runs.select("run_id", "onset_step"), on="run_id", how="inner")
           .filter(pl.col("step") >= pl.col("onset_step")).sort("run_id", "step")
           .group_by("run_id", maintain_order=True)
           .agg((pl.col("step") - pl.col("onset_step")).alias("_t"), pl.col("_v").fill_nan(None).alias("_v")))
    out = {}
    for rid, t, v in got.iter_rows():
        x = np.array([np.nan if a is None else a for a in v], float)
        out[rid] = (np.asarray(t, np.int64), np.fmax.accumulate(x) if x.size else x)
    return out


def window_score(running: tuple[np.ndarray, np.ndarray] | None, w: int) -> float:
    """The max score over the blocks of ``[onset, onset + w)`` from :func:`_running_max`'s arrays; NaN if none."""
    if running is None:
        return float("nan")
    t, m = running
    i = int(np.searchsorted(t, w, side="left"))  # blocks strictly before onset + w
    return float(m[i - 1]) if i > 0 else float("nan")


def same_dose_pairs(runs: pl.DataFrame, traces: pl.DataFrame) -> pl.DataFrame:
    """Every (collapsed, surviving) pair of a cell that :func:`same_dose_runs` gives a window, both scored over it:
    ``cell``, ``run_pos``, ``run_neg``, ``window_updates``, ``score_pos``, ``score_neg`` (a pair where either run has
    no block in the window is dropped)."""
    running = _running_max(traces, runs)
    out = []
    for cell in runs.filter(pl.col("why").is_null() | (pl.col("why") == "collapse at onset"))["cell"].unique(
            maintain_order=True).to_list():
        c = runs.filter(pl.col("cell") == cell)
        neg = c.filter(~pl.col("label"))["run_id"].to_list()
        for rp, w in c.filter(pl.col("window_updates").is_not_null()).select("run_id", "window_updates").iter_rows():
            sp = window_score(running.get(rp), int(w))
            for rn in neg:
                sn = window_score(running.get(rn), int(w))
                if not (np.isnan(sp) or np.isnan(sn)):  # +-inf compare; a run with no block in the window says nothing
                    out.append((cell, rp, rn, int(w), sp, sn))
    return pl.DataFrame(out, schema={"cell": pl.String, "run_pos": pl.String, "run_neg": pl.String,
                                     "window_updates": pl.Int64, "score_pos": pl.Float64, "score_neg": pl.Float64},
                        orient="row")


def pair_auroc_entry(pairs: pl.DataFrame, seed_of: dict[str, str], n_boot: int, seed: int) -> dict[str, Any]:
    """The share of pairs whose collapsed run scores higher (ties half) with a cluster bootstrap CI over seeds (a
    resampled run weighs its seed's multiplicity, a pair the product), or "n too small" below
    :data:`MIN_STRATIFIED_PER_CLASS` collapsed or surviving runs in the pairs."""
    k_pos, k_neg = pairs["run_pos"].n_unique(), pairs["run_neg"].n_unique()
    if min(k_pos, k_neg) < MIN_STRATIFIED_PER_CLASS:
        return not_testable(f"n too small: the pairs hold {k_pos} collapsed and {k_neg} surviving runs (need >= "
                            f"{MIN_STRATIFIED_PER_CLASS} of each)", n_pairs=pairs.height, n_pos_within=k_pos,
                            n_neg_within=k_neg)
    ids = sorted(set(pairs["run_pos"].to_list()) | set(pairs["run_neg"].to_list()))
    at = {r: i for i, r in enumerate(ids)}
    ip = np.array([at[r] for r in pairs["run_pos"].to_list()])
    ineg = np.array([at[r] for r in pairs["run_neg"].to_list()])
    sp, sn = pairs["score_pos"].to_numpy(), pairs["score_neg"].to_numpy()
    win = (sp > sn) + 0.5 * (sp == sn)

    def stat(idx: np.ndarray) -> float | None:
        w = np.bincount(idx, minlength=len(ids)).astype(float)
        pw = w[ip] * w[ineg]
        return float((pw * win).sum() / pw.sum()) if pw.sum() > 0 else None

    a = stat(np.arange(len(ids)))
    seeds = np.array([seed_of[r] for r in ids])
    lo, hi, how = cluster_bootstrap_ci(stat, seeds, n_boot, seed=seed)
    return number(a, len(ids), (lo, hi), n_pos=k_pos, n_neg=k_neg, interval=how, n_pairs=pairs.height,
                  n_pos_within=k_pos, n_neg_within=k_neg)


def same_dose_detection(rows: pl.DataFrame, traces: pl.DataFrame, horizon_frac: float, target_fpr: float,
                        n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Question (a') for one detector: its ``rows`` (one per test run) and its per-block ``traces``.

    Each collapsed (performance or non-finite) run against each not-collapsed perturbed run of its cell, both scored
    over :data:`SAME_DOSE_WINDOW` (the collapsed run's own pre-break span): the share of pairs the collapsed run wins
    (a stratified AUROC over pairs; a score that knows only the dose ties every pair: 0.5) with a cluster bootstrap
    over seeds. Cells with one outcome, and collapses at onset (no window), contribute nothing and are counted.
    The median lead (new and old dates) is over the collapsed runs in the pairs, alarm-based, so from the folds
    with >= 19 calibration controls only (the others apart, as in :func:`detection`).
    """
    length = (traces.group_by("run_id").agg(pl.col("step").max()).with_columns(pl.col("step") + 1)
              if traces.height else pl.DataFrame(schema={"run_id": pl.String, "step": pl.Int64}))
    runs = same_dose_runs(rows, dict(length.iter_rows()), horizon_frac)
    pairs = same_dose_pairs(runs, traces)
    per = runs.group_by("cell", maintain_order=True).agg(
        pl.col("label").sum().alias("n_pos"), (~pl.col("label")).sum().alias("n_neg"),
        pl.col("window_updates").is_not_null().sum().alias("n_pos_windowed"),
        pl.col("window_updates").median().alias("median_window_updates"),
        (pl.col("why") == "one outcome").any().alias("_one"))
    used = set(pairs["cell"].to_list())
    out: dict[str, Any] = {
        "question": QUESTION_SAME_DOSE, "window": SAME_DOSE_WINDOW,
        "score": "max calibrated excess over the window", "n_cells": per.height, "n_cells_contributing": len(used),
        "n_cells_one_outcome": int(per["_one"].sum()) if per.height else 0,
        "n_cells_no_window": int(sum(1 for r in per.iter_rows(named=True) if not r["_one"] and r["cell"] not in used)),
        "n_collapses_at_onset": int((runs["why"] == "collapse at onset").sum()) if runs.height else 0}
    in_pairs = set(pairs["run_pos"].to_list()) | set(pairs["run_neg"].to_list())
    sub = rows.join(runs.filter(pl.col("run_id").is_in(list(in_pairs))).select("run_id", "cell", "label"),
                    on="run_id", how="inner")
    out.update(n_runs=sub.height, n_pos=int(sub["label"].sum()) if sub.height else 0,
               n_neg=int((~sub["label"]).sum()) if sub.height else 0, n_pairs=pairs.height)
    if not pairs.height:
        out["auroc_stratified"] = not_testable("n too small: no cell holds a collapsed run with a window before its "
                                               "break and a surviving run (need >= 3 of each over the pairs; ~10 of "
                                               "each for a CI of about +-0.2)")
    else:
        seed_of = dict(zip(runs["run_id"].to_list(), runs["seed"].to_list(), strict=True))
        out["auroc_stratified"] = pair_auroc_entry(pairs, seed_of, n_boot, seed)
    pos = sub.filter(pl.col("label"))
    big, small = split_small_folds(pos, target_fpr)

    def leads(p: pl.DataFrame) -> dict[str, Any]:
        d = {"median_lead_updates": _lead_entry(p, "lead_updates", n_boot, seed, NEW_DATE)}
        if "lead_updates_smoothed" in p.columns and "collapse_step_smoothed" in p.columns and \
                p["collapse_step_smoothed"].null_count() < p.height:
            d["median_lead_updates_smoothed"] = _lead_entry(p, "lead_updates_smoothed", n_boot, seed, OLD_DATE)
        return d

    out.update(leads(big))
    out["small_folds"] = _small_folds_entry(pos, small, target_fpr, leads)
    out["cells"] = [{"cell": r["cell"], "n_pos": int(r["n_pos"]), "n_neg": int(r["n_neg"]),
                     "n_pos_windowed": int(r["n_pos_windowed"]), "median_window_updates": r["median_window_updates"],
                     "excluded": "one outcome" if r["_one"] else (None if r["cell"] in used else
                                                                  "no collapse with a window before its break")}
                    for r in per.iter_rows(named=True)]
    return out
