"""Survival analysis of collapse times (statsmodels): Kaplan-Meier, log-rank, Cox PH.

The unit is a run; its duration is ``collapse_time`` (updates from perturbation onset to
collapse, or to the last update when censored, see :mod:`analysis.collapse`) and its event
indicator is ``collapsed``.

* **Kaplan-Meier** (``statsmodels.duration.SurvfuncRight``) per perturbation x magnitude,
  with pointwise 95% CIs on the log(-log) scale from Greenwood's variance (the
  "exponential Greenwood" interval, as in lifelines).
* **Log-rank** (``survdiff``): one k-sample test across all perturbation x magnitude groups,
  and each perturbed group against the unperturbed controls.
* **Cox PH** (``PHReg``, Efron ties) with the covariates the corpus varies: ``log10
  magnitude`` (per decade; raw magnitude when a kind allows magnitude <= 0), dummies of
  ``dimension``, ``algo`` and ``stochasticity``, and two early covariates, standardised to
  per-SD hazard ratios: ``early_msd`` (the Kalman monitor's MSD over the first blocks after
  onset, out of sample) and ``early_coherence`` (mean gradient coherence over the first
  ``early`` updates after onset minus the same-length window before). Covariates that are
  constant (or collinear with the kept ones) are dropped and listed. Reported: hazard ratios
  with CIs and p-values, Harrell's concordance, and a proportional-hazards check
  (Pearson correlation of each covariate's Schoenfeld residuals with the rank of the event
  time; a small p-value flags non-proportional hazards). With few events or a covariate
  that separates collapsing from non-collapsing runs the partial likelihood has no finite
  maximum ("monotone likelihood"); that is detected and reported, not hidden. When the corpus
  spans several domains or envs the model is stratified by domain/env (a baseline hazard
  each), since collapse times of different tasks share no time scale.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import polars as pl
from scipy import stats as sps
from statsmodels.duration.hazard_regression import PHReg
from statsmodels.duration.survfunc import SurvfuncRight, survdiff

from analysis.stats import not_testable, number

Z975 = float(sps.norm.ppf(0.975))


def group_label(perturbation: str, magnitude: float | None, duration: int | None = None) -> str:
    """``"lr_spike x10 (320 upd)"``-style label of a perturbation configuration."""
    if perturbation == "none":
        return "none"
    mag = "" if magnitude is None else f" x{magnitude:g}"
    dur = "" if duration is None else f" ({duration} upd)"
    return f"{perturbation}{mag}{dur}"


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


def km_table(runs: pl.DataFrame) -> pl.DataFrame:
    """KM curves of every perturbation x magnitude x duration group in ``runs`` (with outcome columns)."""
    parts = []
    for key, g in _groups(runs):
        t = g["collapse_time"].to_numpy().astype(float)
        e = g["collapsed"].to_numpy().astype(float)
        if t.size == 0:
            continue
        km = kaplan_meier(t, e).with_columns(pl.lit(key).alias("group"), pl.lit(g.height).alias("n_runs"))
        parts.append(km)
    if not parts:
        return pl.DataFrame()
    return pl.concat(parts, how="diagonal_relaxed").select("group", "n_runs", pl.exclude("group", "n_runs"))


def _groups(runs: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    labelled = runs.with_columns(
        pl.struct(["perturbation", "magnitude", "duration_steps"]).map_elements(
            lambda s: group_label(s["perturbation"], s["magnitude"], s["duration_steps"]), return_dtype=pl.String
        ).alias("_group")
    ).filter(pl.col("collapse_time").is_not_null())
    return [(str(k[0]), g) for k, g in sorted(labelled.group_by(["_group"]), key=lambda kv: str(kv[0][0]))]


def logrank(runs: pl.DataFrame) -> list[dict[str, Any]]:
    """k-sample log-rank test over all groups, and each perturbed group vs ``none``."""
    groups = _groups(runs)
    out: list[dict[str, Any]] = []
    if len(groups) < 2:
        return [{"comparison": "all groups", **not_testable("fewer than two groups")}]
    t = np.concatenate([g["collapse_time"].to_numpy() for _, g in groups]).astype(float)
    e = np.concatenate([g["collapsed"].to_numpy() for _, g in groups]).astype(float)
    lab = np.concatenate([[k] * g.height for k, g in groups])
    out.append(_survdiff_row("all groups", t, e, lab))
    ctrl = dict(groups).get("none")
    if ctrl is not None:
        for k, g in groups:
            if k == "none":
                continue
            both = pl.concat([ctrl, g])
            out.append(_survdiff_row(f"{k} vs none", both["collapse_time"].to_numpy().astype(float),
                                     both["collapsed"].to_numpy().astype(float),
                                     np.array(["none"] * ctrl.height + [k] * g.height)))
    return out


def _survdiff_row(name: str, t: np.ndarray, e: np.ndarray, lab: np.ndarray) -> dict[str, Any]:
    n_events = int(e.sum())
    if n_events == 0:
        return {"comparison": name, "chi2": None, "df": None, "p_value": None, "n": int(t.size),
                "n_events": 0, "status": "not testable: no collapses"}
    try:
        chi2, p = survdiff(t, e, lab)
    except np.linalg.LinAlgError:
        return {"comparison": name, "chi2": None, "df": None, "p_value": None, "n": int(t.size),
                "n_events": n_events, "status": "not testable: singular variance (too many groups for the events)"}
    return {"comparison": name, "chi2": float(chi2), "df": len(set(lab.tolist())) - 1, "p_value": float(p),
            "n": int(t.size), "n_events": n_events, "status": "ok"}


def design_matrix(runs: pl.DataFrame) -> tuple[np.ndarray, list[str], list[str]]:
    """Cox covariates from ``runs`` (outcomes + optional ``early_msd``/``early_coherence``).

    Returns ``X (n, q)``, the kept column names and the dropped ones (with the reason).
    """
    cols: dict[str, np.ndarray] = {}
    mag = runs["magnitude"].fill_null(1.0).to_numpy().astype(float)
    if np.all(mag > 0):
        cols["log10_magnitude"] = np.log10(mag)
    else:
        cols["magnitude"] = mag
    for cat, ref in (("dimension", "none"), ("algo", None), ("stochasticity", "default")):
        vals = runs[cat].cast(pl.String).to_list()
        levels = sorted(set(vals))
        base = ref if ref in levels else (levels[0] if levels else None)
        for lv in levels:
            if lv != base:
                cols[f"{cat}={lv}"] = np.array([v == lv for v in vals], dtype=float)
        if len(levels) <= 1:
            cols[f"{cat} (one level)"] = np.zeros(len(vals))
    for name in ("early_msd", "early_coherence"):
        if name in runs.columns:
            v = runs[name].to_numpy().astype(float)
            finite = v[np.isfinite(v)]
            sd = finite.std() if finite.size > 1 else 0.0
            cols[f"{name} (per SD)"] = (v - (finite.mean() if finite.size else 0.0)) / (sd if sd > 0 else 1.0)
    kept, dropped, mats = [], [], []
    for name, v in cols.items():
        if not np.all(np.isfinite(v)):
            dropped.append(f"{name} (missing values)")
            continue
        if np.ptp(v) == 0:
            dropped.append(f"{name} (constant)")
            continue
        trial = np.column_stack([*mats, v])
        centred = trial - trial.mean(axis=0)
        if np.linalg.matrix_rank(centred) < trial.shape[1]:
            dropped.append(f"{name} (collinear)")
            continue
        mats.append(v)
        kept.append(name)
    X = np.column_stack(mats) if mats else np.zeros((runs.height, 0))
    return X, kept, dropped


def concordance(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float | None:
    """Harrell's C: among comparable pairs (the earlier time is an event), share where higher risk fails first."""
    t, e, r = (np.asarray(a, float) for a in (time, event, risk))
    num = den = 0.0
    for i in np.flatnonzero(e > 0):
        later = t > t[i]
        den += later.sum()
        num += (r[i] > r[later]).sum() + 0.5 * (r[i] == r[later]).sum()
    return float(num / den) if den > 0 else None


def cox(runs: pl.DataFrame) -> dict[str, Any]:
    """Cox PH fit on ``runs``; returns a summary dict with a ``coefficients`` list."""
    runs = runs.filter(pl.col("collapse_time").is_not_null())
    t = runs["collapse_time"].to_numpy().astype(float)
    e = runs["collapsed"].to_numpy().astype(float)
    X, names, dropped = design_matrix(runs)
    base = {"n": runs.height, "n_events": int(e.sum()), "dropped_covariates": dropped}
    if e.sum() < 2 or X.shape[1] == 0:
        return {**base, **not_testable("fewer than 2 collapses or no varying covariate")}
    t = np.maximum(t, 0.0)
    strata = None
    keys = [k for k in ("domain", "env") if k in runs.columns]
    if keys:
        labels = runs.select(pl.concat_str([pl.col(k).cast(pl.String) for k in keys], separator="/"))
        labels = labels.to_series().to_list()
        if len(set(labels)) > 1:  # separate baseline hazards per domain/env; algo etc. stay covariates
            strata = np.unique(labels, return_inverse=True)[1]
            base["strata"] = sorted(set(labels))
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
    if separated:  # a finite, shrunk point estimate for orientation only (no CI): L2-penalised partial likelihood
        try:
            pen = model.fit_regularized(alpha=0.1, L1_wt=0.0)
            ridge = {n: float(b) for n, b in zip(names, np.asarray(pen.params, float), strict=True)}
        except (np.linalg.LinAlgError, ValueError):
            ridge = None
    pvals = 2 * sps.norm.sf(np.abs(params / bse))
    coefs = []
    for j, name in enumerate(names):
        with np.errstate(over="ignore", invalid="ignore"):
            hr = np.exp(params[j])
            lo, hi = np.exp(params[j] - Z975 * bse[j]), np.exp(params[j] + Z975 * bse[j])
        coefs.append({"covariate": name, "coef": float(params[j]), "se": float(bse[j]), **number(hr, runs.height,
                      (lo, hi), p_value=float(pvals[j]))})
    # PH check: Schoenfeld residuals vs rank of event time
    ph: list[dict[str, Any]] = []
    if separated:
        ph.append({"status": "not testable: no finite maximum-likelihood fit"})
    try:
        if separated:
            raise ValueError("skipped")
        sch = np.asarray(res.schoenfeld_residuals, float)
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
                           "status": "not testable: fewer than 3 informative events"})
    except (ValueError, np.linalg.LinAlgError) as exc:
        if not separated:
            ph.append({"status": f"not testable: {exc}"})
    risk = X @ params
    if not np.all(np.isfinite(risk)) and ridge is not None:
        risk = X @ np.array([ridge[n] for n in names])
    conc = concordance(t, e, risk) if np.all(np.isfinite(risk)) else None
    out = {**base, "status": "ok" if not separated else
           "monotone likelihood (separation): the unpenalised hazard ratios diverge and are not estimable",
           "covariates": names, "coefficients": coefs, "concordance": conc,
           "concordance_from": "ridge-penalised fit (alpha=0.1)" if separated else "maximum partial likelihood",
           "ridge_coefficients_no_ci": ridge,
           "ph_check": ph, "converged": converged, "warnings": sorted({str(w.message)[:120] for w in caught})}
    return out
