"""The intervention experiment: matched runs with and without an action on the live monitor's alarm.

A run's *arm* is its ``hparams.intervention`` (``none`` when absent; see ``stabilitybench.generate.intervention``),
read from the manifest's ``config_json``, and its *monitor* the name of the monitor file that drove it
(``kalman`` for ``.../kalman.monitor.npz``). A **matched pair** is a run with an action and the run
without one that shares everything else: algo, env, stochasticity, perturbation, magnitude, duration,
onset and seed (so the same perturbation hits the same seed; until the first action the two runs are
the same run). Per (perturbation, magnitude, monitor, action) the table gives, over the pairs:

* the collapse rate without and with the action, and the paired difference (with - without) with a
  percentile bootstrap CI over pairs;
* mean final performance without and with, and the paired difference with its CI;
* how many with-arm runs alarmed and acted, and the median update of the first action.

Unperturbed controls get the same rows: there every alarm is a false alarm, and the paired
performance difference is the cost of acting on it.

Outcomes (``collapsed``, ``final_performance``) come from the analysis (``runs.parquet`` after
``stabilitybench analyze``), which judges every run, with or without an action, against the band of
the group's *natural* controls only (:func:`stabilitybench.data_schema.keys.control_mask` excludes runs that acted),
and leaves runs that acted out of every other analysis (monitors, PCA, survival, regularities).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import polars as pl

from stabilitybench.analysis.data import intervention_arm, intervention_monitor
from stabilitybench.analysis.monitor_file import SUFFIX
from stabilitybench.analysis.stats import bootstrap_ci
from stabilitybench.data_schema.keys import ConfigKey

#: Columns that make two runs the same run but for the action.
PAIR_KEYS = ("algo", "env", "stochasticity", "perturbation", "magnitude", "duration_steps", "onset_frac", "seed")
ACTION_EVENTS = ("lr_backoff", "rollback", "stop")


def monitor_name(path: str | None) -> str | None:
    """``kalman`` for ``monitors/kalman.monitor.npz``: the monitor file's name without its suffix."""
    if not path:
        return None
    name = os.path.basename(str(path))
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def with_arms(runs: pl.DataFrame) -> pl.DataFrame:
    """``runs`` plus ``arm`` (the action(s) or ``none``), ``monitor_file`` and ``monitor`` columns."""
    files = intervention_monitor(runs)
    return runs.with_columns(intervention_arm(runs).alias("arm"), files.alias("monitor_file"),
                             pl.Series("monitor", [monitor_name(m) for m in files.to_list()], dtype=pl.String))


def action_counts(events: pl.DataFrame) -> pl.DataFrame:
    """Per run: ``n_alarms``, ``n_actions`` and ``first_action_step`` from the events table."""
    acts = events.filter(pl.col("event").is_in(ACTION_EVENTS))
    alarms = events.filter(pl.col("event") == "alarm").group_by("run_id").agg(pl.len().alias("n_alarms"))
    first = acts.group_by("run_id").agg(pl.len().alias("n_actions"), pl.col("step").min().alias("first_action_step"))
    return alarms.join(first, on="run_id", how="full", coalesce=True).with_columns(
        pl.col("n_alarms").fill_null(0), pl.col("n_actions").fill_null(0))


def matched_pairs(runs: pl.DataFrame) -> pl.DataFrame:
    """One row per (run with an action, its run without): ``PAIR_KEYS``, ``arm`` and ``_with``/``_without``
    outcomes. ``runs`` needs ``PAIR_KEYS``, ``run_id``, ``config_json``, ``collapsed``, ``final_performance``."""
    r = with_arms(runs)
    keys = [k for k in PAIR_KEYS if k in r.columns]
    cols = ["run_id", "collapsed", "final_performance"]
    base = r.filter(pl.col("arm") == "none").select(*keys, *cols)
    act = r.filter(pl.col("arm") != "none").select(*keys, "arm", "monitor_file", "monitor", *cols)
    return act.join(base, on=keys, how="inner", suffix="_without", nulls_equal=True).rename(
        {"run_id": "run_id_with", "collapsed": "collapsed_with", "final_performance": "final_performance_with"})


def _paired(diff: np.ndarray, n_boot: int, seed: int) -> tuple[float | None, tuple[float | None, float | None]]:
    d = diff[np.isfinite(diff)]
    if d.size == 0:
        return None, (None, None)
    ci = bootstrap_ci(lambda idx: float(d[idx].mean()), d.size, n_boot=n_boot, seed=seed) if d.size > 1 \
        else (None, None)
    return float(d.mean()), ci


def intervention_table(runs: pl.DataFrame, events: pl.DataFrame | None = None, n_boot: int = 2000,
                       seed: int = 0) -> pl.DataFrame:
    """The intervention table (module docstring): one row per (perturbation, magnitude, monitor, arm)."""
    pairs = matched_pairs(runs)
    if events is not None and events.height:
        counts = action_counts(events).rename({"run_id": "run_id_with"})
        pairs = pairs.join(counts, on="run_id_with", how="left").with_columns(
            pl.col("n_alarms").fill_null(0), pl.col("n_actions").fill_null(0))
    else:
        pairs = pairs.with_columns(pl.lit(None, dtype=pl.UInt32).alias("n_alarms"),
                                   pl.lit(None, dtype=pl.UInt32).alias("n_actions"),
                                   pl.lit(None, dtype=pl.Int64).alias("first_action_step"))
    rows: list[dict[str, Any]] = []
    for (pert, mag, monitor, arm), g in sorted(pairs.group_by(["perturbation", "magnitude", "monitor", "arm"]),
                                               key=lambda kv: tuple(str(k) for k in kv[0])):
        cw = g["collapsed_with"].cast(pl.Float64).to_numpy()
        cwo = g["collapsed_without"].cast(pl.Float64).to_numpy()
        pw = g["final_performance_with"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        pwo = g["final_performance_without"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        dc, dc_ci = _paired(cw - cwo, n_boot, seed)
        dp, dp_ci = _paired(pw - pwo, n_boot, seed)
        first = g["first_action_step"].drop_nulls()
        rows.append({
            "perturbation": pert, "magnitude": mag, "monitor": monitor, "arm": arm, "n_pairs": g.height,
            "collapse_rate_without": float(np.nanmean(cwo)), "collapse_rate_with": float(np.nanmean(cw)),
            "collapse_diff": dc, "collapse_diff_ci_low": dc_ci[0], "collapse_diff_ci_high": dc_ci[1],
            "final_perf_without": float(np.nanmean(pwo)) if np.isfinite(pwo).any() else None,
            "final_perf_with": float(np.nanmean(pw)) if np.isfinite(pw).any() else None,
            "perf_diff": dp, "perf_diff_ci_low": dp_ci[0], "perf_diff_ci_high": dp_ci[1],
            "runs_alarmed": int((g["n_alarms"] > 0).sum()) if g["n_alarms"].null_count() < g.height else None,
            "runs_acted": int((g["n_actions"] > 0).sum()) if g["n_actions"].null_count() < g.height else None,
            "median_first_action_step": float(first.median()) if first.len() else None,
            "controls": ConfigKey(pert).is_control,
        })
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()


def intervention_from_corpus(corpus: str | os.PathLike[str], n_boot: int = 2000, seed: int = 0) -> pl.DataFrame:
    """:func:`intervention_table` of an analysed corpus (``runs.parquet`` outcomes + the events files).

    Raises :class:`~analysis.errors.NoRunsError` if ``stabilitybench analyze`` has not written the outcomes.
    """
    from pathlib import Path

    from stabilitybench.analysis.data import load_events
    from stabilitybench.analysis.errors import NoRunsError
    from stabilitybench.data_schema import require_corpus
    from stabilitybench.data_schema.corpus import RUNS

    path = Path(require_corpus(corpus), RUNS)
    if not path.exists():
        raise NoRunsError(f"{corpus}: no {RUNS} (run `stabilitybench analyze --corpus {corpus}` first)")
    runs = pl.read_parquet(path).filter(pl.col("status") == "ok")
    return intervention_table(runs, load_events(corpus), n_boot=n_boot, seed=seed)


def intervention_section(everything: pl.DataFrame, events: pl.DataFrame, n_boot: int = 2000, seed: int = 0
                         ) -> tuple[pl.DataFrame, dict[str, Any]]:
    """``analyze``'s intervention stage: the table and its ``summary.json`` entry (not applicable without
    runs that acted). ``everything``: every run with its outcome, those that acted included."""
    from stabilitybench.analysis.summary import Status, StatusKind

    acted = everything.filter(pl.col("arm") != "none") if "arm" in everything.columns else everything.clear()
    if acted.height == 0:
        return pl.DataFrame(), Status(StatusKind.NOT_APPLICABLE, "no run acted on a live monitor's alarm "
                                      "(the intervention profile makes them)").to_json()
    table = intervention_table(everything, events, n_boot=n_boot, seed=seed)
    entry: dict[str, Any] = {**Status(StatusKind.OK).to_json(),
                             "question": "does acting on the live monitor's alarm change collapse and final "
                                         "performance? matched pairs (same seed and perturbation) with vs without",
                             "n_runs_acted": acted.height,
                             "n_pairs": int(table["n_pairs"].sum()) if table.height else 0,
                             "rows": table.to_dicts() if table.height else []}
    if table.height == 0:
        entry.update(Status(StatusKind.NOT_TESTABLE, "no run with an action has its no-action twin (same seed and "
                            "perturbation) in the corpus").to_json())
    return table, entry
