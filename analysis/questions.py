"""The two questions asked of every detector (monitors, baselines and references), reported separately.

Both read the per-(test run, detector) rows of :func:`stabilitybench.analysis.early_warning.evaluate_group`, whose
scores are already conformal p-values (pooled across folds and groups only as ``-log10 p``).

(a) **Detection.** Positives: perturbed test runs with a *performance* collapse; negatives: the
held-out unperturbed test runs. An alarm counts only if it comes strictly before the offline
collapse date; lead = date - first alarm. AUROC of ``detection_score`` (``[onset, collapse)``
capped at a fixed horizon for positives, ``[onset, onset + horizon]`` for controls); FPR on the
held-out controls with a Clopper-Pearson CI, its ``n_calibration``/``n_test`` and the conformal
guarantee, and **no FPR claim** with fewer than 19 calibration runs. Non-finite collapses get
their own line: an alarm at the non-finite step is lead 0 and never a warning.

(b) **Prediction.** Among *perturbed* test runs still standing at the landmark L (end of the
perturbation window + 1 block), does the score over ``[onset, L]`` predict which collapse after
L? The score ranked is ``prediction_excess`` ((score - threshold) in SDs of the fold's calibration
maxima): the conformal p-value has only n + 1 levels and ties every run above all n calibration
runs. Runs that collapsed at or before L are counted as detection, not here. AUROC pooled and
**stratified by kind x magnitude x duration** (only within-stratum pairs count, so a
score that recognises the dose gets 0.5), against three references scored on the same runs:

* ``config_only``: a cross-validated (leave-one-seed-out) logistic model of kind, log magnitude
  per kind and log duration. Any function of the configuration is constant within a cell, so its
  stratified AUROC is 0.5 by definition; its leave-one-out scores vary within a cell only through the
  held-out run's own label (a positive leaves its cell's training prevalence lower), which gives a
  stratified AUROC far *below* 0.5 and would inflate every Delta AUROC against it. Stratified
  comparisons therefore use the cell mean of its scores (:func:`cell_constant`);
* ``kick_size``: the same model on the peak ``update_norm``, ``param_norm`` and loss excursion
  inside ``[onset, L]`` (pre-onset z-scores). Fitted leave-one-seed-out it has the same flaw within a
  cell, so the stratified comparisons refit it leave-one-*cell*-out (:func:`within_cell_scores`);
* ``perturbation_on``: the trivial detector "alarm = perturbation active" (1 for every perturbed run).

Delta AUROC against each, with a cluster bootstrap over seeds (``scipy.stats.bootstrap``, BCa).
Every entry carries ``n`` per class; where a class or stratum is empty it says "n too small"
and how many runs it would need.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stabilitybench.analysis.conformal import min_calibration_runs
from stabilitybench.analysis.detectors import reference_names
from stabilitybench.analysis.stats import auroc, clopper_pearson, cluster_bootstrap_ci, iqr, stratified_auroc
from stabilitybench.analysis.summary import Status, StatusKind, not_testable, number

REFERENCES = reference_names()  # the registry's references (stabilitybench.analysis.detectors), scored below
QUESTION_A = "(a) detection: alarms strictly before the offline collapse date vs FPR on held-out controls"
QUESTION_B = "(b) prediction: at the landmark L, do scores over [onset, L] predict collapse after L (perturbed runs)"


def _stratum(frame: pl.DataFrame) -> np.ndarray:
    """Each row's kind x magnitude x duration cell as an integer code, shape ``(n,)`` (cheap to compare)."""
    labels = [f"{k}|{m}|{d}" for k, m, d in frame.select("perturbation", "magnitude", "duration_steps").iter_rows()]
    return np.unique(np.array(labels, dtype=str), return_inverse=True)[1].reshape(-1) if labels else \
        np.zeros(0, dtype=np.int64)


def _fpr_entry(ctrl: pl.DataFrame, target: float) -> dict[str, Any]:
    """FPR on held-out controls: value, CP CI, ``n_calibration`` and ``n_test``; refused below 19 runs."""
    n_test = ctrl.height
    n_cal = sorted(set(int(x) for x in ctrl["n_calibration"].to_list())) if n_test else []
    fp = int(ctrl["first_alarm_step"].is_not_null().sum()) if n_test else 0
    need = min_calibration_runs(target)
    bound = float(ctrl["guaranteed_fpr_bound"].max()) if n_test else None
    entry = number(fp / n_test if n_test else None, n_test, clopper_pearson(fp, n_test), target=target,
                   n_calibration=min(n_cal) if n_cal else 0, n_calibration_per_fold=n_cal, n_test=n_test,
                   guaranteed_fpr_bound=bound, alpha_used=float(ctrl["alpha_used"].max()) if n_test else None)
    if not n_cal or min(n_cal) < need:
        entry["claim"] = Status(StatusKind.REFUSED, f"{min(n_cal) if n_cal else 0} calibration run(s) per fold < "
                                f"{need} needed for an FPR claim at {target:g}; the empirical rate is at the "
                                "attainable level alpha_used").to_json()
        entry["runs_needed"] = {"calibration_controls_per_fold": need}
    else:
        entry["claim"] = Status(StatusKind.OK, f"conformal FPR <= {bound:g} guaranteed for exchangeable controls"
                                ).to_json()
    return entry


def _auroc_with_ci(score: np.ndarray, label: np.ndarray, seeds: np.ndarray, n_boot: int, seed: int,
                   strata: np.ndarray | None = None) -> dict[str, Any]:
    def stat(idx: np.ndarray) -> float | None:
        if strata is None:
            return auroc(score[idx][label[idx]], score[idx][~label[idx]])
        return stratified_auroc(score[idx], label[idx], strata[idx])[0]

    a = stat(np.arange(score.size))
    lo, hi, how = cluster_bootstrap_ci(stat, seeds, n_boot, seed=seed) if a is not None else (None, None, None)
    return number(a, int(score.size), (lo, hi), n_pos=int(label.sum()), n_neg=int((~label).sum()), interval=how)


def detection_cases(rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Question (a)'s two classes among one detector's rows: ``(positives, negatives)``.

    Positives: perturbed test runs with a *performance* collapse; negatives: held-out unperturbed runs that
    did not collapse. The one definition that :func:`detection` and :func:`roc_points` share, so the curve
    a report draws and the AUROC it prints are of the same runs.
    """
    ctrl = rows.filter(pl.col("unperturbed") & ~pl.col("collapsed"))
    pos = rows.filter(~pl.col("unperturbed") & (pl.col("collapse_kind") == "performance"))
    return pos, ctrl


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


def detection(rows: pl.DataFrame, target_fpr: float, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Question (a) for one detector's rows (one per test run)."""
    pos, ctrl = detection_cases(rows)
    nonf = rows.filter(~pl.col("unperturbed") & (pl.col("collapse_kind") == "nonfinite"))
    out: dict[str, Any] = {"question": QUESTION_A, "n_runs": pos.height + ctrl.height,
                           "n_collapsed": pos.height, "n_controls": ctrl.height}
    both = pl.concat([pos, ctrl])
    score = np.array(both["detection_score"].to_list(), float)
    label = np.r_[np.ones(pos.height, bool), np.zeros(ctrl.height, bool)]
    if pos.height and ctrl.height:
        out["auroc"] = _auroc_with_ci(score, label, np.array(both["seed"].to_list()), n_boot, seed)
    else:
        out["auroc"] = not_testable(f"n too small: {pos.height} performance collapses, {ctrl.height} held-out "
                                    "controls (need >= 1 of each; ~10 of each for a CI narrower than +-0.2)")
    k = int(pos["alarm_before_collapse"].sum()) if pos.height else 0
    out["frac_collapses_preceded"] = number(k / pos.height if pos.height else None, pos.height,
                                            clopper_pearson(k, pos.height))
    leads = np.array([x for x in pos["lead_updates"].to_list() if x is not None], float)
    lead_seeds = np.array([s for s, x in zip(pos["seed"].to_list(), pos["lead_updates"].to_list(), strict=True)
                           if x is not None])
    if leads.size:
        lo, hi, how = cluster_bootstrap_ci(lambda i: float(np.median(leads[i])), lead_seeds, n_boot, seed=seed)
        q1, q3 = iqr(leads)
        out["median_lead_updates"] = number(float(np.median(leads)), int(leads.size), (lo, hi), iqr_low=q1,
                                            iqr_high=q3, interval=how, measured_from="offline collapse date")
    else:
        out["median_lead_updates"] = number(None, 0, None, measured_from="offline collapse date")
    out["fpr_held_out_controls"] = _fpr_entry(ctrl, target_fpr)
    kn = int(nonf["alarm_before_collapse"].sum()) if nonf.height else 0
    out["nonfinite"] = {"n": nonf.height, **number(kn / nonf.height if nonf.height else None, nonf.height,
                                                   clopper_pearson(kn, nonf.height)),
                        "what": "share of non-finite collapses with an alarm strictly before the non-finite step; "
                                "detection at that step is lead 0 and never counts as a warning"}
    return out


def config_matrix(frame: pl.DataFrame) -> np.ndarray:
    """Configuration features per run: one-hot kind, log10 magnitude per kind, log10 duration; ``(n, q)``."""
    kinds = sorted(set(frame["perturbation"].to_list()))
    k = np.array(frame["perturbation"].to_list())
    mag = np.log10(np.clip(np.abs(np.array(frame["magnitude"].fill_null(1.0).to_list(), float)), 1e-12, None))
    dur = np.log10(np.clip(np.array(frame["duration_steps"].fill_null(1).to_list(), float), 1, None))
    cols = [(k == kind).astype(float) for kind in kinds] + [(k == kind) * mag for kind in kinds] + [dur]
    return np.column_stack(cols) if cols else np.zeros((frame.height, 0))


def cv_scores(X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Leave-one-group-out (seed) predicted collapse probability of a standardised logistic model, ``(n,)``.

    A training split with one class predicts its prevalence (the model has nothing to learn).
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


def reference_scores(frame: pl.DataFrame, kick: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scores of the three references for the runs of ``frame`` (a :func:`prediction_set`)."""
    y = np.array(frame["label"].to_list(), bool)
    seeds = np.array(frame["seed"].to_list())
    K = _kick_matrix(frame, kick)
    return {"config_only": cv_scores(config_matrix(frame), y, seeds),
            "kick_size": cv_scores(K, y, seeds) if K.size else np.full(y.size, np.nan),
            "perturbation_on": np.ones(y.size)}


CELL_CONSTANT = frozenset({"config_only"})  # references that are functions of the configuration alone


def within_cell_scores(frame: pl.DataFrame, kick: dict[str, np.ndarray], refs: dict[str, np.ndarray]
                       ) -> dict[str, np.ndarray]:
    """The references as the *stratified* comparisons use them, for the runs of ``frame`` (same order).

    A model fitted leave-one-seed-out still sees the held-out run's cell, minus that run: a positive
    held out leaves its cell's training prevalence lower, so within a cell its score anti-correlates with
    the label. So ``config_only`` becomes its cell mean (:func:`cell_constant`), and ``kick_size`` is
    refitted *leave-one-cell-out*: each cell is scored by the model of the other cells' runs, which
    cannot know that cell's label balance and ranks its runs by their kick sizes alone.
    """
    strata = _stratum(frame)
    out = _within_or_default(None, refs, strata)
    if "kick_size" in refs and frame.height:
        out["kick_size"] = cv_scores(_kick_matrix(frame, kick), np.array(frame["label"].to_list(), bool), strata)
    return out


def cell_constant(score: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """``score`` replaced by its mean within each stratum (NaN-aware), shape ``(n,)``.

    For a configuration-only score this removes the leave-one-out anti-correlation with the label and
    leaves what such a score can know: one value per cell (stratified AUROC exactly 0.5).
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
            "both outcomes within one kind x magnitude x duration cell: doses near each kind's ED50 with >= 8 seeds "
            "per cell (~4 of each outcome) give a CI of about +-0.25, >= 20 seeds per cell about +-0.15")


def prediction(rows: pl.DataFrame, refs: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0,
               within: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Question (b) for one detector's :func:`prediction_set` rows, against the reference scores (same order).

    ``within``: the references for the stratified comparisons (:func:`within_cell_scores`); without it,
    ``config_only`` is replaced by its cell mean and the others are used as they are.
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
    _, pairs = stratified_auroc(score, y, strata)
    out["auroc_stratified"] = (_auroc_with_ci(score, y, seeds, n_boot, seed, strata) | {"n_pairs": pairs}
                               if pairs else not_testable("n too small: no stratum holds both outcomes"))
    delta: dict[str, dict[str, Any]] = {}  # reference -> "pooled" | "stratified" -> estimate
    for name, ref in refs.items():
        for kind, st in (("pooled", None), ("stratified", strata)):
            ref_k = ref if st is None else within[name]

            def stat(idx: np.ndarray, ref: np.ndarray = ref_k, st: np.ndarray | None = st) -> float | None:
                if st is None:
                    a, b = auroc(score[idx][y[idx]], score[idx][~y[idx]]), auroc(ref[idx][y[idx]], ref[idx][~y[idx]])
                else:
                    a, b = stratified_auroc(score[idx], y[idx], st[idx])[0], stratified_auroc(ref[idx], y[idx],
                                                                                              st[idx])[0]
                return None if a is None or b is None else a - b

            d = stat(np.arange(y.size))
            if d is None:
                delta.setdefault(name, {})[kind] = not_testable("n too small: no pair of runs to compare")
                continue
            lo, hi, how = cluster_bootstrap_ci(stat, seeds, n_boot, seed=seed)
            delta.setdefault(name, {})[kind] = number(d, int(y.size), (lo, hi), interval=how)
    out["delta_auroc"] = delta
    return out


def reference_rows(rows: pl.DataFrame, refs: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0,
                   within: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Question (b) for the references themselves (their own AUROC on the same runs; ``within`` as in
    :func:`prediction`)."""
    y = np.array(rows["label"].to_list(), bool)
    seeds = np.array(rows["seed"].to_list())
    strata = _stratum(rows)
    within = _within_or_default(within, refs, strata)
    out = {}
    for name, sc in refs.items():
        entry: dict[str, Any] = {"question": QUESTION_B, "n_runs": rows.height, "n_pos": int(y.sum()),
                                 "n_neg": int((~y).sum())}
        if y.all() or not y.any():
            entry["auroc"] = not_testable("n too small: one outcome only")
        else:
            entry["auroc"] = _auroc_with_ci(sc, y, seeds, n_boot, seed)
            sc_st = within[name]
            pairs = stratified_auroc(sc_st, y, strata)[1]
            entry["auroc_stratified"] = _auroc_with_ci(sc_st, y, seeds, n_boot, seed, strata) if pairs else \
                not_testable("n too small: no stratum holds both outcomes")
        out[name] = entry
    return out


def perturbation_on_detection(runs: pl.DataFrame, target_fpr: float) -> dict[str, Any]:
    """Question (a) for the trivial "alarm = perturbation active" detector (alarm at onset, never on controls)."""
    ctrl = runs.filter(pl.col("unperturbed") & ~pl.col("collapsed"))
    pos = runs.filter(~pl.col("unperturbed") & (pl.col("collapse_kind") == "performance"))
    leads = np.array([c - o for c, o in zip(pos["collapse_step"].to_list(), pos["onset_step"].to_list(), strict=True)
                      if c is not None and o is not None and c > o], float)
    k = leads.size
    q1, q3 = iqr(leads)
    return {"question": QUESTION_A, "n_runs": pos.height + ctrl.height, "n_collapsed": pos.height,
            "n_controls": ctrl.height,
            "auroc": number(1.0 if pos.height and ctrl.height else None, pos.height + ctrl.height, None,
                            note="perfect by construction: controls are never perturbed"),
            "frac_collapses_preceded": number(k / pos.height if pos.height else None, pos.height,
                                              clopper_pearson(k, pos.height)),
            "median_lead_updates": number(float(np.median(leads)) if k else None, int(k), None, iqr_low=q1,
                                          iqr_high=q3, measured_from="offline collapse date"),
            "fpr_held_out_controls": number(0.0 if ctrl.height else None, ctrl.height,
                                            clopper_pearson(0, ctrl.height), n_calibration=0, n_test=ctrl.height,
                                            target=target_fpr, guaranteed_fpr_bound=None, alpha_used=None,
                                            claim=Status(StatusKind.NOT_APPLICABLE,
                                                         "never alarms on a control").to_json())}
