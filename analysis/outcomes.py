"""Collapse outcomes alone: the analysis rule applied to a corpus without the rest of the evaluation.

The dose finder (``stabilitybench calibrate``) needs, after each stage of runs, only the
``collapsed`` flag of every run under the *same* rule that ``stabilitybench analyze`` applies
(:mod:`stabilitybench.analysis.collapse`, cross-fitted over control seeds). Reading the performance column
and the non-finite flags of each run is enough for that; the features, PCA and monitors of
:func:`stabilitybench.analysis.pipeline.run_analysis` are not needed.
"""

from __future__ import annotations

import os

import polars as pl

from stabilitybench.analysis.collapse import (
    OUTCOME_SCHEMA,
    CollapseConfig,
    RunCurves,
    collapse_group,
    nonfinite_steps,
)
from stabilitybench.analysis.data import (
    COLLAPSE_COLUMNS,
    NONFINITE_COLUMNS,
    collapse_curves,
    feature_frame,
    group_runs,
    iter_run_steps,
    load_events,
    load_runs,
)
from stabilitybench.data_schema.keys import control_mask

#: Manifest columns carried next to each outcome.
RUN_COLUMNS = ("run_id", "domain", "algo", "env", "stochasticity", "perturbation", "dimension", "magnitude",
               "duration_steps", "onset_step", "total_steps", "seed", "unperturbed")


def collapse_outcomes(corpus: str | os.PathLike[str], cfg: CollapseConfig | None = None,
                      notes: list[str] | None = None) -> pl.DataFrame:
    """One row per finished run of ``corpus``: :data:`RUN_COLUMNS` and the outcome columns of
    :func:`stabilitybench.analysis.collapse.collapse_group` (``collapsed``, ``collapse_kind``, ...).

    Groups are the analysis' matched groups (domain, algo, env, stochasticity); a group without
    controls yields outcomes whose ``note`` says so (only non-finite collapses count there).
    Damaged runs are left out as in :func:`stabilitybench.analysis.data.load_runs` (and listed in ``notes``).
    """
    cfg = cfg or CollapseConfig()
    runs = load_runs(corpus, notes)
    runs = runs.with_columns(control_mask(runs).alias("unperturbed"))
    events = load_events(corpus, runs)
    parts = []
    for _, g in group_runs(runs):
        perf: dict[str, RunCurves] = {}
        nf_rows: dict[str, int] = {}
        for row, steps in iter_run_steps(corpus, g, list(dict.fromkeys([*NONFINITE_COLUMNS, *COLLAPSE_COLUMNS]))):
            rid = row["run_id"]
            bad = feature_frame(steps, []).filter(pl.col("nonfinite"))["step"]
            if bad.len():
                nf_rows[rid] = int(bad.min())
            perf[rid] = collapse_curves(steps)  # dated as analyze dates them (lag-free on episode returns)
        nonfinite = nonfinite_steps(events, g, nf_rows)
        out = collapse_group(g, perf, nonfinite, g["unperturbed"].to_numpy(), cfg)
        parts.append(g.select([c for c in RUN_COLUMNS if c in g.columns]).join(out, on="run_id"))
    if not parts:
        return pl.DataFrame(schema={**{c: pl.String for c in ("run_id",)}, **OUTCOME_SCHEMA})
    return pl.concat(parts, how="diagonal_relaxed").sort("run_id")
