"""Coherence precedence: does gradient coherence fall in runs that go on to collapse, *within a configuration*?

The fair contrast is collapsed vs perturbed-but-not-collapsed runs of the **same configuration**
(perturbation x magnitude x duration, same matched group), both **aligned on the perturbation
onset**: they received the same kick at the same time, so a difference between them is about
the outcome, not about being perturbed (comparing with unperturbed controls would measure
"perturbed minus unperturbed"). Only blocks strictly before a collapsed run's own collapse
date count.

Per domain and per **estimator** (the ``grad_coherence`` column measures different things in
different domains, see its schema description: RL is the *rolling* estimator across the last
K updates, LM the *fixed-point* estimator across K microbatches at fixed parameters), the
summary is the mean over collapsed runs of their per-run mean excess (run minus the mean of
its configuration's non-collapsed runs at the same onset offset), with a cluster bootstrap
over seeds. The paper predicts a negative excess (a drop) before collapse.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import polars as pl

from stabilitybench.analysis.stats import cluster_bootstrap_ci
from stabilitybench.analysis.summary import not_testable, number
from stabilitybench.analysis.survival import with_config_label
from stabilitybench.data_schema.keys import onset_step

#: The estimator behind ``grad_coherence`` per domain (see the schema description of the column).
ESTIMATORS = {"rl": "rolling: across the last K updates",
              "lm": "fixed-point: across K microbatches at fixed parameters"}

_SCHEMA = {"domain": pl.String, "estimator": pl.String, "config": pl.String, "run_id": pl.String, "seed": pl.Int64,
           "offset_blocks": pl.Int64, "offset_updates": pl.Int64, "coherence": pl.Float64,
           "control_coherence": pl.Float64, "excess": pl.Float64, "n_reference_runs": pl.Int64}


def aligned(
    arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    features: list[str],
    runs: pl.DataFrame,
    window: int = 30,
    domain: str = "rl",
) -> pl.DataFrame:
    """Onset-aligned coherence of collapsed runs vs their configuration's non-collapsed runs.

    ``runs`` needs ``run_id, seed, unperturbed, collapsed, collapse_step, onset_step, perturbation,
    magnitude, duration_steps``. One row per (collapsed run, offset ``0..window`` blocks after the
    onset block, before its collapse); ``control_coherence`` is the mean of the same configuration's
    perturbed, non-collapsed runs at that offset (the column keeps its name for the report).
    """
    if "grad_coherence" not in features:
        return pl.DataFrame(schema=_SCHEMA)
    j = features.index("grad_coherence")
    pert = with_config_label(runs.filter(~pl.col("unperturbed")))
    rows = []
    for (conf,), g in pert.group_by(["config"]):
        ref_ids = [r for r in g.filter(~pl.col("collapsed"))["run_id"].to_list() if r in arrays]
        col = g.filter(pl.col("collapsed") & pl.col("collapse_step").is_not_null())
        if not ref_ids or col.height == 0:
            continue
        grid = np.full((len(ref_ids), window + 1), np.nan)
        for i, rid in enumerate(ref_ids):
            steps, X, _ = arrays[rid]
            b0 = int(np.searchsorted(steps, onset_step(g.row(by_predicate=pl.col("run_id") == rid, named=True))))
            seg = X[b0: b0 + window + 1, j]
            grid[i, : seg.size] = seg
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = np.nanmean(grid, axis=0)
        for r in col.iter_rows(named=True):
            if r["run_id"] not in arrays:
                continue
            steps, X, _ = arrays[r["run_id"]]
            onset = onset_step(r)
            b0 = int(np.searchsorted(steps, onset))
            for o in range(window + 1):
                b = b0 + o
                if b >= steps.size or steps[b] >= r["collapse_step"]:
                    break
                rows.append({"domain": domain, "estimator": ESTIMATORS.get(domain, "unknown"), "config": str(conf),
                             "run_id": r["run_id"], "seed": int(r["seed"]), "offset_blocks": o,
                             "offset_updates": int(steps[b]) - onset, "coherence": float(X[b, j]),
                             "control_coherence": float(ref[o]), "excess": float(X[b, j] - ref[o]),
                             "n_reference_runs": len(ref_ids)})
    return pl.DataFrame(rows, schema=_SCHEMA) if rows else pl.DataFrame(schema=_SCHEMA)


def summarise(table: pl.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per (domain, estimator): mean pre-collapse excess over collapsed runs, cluster bootstrap over seeds.

    Returns ``{"by_estimator": [{"domain", "estimator", "pre_collapse_excess_coherence": estimate}, ...]}``,
    or a not-testable entry.
    """
    ok = table.filter(pl.col("excess").is_not_nan() & pl.col("excess").is_not_null())
    if ok.height == 0:
        return not_testable("no configuration with both a collapsed and a non-collapsed perturbed run that has "
                            "coherence telemetry (need >= 1 of each per configuration; ~8 seeds per configuration "
                            "at a dose near its ED50 for a CI)")
    out: list[dict[str, Any]] = []
    for (dom, est), g in sorted(ok.group_by(["domain", "estimator"]), key=lambda kv: str(kv[0])):
        per_run = g.group_by("run_id").agg(pl.col("excess").mean(), pl.col("seed").first(),
                                           pl.col("config").first()).sort("run_id")
        x = per_run["excess"].to_numpy()
        lo, hi, how = cluster_bootstrap_ci(lambda idx, x=x: float(x[idx].mean()), per_run["seed"].to_numpy(), n_boot,
                                           seed=seed)
        out.append({
            "domain": dom, "estimator": est,
            "pre_collapse_excess_coherence": number(float(x.mean()), int(x.size), (lo, hi), interval=how,
                                                    n_configurations=per_run["config"].n_unique(),
                                                    note="collapsed minus perturbed-not-collapsed runs of the same "
                                                         "configuration, aligned on onset, blocks before collapse")})
    return {"by_estimator": out}
