"""The intervention experiment: matched runs with and without an action, and the timing controls (issue 25).

A run's *arm* is read from its spec's hparams in the manifest's ``config_json`` (see
``stabilitybench.generate.intervention``): ``arm`` is the action string (``hparams.intervention``, ``none`` when
absent: :func:`stabilitybench.data_schema.keys.intervention_arm`) and ``arm_kind`` one of :data:`ARMS`:

* ``none``: no intervention hparams (natural training);
* ``log_only``: ``intervention = "log"``: the monitor's alarms recorded, no action (training is the ``none`` run's);
* ``monitor``: the action on a live monitor's alarms (``monitor`` names the monitor file: ``kalman`` for
  ``.../kalman.monitor.npz``);
* ``skip_step``: ``intervention = "skip_step"`` (issue 26), the practitioners' rule of OLMo-core: skip an update
  whose grad norm (and loss where the loop has it) exceeds the mean + ``skip_step_sigma`` (default 6) SD of the
  previous ``skip_step_window`` (default 128) values; no monitor, no rollback. Each skipped update is an events row
  ``skip_step`` (value: the rule's z); the rule's firing is both its alarm and its action;
* ``oracle``: one scheduled alarm at onset + d, d drawn from a pinned list of the monitor's first-alarm delays;
* ``random_time``: one scheduled alarm at a uniformly random update in [onset, onset + window]; with
  ``intervention_counts`` (issue 26: *count-matched*, label ``..., count-matched``) n alarms, n drawn with the
  run's seed from the monitor arm's per-run action counts (:func:`monitor_action_counts`, the ``action-counts``
  pilot), so the random arm acts as often as the monitor arm did.

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
* what the action cost: runs alarmed and acted, alarms, acted alarms and actions taken, updates discarded by
  rollbacks (update count at the restore minus the checkpoint's), updates skipped by the skip-step rule (one per
  ``skip_step`` event: its gradient was computed and thrown away), compute wasted (discarded + skipped + updates not
  run after a ``stop``), and the first action measured from onset (median and IQR; in a regime, ``lr_regime``,
  onset is update 0, so it is measured from the start of the run);
* wall time: the median ``run_wall_time_s`` with and without the action, and the median paired ratio (with /
  without) with its distribution-free 95% CI (sign-test order statistics, as for performance; none below 6 pairs).
  Wall time is only comparable between runs on the same machine under the same load;
* ``note``: ``n too small`` below :data:`MIN_PAIRS` pairs (the tests are exact at any n but have little power).

Unperturbed controls get the same rows: there every alarm is a false alarm, and the paired performance difference
is the cost of acting on it.

:func:`arm_comparisons` compares arms head to head on the same seeds (exact McNemar, sign test): each monitor arm
against the random-time arm (and the oracle) with the same action and lag, each monitor arm against the skip-step
arm, and the skip-step arm against the random-time arm (:data:`COMPARISONS` says what each can show). "The
monitor's foresight helps" is said only where the monitor arm collapses less than the random-time arm at exact
p < 0.05; otherwise the summary says plainly that it is not shown. :func:`oracle_check` compares the oracle
arm's drawn delays with the monitor arm's observed first-action delays; :func:`oracle_delays` measures the pinned
delays on a pilot (stage 2 of the ``intervention`` profile; ``python -m stabilitybench.analysis.intervention
oracle-delays --help``);
:func:`monitor_action_counts` measures the monitor arm's per-run acted alarms for the count-matched random arm
(``... action-counts --help``).

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
ACTION_EVENTS = ("lr_backoff", "rollback", "stop", "skip_step")
#: The skip-step arm's action string and event kind (one event per skipped update).
SKIP = "skip_step"
#: The skip-step rule's defaults (OLMo-core): the window of previous values and the threshold in SDs.
SKIP_WINDOW, SKIP_SIGMA = 128, 6.0
#: Arm kinds (module docstring), in display order.
ARMS = ("none", "log_only", "monitor", "skip_step", "oracle", "random_time")
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
    if SKIP in acts:
        return "skip_step"
    return {"oracle": "oracle", "random": "random_time"}.get(str(schedule or "monitor"), "monitor")


def arm_label(kind: str, actions: str, lag: int | None, detail: str | None = None) -> str:
    """A row's ``arm``: the kind, plus the action, the rollback lag and ``detail`` (:func:`arm_detail`) for arms that
    act (e.g. ``monitor: rollback,lr_backoff, lag 200``, ``skip_step: window 128, 6 SD``)."""
    if kind in NO_ACTION:
        return kind
    if kind == "skip_step":
        return f"{kind}: {detail}" if detail else kind
    lag_text = f", lag {lag}" if lag is not None and "rollback" in actions else ""
    return f"{kind}: {actions}{lag_text}" + (f", {detail}" if detail else "")


def arm_detail(kind: str, window: str | None, sigma: str | None, counts: str | None,
               discards: str | None = None) -> str | None:
    """What else tells two arms of a kind apart: the skip-step rule's window and threshold (hparams
    ``skip_step_window``, ``skip_step_sigma``; defaults :data:`SKIP_WINDOW`, :data:`SKIP_SIGMA`), and
    ``count-matched`` for a random-time arm with ``intervention_counts`` (``count- and discard-matched`` with
    ``intervention_discards`` as well); else None."""
    if kind == "skip_step":
        w = SKIP_WINDOW if window is None else int(float(window))
        return f"window {w}, {SKIP_SIGMA if sigma is None else float(sigma):g} SD"
    if kind != "random_time" or counts is None:
        return None
    return "count- and discard-matched" if discards is not None else "count-matched"


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
    details = [arm_detail(k, w, s, c, d) for k, w, s, c, d in zip(
        kinds, *(_hparam(runs, h).to_list() for h in ("skip_step_window", "skip_step_sigma", "intervention_counts",
                                                       "intervention_discards")), strict=True)]
    labels = [arm_label(k, a, g, d) for k, a, g, d in zip(kinds, arms.to_list(), lags, details, strict=True)]
    monitors = [monitor_name(m) if k in ("monitor", "log_only") else None
                for m, k in zip(files.to_list(), kinds, strict=True)]
    return runs.with_columns(arms.alias("arm"), files.alias("monitor_file"),
                             pl.Series("monitor", monitors, dtype=pl.String), schedule.alias("schedule"),
                             pl.Series("rollback_lag", lags, dtype=pl.Int64), pl.Series("arm_kind", kinds,
                                                                                        dtype=pl.String),
                             pl.Series("arm_label", labels, dtype=pl.String))


def _acts(ev: pl.DataFrame) -> pl.DataFrame:
    """The events that are actions: an LR back-off, a stop, a skipped update, or a rollback that restored a
    checkpoint (one that found none old enough, value null, is no action)."""
    return ev.filter(pl.col("event").is_in(["lr_backoff", "stop", SKIP])
                     | ((pl.col("event") == "rollback") & pl.col("value").is_not_null()))


def _acted_alarms(ev: pl.DataFrame) -> pl.DataFrame:
    """Per run with an action, ``n_acted_alarms``: the alarms acted on (action episodes). Each action belongs to the
    latest alarm before it in the events' order (the generator writes an alarm's actions right after its ``alarm``
    row), so a rollback and the LR back-off of one alarm count once, and an alarm in the cooldown (no action) not at
    all; a skipped update is its own alarm. A restore deferred to a safe point (SAC/TD3) written after a later
    alarm would count twice."""
    ev = ev.with_row_index("_row")
    alarms = ev.filter(pl.col("event").is_in(["alarm", SKIP])).select("run_id", "_row",
                                                                       pl.col("_row").alias("_alarm"))
    acts = _acts(ev).select("run_id", "_row")
    j = acts.join_asof(alarms, on="_row", by="run_id", strategy="backward", check_sortedness=False)  # row numbers
    return j.group_by("run_id").agg(pl.coalesce("_alarm", -1 - pl.col("_row").cast(pl.Int64)).n_unique()
                                    .cast(pl.Int64).alias("n_acted_alarms"))


def action_counts(events: pl.DataFrame) -> pl.DataFrame:
    """Per run (one row per run with any event): ``n_alarms`` (``alarm`` events, and ``skip_step`` events: the skip
    rule's firing is its own alarm), ``first_alarm_step``, ``n_acted_alarms`` (:func:`_acted_alarms`), ``n_actions``
    (updates at which an action was taken: an LR back-off, a restore, a stop or a skipped update; a rollback that
    found no checkpoint old enough is no action), ``first_action_step``, ``n_restores``, ``updates_discarded`` (sum
    over restores of the update count at the restore minus the checkpoint's), ``updates_skipped`` (``skip_step``
    events) and ``stop_step`` (null: never stopped)."""
    ev = events.select("run_id", pl.col("step").cast(pl.Int64), "event",
                       pl.col("value").cast(pl.Float64) if "value" in events.columns
                       else pl.lit(None, dtype=pl.Float64).alias("value"))
    restores = ev.filter((pl.col("event") == "rollback") & pl.col("value").is_not_null())
    alarms = ev.filter(pl.col("event").is_in(["alarm", SKIP])).group_by("run_id").agg(
        pl.len().cast(pl.Int64).alias("n_alarms"), pl.col("step").min().alias("first_alarm_step"))
    first = _acts(ev).group_by("run_id").agg(pl.col("step").n_unique().cast(pl.Int64).alias("n_actions"),
                                             pl.col("step").min().alias("first_action_step"))
    rest = restores.group_by("run_id").agg(pl.len().cast(pl.Int64).alias("n_restores"),
                                           (pl.col("step") - pl.col("value")).sum().cast(pl.Int64)
                                           .alias("updates_discarded"))
    skips = ev.filter(pl.col("event") == SKIP).group_by("run_id").agg(pl.len().cast(pl.Int64)
                                                                      .alias("updates_skipped"))
    stops = ev.filter(pl.col("event") == "stop").group_by("run_id").agg(pl.col("step").min().alias("stop_step"))
    out = ev.select("run_id").unique()
    for part in (alarms, _acted_alarms(ev), first, rest, skips, stops):
        out = out.join(part, on="run_id", how="left")
    return out.with_columns(pl.col(c).fill_null(0) for c in _ZERO_COUNTS)


#: Per-run counts that are 0 (not null) for a run without events when the corpus has events.
_ZERO_COUNTS = ("n_alarms", "n_acted_alarms", "n_actions", "n_restores", "updates_discarded", "updates_skipped")
_COUNT_COLUMNS = {"n_alarms": pl.Int64, "first_alarm_step": pl.Int64, "n_acted_alarms": pl.Int64,
                  "n_actions": pl.Int64, "first_action_step": pl.Int64, "n_restores": pl.Int64,
                  "updates_discarded": pl.Int64, "updates_skipped": pl.Int64, "stop_step": pl.Int64}


def run_table(runs: pl.DataFrame, events: pl.DataFrame | None = None) -> pl.DataFrame:
    """:func:`with_arms` plus, per run, the :func:`action_counts` columns (null without events), ``updates_unrun``
    (planned updates not run after a stop), ``compute_wasted`` (discarded + skipped + unrun: every update whose
    gradient was computed and thrown away, or that was planned and never run), ``first_action_from_onset`` (first
    action minus ``onset_step``; all in updates) and ``run_wall_time_s`` (null where ``runs`` has none)."""
    r = with_arms(runs)
    if "run_wall_time_s" not in r.columns:
        r = r.with_columns(pl.lit(None, dtype=pl.Float64).alias("run_wall_time_s"))
    if events is not None and events.height:
        r = r.join(action_counts(events), on="run_id", how="left").with_columns(
            pl.col(c).fill_null(0) for c in _ZERO_COUNTS)
    else:
        r = r.with_columns([pl.lit(None, dtype=t).alias(c) for c, t in _COUNT_COLUMNS.items()])
    planned = pl.col("planned_updates") if "planned_updates" in r.columns else pl.lit(None, dtype=pl.Int64)
    onset = pl.col("onset_step") if "onset_step" in r.columns else pl.lit(None, dtype=pl.Int64)
    unrun = pl.when(pl.col("stop_step").is_not_null()).then((planned - pl.col("stop_step")).clip(lower_bound=0)) \
        .otherwise(pl.when(pl.col("n_alarms").is_not_null()).then(pl.lit(0)))
    return r.with_columns(unrun.cast(pl.Int64).alias("updates_unrun")).with_columns(
        (pl.col("updates_discarded") + pl.col("updates_skipped") + pl.col("updates_unrun")).alias("compute_wasted"),
        (pl.col("first_action_step") - onset).cast(pl.Int64).alias("first_action_from_onset"))


def _partners(r: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """One no-action run per key: the ``none`` run, else the first ``log_only`` run (by run_id)."""
    base = r.filter(pl.col("arm_kind").is_in(NO_ACTION)).with_columns(
        (pl.col("arm_kind") != "none").cast(pl.Int8).alias("_order"))
    return base.sort("_order", "run_id").unique(subset=keys, keep="first", maintain_order=True).drop("_order")


def matched_pairs(runs: pl.DataFrame, events: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (run of an acting or log-only arm, its no-action run): ``PAIR_KEYS``, the arm columns,
    ``_with``/``_without`` outcomes and wall times (``run_wall_time_s_with``/``_without``) and ``without_arm``
    (``none`` or ``log_only``). A log-only run is paired with the ``none`` run only. ``runs`` needs ``PAIR_KEYS``,
    ``run_id``, ``config_json``, ``collapsed``, ``final_performance`` (and ``run_wall_time_s``, else the wall times
    are null); with ``events`` the :func:`run_table` columns of the with-run come along."""
    r = run_table(runs, events)
    keys = [k for k in PAIR_KEYS if k in r.columns]
    cols = ["run_id", "collapsed", "final_performance", "run_wall_time_s"]
    extra = [c for c in ("onset_step", "planned_updates", *_COUNT_COLUMNS, "updates_unrun", "compute_wasted",
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
                       "final_performance": "final_performance_with", "run_wall_time_s": "run_wall_time_s_with"})


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


def paired_ratio(with_: np.ndarray, without: np.ndarray, alpha: float = ALPHA) -> dict[str, Any]:
    """The paired ratios ``with_ / without`` (shape ``(n,)``; pairs without two positive finite values dropped):
    ``n``, the ``median`` ratio and its :func:`median_ci` (order statistics are invariant under the log, so this is
    also the exp of the log ratio's CI)."""
    w, wo = np.asarray(with_, float), np.asarray(without, float)
    ok = np.isfinite(w) & np.isfinite(wo) & (w > 0) & (wo > 0)
    ratio = w[ok] / wo[ok]
    lo, hi = median_ci(ratio, alpha)
    return {"n": int(ratio.size), "median": float(np.median(ratio)) if ratio.size else None, "ci_low": lo,
            "ci_high": hi}


def _mean_or_none(x: pl.Series) -> float | None:
    return _f(np.nanmean(x.cast(pl.Float64).fill_null(np.nan).to_numpy())) if x.null_count() < x.len() else None


def _outcome_columns(g: pl.DataFrame) -> dict[str, Any]:
    """A row's collapse (exact McNemar) and final-performance (sign test) columns over its pairs ``g``."""
    valid = g.filter(pl.col("collapsed_with").is_not_null() & pl.col("collapsed_without").is_not_null())
    col = paired_collapse(valid["collapsed_with"].to_numpy(), valid["collapsed_without"].to_numpy())
    perf = paired_performance(g["final_performance_with"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
                              g["final_performance_without"].cast(pl.Float64).fill_null(np.nan).to_numpy())
    return {
        "n_collapsed_without": col["n_collapsed_without"], "n_collapsed_with": col["n_collapsed_with"],
        "collapse_rate_without": col["n_collapsed_without"] / col["n"] if col["n"] else None,
        "collapse_rate_with": col["n_collapsed_with"] / col["n"] if col["n"] else None,
        "prevented": col["prevented"], "caused": col["caused"],
        "collapse_diff": col["diff"], "collapse_diff_ci_low": col["ci_low"], "collapse_diff_ci_high": col["ci_high"],
        "collapse_p_mcnemar": col["p"],
        "final_perf_without": _mean_or_none(g["final_performance_without"]),
        "final_perf_with": _mean_or_none(g["final_performance_with"]),
        "perf_diff": perf["median"], "perf_diff_ci_low": perf["ci_low"], "perf_diff_ci_high": perf["ci_high"],
        "perf_p_sign": perf["p"], "perf_n_better": perf["n_better"], "perf_n_worse": perf["n_worse"],
    }


def _cost_columns(g: pl.DataFrame) -> dict[str, Any]:
    """A row's cost columns over its with-runs ``g`` (null without events)."""
    n = g.height
    has_events = g["n_alarms"].null_count() < n
    first_med, first_q1, first_q3 = _quantiles(g["first_action_from_onset"])
    acted = g.filter(pl.col("n_actions") > 0) if has_events else g.clear()
    planned = g["planned_updates"].cast(pl.Float64).sum() if "planned_updates" in g.columns else None
    wasted = int(g["compute_wasted"].sum()) if has_events and g["compute_wasted"].null_count() < n else None

    def total(c: str) -> int | None:
        return int(g[c].sum()) if has_events else None

    return {
        "runs_alarmed": int((g["n_alarms"] > 0).sum()) if has_events else None,
        "runs_acted": acted.height if has_events else None,
        "n_alarms": total("n_alarms"), "n_acted_alarms": total("n_acted_alarms"), "n_actions": total("n_actions"),
        "updates_discarded": total("updates_discarded"),
        "median_updates_discarded": float(acted["updates_discarded"].median()) if acted.height else None,
        "updates_skipped": total("updates_skipped"),
        "compute_wasted": wasted,
        "compute_wasted_frac": wasted / planned if wasted is not None and planned else None,
        "median_first_action_step": _f(g["first_action_step"].cast(pl.Float64).median())
        if g["first_action_step"].null_count() < n else None,
        "first_action_from_onset_median": first_med, "first_action_from_onset_q25": first_q1,
        "first_action_from_onset_q75": first_q3,
    }


def _wall_time_columns(g: pl.DataFrame) -> dict[str, Any]:
    """A row's wall-time columns: median ``run_wall_time_s`` without and with, the median paired ratio and its CI."""
    w, wo = (g[c].cast(pl.Float64).fill_null(np.nan).to_numpy()
             for c in ("run_wall_time_s_with", "run_wall_time_s_without"))
    ratio = paired_ratio(w, wo)
    return {"wall_time_s_without": _f(np.nanmedian(wo)) if np.isfinite(wo).any() else None,
            "wall_time_s_with": _f(np.nanmedian(w)) if np.isfinite(w).any() else None,
            "wall_time_ratio": ratio["median"], "wall_time_ratio_ci_low": ratio["ci_low"],
            "wall_time_ratio_ci_high": ratio["ci_high"]}


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
        n = g.height
        label = row.pop("arm_label")
        rows.append({
            **row, "arm": label, "arm_kind": g["arm_kind"][0], "actions": g["arm"][0],
            "rollback_lag": g["rollback_lag"][0], "without_arm": "/".join(sorted(set(g["without_arm"].to_list()))),
            "n_pairs": n, **_outcome_columns(g), **_cost_columns(g), **_wall_time_columns(g),
            "controls": ConfigKey(row["perturbation"]).is_control,
            "note": f"n too small ({n} < {MIN_PAIRS} pairs)" if n < MIN_PAIRS else None,
        })
    return pl.DataFrame(rows, infer_schema_length=None)


# ---- head-to-head: the timing controls ---------------------------------------------------------------------
#: What each head-to-head comparison (first arm kind, other arm kind) of :func:`arm_comparisons` can show.
COMPARISONS: dict[tuple[str, str], str] = {
    ("monitor", "random_time"): "the monitor's timing (foresight): the same action with the same lag at random "
    "times in the window (count-matched: as many actions per run as the monitor arm took); the only comparison "
    "that can show that the monitor's alarms carry foresight",
    ("monitor", "oracle"): "whether acting at the monitor's own times beats acting at its typical delay from onset "
    "(drawn from its first-alarm delays on a pilot): seed-specific timing against the monitor's average timing",
    ("monitor", "skip_step"): "which intervention to use: the monitor's rollback + LR back-off against the "
    "practitioners' skip-step rule (OLMo-core: skip an update above mean + 6 SD of the previous 128 values); the "
    "action and its timing both differ, so this says which works better, not why",
    ("skip_step", "random_time"): "whether the skip-step rule beats the monitor's action taken at random times "
    "(count-matched); the action and its timing both differ: a cheap rule against an uninformed expensive one",
}
_WHO = {"monitor": "monitor", "random_time": "random-time", "oracle": "oracle-timed", "skip_step": "skip-step"}


def _rivals(r: pl.DataFrame, first: pl.DataFrame, other: str) -> pl.DataFrame:
    """The runs of kind ``other`` in ``first``'s cell; for a monitor arm against a timing control (random time,
    oracle) only those with its actions and rollback lag."""
    pert, mag, dur = (first[c][0] for c in _ROW_KEYS)
    o = r.filter((pl.col("arm_kind") == other) & (pl.col("perturbation") == pert) & (pl.col("magnitude") == mag)
                 & (pl.col("duration_steps") == dur))
    if first["arm_kind"][0] == "monitor" and other in ("random_time", "oracle"):
        o = o.filter((pl.col("arm") == first["arm"][0]) & pl.col("rollback_lag").eq_missing(first["rollback_lag"][0]))
    return o


def _verdict(kind: str, other: str, cell: str, col: dict[str, Any], counts: str, alpha: float) -> str:
    """The plain reading of one comparison (collapse, exact McNemar at ``alpha``)."""
    n = col["n"]
    small = f"; n too small ({n} < {MIN_PAIRS} pairs)" if n < MIN_PAIRS else ""
    better = col["prevented"] > col["caused"] and col["p"] < alpha
    worse = col["caused"] > col["prevented"] and col["p"] < alpha
    if n == 0:
        return f"{cell}: no seed has both arms"
    if kind == "monitor" and other in ("random_time", "oracle"):
        who = _WHO[other]
        if better:
            return (f"{cell}: the monitor's foresight helps: " if other == "random_time"
                    else f"{cell}: the monitor beats acting at its typical delay: ") + counts
        if worse:
            return f"{cell}: acting on the monitor did worse than the {who} arm: " + counts
        return (f"{cell}: the monitor's foresight is not shown (it does not beat the {who} arm at p < {alpha:g}): "
                + counts + small)
    a, b = f"the {_WHO[kind]} arm", f"the {_WHO[other]} arm"
    if better or worse:
        return f"{cell}: {a if better else b} collapses less than {b if better else a}: " + counts
    return f"{cell}: no difference in collapse shown between {a} and {b} (p >= {alpha:g}): " + counts + small


def _compare(first: pl.DataFrame, o: pl.DataFrame, keys: list[str], alpha: float) -> dict[str, Any]:
    """One comparison of the arm ``first`` with the arm ``o`` on their common seeds (module docstring)."""
    kind, other = first["arm_kind"][0], o["arm_kind"][0]
    label, monitor = first["arm_label"][0], first["monitor"][0]
    pert, mag, dur = (first[c][0] for c in _ROW_KEYS)
    j = first.select(*keys, "collapsed", "final_performance").join(
        o.select(*keys, "collapsed", "final_performance"), on=keys, how="inner", suffix="_other", nulls_equal=True)
    valid = j.filter(pl.col("collapsed").is_not_null() & pl.col("collapsed_other").is_not_null())
    # "with" = the first arm, "without" = the other arm: prevented = the other collapsed, the first not
    col = paired_collapse(valid["collapsed"].to_numpy(), valid["collapsed_other"].to_numpy(), alpha)
    perf = paired_performance(j["final_performance"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
                              j["final_performance_other"].cast(pl.Float64).fill_null(np.nan).to_numpy(), alpha)
    n, me, who = col["n"], _WHO[kind], _WHO[other]
    name = f"{monitor} arm" if kind == "monitor" else f"{me} arm"
    counts = (f"{name} ({label}) collapsed {col['n_collapsed_with']}/{n}, the {who} arm ({o['arm_label'][0]}) "
              f"{col['n_collapsed_without']}/{n} on the same seeds (only the {who} arm collapsed: "
              f"{col['prevented']}, only the {me} arm: {col['caused']}; exact McNemar p = {col['p']:.3g})")
    better = col["prevented"] > col["caused"] and col["p"] < alpha
    return {"perturbation": pert, "magnitude": mag, "duration_steps": dur, "monitor": monitor, "arm": label,
            "arm_kind": kind, "versus": other, "other_arm": o["arm_label"][0], "n_pairs": n,
            "n_collapsed_monitor": col["n_collapsed_with"], "n_collapsed_other": col["n_collapsed_without"],
            "only_other_collapsed": col["prevented"], "only_monitor_collapsed": col["caused"],
            "collapse_diff": col["diff"], "collapse_diff_ci_low": col["ci_low"],
            "collapse_diff_ci_high": col["ci_high"], "p_mcnemar": col["p"],
            "perf_diff": perf["median"], "perf_diff_ci_low": perf["ci_low"], "perf_diff_ci_high": perf["ci_high"],
            "perf_p_sign": perf["p"], "controls": ConfigKey(pert).is_control,
            "foresight": bool(better) if (kind, other) == ("monitor", "random_time") else None,
            "meaning": COMPARISONS[(kind, other)],
            "verdict": _verdict(kind, other, ConfigKey(pert, mag, dur).label(), col, counts, alpha)}


def arm_comparisons(runs: pl.DataFrame, alpha: float = ALPHA) -> list[dict[str, Any]]:
    """The head-to-head comparisons of :data:`COMPARISONS`, on the same seeds of one (perturbation, magnitude,
    duration): each monitor arm against the ``random_time`` and ``oracle`` arms with the same actions and lag and
    against every ``skip_step`` arm, and each skip-step arm against every ``random_time`` arm. Exact McNemar on
    collapse, sign test on final performance, a plain ``verdict`` and what the comparison can show (``meaning``).
    ``foresight`` (monitor against random time only): the monitor collapses less than the random-time arm at exact
    p < alpha. The ``*_monitor`` fields are the first arm's (``arm_kind``: monitor or skip_step), ``*_other`` those
    of the arm it is compared with (``versus``, ``other_arm``)."""
    r = with_arms(runs)
    keys = [k for k in PAIR_KEYS if k in r.columns]
    out: list[dict[str, Any]] = []
    for kind, others in (("monitor", ("random_time", "oracle", "skip_step")), ("skip_step", ("random_time",))):
        arms = r.filter(pl.col("arm_kind") == kind)
        for _, first in sorted(arms.group_by([*_ROW_KEYS, "arm_label", "monitor"]),
                               key=lambda kv: tuple(str(k) for k in kv[0])):
            for other in others:
                rivals = _rivals(r, first, other)
                for _, o in sorted(rivals.group_by("arm_label"), key=lambda kv: str(kv[0])):
                    out.append(_compare(first, o, keys, alpha))
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
    timing = [c for c in comparisons if (c["arm_kind"], c["versus"]) == ("monitor", "random_time")
              and not c["controls"]]
    verdicts = [c["verdict"] for c in timing]
    entry: dict[str, Any] = {
        **Status(StatusKind.OK).to_json(),
        "question": "does acting on the live monitor's alarm change collapse and final performance, and does the "
                    "monitor's timing beat acting at a random time while the perturbation is on? does it beat the "
                    "practitioners' skip-step rule? matched pairs (same seed and perturbation) with vs without, and "
                    "arm against arm",
        "n_runs_acted": acted.height,
        "n_pairs": int(table["n_pairs"].sum()) if table.height else 0,
        "intervals": "collapse: exact McNemar p, exact conditional CI (Clopper-Pearson on the discordant pairs); "
                     "final performance: sign test, distribution-free CI of the median paired difference; "
                     "wall time: median paired ratio with / without, the same distribution-free CI; "
                     f"rows with fewer than {MIN_PAIRS} pairs are noted 'n too small'",
        "rows": table.to_dicts() if table.height else [],
        "comparisons": comparisons,
        "comparisons_read": {f"{a} vs {b}": text for (a, b), text in COMPARISONS.items()},
        "foresight": verdicts or ["no monitor arm has a random-time arm on the same seeds: the monitor's foresight "
                                  "is not tested"],
        "foresight_shown": any(c["foresight"] for c in timing),
        "oracle_check": oracle_check(everything, events),
        "identity_checks": identity_checks(everything, events),
    }
    if table.height == 0:
        entry.update(Status(StatusKind.NOT_TESTABLE, "no run with an action has its no-action twin (same seed and "
                            "perturbation) in the corpus").to_json())
    return table, entry


# ---- the pilots: the oracle's delays, the count-matched random arm's counts ------------------------------------
def _cell(runs: pl.DataFrame, perturbation: str, magnitude: float | None, duration_steps: int | None
          ) -> pl.DataFrame:
    """The runs of one cell: ``perturbation``, and ``magnitude`` (to 1e-6 relative) and ``duration_steps`` when
    given."""
    runs = runs.filter(pl.col("perturbation") == perturbation)
    if magnitude is not None:
        runs = runs.filter((pl.col("magnitude") - float(magnitude)).abs() <= 1e-6 * max(1.0, abs(float(magnitude))))
    if duration_steps is not None:
        runs = runs.filter(pl.col("duration_steps") == int(duration_steps))
    return runs


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

    runs = _cell(with_arms(load_runs(corpus)), perturbation, magnitude, duration_steps).filter(
        pl.col("arm_kind") == "none")
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


def monitor_action_counts(corpus: str | os.PathLike[str], monitor: str, perturbation: str,
                          magnitude: float | None = None, duration_steps: int | None = None,
                          arm: str | None = None) -> dict[str, Any]:
    """The monitor arm's acted alarms per run on one cell of ``corpus`` (``n_acted_alarms`` of
    :func:`action_counts`: one per alarm acted on, a rollback and its LR back-off once; 0: never acted), in run order
    (seed, then run_id): the count-matched random arm's ``intervention_counts``. ``monitor``: the monitor's name
    (``kalman``) or its file; ``arm``: the arm label (``monitor: rollback,lr_backoff, lag 200``) where the cell has
    several arms on that monitor. ``discards``: the updates each of the arm's rollbacks threw away (update count at
    the restore minus the checkpoint's), in run order: the discard-matched random arm's ``intervention_discards``.
    Returns ``{"counts", "discards", "run_ids", "seeds", "arm", "monitor", "corpus", "perturbation", "magnitude",
    "duration_steps"}``. Raises ValueError without exactly one such arm."""
    from stabilitybench.analysis.data import load_events, load_runs

    name = monitor_name(monitor)
    runs = _cell(with_arms(load_runs(corpus)), perturbation, magnitude, duration_steps).filter(
        (pl.col("arm_kind") == "monitor") & (pl.col("monitor") == name))
    if arm is not None:
        runs = runs.filter(pl.col("arm_label") == arm)
    labels = sorted(set(runs["arm_label"].to_list()))
    if len(labels) != 1:
        raise ValueError(f"{corpus}: {'no' if not labels else 'several'} monitor arm(s) on {name} for {perturbation} "
                         f"(magnitude {magnitude}, duration {duration_steps}, arm {arm})"
                         + (f": {'; '.join(labels)} (pass --arm)" if labels else ""))
    events = load_events(corpus, runs)
    counts = action_counts(events).select("run_id", "n_acted_alarms")
    runs = runs.join(counts, on="run_id", how="left").with_columns(pl.col("n_acted_alarms").fill_null(0)) \
        .sort("seed", "run_id")
    restores = events.filter((pl.col("event") == "rollback") & pl.col("value").is_not_null()).with_columns(
        (pl.col("step").cast(pl.Int64) - pl.col("value").cast(pl.Int64)).alias("discard"))
    order = {r: i for i, r in enumerate(runs["run_id"].to_list())}
    restores = restores.with_columns(pl.col("run_id").replace_strict(order, default=None).alias("_order")) \
        .sort("_order", "step")
    return {"counts": runs["n_acted_alarms"].to_list(), "discards": restores["discard"].to_list(),
            "run_ids": runs["run_id"].to_list(),
            "seeds": runs["seed"].to_list(), "arm": labels[0], "monitor": name, "corpus": str(corpus),
            "perturbation": perturbation, "magnitude": magnitude, "duration_steps": duration_steps}


def _write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file beside it, then a rename)."""
    from stabilitybench.data_schema.io import atomic_path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")


def _cell_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", required=True)
    p.add_argument("--perturbation", required=True)
    p.add_argument("--magnitude", type=float)
    p.add_argument("--duration", type=int)
    p.add_argument("-o", "--out", required=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stabilitybench.analysis.intervention oracle-delays|action-counts ...``: write the oracle's delays
    file, or the count- (and discard-) matched random arm's file (JSON: ``counts`` and ``discards``)."""
    ap = argparse.ArgumentParser(prog="python -m stabilitybench.analysis.intervention")
    sub = ap.add_subparsers(dest="cmd", required=True)
    od = sub.add_parser("oracle-delays", help="the monitor's first-alarm delays on a pilot cell (JSON)")
    od.add_argument("--monitor", required=True, help="the monitor file the experiment's monitor arm uses")
    _cell_arguments(od)
    ac = sub.add_parser("action-counts", help="the monitor arm's acted alarms per run and its rollbacks' discards on "
                        "a pilot cell (JSON: the random arm's intervention_counts and intervention_discards)")
    ac.add_argument("--monitor", required=True, help="the monitor arm's monitor (name, e.g. kalman, or file)")
    ac.add_argument("--arm", help="the monitor arm's label where the cell has several (e.g. 'monitor: "
                    "rollback,lr_backoff, lag 200')")
    _cell_arguments(ac)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "action-counts":
            res = monitor_action_counts(a.corpus, a.monitor, a.perturbation, a.magnitude, a.duration, a.arm)
        else:
            res = oracle_delays(a.corpus, a.monitor, a.perturbation, a.magnitude, a.duration)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.cmd == "action-counts":
        _write_json(a.out, res)
        d = res["discards"]
        print(f"{a.out}: {len(res['counts'])} runs of {res['arm']}, {sum(c > 0 for c in res['counts'])} acted, "
              f"{sum(res['counts'])} acted alarms, {len(d)} rollbacks"
              + (f" discarding a median {float(np.median(d)):g} updates" if d else ""))
        return 0
    _write_json(a.out, res)
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
    Column("arm_kind", _S, "-", "none | log_only | monitor | skip_step | oracle | random_time"),
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
    Column("runs_alarmed", _I, "runs", "With-action runs with at least one alarm (skip-step: a skipped update)"),
    Column("runs_acted", _I, "runs", "With-action runs that took at least one action"),
    Column("n_alarms", _I, "alarms", "Alarms over the row's runs (skip-step: skipped updates, the rule's firings)"),
    Column("n_acted_alarms", _I, "alarms", "Alarms acted on over the row's runs (action episodes: a rollback and its "
           "LR back-off count once)"),
    Column("n_actions", _I, "actions", "Actions taken over the row's runs (updates with a back-off, restore, stop or "
           "skipped update)"),
    Column("updates_discarded", _I, "update", "Updates discarded by rollbacks over the row's runs"),
    Column("median_updates_discarded", _F, "update", "Median updates discarded per run that acted"),
    Column("updates_skipped", _I, "update", "Updates skipped by the skip-step rule over the row's runs (one per "
           "skip_step event)"),
    Column("compute_wasted", _I, "update", "Updates discarded plus updates skipped by the skip-step rule plus updates "
           "not run after a stop, over the row's runs"),
    Column("compute_wasted_frac", _F, "-", "compute_wasted / the row's planned updates"),
    Column("median_first_action_step", _F, "update", "Median update of the first action"),
    Column("first_action_from_onset_median", _F, "update", "Median first action minus onset (runs that acted)"),
    Column("first_action_from_onset_q25", _F, "update", "25th percentile of the first action minus onset"),
    Column("first_action_from_onset_q75", _F, "update", "75th percentile of the first action minus onset"),
    Column("wall_time_s_without", _F, "s", "Median run_wall_time_s of the runs without the action"),
    Column("wall_time_s_with", _F, "s", "Median run_wall_time_s of the runs with the action"),
    Column("wall_time_ratio", _F, "-", "Median paired wall-time ratio (with / without; pairs with both times)"),
    Column("wall_time_ratio_ci_low", _F, "-", "Distribution-free 95% CI low of wall_time_ratio (sign-test order "
           "statistics; null below 6 pairs)"),
    Column("wall_time_ratio_ci_high", _F, "-", "Distribution-free 95% CI high of wall_time_ratio"),
    Column("controls", _B, "-", "Unperturbed pairs: every alarm is false, perf_diff is its cost"),
    Column("note", _S, "-", f"'n too small' below {MIN_PAIRS} pairs (null otherwise)"),
]


if __name__ == "__main__":
    raise SystemExit(main())
