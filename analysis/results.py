"""Reading ``results/`` back: the contract between ``analysis`` (which writes it) and ``reports``.

``reports`` draws from these tables and from ``summary.json`` and recomputes nothing.
:data:`TABLES` lists every table :func:`analysis.pipeline.run_analysis` may write (a table
whose analysis was not testable on a corpus is absent; ``summary.json`` says why).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import polars as pl

from analysis.errors import AnalysisError

#: file stem -> what one row is
TABLES: dict[str, str] = {
    "runs": ("one run: the manifest plus collapsed, collapse_kind, collapse_step (offline date), "
             "collapse_confirmed_step, collapse_time (null when censored), survival_time, censored, transient, "
             "final_performance"),
    "collapse_details": "one run: the outcome plus the rule's control fold and notes",
    "collapse_sensitivity": "configuration x (drop, spread_k): collapsed counts under other rule settings",
    "dose_response": "configuration: collapse probability with a Clopper-Pearson CI, final performance",
    "final_performance_iqm": "configuration: IQM of the control-normalised final performance over runs and envs, "
                             "stratified-bootstrap 95% CI (rliable-style; analysis.aggregates)",
    "performance_profiles": "(configuration, tau): fraction of runs with control-normalised final performance "
                            "> tau, stratified-bootstrap 95% CI",
        "pca_explained": "(group, subset, component): explained-variance ratio, real and circular-shift null",
    "pca_trajectories": "(group, run, block): the block's telemetry projected on PCs 1-3",
    "early_warning_runs": "(test run, detector): conformal threshold, scores as -log10 p, first alarm, lead",
    "early_warning_scores": "(test run, detector, block): smoothed score, threshold, conformal p-value",
    "early_warning_metrics": "detector: question (a) detection metrics with CIs (flattened)",
    "early_warning_loeo_runs": "(test run, detector) of the leave-one-env-out evaluation (several envs only)",
    "coherence_aligned": "(collapsed run, offset from onset): coherence vs the same configuration's non-collapsed runs",
    "km": "(stratum: configuration, event time): Kaplan-Meier survival with a 95% CI",
    "logrank": "comparison (configuration vs matched controls): log-rank chi2 and p-value",
    "cox": "covariate: Cox PH coefficient, hazard ratio with CI, p-value",
    "dissociation": "(stability measure, level): Spearman rho of final performance vs stability, CI, p",
}


class ResultsNotFoundError(AnalysisError):
    """The results folder (or its summary.json) does not exist: run ``stabilitybench analyze`` first."""


class ResultsCorruptError(AnalysisError):
    """summary.json or a results table exists but cannot be read: rerun ``stabilitybench analyze``."""


def load_summary(results: str | os.PathLike[str]) -> dict[str, Any]:
    """``summary.json`` of a results folder."""
    path = Path(results, "summary.json")
    if not path.exists():
        raise ResultsNotFoundError(f"{path.parent}: no summary.json here (run `stabilitybench analyze` first)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ResultsCorruptError(f"{path}: not valid JSON ({exc}); rerun `stabilitybench analyze`") from None
    if not isinstance(summary, dict):
        raise ResultsCorruptError(f"{path}: not an analysis summary (a JSON object); rerun `stabilitybench analyze`")
    return summary


def load_table(results: str | os.PathLike[str], name: str) -> pl.DataFrame | None:
    """One results table as a polars DataFrame, or None when that analysis wrote none."""
    if name not in TABLES:
        raise AnalysisError(f"unknown results table {name!r} (known: {', '.join(TABLES)})")
    path = Path(results, f"{name}.parquet")
    if not path.exists():
        return None
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResultsCorruptError(f"{path}: not a readable Parquet file ({first}); rerun `stabilitybench analyze`"
                                  ) from None
