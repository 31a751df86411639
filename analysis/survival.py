"""Survival analysis of collapse times (statsmodels): Kaplan-Meier, log-rank, Cox PH.

The unit is a run; its duration is ``survival_time`` (updates from perturbation onset to the
offline collapse date, or to the last update when censored, see :mod:`stabilitybench.analysis.collapse`) and
its event indicator is ``collapsed``. A *stratum* is a (domain, algo, env): collapse times of
different tasks share no time scale.

* **Kaplan-Meier** (``statsmodels.duration.SurvfuncRight``) per stratum x configuration
  (perturbation x magnitude x duration; ``none`` = the stratum's controls), with pointwise 95%
  CIs on the log(-log) scale from Greenwood's variance (the "exponential Greenwood" interval,
  as in lifelines).
* **Log-rank** (``survdiff`` with ``strata``): each configuration against its *matched* controls
  (same domain, algo and env; stratified by env when a configuration spans several), and one
  k-sample test of all configurations of each (domain, algo), stratified by env.
* **Cox PH** (``PHReg``, Efron ties) on **perturbed runs only**, stratified by domain/algo/env.
  Covariates: the perturbation kind (dummies), the **dose within kind** (``log10 magnitude``
  centred within each kind that has several magnitudes, one column per kind, so magnitudes in
  different units never share a slope), the stochasticity level, and, in the **landmark model**
  only, the early covariates per SD: ``early_msd`` (the Kalman monitor's early score, out of
  sample) and ``early_coherence`` (gradient coherence over the first updates after onset minus
  before).
* **Landmark.** The early covariates are measured over the first blocks after onset, so a model
  that counts time from onset would let them see the future (a run that collapses inside that
  window has the collapse itself in its covariate) and would credit every run with surviving the
  window it needs to measure them. With a ``landmark_updates`` column (updates from onset to the
  landmark L = onset + ``early_blocks`` blocks, the window the covariates use; see
  :func:`stabilitybench.analysis.stages.survival_models`), :func:`cox` is a landmark model: only runs
  still event-free after L enter (``survival_time > landmark_updates``), time counts from L, and the
  runs left out are counted: collapsed at or before L (``n_excluded_before_landmark``), censored at
  or before L (``n_censored_before_landmark``), with a non-finite early covariate
  (``n_excluded_nonfinite_early``: such a value never reaches the fit). Without the column the
  model counts time from onset and uses only the covariates known at onset (kind, dose,
  stochasticity); early columns are then listed as dropped.
* **Identifiability** is checked before fitting: a covariate that does not vary within any
  stratum holding an event, or that is collinear with the kept ones after within-stratum
  centring, is dropped and listed. Events per covariate are reported.
* **Separation.** If the partial likelihood is monotone (no finite maximum) the fit's status is
  ``separated`` and the unpenalised estimates are *not* in the headline fields: each
  coefficient's ``value``/``coef`` is the **ridge-penalised** estimate (statsmodels
  ``fit_regularized``: ``-loglik/n + alpha/2 ||beta||^2``, alpha = 0.1; penalty stated) with no CI
  and no p-value, and the diverging unpenalised HR, CI and p are kept only under
  ``unpenalised_separated`` (for diagnosis, not for reading).
* Harrell's concordance (checked against lifelines' ``concordance_index`` in the tests) and a
  proportional-hazards check (Schoenfeld residuals vs event-time rank) are reported.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import polars as pl
from scipy import stats as sps
from statsmodels.duration.hazard_regression import PHReg
from statsmodels.duration.survfunc import SurvfuncRight, survdiff

from stabilitybench.analysis.summary import Status, StatusKind, not_testable, number
from stabilitybench.data_schema.keys import NO_PERTURBATION, ConfigKey, config_label_expr, control_mask

Z975 = float(sps.norm.ppf(0.975))
RIDGE_ALPHA = 0.1
STRATUM = ("domain", "algo", "env")
#: Covariates measured after onset (over the early blocks): only the landmark model uses them.
EARLY_COVARIATES = ("early_msd", "early_coherence")
#: The column giving each run's landmark, in updates after onset (see :func:`landmark_runs`).
LANDMARK_COLUMN = "landmark_updates"


def group_label(perturbation: str, magnitude: float | None, duration: int | None = None) -> str:
    """The configuration label, :meth:`stabilitybench.data_schema.keys.ConfigKey.label` (kept for old callers)."""
    return ConfigKey(perturbation, magnitude, duration).label()


def with_config_label(frame: pl.DataFrame, name: str = "config") -> pl.DataFrame:
    """``frame`` plus its configuration label (:meth:`~stabilitybench.data_schema.keys.ConfigKey.label`) as
    column ``name``."""
    return frame.with_columns(config_label_expr().alias(name))


def kaplan_meier(time: np.ndarray, event: np.ndarray) -> pl.DataFrame:
    """KM curve of one group: ``time, survival, ci_low, ci_high, n_risk, n_events`` at each event time.

    ``time``/``event``: shape ``(n,)``. Starts with a row at time 0 (survival 1).
    """
    sf = SurvfuncRight(np.asarray(time, float), np.asarray(event, float))
    S = np.asarray(sf.surv_prob, float)
    se = np.asarray(sf.surv_prob_se, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.log(-np.log(S))
        sd = se / (S * np.abs(np.log(S)))
        lo = np.exp(-np.exp(theta + Z975 * sd))
        hi = np.exp(-np.exp(theta - Z975 * sd))
    lo = np.where(np.isfinite(lo), lo, S)
    hi = np.where(np.isfinite(hi), hi, S)
    frame = pl.DataFrame({
        "time": np.concatenate([[0.0], np.asarray(sf.surv_times, float)]),
        "survival": np.concatenate([[1.0], S]),
        "ci_low": np.concatenate([[1.0], lo]),
        "ci_high": np.concatenate([[1.0], hi]),
        "n_risk": np.concatenate([[float(len(time))], np.asarray(sf.n_risk, float)]),
        "n_events": np.concatenate([[0.0], np.asarray(sf.n_events, float)]),
    })
    return frame


def durations(runs: pl.DataFrame) -> pl.Series:
    """The survival duration column: ``survival_time`` (or ``collapse_time`` in tables without it)."""
    return runs["survival_time"] if "survival_time" in runs.columns else runs["collapse_time"]


def _stratum_label(runs: pl.DataFrame) -> list[str]:
    keys = [k for k in STRATUM if k in runs.columns]
    if not keys:
        return ["all"] * runs.height
    return runs.select(pl.concat_str([pl.col(k).cast(pl.String) for k in keys], separator="/")).to_series().to_list()


def km_table(runs: pl.DataFrame) -> pl.DataFrame:
    """KM curves of every stratum x configuration of ``runs`` (outcome columns); ``group`` = ``stratum: config``.

    Each row carries its configuration's key columns (``perturbation``, ``magnitude``, ``duration_steps``; the
    controls' group pools every control, so its magnitude and duration are null) for readers to join on.
    """
    parts = []
    for key, g in _groups(runs, by_stratum=True):
        t = durations(g).to_numpy().astype(float)
        e = g["collapsed"].to_numpy().astype(float)
        if t.size == 0:
            continue
        cfg = ConfigKey.of(g.row(0, named=True)).pooled()  # one configuration per group (its label)
        km = kaplan_meier(t, e).with_columns(pl.lit(key).alias("group"), pl.lit(g.height).alias("n_runs"),
                                             pl.lit(g["_stratum"][0]).alias("stratum"),
                                             pl.lit(g["_group"][0]).alias("config"),
                                             pl.lit(cfg.perturbation).alias("perturbation"),
                                             pl.lit(cfg.magnitude, dtype=pl.Float64).alias("magnitude"),
                                             pl.lit(cfg.duration, dtype=pl.Int64).alias("duration_steps"))
        parts.append(km)
    if not parts:
        return pl.DataFrame()
    return pl.concat(parts, how="diagonal_relaxed").select("group", "n_runs", pl.exclude("group", "n_runs"))


def _labelled(runs: pl.DataFrame) -> pl.DataFrame:
    return runs.with_columns(
        config_label_expr().alias("_group"),
        control_mask(runs).alias("_control"),
        pl.Series("_stratum", _stratum_label(runs)),
        durations(runs).alias("_time"),
    ).filter(pl.col("_time").is_not_null())


def _groups(runs: pl.DataFrame, by_stratum: bool = False) -> list[tuple[str, pl.DataFrame]]:
    labelled = _labelled(runs)
    keys = ["_stratum", "_group"] if by_stratum else ["_group"]
    out = []
    for k, g in sorted(labelled.group_by(keys), key=lambda kv: tuple(str(x) for x in kv[0])):
        out.append((f"{k[0]}: {k[1]}" if by_stratum else str(k[0]), g))
    return out


def logrank(runs: pl.DataFrame) -> list[dict[str, Any]]:
    """Each configuration vs its matched controls (``survdiff`` stratified by env), and k-sample per (domain, algo)."""
    lab = _labelled(runs)
    if lab.height == 0 or lab["_group"].n_unique() < 2:
        return [{"comparison": "all groups", **not_testable("fewer than two groups")}]
    out: list[dict[str, Any]] = []
    da = lab.with_columns(pl.concat_str([pl.col("domain"), pl.col("algo")], separator="/").alias("_da")) \
        if {"domain", "algo"} <= set(lab.columns) else lab.with_columns(pl.lit("all").alias("_da"))
    for (name,), g in sorted(da.group_by(["_da"]), key=lambda kv: str(kv[0])):
        if g["_group"].n_unique() >= 2:
            out.append(_survdiff_row(f"all groups ({name})" if da["_da"].n_unique() > 1 else "all groups", g))
        ctrl = g.filter(pl.col("_control"))
        for (conf,), c in sorted(g.group_by(["_group"]), key=lambda kv: str(kv[0])):
            if conf == NO_PERTURBATION:
                continue
            matched = ctrl.filter(pl.col("_stratum").is_in(c["_stratum"].unique().to_list()))
            if matched.height == 0:
                out.append({"comparison": f"{conf} vs matched none ({name})",
                            **not_testable("no matched controls (same domain, algo, env)")})
                continue
            out.append(_survdiff_row(f"{conf} vs matched none" + (f" ({name})" if da["_da"].n_unique() > 1 else ""),
                                     pl.concat([matched, c])))
    return out


def _survdiff_row(name: str, g: pl.DataFrame) -> dict[str, Any]:
    t = g["_time"].to_numpy().astype(float)
    e = g["collapsed"].to_numpy().astype(float)
    lab = np.array(g["_group"].to_list())
    strata_labels = g["_stratum"].to_list()
    strata = np.unique(strata_labels, return_inverse=True)[1] if len(set(strata_labels)) > 1 else None
    n_events = int(e.sum())
    base = {"comparison": name, "n": int(t.size), "n_events": n_events,
            "strata": sorted(set(strata_labels)), "n_groups": len(set(lab.tolist()))}
    if n_events == 0:
        return {**base, "chi2": None, "df": None, "p_value": None, **not_testable("no collapses")}
    try:
        chi2, p = survdiff(t, e, lab, strata=strata)
    except (np.linalg.LinAlgError, ValueError):
        return {**base, "chi2": None, "df": None, "p_value": None,
                **not_testable("singular variance (too many groups for the events)")}
    return {**base, "chi2": float(chi2), "df": len(set(lab.tolist())) - 1, "p_value": float(p),
            **Status(StatusKind.OK).to_json()}


def design_matrix(runs: pl.DataFrame, strata: np.ndarray | None = None, early: bool = True
                  ) -> tuple[np.ndarray, list[str], list[str]]:
    """Cox covariates of perturbed ``runs`` (outcomes + optional ``early_msd``/``early_coherence``).

    Kind dummies (first kind = reference), dose within kind, stochasticity dummies, early covariates
    per SD (only with ``early``: the landmark model; otherwise they are listed as dropped). With ``strata``
    (shape ``(n,)``) the identifiability checks use the within-stratum centred columns and the events.
    Returns ``X (n, q)``, the kept names and the dropped ones (with the reason).
    """
    cols: dict[str, np.ndarray] = {}
    kinds = runs["perturbation"].cast(pl.String).to_list()
    levels = sorted(set(kinds))
    mag = runs["magnitude"].fill_null(1.0).to_numpy().astype(float)
    for k in levels[1:]:
        cols[f"kind={k}"] = np.array([x == k for x in kinds], dtype=float)
    for k in levels:
        m = np.array([x == k for x in kinds])
        v = mag[m]
        dose = np.log10(v) if np.all(v > 0) else v
        unit = "log10 magnitude" if np.all(v > 0) else "magnitude"
        col = np.zeros(runs.height)
        col[m] = dose - dose.mean()
        cols[f"dose[{k}] ({unit}, centred within kind)"] = col
    vals = runs["stochasticity"].cast(pl.String).to_list() if "stochasticity" in runs.columns else []
    sl = sorted(set(vals))
    ref = "default" if "default" in sl else (sl[0] if sl else None)
    for lv in sl:
        if lv != ref:
            cols[f"stochasticity={lv}"] = np.array([v == lv for v in vals], dtype=float)
    late: list[str] = []
    for name in EARLY_COVARIATES:
        if name in runs.columns and not early:
            late.append(f"{name} (per SD) (measured after onset: only in the landmark model)")
            continue
        if name in runs.columns:
            v = runs[name].cast(pl.Float64).fill_null(np.nan).to_numpy()
            finite = v[np.isfinite(v)]
            sd = finite.std() if finite.size > 1 else 0.0
            cols[f"{name} (per SD)"] = (v - (finite.mean() if finite.size else 0.0)) / (sd if sd > 0 else 1.0)
    e = runs["collapsed"].to_numpy().astype(bool) if "collapsed" in runs.columns else np.ones(runs.height, bool)
    st = np.zeros(runs.height, int) if strata is None else np.asarray(strata)
    informative = [s for s in np.unique(st) if e[st == s].any() and (st == s).sum() >= 2]
    kept, dropped, mats = [], [], []
    for name, v in cols.items():
        if not np.all(np.isfinite(v)):
            dropped.append(f"{name} (missing values)")
            continue
        if not any(np.ptp(v[st == s]) > 0 for s in informative):
            dropped.append(f"{name} (constant within every stratum with an event: not identifiable)")
            continue
        trial = np.column_stack([*mats, v])
        centred = trial.copy()
        for s in np.unique(st):
            centred[st == s] -= trial[st == s].mean(axis=0)
        if np.linalg.matrix_rank(centred) < trial.shape[1]:
            dropped.append(f"{name} (collinear within strata: not identifiable)")
            continue
        mats.append(v)
        kept.append(name)
    X = np.column_stack(mats) if mats else np.zeros((runs.height, 0))
    return X, kept, dropped + late


def concordance(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float | None:
    """Harrell's C: among comparable pairs (the earlier time is an event; a censoring tied with an event counts as
    later, as in lifelines), the share where the higher risk fails first."""
    t, e, r = (np.asarray(a, float) for a in (time, event, risk))
    num = den = 0.0
    for i in np.flatnonzero(e > 0):
        later = (t > t[i]) | ((t == t[i]) & (e == 0))  # a censoring at the same time outlived the event
        den += later.sum()
        num += (r[i] > r[later]).sum() + 0.5 * (r[i] == r[later]).sum()
    return float(num / den) if den > 0 else None


def landmark_runs(runs: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """The runs at risk at their landmark, with time counted from it; and how many were left out, by reason.

    ``runs`` needs ``collapsed``, the duration (:func:`durations`, from onset) and :data:`LANDMARK_COLUMN`
    (updates from onset to the run's landmark). A run enters when it is still event-free after the landmark
    (duration ``>`` landmark) and its early covariates (:data:`EARLY_COVARIATES` present) are finite or missing;
    its duration becomes ``duration - landmark``. Counts: ``n_excluded_before_landmark`` (collapsed at or before
    the landmark), ``n_censored_before_landmark`` (censored at or before it: never at risk there),
    ``n_no_landmark`` (no landmark), ``n_excluded_nonfinite_early`` (at risk, but an early covariate is
    +-inf or NaN: it never reaches the fit).
    """
    t = durations(runs).cast(pl.Float64)
    lm = runs[LANDMARK_COLUMN].cast(pl.Float64)
    ev = runs["collapsed"].fill_null(False).cast(pl.Boolean)
    has = t.is_not_null() & lm.is_not_null()
    after = has & (t > lm)
    early = [c for c in EARLY_COVARIATES if c in runs.columns]
    bad = pl.Series([False] * runs.height, dtype=pl.Boolean)
    for c in early:
        v = runs[c].cast(pl.Float64)
        bad = bad | (v.is_not_null() & ~v.is_finite()).fill_null(False)
    counts = {"n_excluded_before_landmark": int((has & ~after & ev).sum()),
              "n_censored_before_landmark": int((has & ~after & ~ev).sum()),
              "n_no_landmark": int((~has).sum()),
              "n_excluded_nonfinite_early": int((after & bad).sum())}
    keep = runs.filter(after & ~bad)
    col = "survival_time" if "survival_time" in runs.columns else "collapse_time"
    keep = keep.with_columns((pl.col(col).cast(pl.Float64) - pl.col(LANDMARK_COLUMN).cast(pl.Float64)).alias(col))
    return keep, counts


def cox(runs: pl.DataFrame) -> dict[str, Any]:
    """Cox PH on the *perturbed* runs of ``runs``, stratified by domain/algo/env; a summary dict.

    With a :data:`LANDMARK_COLUMN` column: the landmark model (:func:`landmark_runs`; early covariates in,
    time from the landmark, exclusions counted). Without: time from onset, covariates known at onset only.
    """
    runs = runs.filter(~control_mask(runs))
    runs = runs.filter(durations(runs).is_not_null())
    landmark = LANDMARK_COLUMN in runs.columns
    extra: dict[str, Any]
    if landmark:
        n_perturbed = runs.height
        lm = runs[LANDMARK_COLUMN].drop_nulls()
        runs, counts = landmark_runs(runs)
        extra = {"time_origin": "landmark", "n_perturbed": n_perturbed, **counts,
                 "landmark_updates_range": [float(lm.min()), float(lm.max())] if lm.len() else None,
                 "landmark_note": "time counts from each run's landmark (onset + the early-covariate window); only "
                                  "runs event-free after it enter, and the early covariates use only blocks before it"}
    else:
        extra = {"time_origin": "onset"}
    t = np.maximum(durations(runs).to_numpy().astype(float), 0.0)
    e = runs["collapsed"].to_numpy().astype(float)
    labels = _stratum_label(runs)
    strata = np.unique(labels, return_inverse=True)[1] if len(set(labels)) > 1 else None
    X, names, dropped = design_matrix(runs, strata, early=landmark)
    base: dict[str, Any] = {"n": runs.height, "n_events": int(e.sum()), "dropped_covariates": dropped,
                            "population": "perturbed runs only" + (", event-free after the landmark" if landmark
                                                                   else ""),
                            "strata": sorted(set(labels)), **extra,
                            "events_per_covariate": (float(e.sum()) / len(names)) if names else None}
    if e.sum() < 2 or X.shape[1] == 0:
        return {**base, **not_testable("fewer than 2 collapses or no identifiable covariate")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PHReg(t, X, status=e, ties="efron", strata=strata)
        try:
            res = model.fit(disp=0)
        except (np.linalg.LinAlgError, ValueError) as exc:
            return {**base, **not_testable(f"Cox fit failed: {exc}")}
    params = np.asarray(res.params, float)
    bse = np.asarray(res.bse, float)
    converged = bool(getattr(res, "mle_retvals", {}).get("converged", True))
    separated = (not converged) or bool(
        np.any(~np.isfinite(params)) or np.any(~np.isfinite(bse)) or np.any(np.abs(params) > 8) or np.any(bse > 50)
    )
    ridge = None
    if separated:  # monotone likelihood: a finite, shrunk estimate with the penalty stated (no CI)
        try:
            pen = model.fit_regularized(alpha=RIDGE_ALPHA, L1_wt=0.0)
            ridge = {n: float(b) for n, b in zip(names, np.asarray(pen.params, float), strict=True)}
        except (np.linalg.LinAlgError, ValueError):
            ridge = None
    pvals = 2 * sps.norm.sf(np.abs(params / bse))
    coefs, unpenalised = [], []
    for j, name in enumerate(names):
        with np.errstate(over="ignore", invalid="ignore"):
            hr = np.exp(params[j])
            lo, hi = np.exp(params[j] - Z975 * bse[j]), np.exp(params[j] + Z975 * bse[j])
        if not separated:
            coefs.append({"covariate": name, "coef": float(params[j]), "se": float(bse[j]),
                          **number(hr, runs.height, (lo, hi), p_value=float(pvals[j])), "estimable": True,
                          "ridge_coef": None})
            continue
        # headline: the penalised estimate (no CI, no p); the diverging unpenalised numbers only under their own key
        b = ridge.get(name) if ridge else None
        coefs.append({"covariate": name, "coef": b, "se": None,
                      **number(float(np.exp(b)) if b is not None else None, runs.height, None, p_value=None),
                      "estimable": False, "ridge_coef": b})
        unpenalised.append({"covariate": name, "coef": float(params[j]), "se": float(bse[j]),
                            **number(hr, runs.height, (lo, hi), p_value=float(pvals[j]))})
    ph = _ph_check(res, t, e, names) if not separated else [
        not_testable("no finite maximum-likelihood fit")]
    risk = X @ params
    if (separated or not np.all(np.isfinite(risk))) and ridge is not None:
        risk = X @ np.array([ridge[n] for n in names])
    conc = concordance(t, e, risk) if np.all(np.isfinite(risk)) else None
    status = Status(StatusKind.SEPARATED, "the unpenalised hazard ratios diverge and are not estimable; the "
                    f"coefficients are ridge-penalised (alpha={RIDGE_ALPHA}), without CIs; the unpenalised numbers "
                    "are under unpenalised_separated, not for reading") if separated else Status(StatusKind.OK)
    out = {**base, **status.to_json(),
           "covariates": names, "coefficients": coefs, "concordance": conc,
           "concordance_from": f"ridge-penalised fit (alpha={RIDGE_ALPHA})" if separated
           else "maximum partial likelihood",
           "ridge_coefficients_no_ci": ridge,
           "penalty": (f"statsmodels PHReg.fit_regularized(alpha={RIDGE_ALPHA}, L1_wt=0): minimises "
                       f"-loglik/n + {RIDGE_ALPHA}/2 * ||beta||^2") if separated else None,
           "ph_check": ph, "converged": converged, "warnings": sorted({str(w.message)[:120] for w in caught})}
    if separated:
        out["unpenalised_separated"] = {
            "note": "monotone likelihood: the partial likelihood has no finite maximum, so these are where the "
                    "optimiser stopped, not estimates; not in the headline",
            "coefficients": unpenalised}
    return out


def _ph_check(res: Any, t: np.ndarray, e: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """Schoenfeld residuals of each covariate vs the rank of the event time (Pearson)."""
    ph: list[dict[str, Any]] = []
    try:
        sch = np.asarray(res.schoenfeld_residuals, float)
    except (ValueError, np.linalg.LinAlgError) as exc:
        return [not_testable(str(exc))]
    ev = e > 0
    ranks = sps.rankdata(t[ev])
    for j, name in enumerate(names):
        r = sch[ev, j]
        ok = np.isfinite(r)
        if ok.sum() >= 3 and np.ptp(r[ok]) > 0 and np.ptp(ranks[ok]) > 0:
            rho, p = sps.pearsonr(ranks[ok], r[ok])
            ph.append({"covariate": name, "rho": float(rho), "p_value": float(p), "n_events": int(ok.sum())})
        else:
            ph.append({"covariate": name, "rho": None, "p_value": None, "n_events": int(ok.sum()),
                       **not_testable("fewer than 3 informative events")})
    return ph
