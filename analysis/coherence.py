"""Gradient coherence aligned on collapse, against the matched unperturbed controls.

For every collapsed, perturbed run of a matched group, the block means of
``grad_coherence`` (shape ``(T,)`` per run, blocks as in :mod:`analysis.data`) are taken at
offsets ``-window .. +window`` blocks around the block that holds the collapse step, next
to the mean coherence of the group's unperturbed controls at the *same* blocks (same
absolute training time). The difference (run - controls) is the excess coherence; the
summary is its mean over the ``window`` blocks *before* the collapse, per run, then
averaged over runs with a bootstrap CI over runs. The paper predicts a sharp drop
(negative excess) before collapse.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import polars as pl

from analysis.stats import bootstrap_ci, not_testable, number


def aligned(
    arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    features: list[str],
    runs: pl.DataFrame,
    window: int = 30,
) -> pl.DataFrame:
    """Rows ``run_id, offset_blocks, offset_updates, coherence, control_coherence, excess`` for collapsed runs.

    ``runs`` needs ``run_id, unperturbed, collapsed, collapse_step``.
    """
    schema = {"run_id": pl.String, "offset_blocks": pl.Int64, "offset_updates": pl.Int64, "coherence": pl.Float64,
              "control_coherence": pl.Float64, "excess": pl.Float64}
    if "grad_coherence" not in features:
        return pl.DataFrame(schema=schema)
    j = features.index("grad_coherence")
    ctrl = [arrays[r][1][:, j] for r in runs.filter(pl.col("unperturbed"))["run_id"].to_list() if r in arrays]
    if not ctrl:
        return pl.DataFrame(schema=schema)
    L = max(c.size for c in ctrl)
    grid = np.full((len(ctrl), L), np.nan)
    for i, c in enumerate(ctrl):
        grid[i, : c.size] = c
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        control = np.nanmean(grid, axis=0)
    rows = []
    for r in runs.filter(pl.col("collapsed") & ~pl.col("unperturbed")).iter_rows(named=True):
        if r["run_id"] not in arrays or r["collapse_step"] is None:
            continue
        steps, X, _ = arrays[r["run_id"]]
        c = int(np.searchsorted(steps, r["collapse_step"], side="left"))
        for o in range(-window, window + 1):
            b = c + o
            if 0 <= b < steps.size:
                ref = control[b] if b < control.size else np.nan
                rows.append({"run_id": r["run_id"], "offset_blocks": o, "offset_updates": int(steps[b]) -
                             int(r["collapse_step"]), "coherence": float(X[b, j]), "control_coherence": float(ref),
                             "excess": float(X[b, j] - ref)})
    return pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)


def summarise(table: pl.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean pre-collapse excess coherence over runs (per-run means of offsets ``< 0``), bootstrap CI over runs."""
    pre = table.filter((pl.col("offset_blocks") < 0) & pl.col("excess").is_not_nan())
    if pre.height == 0:
        return not_testable("no collapsed run with coherence telemetry and matched controls")
    per_run = pre.group_by("run_id").agg(pl.col("excess").mean()).sort("run_id")["excess"].to_numpy()
    ci = bootstrap_ci(lambda idx: float(per_run[idx].mean()), per_run.size, n_boot, seed=seed)
    return {"pre_collapse_excess_coherence": number(float(per_run.mean()), int(per_run.size), ci,
                                                    note="run minus matched controls, blocks before collapse")}
