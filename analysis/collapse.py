"""Collapse detection: when does a run's performance fall irreversibly below its matched controls?

The rule (parameters in :class:`CollapseConfig`)
-------------------------------------------------
For a run r in a *matched group* (same domain, algo, env and stochasticity level):

1. **Smoothing.** ``performance`` is forward-filled (RL: it is the mean return of the last
   episodes and only changes when an episode ends; LM: it is sampled every N steps) and
   smoothed with a *causal* rolling mean over ``smooth_frac`` of the run's updates:
   ``s_r(t)``, shape ``(T,)``.
2. **Baseline envelope.** The matched unperturbed runs (``dimension == 'none'``) give
   ``mu(t)``, the across-seed mean of their smoothed curves, and ``sd(t)``, the across-seed
   standard deviation (itself smoothed over the no-recovery window). The *learning gain*
   ``G = mean(mu over the last edge_frac) - mean(mu over the first edge_frac)`` measures
   how much the controls improve. The collapse line is::

       line(t) = mu(t) - max(drop * G, spread_k * sd(t))

   i.e. the run must lose at least ``drop`` (default half) of what the controls learn
   *and* sit ``spread_k`` seed-SDs below their mean. Both margins are differences of
   returns, so the rule means the same thing when returns are negative (HalfCheetah
   starts near -300) or positive, and for LM (-val_loss). With one control run ``sd`` is
   unavailable and only the gain margin applies; with a non-learning control (``G <= 0``)
   only the spread margin applies; with neither the group is reported as not assessable
   and only non-finite collapses count.
3. **No recovery.** Collapse happens at the first update ``t >= onset_step`` where
   ``s_r(t) < line(t)`` and ``s_r`` stays below the line for the next ``recovery_frac`` of
   the run's updates (or until the run ends, if that comes first, provided at least
   ``min_confirm`` of the window is left; a crossing closer to the end cannot be confirmed).
4. **Non-finite** telemetry (a NaN/Inf loss, gradient, parameter or performance, a
   ``nonfinite`` event, or ``stop_reason == 'nonfinite'``) is an immediate collapse at
   that update, whichever comes first.

Unperturbed runs are judged against the *other* controls (leave-one-out), which gives the
rule's own false-collapse rate on runs that should never collapse.

Outputs per run: ``collapsed``, ``collapse_step``, ``collapse_time`` and ``censored``,
``final_performance``. ``collapse_time`` is the *survival duration* in updates from
``onset_step``: the time to collapse for a collapsed run, and for a censored run the
time to its last update (right-censoring time), so ``(collapse_time, not censored)`` is the
usual (duration, event) pair. ``final_performance`` is the mean raw performance over the
last ``edge_frac`` of the run's recorded updates (a run stopped by non-finite values keeps
its last finite performance).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from analysis.stats import causal_window, windowed_mean


@dataclass(frozen=True)
class CollapseConfig:
    """Parameters of the collapse rule (see the module docstring). Fractions are of the run's updates."""

    smooth_frac: float = 0.02
    drop: float = 0.5
    spread_k: float = 2.0
    recovery_frac: float = 0.10
    min_confirm: float = 0.25
    edge_frac: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Envelope:
    """The matched controls' curve: ``mean`` and ``line`` (collapse threshold), shape ``(T,)``."""

    mean: np.ndarray
    line: np.ndarray
    gain: float | None
    n_controls: int
    note: str = ""


def _ffill(x: np.ndarray) -> np.ndarray:
    """Forward-fill NaNs along a 1-D array (leading NaNs stay NaN)."""
    if x.size == 0:
        return x.copy()
    idx = np.where(np.isnan(x), -1, np.arange(x.size))
    np.maximum.accumulate(idx, out=idx)
    return np.where(idx >= 0, x[np.maximum(idx, 0)], np.nan)


def smooth(perf: np.ndarray, window: int) -> np.ndarray:
    """Causal rolling mean of the forward-filled ``perf`` (shape ``(T,)``) over ``window`` updates.

    NaNs (before the first report) stay NaN; the window's mean uses the non-NaN values in it.
    """
    x = _ffill(np.asarray(perf, dtype=float))
    return windowed_mean(x, *causal_window(x.size, window), valid=~np.isnan(x))


def _rolling_mean_nan(x: np.ndarray, window: int) -> np.ndarray:
    """Centred rolling mean ignoring NaNs, shape preserved."""
    w = max(1, int(window))
    i = np.arange(x.size)
    lo = np.clip(i - w // 2, 0, x.size)
    hi = np.clip(i + w - w // 2, 0, x.size)
    return windowed_mean(x, lo, hi, valid=~np.isnan(x))


def envelope(controls: list[np.ndarray], length: int, cfg: CollapseConfig) -> Envelope:
    """Collapse line from the smoothed control curves (each shape ``(T_i,)``), on a grid of ``length``.

    Curves shorter than ``length`` are extended with their last value.
    """
    if not controls:
        nan = np.full(length, np.nan)
        return Envelope(nan, nan, None, 0, "no matched unperturbed runs")
    grid = np.full((len(controls), length), np.nan)
    for i, c in enumerate(controls):
        m = min(length, c.size)
        grid[i, :m] = c[:m]
        if c.size < length and c.size:
            grid[i, m:] = _ffill(c)[-1]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (before the first report) stay NaN
        mu = np.nanmean(grid, axis=0)
    edge = max(1, round(cfg.edge_frac * length))
    head, tail = mu[~np.isnan(mu)][:edge], mu[~np.isnan(mu)][-edge:]
    gain = float(tail.mean() - head.mean()) if head.size else None
    margins = []
    notes = []
    if gain is not None and gain > 0:
        margins.append(np.full(length, cfg.drop * gain))
    else:
        notes.append("controls do not improve (gain <= 0): spread margin only")
    if len(controls) >= 2:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            sd = np.nanstd(grid, axis=0, ddof=1)
        sd = _rolling_mean_nan(sd, max(1, round(cfg.recovery_frac * length)))
        margins.append(cfg.spread_k * sd)
    else:
        notes.append("one control run: gain margin only")
    if not margins:
        nan = np.full(length, np.nan)
        return Envelope(mu, nan, gain, len(controls), "no usable margin: performance collapse not assessable")
    margin = np.nanmax(np.vstack(margins), axis=0)
    return Envelope(mu, mu - margin, gain, len(controls), "; ".join(notes))


def first_collapse(s: np.ndarray, line: np.ndarray, onset: int, cfg: CollapseConfig) -> int | None:
    """First update ``t >= onset`` where ``s`` (shape ``(T,)``) falls below ``line`` and does not recover."""
    T = s.size
    line = line[:T] if line.size >= T else np.concatenate([line, np.full(T - line.size, line[-1])])
    with np.errstate(invalid="ignore"):
        below = (s < line) & ~np.isnan(s) & ~np.isnan(line)
    # run[t] = number of consecutive 'below' updates starting at t
    t = np.arange(T)
    next_above = np.minimum.accumulate(np.where(below, T, t)[::-1])[::-1]
    run = next_above - t
    W = max(1, round(cfg.recovery_frac * T))
    need_min = max(1, round(cfg.min_confirm * W))
    left = T - t
    ok = below & (t >= onset) & (((left >= W) & (run >= W)) | ((left < W) & (left >= need_min) & (run == left)))
    hits = np.flatnonzero(ok)
    return int(hits[0]) if hits.size else None


def detect(
    steps: np.ndarray,
    perf: np.ndarray,
    onset: int | None,
    controls: list[np.ndarray],
    nonfinite_step: int | None,
    cfg: CollapseConfig,
) -> dict[str, Any]:
    """Outcome of one run.

    ``steps`` and ``perf`` (shape ``(T,)``) are the run's update indices (0..T-1) and raw
    performance (NaN where null); ``controls`` are the *smoothed* curves of its matched
    controls. Returns ``collapsed, collapse_step, collapse_time, censored,
    final_performance, cause, note``.
    """
    T = int(steps.max()) + 1 if steps.size else 0
    p = np.full(T, np.nan)
    if T:
        p[steps] = perf
    window = max(1, round(cfg.smooth_frac * T))
    s = smooth(p, window)
    env = envelope(controls, T, cfg)
    start = int(onset) if onset is not None else 0
    perf_step = first_collapse(s, env.line, start, cfg) if T else None
    candidates = [(perf_step, "performance"), (nonfinite_step, "nonfinite")]
    candidates = [(c, why) for c, why in candidates if c is not None]
    step, cause = min(candidates) if candidates else (None, None)
    finite = _ffill(np.where(np.isfinite(p), p, np.nan))
    edge = max(1, round(cfg.edge_frac * T))
    tail = finite[-edge:] if T else finite
    final = float(np.nanmean(tail)) if T and np.isfinite(tail).any() else None
    end = T - 1
    origin = start
    return {
        "collapsed": step is not None,
        "collapse_step": step,
        "collapse_time": (step - origin) if step is not None else (end - origin if T else None),
        "censored": step is None,
        "final_performance": final,
        "cause": cause,
        "note": env.note,
        "n_controls": env.n_controls,
        "control_gain": env.gain,
    }


def nonfinite_steps(events: pl.DataFrame, runs: pl.DataFrame, nonfinite_rows: dict[str, int]) -> dict[str, int]:
    """First non-finite update per run, from events, ``stop_reason`` and flagged telemetry rows."""
    out: dict[str, int] = dict(nonfinite_rows)
    ev = events.filter(pl.col("event") == "nonfinite").group_by("run_id").agg(pl.col("step").min())
    for rid, step in ev.iter_rows():
        out[rid] = min(out.get(rid, step), step)
    for row in runs.filter(pl.col("stop_reason") == "nonfinite").iter_rows(named=True):
        if row["run_id"] not in out:
            last = row.get("n_updates")
            out[row["run_id"]] = max(int(last) - 1, 0) if last is not None else 0
    return out


def collapse_group(
    runs: pl.DataFrame,
    perf: dict[str, tuple[np.ndarray, np.ndarray]],
    nonfinite: dict[str, int],
    control_mask: np.ndarray,
    cfg: CollapseConfig,
) -> pl.DataFrame:
    """Outcomes of every run of one matched group.

    ``perf[run_id] = (steps (T,), performance (T,))``; ``control_mask`` (shape
    ``(n_runs,)``) marks the unperturbed controls, which are judged leave-one-out.
    Returns ``run_id`` plus the outcome columns of :func:`detect`.
    """
    ids = runs["run_id"].to_list()
    smoothed: dict[str, np.ndarray] = {}
    for rid, is_ctrl in zip(ids, control_mask, strict=True):
        if is_ctrl and rid in perf and rid not in nonfinite:
            st, pf = perf[rid]
            T = int(st.max()) + 1 if st.size else 0
            p = np.full(T, np.nan)
            p[st] = pf
            smoothed[rid] = smooth(p, max(1, round(cfg.smooth_frac * T)))
    rows = []
    onsets = dict(zip(ids, runs["onset_step"].to_list(), strict=True))
    for rid in ids:
        st, pf = perf.get(rid, (np.zeros(0, dtype=np.int64), np.zeros(0)))
        controls = [c for k, c in smoothed.items() if k != rid]
        rows.append({"run_id": rid, **detect(st, pf, onsets[rid], controls, nonfinite.get(rid), cfg)})
    return pl.DataFrame(
        rows,
        schema={"run_id": pl.String, "collapsed": pl.Boolean, "collapse_step": pl.Int64, "collapse_time": pl.Int64,
                "censored": pl.Boolean, "final_performance": pl.Float64, "cause": pl.String, "note": pl.String,
                "n_controls": pl.Int64, "control_gain": pl.Float64},
    )
