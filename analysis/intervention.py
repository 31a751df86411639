"""The intervention experiment: matched runs with and without an action, and the timing controls (issue 25).

A run's *arm* is read from its spec's hparams in the manifest's ``config_json`` (see
``stabilitybench.generate.intervention``): ``arm`` is the action string (``hparams.intervention``, ``none`` when
absent: :func:`stabilitybench.data_schema.keys.intervention_arm`) and ``arm_kind`` one of :data:`ARMS`:

* ``none``: no intervention hparams (natural training);
* ``log_only``: ``intervention = "log"``: the monitor's alarms recorded, no action (training is the ``none`` run's);
* ``monitor``: the action on a live monitor's alarms (``monitor`` names the monitor file: ``kalman`` for
  ``.../kalman.monitor.npz``);
* ``oracle``: one scheduled alarm at onset + d, d drawn from a pinned list of the monitor's first-alarm delays;
* ``random_time``: one scheduled alarm at a uniformly random update in [onset, onset + window].

A **matched pair** is a run of an acting (or log-only) arm and the no-action run that shares everything else:
algo, env, stochasticity, perturbation, magnitude, duration, onset and seed (so the same perturbation hits the same
seed; until the first action the two runs are the same run). The no-action partner is the ``none`` run, else the
``log_only`` run of that seed (training-identical: :func:`identity_checks` verifies it where both exist). Per
(perturbation, magnitude, duration, arm) the table gives, over the pairs:

* collapse counts without and with the action, the discordant pairs (``prevented``: collapsed without, not with;
  ``caused``: the reverse), the paired difference in collapse rate with an exact conditional 95% CI (Clopper-Pearson
  on the discordant pairs, scaled by their share) and the exact McNemar p (binomial test on the discordant pairs);
* the median paired difference in final performance with its distribution-free 95% CI (order statistics of the
  sign test; none below 6 pairs) and the exact sign-test p;
* what the action cost: runs alarmed and acted, actions taken, updates discarded by rollbacks (update count at the
  restore minus the checkpoint's), compute wasted (discarded + updates skipped after a ``stop``), and the first
  action measured from onset (median and IQR);
* ``note``: ``n too small`` below :data:`MIN_PAIRS` pairs (the tests are exact at any n but have little power).

Unperturbed controls get the same rows: there every alarm is a false alarm, and the paired performance difference
is the cost of acting on it.

:func:`arm_comparisons` compares arms head to head on the same seeds (exact McNemar, sign test): each monitor arm
against the random-time arm (and the oracle) with the same action and lag. "The monitor's foresight helps" is said
only where the monitor arm collapses less than the random-time arm at exact p < 0.05; otherwise the summary says
plainly that it is not shown. :func:`oracle_check` compares the oracle arm's drawn delays with the monitor arm's
observed first-action delays; :func:`oracle_delays` measures the pinned delays on a pilot (stage 2 of the
``intervention`` profile; ``python -m stabilitybench.analysis.intervention oracle-delays --help``).

Outcomes (``collapsed``, ``final_performance``) come from the analysis (``runs.parquet`` after
``stabilitybench analyze``), which judges every run, with or without an action, against the band of
the group's *natural* controls only (:func:`stabilitybench.data_schema.keys.control_mask` excludes runs with
intervention hparams), and leaves those runs out of every other analysis (monitors, PCA, survival, regularities).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from scipy import stats as sps

from stabilitybench.analysis.data import intervention_arm, intervention_monitor
from stabilitybench.analysis.monitor_file import SUFFIX
from stabilitybench.data_schema.keys import ConfigKey
from stabilitybench.data_schema.schema import Column

#: Columns that make two runs the same run but for the action.
PAIR_KEYS = ("algo", "env", "stochasticity", "perturbation", "magnitude", "duration_steps", "onset_frac", "seed")
ACTION_EVENTS = ("lr_backoff", "rollback", "stop")
#: Arm kinds (module docstring), in display order.
ARMS = ("none", "log_only", "monitor", "oracle", "random_time")
NO_ACTION = ("none", "log_only")
#: Below this many pairs a row's note says "n too small" (issue 25: >= 15 pairs per perturbed row).
MIN_PAIRS = 15
ALPHA = 0.05
_HP = "$.spec.hparams."
_ROW_KEYS = ("perturbation", "magnitude", "duration_steps")


def monitor_name(path: str | None) -> str | None:
    """``kalman`` for ``monitors/kalman.monitor.npz``: the monitor file's name without its suffix."""
    if not path:
        return None
    name = os.path.basename(str(path))
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def _hparam(runs: pl.DataFrame, name: str) -> pl.Series:
    if "config_json" not in runs.columns:
        return pl.Series(name, [None] * runs.height, dtype=pl.String)
    return runs.select(pl.col("config_json").str.json_path_match(_HP + name).alias(name)).to_series()


def arm_kind(actions: str, schedule: str | None) -> str:
    """The :data:`ARMS` kind of a run from its action string and ``intervention_schedule``."""
    acts = [a.strip() for a in str(actions or "none").split(",") if a.strip()]
    if acts in ([], ["none"]):
        return "none"
    if set(acts) == {"log"}:
        return "log_only"
    return {"oracle": "oracle", "random": "random_time"}.get(str(schedule or "monitor"), "monitor")


def arm_label(kind: str, actions: str, lag: int | None) -> str:
    """A row's ``arm``: the kind, plus the action and the rollback lag for arms that act
    (e.g. ``monitor: rollback,lr_backoff, lag 200``)."""
    if kind in NO_ACTION:
        return kind
    lag_text = f", lag {lag}" if lag is not None and "rollback" in actions else ""
    return f"{kind}: {actions}{lag_text}"


def with_arms(runs: pl.DataFrame) -> pl.DataFrame:
    """``runs`` plus ``arm`` (the action string or ``none``), ``monitor_file``, ``monitor``, ``schedule``,
    ``rollback_lag`` (updates; null without a rollback), ``arm_kind`` (:data:`ARMS`) and ``arm_label``."""
    files = intervention_monitor(runs)
    arms = intervention_arm(runs)
    schedule = _hparam(runs, "intervention_schedule")
    lag_raw = _hparam(runs, "intervention_rollback_lag").to_list()
    kinds = [arm_kind(a, s) for a, s in zip(arms.to_list(), schedule.to_list(), strict=True)]
    lags = [(int(float(v)) if v is not None else 0) if "rollback" in str(a) else None
            for a, v in zip(arms.to_list(), lag_raw, strict=True)]
    labels = [arm_label(k, a, g) for k, a, g in zip(kinds, arms.to_list(), lags, strict=True)]
    monitors = [monitor_name(m) if k in ("monitor", "log_only") else None
                for m, k in zip(files.to_list(), kinds, strict=True)]
    return runs.with_columns(arms.alias("arm"), files.alias("monitor_file"),
                             pl.Series("monitor", monitors, dtype=pl.String), schedule.alias("schedule"),
                             pl.Series("rollback_lag", lags, dtype=pl.Int64), pl.Series("arm_kind", kinds,
                                                                                        dtype=pl.String),
                             pl.Series("arm_label", labels, dtype=pl.String))


def action_counts(events: pl.DataFrame) -> pl.DataFrame:
    """Per run (one row per run with any event): ``n_alarms``, ``first_alarm_step``, ``n_actions`` (updates at
    which an action was taken: an LR back-off, a restore or a stop; a rollback that found no checkpoint old enough
    is no action), ``first_action_step``, ``n_restores``, ``updates_discarded`` (sum over restores of the update
    count at the restore minus the checkpoint's) and ``stop_step`` (null: never stopped)."""
    ev = events.select("run_id", pl.col("step").cast(pl.Int64), "event",
                       pl.col("value").cast(pl.Float64) if "value" in events.columns
                       else pl.lit(None, dtype=pl.Float64).alias("value"))
    restores = ev.filter((pl.col("event") == "rollback") & pl.col("value").is_not_null())
    acts = ev.filter(pl.col("event").is_in(["lr_backoff", "stop"])
                     | ((pl.col("event") == "rollback") & pl.col("value").is_not_null()))
    alarms = ev.filter(pl.col("event") == "alarm").group_by("run_id").agg(
        pl.len().cast(pl.Int64).alias("n_alarms"), pl.col("step").min().alias("first_alarm_step"))
    first = acts.group_by("run_id").agg(pl.col("step").n_unique().cast(pl.Int64).alias("n_actions"),
                                        pl.col("step").min().alias("first_action_step"))
    rest = restores.group_by("run_id").agg(pl.len().cast(pl.Int64).alias("n_restores"),
                                           (pl.col("step") - pl.col("value")).sum().cast(pl.Int64)
                                           .alias("updates_discarded"))
    stops = ev.filter(pl.col("event") == "stop").group_by("run_id").agg(pl.col("step").min().alias("stop_step"))
    ids = ev.select("run_id").unique()
    out = ids
    for part in (alarms, first, rest, stops):
        out = out.join(part, on="run_id", how="left")
    return out.with_columns(pl.col("n_alarms").fill_null(0), pl.col("n_actions").fill_null(0),
                            pl.col("n_restores").fill_null(0), pl.col("updates_discarded").fill_null(0))


_COUNT_COLUMNS = {"n_alarms": pl.Int64, "first_alarm_step": pl.Int64, "n_actions": pl.Int64,
                  "first_action_step": pl.Int64, "n_restores": pl.Int64, "updates_discarded": pl.Int64,
                  "stop_step": pl.Int64}


def run_table(runs: pl.DataFrame, events: pl.DataFrame | None = None) -> pl.DataFrame:
    """:func:`with_arms` plus, per run, the :func:`action_counts` columns (null without events), ``updates_skipped``
    (planned updates not run after a stop), ``compute_wasted`` (discarded + skipped) and ``first_action_from_onset``
    (first action minus ``onset_step``; both in updates)."""
    r = with_arms(runs)
    if events is not None and events.height:
        r = r.join(action_counts(events), on="run_id", how="left").with_columns(
            pl.col("n_alarms").fill_null(0), pl.col("n_actions").fill_null(0), pl.col("n_restores").fill_null(0),
            pl.col("updates_discarded").fill_null(0))
    else:
        r = r.with_columns([pl.lit(None, dtype=t).alias(c) for c, t in _COUNT_COLUMNS.items()])
    planned = pl.col("planned_updates") if "planned_updates" in r.columns else pl.lit(None, dtype=pl.Int64)
    onset = pl.col("onset_step") if "onset_step" in r.columns else pl.lit(None, dtype=pl.Int64)
    skipped = pl.when(pl.col("stop_step").is_not_null()).then((planned - pl.col("stop_step")).clip(lower_bound=0)) \
        .otherwise(pl.when(pl.col("n_alarms").is_not_null()).then(pl.lit(0)))
    return r.with_columns(skipped.cast(pl.Int64).alias("updates_skipped")).with_columns(
        (pl.col("updates_discarded") + pl.col("updates_skipped")).alias("compute_wasted"),
        (pl.col("first_action_step") - onset).cast(pl.Int64).alias("first_action_from_onset"))


def _partners(r: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """One no-action run per key: the ``none`` run, else the first ``log_only`` run (by run_id)."""
    base = r.filter(pl.col("arm_kind").is_in(NO_ACTION)).with_columns(
        (pl.col("arm_kind") != "none").cast(pl.Int8).alias("_order"))
    return base.sort("_order", "run_id").unique(subset=keys, keep="first", maintain_order=True).drop("_order")


def matched_pairs(runs: pl.DataFrame, events: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (run of an acting or log-only arm, its no-action run): ``PAIR_KEYS``, the arm columns,
    ``_with``/``_without`` outcomes and ``without_arm`` (``none`` or ``log_only``). A log-only run is paired with
    the ``none`` run only. ``runs`` needs ``PAIR_KEYS``, ``run_id``, ``config_json``, ``collapsed``,
    ``final_performance``; with ``events`` the :func:`run_table` columns of the with-run come along."""
    r = run_table(runs, events)
    keys = [k for k in PAIR_KEYS if k in r.columns]
    cols = ["run_id", "collapsed", "final_performance"]
    extra = [c for c in ("onset_step", "planned_updates", *_COUNT_COLUMNS, "updates_skipped", "compute_wasted",
                         "first_action_from_onset") if c in r.columns]
    arm_cols = ["arm", "arm_kind", "arm_label", "monitor_file", "monitor", "schedule", "rollback_lag"]
    act = r.filter(~pl.col("arm_kind").is_in(NO_ACTION)).select(*keys, *arm_cols, *cols, *extra)
    base = _partners(r, keys).select(*keys, *cols, pl.col("arm_kind").alias("without_arm"))
    acted = act.join(base, on=keys, how="inner", suffix="_without", nulls_equal=True)
    logs = r.filter(pl.col("arm_kind") == "log_only").select(*keys, *arm_cols, *cols, *extra)
    natural = r.filter(pl.col("arm_kind") == "none").unique(subset=keys, keep="first").select(
        *keys, *cols, pl.col("arm_kind").alias("without_arm"))
    logged = logs.join(natural, on=keys, how="inner", suffix="_without", nulls_equal=True)
    out = pl.concat([acted, logged], how="diagonal_relaxed")
    return out.rename({"run_id": "run_id_with", "collapsed": "collapsed_with",
                       "final_performance": "final_performance_with"})


# ---- exact paired statistics -------------------------------------------------------------------------------
def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p: the binomial test of ``b`` against ``b + c`` discordant pairs at 1/2
    (1.0 without discordant pairs)."""
    m = int(b) + int(c)
    return 1.0 if m == 0 else float(sps.binomtest(int(b), m, 0.5).pvalue)


def paired_collapse(with_: np.ndarray, without: np.ndarray, alpha: float = ALPHA) -> dict[str, Any]:
    """Paired collapse statistics of boolean arrays ``with_``, ``without`` (shape ``(n,)``, one entry per pair).

    ``prevented`` = collapsed without and not with, ``caused`` = the reverse; ``diff`` = (caused - prevented) / n
    (with minus without); its CI is exact conditional on the m = prevented + caused discordant pairs (Clopper-Pearson
    for caused / m, mapped by diff = m / n * (2 p - 1); none when m = 0); ``p`` the exact McNemar p."""
    w, wo = np.asarray(with_, bool), np.asarray(without, bool)
    n = int(w.size)
    prevented, caused = int((wo & ~w).sum()), int((w & ~wo).sum())
    m = prevented + caused
    lo = hi = None
    if m:
        ci = sps.binomtest(caused, m).proportion_ci(1 - alpha, method="exact")
        lo, hi = m / n * (2 * ci.low - 1), m / n * (2 * ci.high - 1)
    return {"n": n, "n_collapsed_with": int(w.sum()), "n_collapsed_without": int(wo.sum()), "prevented": prevented,
            "caused": caused, "diff": (caused - prevented) / n if n else None, "ci_low": lo, "ci_high": hi,
            "p": mcnemar_exact(prevented, caused)}


def median_ci(d: np.ndarray, alpha: float = ALPHA) -> tuple[float | None, float | None]:
    """Distribution-free CI of the median of ``d`` (shape ``(n,)``): order statistics ``d_(j), d_(n-j+1)`` with the
    largest ``j`` whose coverage ``1 - 2 P(Binom(n, 1/2) <= j - 1)`` is at least ``1 - alpha`` (none for n < 6)."""
    x = np.sort(np.asarray(d, float))
    n = x.size
    j = 0
    while j + 1 <= n // 2 and 1 - 2 * sps.binom.cdf(j, n, 0.5) >= 1 - alpha:
        j += 1
    if j == 0:
        return None, None
    return float(x[j - 1]), float(x[n - j])


def paired_performance(with_: np.ndarray, without: np.ndarray, alpha: float = ALPHA) -> dict[str, Any]:
    """Sign test of the paired final-performance differences (with - without; non-finite pairs dropped): ``n``,
    ``median`` difference and its :func:`median_ci`, ``n_better``/``n_worse``, exact two-sided ``p``."""
    d = np.asarray(with_, float) - np.asarray(without, float)
    d = d[np.isfinite(d)]
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    lo, hi = median_ci(d, alpha)
    return {"n": int(d.size), "median": float(np.median(d)) if d.size else None, "ci_low": lo, "ci_high": hi,
            "n_better": pos, "n_worse": neg,
            "p": float(sps.binomtest(pos, pos + neg, 0.5).pvalue) if pos + neg else 1.0}


def _quantiles(x: pl.Series) -> tuple[float | None, float | None, float | None]:
    a = x.drop_nulls().cast(pl.Float64).to_numpy()
    if a.size == 0:
        return None, None, None
    q1, q2, q3 = np.quantile(a, [0.25, 0.5, 0.75])
    return float(q2), float(q1), float(q3)


def _f(v: Any) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def intervention_table(runs: pl.DataFrame, events: pl.DataFrame | None = None, n_boot: int = 2000,
                       seed: int = 0) -> pl.DataFrame:
    """The intervention table (module docstring): one row per (perturbation, magnitude, duration, monitor, arm).

    Columns: :data:`TABLE_COLUMNS`. ``n_boot`` and ``seed`` are accepted for the pipeline's signature: every
    interval here is exact or distribution-free and draws nothing.
    """
    del n_boot, seed
    pairs = matched_pairs(runs, events)
    rows: list[dict[str, Any]] = []
    if pairs.height == 0:
        return pl.DataFrame()
    group = [c for c in (*_ROW_KEYS, "monitor", "arm_label") if c in pairs.columns]
    kind_order = {k: i for i, k in enumerate(ARMS)}
    for key, g in sorted(pairs.group_by(group), key=lambda kv: (
            tuple(str(k) for k in kv[0][:3]), kind_order.get(kv[1]["arm_kind"][0], 9), str(kv[0][3:]))):
        row = dict(zip(group, key, strict=True))
        valid = g.filter(pl.col("collapsed_with").is_not_null() & pl.col("collapsed_without").is_not_null())
        col = paired_collapse(valid["collapsed_with"].to_numpy(), valid["collapsed_without"].to_numpy())
        perf = paired_performance(g["final_performance_with"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
                                  g["final_performance_without"].cast(pl.Float64).fill_null(np.nan).to_numpy())
        has_events = g["n_alarms"].null_count() < g.height
        first_med, first_q1, first_q3 = _quantiles(g["first_action_from_onset"])
        acted = g.filter(pl.col("n_actions") > 0) if has_events else g.clear()
        planned = g["planned_updates"].cast(pl.Float64).sum() if "planned_updates" in g.columns else None
        wasted = int(g["compute_wasted"].sum()) if has_events and g["compute_wasted"].null_count() < g.height \
            else None
        n = g.height
        pert = row["perturbation"]
        label = row.pop("arm_label")
        rows.append({
            **row, "arm": label, "arm_kind": g["arm_kind"][0], "actions": g["arm"][0],
            "rollback_lag": g["rollback_lag"][0], "without_arm": "/".join(sorted(set(g["without_arm"].to_list()))),
            "n_pairs": n,
            "n_collapsed_without": col["n_collapsed_without"], "n_collapsed_with": col["n_collapsed_with"],
            "collapse_rate_without": col["n_collapsed_without"] / col["n"] if col["n"] else None,
            "collapse_rate_with": col["n_collapsed_with"] / col["n"] if col["n"] else None,
            "prevented": col["prevented"], "caused": col["caused"],
            "collapse_diff": col["diff"], "collapse_diff_ci_low": col["ci_low"],
            "collapse_diff_ci_high": col["ci_high"],
            "collapse_p_mcnemar": col["p"],
            "final_perf_without": _f(np.nanmean(g["final_performance_without"].cast(pl.Float64).fill_null(np.nan)
                                                .to_numpy())) if g["final_performance_without"].null_count() < n
            else None,
            "final_perf_with": _f(np.nanmean(g["final_performance_with"].cast(pl.Float64).fill_null(np.nan)
                                             .to_numpy())) if g["final_performance_with"].null_count() < n else None,
            "perf_diff": perf["median"], "perf_diff_ci_low": perf["ci_low"], "perf_diff_ci_high": perf["ci_high"],
            "perf_p_sign": perf["p"], "perf_n_better": perf["n_better"], "perf_n_worse": perf["n_worse"],
            "runs_alarmed": int((g["n_alarms"] > 0).sum()) if has_events else None,
            "runs_acted": acted.height if has_events else None,
            "n_actions": int(g["n_actions"].sum()) if has_events else None,
            "updates_discarded": int(g["updates_discarded"].sum()) if has_events else None,
            "median_updates_discarded": float(acted["updates_discarded"].median()) if acted.height else None,
            "compute_wasted": wasted,
            "compute_wasted_frac": wasted / planned if wasted is not None and planned else None,
            "median_first_action_step": _f(g["first_action_step"].cast(pl.Float64).median())
            if g["first_action_step"].null_count() < n else None,
            "first_action_from_onset_median": first_med, "first_action_from_onset_q25": first_q1,
            "first_action_from_onset_q75": first_q3,
            "controls": ConfigKey(pert).is_control,
            "note": f"n too small ({n} < {MIN_PAIRS} pairs)" if n < MIN_PAIRS else None,
        })
    return pl.DataFrame(rows, infer_schema_length=None)


# ---- head-to-head: the timing controls ---------------------------------------------------------------------
def arm_comparisons(runs: pl.DataFrame, alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Each monitor arm against the ``random_time`` and ``oracle`` arms with the same actions and lag, on the same
    seeds of one (perturbation, magnitude, duration): exact McNemar on collapse, sign test on final performance,
    and a plain verdict (``foresight``: the monitor collapses less than the random-time arm at exact p < alpha)."""
    r = with_arms(runs)
    keys = [k for k in PAIR_KEYS if k in r.columns]
    out: list[dict[str, Any]] = []
    mons = r.filter(pl.col("arm_kind") == "monitor")
    for (pert, mag, dur, label, monitor), m in sorted(
            mons.group_by([*_ROW_KEYS, "arm_label", "monitor"]), key=lambda kv: tuple(str(k) for k in kv[0])):
        actions, lag = m["arm"][0], m["rollback_lag"][0]
        for other in ("random_time", "oracle"):
            o = r.filter((pl.col("arm_kind") == other) & (pl.col("arm") == actions) & (pl.col("perturbation") == pert)
                         & (pl.col("magnitude") == mag) & (pl.col("duration_steps") == dur)
                         & (pl.col("rollback_lag").eq_missing(lag)))
            if o.height == 0:
                continue
            j = m.select(*keys, "collapsed", "final_performance").join(
                o.select(*keys, "collapsed", "final_performance"), on=keys, how="inner", suffix="_other",
                nulls_equal=True)
            valid = j.filter(pl.col("collapsed").is_not_null() & pl.col("collapsed_other").is_not_null())
            # "with" = the monitor arm, "without" = the other arm: prevented = the other collapsed, the monitor not
            col = paired_collapse(valid["collapsed"].to_numpy(), valid["collapsed_other"].to_numpy(), alpha)
            perf = paired_performance(j["final_performance"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
                                      j["final_performance_other"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
                                      alpha)
            n = col["n"]
            better = col["prevented"] > col["caused"] and col["p"] < alpha
            worse = col["caused"] > col["prevented"] and col["p"] < alpha
            who = "random-time" if other == "random_time" else "oracle-timed"
            counts = (f"{monitor} arm ({label}) collapsed {col['n_collapsed_with']}/{n}, the {who} arm "
                      f"{col['n_collapsed_without']}/{n} on the same seeds (only the {who} arm collapsed: "
                      f"{col['prevented']}, only the monitor arm: {col['caused']}; exact McNemar p = {col['p']:.3g})")
            if n == 0:
                verdict = f"{ConfigKey(pert, mag, dur).label()}: no seed has both arms"
            elif better:
                verdict = (f"{ConfigKey(pert, mag, dur).label()}: the monitor's foresight helps: " if other ==
                           "random_time" else f"{ConfigKey(pert, mag, dur).label()}: the monitor beats acting at its "
                           "typical delay: ") + counts
            elif worse:
                verdict = f"{ConfigKey(pert, mag, dur).label()}: acting on the monitor did worse than the {who} arm: " \
                          + counts
            else:
                verdict = (f"{ConfigKey(pert, mag, dur).label()}: the monitor's foresight is not shown (it does not "
                           f"beat the {who} arm at p < {alpha:g}): " + counts
                           + (f"; n too small ({n} < {MIN_PAIRS} pairs)" if n < MIN_PAIRS else ""))
            out.append({"perturbation": pert, "magnitude": mag, "duration_steps": dur, "monitor": monitor,
                        "arm": label, "versus": other, "n_pairs": n,
                        "n_collapsed_monitor": col["n_collapsed_with"], "n_collapsed_other": col["n_collapsed_without"],
                        "only_other_collapsed": col["prevented"], "only_monitor_collapsed": col["caused"],
                        "collapse_diff": col["diff"], "collapse_diff_ci_low": col["ci_low"],
                        "collapse_diff_ci_high": col["ci_high"], "p_mcnemar": col["p"],
                        "perf_diff": perf["median"], "perf_diff_ci_low": perf["ci_low"],
                        "perf_diff_ci_high": perf["ci_high"], "perf_p_sign": perf["p"],
                        "controls": ConfigKey(pert).is_control,
                        "foresight": bool(better) if other == "random_time" else None, "verdict": verdict})
    return out


def oracle_check(runs: pl.DataFrame, events: pl.DataFrame | None) -> list[dict[str, Any]]:
    """Per (perturbation, magnitude, duration): the oracle arm's first-action delays from onset against the monitor
    arms' (same actions and lag) observed ones: acted counts (Fisher exact p) and delays of the runs that acted
    (median, IQR, Mann-Whitney U p). The oracle's delays were pinned from a pilot; this says whether they match."""
    if events is None or events.height == 0:
        return []
    r = run_table(runs, events)
    out = []
    for (pert, mag, dur, actions, lag), o in sorted(
            r.filter(pl.col("arm_kind") == "oracle").group_by([*_ROW_KEYS, "arm", "rollback_lag"]),
            key=lambda kv: tuple(str(k) for k in kv[0])):
        m = r.filter((pl.col("arm_kind") == "monitor") & (pl.col("arm") == actions) & (pl.col("perturbation") == pert)
                     & (pl.col("magnitude") == mag) & (pl.col("duration_steps") == dur)
                     & pl.col("rollback_lag").eq_missing(lag))
        if m.height == 0:
            continue
        d_o = o["first_action_from_onset"].drop_nulls().cast(pl.Float64).to_numpy()
        d_m = m["first_action_from_onset"].drop_nulls().cast(pl.Float64).to_numpy()
        table = [[d_o.size, o.height - d_o.size], [d_m.size, m.height - d_m.size]]
        p_acted = float(sps.fisher_exact(table).pvalue)
        p_delay = float(sps.mannwhitneyu(d_o, d_m).pvalue) if d_o.size and d_m.size else None
        mo, qo1, qo3 = _quantiles(pl.Series(d_o))
        mm, qm1, qm3 = _quantiles(pl.Series(d_m))
        out.append({"perturbation": pert, "magnitude": mag, "duration_steps": dur, "actions": actions,
                    "rollback_lag": lag, "n_oracle": o.height, "oracle_acted": int(d_o.size),
                    "oracle_delay_median": mo, "oracle_delay_q25": qo1, "oracle_delay_q75": qo3,
                    "n_monitor": m.height, "monitor_acted": int(d_m.size), "monitor_delay_median": mm,
                    "monitor_delay_q25": qm1, "monitor_delay_q75": qm3, "p_acted_fisher": p_acted,
                    "p_delay_mannwhitney": p_delay,
                    "consistent": bool(p_acted >= ALPHA and (p_delay is None or p_delay >= ALPHA))})
    return out


def identity_checks(runs: pl.DataFrame, events: pl.DataFrame | None) -> dict[str, Any]:
    """What the design assumes, checked where the corpus allows: ``log_only_vs_none`` (a log-only run's collapse and
    final performance equal its ``none`` twin's: logging never changes training) and ``first_alarm`` (a monitor
    arm's first alarm is at the update of its log-only twin's first alarm: runs are identical until the first
    action). Each: ``n`` compared and ``n_equal``."""
    r = run_table(runs, events)
    keys = [k for k in PAIR_KEYS if k in r.columns]
    logs = r.filter(pl.col("arm_kind") == "log_only")
    none = r.filter(pl.col("arm_kind") == "none").unique(subset=keys, keep="first")
    j = logs.select(*keys, "collapsed", "final_performance").join(
        none.select(*keys, "collapsed", "final_performance"), on=keys, how="inner", suffix="_none", nulls_equal=True)
    same = j.filter(pl.col("collapsed").eq_missing(pl.col("collapsed_none"))
                    & (pl.col("final_performance").eq_missing(pl.col("final_performance_none"))))
    out: dict[str, Any] = {"log_only_vs_none": {"n": j.height, "n_equal": same.height}}
    if events is not None and events.height:
        mon = r.filter(pl.col("arm_kind") == "monitor")
        k = mon.select(*keys, "monitor", "first_alarm_step").join(
            logs.select(*keys, "monitor", pl.col("first_alarm_step").alias("first_alarm_log")),
            on=[*keys, "monitor"], how="inner", nulls_equal=True)
        out["first_alarm"] = {"n": k.height,
                              "n_equal": k.filter(pl.col("first_alarm_step").eq_missing(pl.col("first_alarm_log")))
                              .height}
    return out


def intervention_from_corpus(corpus: str | os.PathLike[str], n_boot: int = 2000, seed: int = 0) -> pl.DataFrame:
    """:func:`intervention_table` of an analysed corpus (``runs.parquet`` outcomes + the events files).

    Raises :class:`~analysis.errors.NoRunsError` if ``stabilitybench analyze`` has not written the outcomes.
    """
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
    runs with intervention hparams). ``everything``: every run with its outcome, those that acted included."""
    from stabilitybench.analysis.summary import Status, StatusKind

    acted = everything.filter(pl.col("arm") != "none") if "arm" in everything.columns else everything.clear()
    if acted.height == 0:
        return pl.DataFrame(), Status(StatusKind.NOT_APPLICABLE, "no run acted on a live monitor's alarm "
                                      "(the intervention profile makes them)").to_json()
    table = intervention_table(everything, events, n_boot=n_boot, seed=seed)
    comparisons = arm_comparisons(everything)
    verdicts = [c["verdict"] for c in comparisons if c["versus"] == "random_time" and not c["controls"]]
    entry: dict[str, Any] = {
        **Status(StatusKind.OK).to_json(),
        "question": "does acting on the live monitor's alarm change collapse and final performance, and does the "
                    "monitor's timing beat acting at a random time while the perturbation is on? matched pairs "
                    "(same seed and perturbation) with vs without, and arm against arm",
        "n_runs_acted": acted.height,
        "n_pairs": int(table["n_pairs"].sum()) if table.height else 0,
        "intervals": "collapse: exact McNemar p, exact conditional CI (Clopper-Pearson on the discordant pairs); "
                     "final performance: sign test, distribution-free CI of the median paired difference; "
                     f"rows with fewer than {MIN_PAIRS} pairs are noted 'n too small'",
        "rows": table.to_dicts() if table.height else [],
        "comparisons": comparisons,
        "foresight": verdicts or ["no monitor arm has a random-time arm on the same seeds: the monitor's foresight "
                                  "is not tested"],
        "foresight_shown": any(c["foresight"] for c in comparisons if c["versus"] == "random_time"
                               and not c["controls"]),
        "oracle_check": oracle_check(everything, events),
        "identity_checks": identity_checks(everything, events),
    }
    if table.height == 0:
        entry.update(Status(StatusKind.NOT_TESTABLE, "no run with an action has its no-action twin (same seed and "
                            "perturbation) in the corpus").to_json())
    return table, entry


# ---- the oracle's pilot ----------------------------------------------------------------------------------------
def oracle_delays(corpus: str | os.PathLike[str], monitor: str | os.PathLike[str], perturbation: str,
                  magnitude: float | None = None, duration_steps: int | None = None) -> dict[str, Any]:
    """The monitor's first-alarm delays from onset (updates; None: it never alarmed) on the natural runs of one
    cell of ``corpus``, scored offline with the monitor file ``monitor`` (the online monitor's alarms are the same:
    ``tests/test_intervention.py``). A run with intervention hparams is never used. Returns ``{"delays",
    "run_ids", "seeds", "monitor", "corpus", "perturbation", "magnitude", "duration_steps"}``, the oracle arm's
    ``intervention_delays`` file."""
    from stabilitybench.analysis.data import load_runs
    from stabilitybench.analysis.monitor_file import MonitorFile
    from stabilitybench.data_schema import scan_steps

    runs = with_arms(load_runs(corpus)).filter((pl.col("arm_kind") == "none") & (pl.col("perturbation")
                                                                               == perturbation))
    if magnitude is not None:
        runs = runs.filter((pl.col("magnitude") - float(magnitude)).abs() <= 1e-6 * max(1.0, abs(float(magnitude))))
    if duration_steps is not None:
        runs = runs.filter(pl.col("duration_steps") == int(duration_steps))
    if runs.height == 0:
        raise ValueError(f"{corpus}: no natural run of {perturbation} (magnitude {magnitude}, duration "
                         f"{duration_steps}) to measure the monitor's delays on")
    mf = MonitorFile.load(monitor)
    runs = runs.sort("seed", "run_id")
    delays: list[int | None] = []
    for row in runs.iter_rows(named=True):
        steps = scan_steps(corpus, runs=runs.filter(pl.col("run_id") == row["run_id"])).collect().sort("step")
        trace = mf.score_run(steps)
        alarms = trace.filter(pl.col("alarm"))["step"]
        delays.append(int(alarms[0]) - int(row["onset_step"]) if alarms.len() else None)
    return {"delays": delays, "run_ids": runs["run_id"].to_list(), "seeds": runs["seed"].to_list(),
            "monitor": str(monitor), "corpus": str(corpus), "perturbation": perturbation,
            "magnitude": magnitude, "duration_steps": duration_steps}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stabilitybench.analysis.intervention oracle-delays ...``: write the oracle's delays file."""
    ap = argparse.ArgumentParser(prog="python -m stabilitybench.analysis.intervention")
    sub = ap.add_subparsers(dest="cmd", required=True)
    od = sub.add_parser("oracle-delays", help="the monitor's first-alarm delays on a pilot cell (JSON)")
    od.add_argument("--corpus", required=True)
    od.add_argument("--monitor", required=True, help="the monitor file the experiment's monitor arm uses")
    od.add_argument("--perturbation", required=True)
    od.add_argument("--magnitude", type=float)
    od.add_argument("--duration", type=int)
    od.add_argument("-o", "--out", required=True)
    a = ap.parse_args(argv)
    try:
        res = oracle_delays(a.corpus, a.monitor, a.perturbation, a.magnitude, a.duration)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    acted = [d for d in res["delays"] if d is not None]
    print(f"{a.out}: {len(res['delays'])} runs, {len(acted)} alarmed"
          + (f", median delay {float(np.median(acted)):g} updates" if acted else ""))
    return 0


# ---- results/intervention.parquet's columns (analysis/results.py declares the table with these) ----------------
_S, _I, _F, _B = pa.string(), pa.int64(), pa.float64(), pa.bool_()
TABLE_COLUMNS = [
    Column("perturbation", _S, "-", "Perturbation kind (none: unperturbed controls)"),
    Column("magnitude", _F, "-", "Perturbation magnitude"),
    Column("duration_steps", _I, "update", "Perturbation duration"),
    Column("monitor", _S, "-", "Monitor file behind the arm's alarms (its name without .monitor.npz; null for the "
           "scheduled arms)"),
    Column("arm", _S, "-", "Arm: kind, action(s) and rollback lag, e.g. 'monitor: rollback,lr_backoff, lag 200'"),
    Column("arm_kind", _S, "-", "none | log_only | monitor | oracle | random_time"),
    Column("actions", _S, "-", "Action(s) taken on an alarm (hparams.intervention)"),
    Column("rollback_lag", _I, "update", "Rollback to the newest checkpoint at least this many updates before the "
           "alarm (null: no rollback)"),
    Column("without_arm", _S, "-", "The paired no-action arm: none, or log_only (training-identical) where no "
           "natural twin was run"),
    Column("n_pairs", _I, "pairs", "Matched pairs: same seed and perturbation, with and without the action"),
    Column("n_collapsed_without", _I, "runs", "Pairs whose no-action run collapsed"),
    Column("n_collapsed_with", _I, "runs", "Pairs whose run with the action collapsed"),
    Column("collapse_rate_without", _F, "-", "Collapse rate of the runs without the action"),
    Column("collapse_rate_with", _F, "-", "Collapse rate of the runs with the action"),
    Column("prevented", _I, "pairs", "Discordant pairs: collapsed without the action, not with it"),
    Column("caused", _I, "pairs", "Discordant pairs: collapsed with the action, not without it"),
    Column("collapse_diff", _F, "-", "Paired difference in collapse rate (with - without) = (caused - prevented) / n"),
    Column("collapse_diff_ci_low", _F, "-", "Exact conditional 95% CI low of collapse_diff (Clopper-Pearson on the "
           "discordant pairs; null without any)"),
    Column("collapse_diff_ci_high", _F, "-", "Exact conditional 95% CI high of collapse_diff"),
    Column("collapse_p_mcnemar", _F, "-", "Exact McNemar p (two-sided binomial test on the discordant pairs)"),
    Column("final_perf_without", _F, "task", "Mean final performance without the action"),
    Column("final_perf_with", _F, "task", "Mean final performance with the action"),
    Column("perf_diff", _F, "task", "Median paired difference in final performance (with - without)"),
    Column("perf_diff_ci_low", _F, "task", "Distribution-free 95% CI low of perf_diff (sign-test order statistics; "
           "null below 6 pairs)"),
    Column("perf_diff_ci_high", _F, "task", "Distribution-free 95% CI high of perf_diff"),
    Column("perf_p_sign", _F, "-", "Exact two-sided sign-test p of the paired performance differences"),
    Column("perf_n_better", _I, "pairs", "Pairs whose run with the action ended higher"),
    Column("perf_n_worse", _I, "pairs", "Pairs whose run with the action ended lower"),
    Column("runs_alarmed", _I, "runs", "With-action runs with at least one alarm"),
    Column("runs_acted", _I, "runs", "With-action runs that took at least one action"),
    Column("n_actions", _I, "actions", "Actions taken over the row's runs (updates with a back-off, restore or stop)"),
    Column("updates_discarded", _I, "update", "Updates discarded by rollbacks over the row's runs"),
    Column("median_updates_discarded", _F, "update", "Median updates discarded per run that acted"),
    Column("compute_wasted", _I, "update", "Updates discarded plus updates skipped after a stop, over the row's runs"),
    Column("compute_wasted_frac", _F, "-", "compute_wasted / the row's planned updates"),
    Column("median_first_action_step", _F, "update", "Median update of the first action"),
    Column("first_action_from_onset_median", _F, "update", "Median first action minus onset (runs that acted)"),
    Column("first_action_from_onset_q25", _F, "update", "25th percentile of the first action minus onset"),
    Column("first_action_from_onset_q75", _F, "update", "75th percentile of the first action minus onset"),
    Column("controls", _B, "-", "Unperturbed pairs: every alarm is false, perf_diff is its cost"),
    Column("note", _S, "-", f"'n too small' below {MIN_PAIRS} pairs (null otherwise)"),
]


if __name__ == "__main__":
    raise SystemExit(main())
