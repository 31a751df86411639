"""The paper's three regularities, each as a small table with effect size, CI and p-value.

1. **Dissociation** (final performance is decoupled from stability): Spearman's rho between
   final performance and stability across *configurations* (perturbation x magnitude x
   duration; seed means), **per domain and algorithm** (final performance is a return in RL
   and minus a validation loss in LM: quantities in different units are never correlated
   together), for two stability measures: the survival time (from onset, so a censored run
   counts with its censoring time, a lower bound) and the max MSD of the Kalman monitor
   (out of sample, test folds, as ``-log10`` of its conformal p-value). CI: bootstrap over
   configurations; the run-level rho (cluster bootstrap over seeds) is reported too. Decoupling
   predicts |rho| near 0; a CI that excludes 0 contradicts it.
2. **Stochasticity buffer**: collapse probability per stochasticity level (Clopper-Pearson)
   and the Cox hazard ratio of the level. Not testable when the corpus has one level.
3. **Precedence** (meta-state deviations precede collapse): the monitors' lead-time
   distribution and the share of collapses whose MSD alarm came first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from scipy import stats as sps

from stabilitybench.analysis.detectors import monitor_names
from stabilitybench.analysis.stats import bootstrap_ci, clopper_pearson, cluster_bootstrap_ci, iqr
from stabilitybench.analysis.summary import Status, not_testable, number
from stabilitybench.analysis.survival import with_config_label
from stabilitybench.data_schema.keys import control_mask


def _usable(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """The finite pairs' mask, or None when fewer than 3 remain or either side is constant."""
    ok = np.isfinite(x) & np.isfinite(y)
    return None if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0 else ok


def _spearman(x: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    ok = _usable(x, y)
    if ok is None:
        return None, None
    r = sps.spearmanr(x[ok], y[ok])
    return float(r.statistic), float(r.pvalue)


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rho of the finite pairs (None as in :func:`_spearman`), without the p-value.

    The Pearson correlation of the mid-ranks, which is what ``scipy.stats.spearmanr`` computes, at a
    fraction of its cost: it runs once per bootstrap replicate.
    """
    ok = _usable(x, y)
    if ok is None:
        return None
    rx, ry = sps.rankdata(x[ok]), sps.rankdata(y[ok])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float(rx @ ry / np.sqrt((rx @ rx) * (ry @ ry)))


def dissociation(runs: pl.DataFrame, n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Spearman(final performance, stability) per (domain, algo) and stability measure, config- and run-level.

    ``runs`` needs ``domain, algo, final_performance``, ``survival_time`` (or ``collapse_time``) and
    optionally ``max_msd``.
    """
    r = with_config_label(runs)
    if "survival_time" not in r.columns and "collapse_time" in r.columns:
        r = r.with_columns(pl.col("collapse_time").alias("survival_time"))
    keys = [k for k in ("domain", "algo") if k in r.columns]
    groups = sorted(r.group_by(keys), key=lambda kv: str(kv[0])) if keys else [((), r)]
    out = []
    for key, rg in groups:
        where = dict(zip(keys, (str(k) for k in key), strict=True))
        for measure in ("survival_time", "max_msd"):
            if measure not in rg.columns:
                continue
            cfg = rg.group_by("config").agg(pl.col("final_performance").mean(), pl.col(measure).mean()).sort("config")
            for level, frame in (("configuration", cfg), ("run", rg)):
                x = frame["final_performance"].cast(pl.Float64).fill_null(np.nan).to_numpy()
                y = frame[measure].cast(pl.Float64).fill_null(np.nan).to_numpy()
                rho, p = _spearman(x, y)
                if rho is None:
                    out.append({**where, "measure": measure, "level": level,
                                **not_testable("fewer than 3 finite, varying pairs"), "n": int(frame.height)})
                    continue
                def stat(idx: np.ndarray, x: np.ndarray = x, y: np.ndarray = y) -> float | None:
                    return spearman_rho(x[idx], y[idx])

                if level == "run" and "seed" in frame.columns:  # runs that share a seed are not independent
                    lo, hi, how = cluster_bootstrap_ci(stat, frame["seed"].to_numpy(), n_boot, seed=seed)
                else:  # configurations are the units
                    (lo, hi), how = bootstrap_ci(stat, x.size, n_boot, seed=seed), "percentile, over configurations"
                out.append({**where, "measure": measure, "level": level,
                            **number(rho, int(x.size), (lo, hi), p_value=p, interval=how),
                            "decoupled": bool(lo is not None and lo <= 0 <= hi)})
    return out


def stochasticity_buffer(runs: pl.DataFrame, cox_summary: dict[str, Any]) -> dict[str, Any]:
    """Collapse probability per stochasticity level (perturbed runs) and the Cox HR of the level."""
    levels = sorted(set(runs["stochasticity"].to_list()))
    if len(levels) < 2:
        return not_testable(f"one stochasticity level in the corpus ({', '.join(levels)})", levels=levels)
    per = []
    pert = runs.filter(~control_mask(runs))
    for lv in levels:
        g = pert.filter(pl.col("stochasticity") == lv)
        k = int(g["collapsed"].sum())
        per.append({"level": lv, **number(k / g.height if g.height else None, g.height, clopper_pearson(k, g.height))})
    hrs = [c for c in cox_summary.get("coefficients", []) if str(c["covariate"]).startswith("stochasticity=")]
    return {"status": "ok", "collapse_probability": per, "cox_hazard_ratios": hrs,
            "cox_status": Status.from_json(cox_summary).to_json()}


def precedence(ew_rows: pl.DataFrame | None, detectors: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Lead-time distribution and the share of collapses whose alarm came first, per monitor.

    ``detectors``: default the meta-state monitors (:func:`stabilitybench.analysis.detectors.monitor_names`).
    ``ew_rows`` None (no early-warning evaluation) gives a not-testable entry per monitor.
    """
    detectors = monitor_names() if detectors is None else detectors
    if ew_rows is None:
        return [{"detector": det, **not_testable("no early-warning evaluation")} for det in detectors]
    out = []
    for det in detectors:
        d = ew_rows.filter((pl.col("detector") == det) & pl.col("collapsed"))
        if d.height == 0:
            out.append({"detector": det, **not_testable("no collapsed test runs")})
            continue
        leads = np.array([x for x in d["lead_updates"].to_list() if x is not None], dtype=float)
        k = int(d["alarm_before_collapse"].sum())
        q1, q3 = iqr(leads)
        ci = bootstrap_ci(lambda idx, leads=leads: float(np.median(leads[idx])), leads.size) if leads.size else None
        out.append({
            "detector": det,
            "share_alarm_first": number(k / d.height, d.height, clopper_pearson(k, d.height)),
            "median_lead_updates": number(float(np.median(leads)) if leads.size else None, int(leads.size),
                                          ci, iqr_low=q1, iqr_high=q3),
            "min_lead_updates": float(leads.min()) if leads.size else None,
            "max_lead_updates": float(leads.max()) if leads.size else None,
            "leads": leads.tolist(),
        })
    return out
