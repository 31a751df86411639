"""Collapse detection: when does a run's performance fall irreversibly below its matched controls?

The rule is :data:`RULE` (quoted under "The rule" below and, verbatim, in the dataset card);
its parameters are :class:`CollapseConfig`.

Outputs per run: ``collapsed``, ``collapse_kind``, ``collapse_step`` (the offline, lag-free
date: rule item 5), ``collapse_step_smoothed`` (the date on the centred smoother of
``performance`` that ``collapse_step`` was before, kept so that old and new leads can be
compared), ``collapse_date_source`` (``episode_return`` | ``eval_return`` | ``performance`` |
``nonfinite``; null when not collapsed), ``collapse_confirmed_step``, ``collapse_time``
(``collapse_step`` - onset; null when censored), ``survival_time`` (the survival duration:
``collapse_time``, or last update - onset when censored), ``censored``, ``transient``,
``final_performance`` (the mean raw performance over the last ``edge_frac`` of the run's
recorded updates; a run stopped by non-finite values keeps its last finite performance).

The decision (items 1-4 and 6) reads ``performance``; only the date (item 5) reads the
per-episode returns. A run's columns come in a :class:`RunCurves`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl
from scipy.ndimage import median_filter

from stabilitybench.analysis.stats import causal_window, ffill, windowed_mean
from stabilitybench.data_schema.keys import onset_step, sustained_mask

#: The collapse rule in words (Markdown); the one text the docs, the dataset card and ``help()`` quote.
RULE = """For a run r in a *matched group* (same domain, algo, env and stochasticity level):

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
3. **Past the window, no recovery.** With ``W = recovery_frac`` of the run's updates and the
   perturbation window ``[onset, onset + duration)``, the run collapses at the first update
   ``t >= onset`` where ``s_r(t) < line(t)`` and ``s_r`` *stays* below the line until at least
   ``max(t, onset + duration) + W``: a drop must outlast the perturbation by a whole
   confirmation window. If the run ends first, it must stay below until its end and have at
   least ``min_confirm x W`` updates after ``max(t, onset + duration)``; otherwise the
   crossing cannot be confirmed. The update at which the confirmation completes is the
   *online confirmation step* (``collapse_confirmed_step``): the earliest time a causal rule
   could know. A run of a *regime* kind (``stabilitybench.data_schema.keys.SUSTAINED_KINDS``,
   e.g. ``lr_regime``: an elevated setting held from update 0 for the whole run, onset 0) has
   no perturbation window to outlast: its window ends at its onset, so it collapses at the
   first ``t`` where ``s_r`` stays below the line until ``t + W`` (or, near the end, until the
   end with at least ``min_confirm x W`` updates after ``t``).
4. **Transients.** A run that is not collapsed but stayed below the line for at least
   ``min_confirm x W`` consecutive updates after onset had a *transient* (``transient``), e.g.
   a drop confined to the perturbation window. It is not a collapse.
5. **Offline date.** Items 1-4 decide *whether* the run collapsed; the date is found on a
   signal without a trailing mean, the first of these that gives one:

   * (a) ``episode_return`` (RL): the return of the most recently completed training episode,
     forward-filled. An *observation* is an update at which it takes a new value (or its first
     value): the update at which an episode's return became known. (SB3's PPO records the last
     episode of each rollout: on the quick Swimmer runs one observation per 320-update
     rollout, about 2 episodes of ~156 updates.) The observed returns are smoothed by a
     *centred running median* over ``date_median`` (3) observations, which drops a single
     outlying episode and keeps a step where it is. Among the observations at or after onset
     whose median lies below the line (the line at the observation's update), take the one
     nearest before the causal crossing of item 3 (if none, the first after it, up to the
     confirmation step) and walk back through the preceding observations while they are below
     the line and at or after onset. The date is the update of the observation just before
     that stretch (the last one above the line, i.e. about where the first bad episode began),
     or onset if it lies before onset. The break lies between that observation and the
     stretch's first, so the date is at most one observation interval *early* and never late:
     an instant break is dated within one episode (PPO: within the 320-update train call in
     which it happened). Used when the run records ``episode_return`` and some observation
     is below the line in that range.
   * (b) ``eval_return`` (the deterministic policy on a clean env), by the same procedure with
     every evaluation an observation. Evaluations are rarer (by default 10 per run), so their
     interval bounds the error; episodes come first as both denser and the signal the decision
     reads.
   * (c) ``performance`` otherwise (LM: ``-val_loss``, which has no trailing mean; RL corpora
     written without ``episode_return``): on the *centred* rolling mean ``c_r`` (same window as
     item 1, no causal lag), the start of the stretch of updates ``>= onset`` where ``c_r`` is
     below the line that contains the causal crossing (the causal crossing itself if ``c_r`` is
     above the line there). For LM the remaining error is about half a window plus one
     evaluation interval. For RL ``performance`` is the mean of the last 5 episodes, and this
     date lags an instant break by several episodes (simulated on Swimmer: 340-500 updates).

   The date on (c) is kept for every collapse as ``collapse_step_smoothed`` (what
   ``collapse_step`` was before dates moved to (a)/(b)); ``collapse_date_source`` names the
   signal ``collapse_step`` came from. Lead times, ``collapse_time`` and ``survival_time`` are
   measured from ``collapse_step``.
6. **Non-finite** telemetry (a NaN/Inf loss, gradient, parameter or performance, a
   ``nonfinite`` event, or ``stop_reason == 'nonfinite'``) is a collapse at that update,
   whichever comes first (against the date of item 5): ``collapse_kind`` is ``nonfinite`` |
   ``performance`` | ``none``. The online confirmation step of a run with a non-finite update
   at or before its smoothed date (5c) is that update.

**Regime groups in the LM domain: a spike above the run's own best.** In a matched LM group whose
perturbed runs are all of a regime kind (the ``spontaneous`` LM part: runs at a high peak LR beside
controls at the normal one), the line of items 3-5 is the run's *own* running best less a spike:
``line_r(t) = max_{u <= t} s_r(u) - spike_nats`` (``performance = -val_loss``, so: the validation
loss has risen ``spike_nats`` (default 0.5 nats, x1.65 perplexity) above the lowest it has been).
Persistence, transients and the date are items 3-5 unchanged: a collapse stays above that
level for a whole confirmation window ``W`` (10% of the run's updates) or until the end (at least
``min_confirm x W``); a spike that comes back below it after at least ``min_confirm x W`` updates is a
``transient``; a shorter one is neither; a non-finite loss is a collapse (item 6). Controls of
the group meet the same rule (their false-collapse rate is measured, not assumed). Why not
the controls' line: a run at a high LR learns *less* than the controls (its best is ~1 nat worse), so
"half the controls' gain" is a level, not an event; a run that has broken sits on it or not depending
on how far the controls have got, and the date becomes the time the controls' line passes the broken
run, not the break. The own-best line dates the break itself (to about one evaluation interval plus
half a smoothing window), and the size is stated in nats. 0.5 nats: the CPU pilots' breaks rose
1.0-1.4 nats above the run's best, the controls' smoothed training loss never rose more than 0.23
nats above its running minimum. Kicked LM runs (``standard``, ``lm_quick``) keep the controls' line.

**Cross-fitting over control seeds.** The control seeds of a group are cut into
``k = min(n_control_seeds, max_folds)`` folds. Fold ``i``'s envelope is built from the controls
of the *other* folds, and every run whose seed falls in fold ``i`` (its held-out control and
the perturbed runs of that seed; seeds without a control go to fold ``seed mod k``) is judged
against it. Controls and perturbed runs thus meet the same rule against the same control
statistics, and the held-out controls give the rule's false-collapse rate. With one control
seed there is nothing to cross-fit: perturbed runs use that control and the control itself
is not assessable.
"""
__doc__ = f"{__doc__}\n\nThe rule\n--------\n{RULE}"


@dataclass(frozen=True)
class CollapseConfig:
    """Parameters of the collapse rule (see the module docstring). Fractions are of the run's updates."""

    smooth_frac: float = 0.02
    drop: float = 0.5
    spread_k: float = 2.0
    recovery_frac: float = 0.10
    min_confirm: float = 0.25
    edge_frac: float = 0.05
    max_folds: int = 5
    date_median: int = 3  #: observations (odd) in the centred running median that dates on episode/eval returns
    spike_nats: float = 0.5  #: LM regime groups: the rise above the run's own best that counts (rule, LM paragraph)

    def __post_init__(self) -> None:
        if self.date_median < 1 or self.date_median % 2 == 0:
            raise ValueError(f"date_median must be a positive odd number of observations, got {self.date_median}")
        if not self.spike_nats > 0:
            raise ValueError(f"spike_nats must be > 0, got {self.spike_nats}")

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


@dataclass(frozen=True)
class RunCurves:
    """One run's outcome columns on its recorded updates ``steps``, each shape ``(n,)``, NaN where null.

    ``performance`` decides the collapse; ``episode_return`` (RL: the return of the most recently
    completed training episode, forward-filled) and ``eval_return`` (deterministic-policy
    evaluations, on the rows where one ran) date it (rule item 5). Either is None where the run
    does not record it (LM runs; corpora written before the column existed).
    """

    steps: np.ndarray
    performance: np.ndarray
    episode_return: np.ndarray | None = None
    eval_return: np.ndarray | None = None

    @classmethod
    def of(cls, value: RunCurves | tuple[np.ndarray, np.ndarray]) -> RunCurves:
        """``value`` itself, or the curves of a ``(steps, performance)`` pair (dated on performance)."""
        if isinstance(value, RunCurves):
            return value
        steps, perf = value
        return cls(np.asarray(steps), np.asarray(perf, dtype=float))


def n_updates(steps: np.ndarray) -> int:
    """Length ``T`` of the update grid ``0..T-1`` that a run's recorded ``steps`` span (0 for none)."""
    return int(steps.max()) + 1 if steps.size else 0


def smooth(perf: np.ndarray, window: int) -> np.ndarray:
    """Causal rolling mean of the forward-filled ``perf`` (shape ``(T,)``) over ``window`` updates.

    NaNs (before the first report) stay NaN; the window's mean uses the non-NaN values in it.
    """
    x = ffill(np.asarray(perf, dtype=float))
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
            grid[i, m:] = ffill(c)[-1]
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


def own_best_line(s: np.ndarray, spike: float) -> np.ndarray:
    """The LM regime line: the running best of the smoothed curve ``s`` (shape ``(T,)``, NaN before its first
    value) less ``spike``; NaN until ``s`` has a value (nothing is below it there)."""
    return np.fmax.accumulate(np.asarray(s, dtype=float)) - spike


def spike_group(runs: pl.DataFrame, control_mask: np.ndarray) -> bool:
    """Whether a matched group is judged by the own-best spike line: LM, and every perturbed run of a regime kind."""
    if "domain" not in runs.columns or runs.height == 0 or set(runs["domain"].to_list()) != {"lm"}:
        return False
    regime = sustained_mask(runs).to_numpy()
    perturbed = ~np.asarray(control_mask, dtype=bool)
    return bool(perturbed.any() and regime[perturbed].all())


def centred_smooth(perf: np.ndarray, window: int) -> np.ndarray:
    """Centred rolling mean of the forward-filled ``perf`` (shape ``(T,)``) over ``window`` updates (offline)."""
    return _rolling_mean_nan(ffill(np.asarray(perf, dtype=float)), window)


def _below(s: np.ndarray, line: np.ndarray) -> np.ndarray:
    T = s.size
    line = line[:T] if line.size >= T else np.concatenate([line, np.full(T - line.size, line[-1])])
    with np.errstate(invalid="ignore"):
        return (s < line) & ~np.isnan(s) & ~np.isnan(line)


def _run_lengths(below: np.ndarray) -> np.ndarray:
    """``run[t]`` = number of consecutive ``below`` updates starting at ``t``, shape ``(T,)``."""
    T = below.size
    t = np.arange(T)
    next_above = np.minimum.accumulate(np.where(below, T, t)[::-1])[::-1]
    return next_above - t


def first_collapse(s: np.ndarray, line: np.ndarray, onset: int, cfg: CollapseConfig,
                   window_end: int | None = None) -> tuple[int, int] | None:
    """``(crossing, confirmation step)`` of the first collapse of ``s`` (shape ``(T,)``) below ``line``, or None.

    The crossing is the first ``t >= onset`` below the line that stays below until
    ``max(t, window_end) + W`` (``window_end`` = first update after the perturbation; default ``onset``).
    """
    T = s.size
    if T == 0:
        return None
    below = _below(s, line)
    run = _run_lengths(below)
    t = np.arange(T)
    W = max(1, round(cfg.recovery_frac * T))
    need_min = max(1, round(cfg.min_confirm * W))
    wend = onset if window_end is None else max(int(window_end), onset)
    start = np.maximum(t, wend)
    need_end = start + W
    full = (need_end <= T) & (run >= need_end - t)
    partial = (need_end > T) & (run == T - t) & (T - start >= need_min)
    hits = np.flatnonzero(below & (t >= onset) & (full | partial))
    if not hits.size:
        return None
    t0 = int(hits[0])
    return t0, int(min(need_end[t0], T) - 1)


def had_transient(s: np.ndarray, line: np.ndarray, onset: int, cfg: CollapseConfig) -> bool:
    """Whether ``s`` stayed below ``line`` for ``>= min_confirm x W`` consecutive updates at or after ``onset``."""
    if s.size == 0:
        return False
    W = max(1, round(cfg.recovery_frac * s.size))
    run = _run_lengths(_below(s, line))
    return bool((run[onset:] >= max(1, round(cfg.min_confirm * W))).any())


def offline_date(c: np.ndarray, line: np.ndarray, onset: int, crossing: int) -> int:
    """Start of the stretch ``>= onset`` where the centred curve ``c`` is below ``line`` that holds ``crossing``."""
    below = _below(c, line)
    if not below[crossing]:
        return crossing
    above = np.flatnonzero(~below[onset: crossing + 1])
    return onset + (int(above[-1]) + 1 if above.size else 0)


def on_grid(steps: np.ndarray, values: np.ndarray | None, T: int) -> np.ndarray | None:
    """``values`` (shape ``(n,)``, at updates ``steps``) on the update grid ``0..T-1`` (NaN elsewhere), shape ``(T,)``.

    None when ``values`` is None or has no finite value (a column the run does not record).
    """
    if values is None:
        return None
    x = np.asarray(values, dtype=float)
    if not np.isfinite(x).any():
        return None
    grid = np.full(T, np.nan)
    grid[np.asarray(steps)] = x
    return grid


def observations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Updates at which ``x`` (shape ``(T,)``) takes a new finite value, and those values; each shape ``(n,)``.

    A new value is the first finite one, one after a null/non-finite row, or one that differs
    from the previous row's: the update at which an episode's return became known in a
    forward-filled ``episode_return``, every evaluation in a sparse ``eval_return``. (Two
    successive episodes with exactly the same return count once.)
    """
    x = np.asarray(x, dtype=float)
    fin = np.isfinite(x)
    prev = np.r_[np.nan, x[:-1]]
    idx = np.flatnonzero(fin & ~(np.isfinite(prev) & (x == prev)))
    return idx, x[idx]


def running_median(values: np.ndarray, width: int) -> np.ndarray:
    """Centred running median of ``values`` (shape ``(n,)``) over ``width`` (odd) points; the ends repeat the edge."""
    if values.size == 0 or width <= 1:
        return np.asarray(values, dtype=float)
    return median_filter(np.asarray(values, dtype=float), size=int(width), mode="nearest")


def episode_date(obs_steps: np.ndarray, obs_values: np.ndarray, line: np.ndarray, onset: int, crossing: int,
                 confirmed: int, width: int = 3) -> int | None:
    """Lag-free date of a collapse from per-episode (or per-evaluation) returns (rule item 5a), or None.

    ``obs_steps``, ``obs_values`` (shape ``(n,)``): the :func:`observations` of the returns;
    ``line`` (shape ``(T,)``): the collapse line; ``crossing`` / ``confirmed``: the causal
    crossing and the confirmation step of :func:`first_collapse`. The returns are smoothed by a
    centred running median over ``width`` observations; the stretch of observations at or after
    ``onset`` below the line that holds the last one at or before ``crossing`` (else the first
    one in ``(crossing, confirmed]``) is walked back to its start, and the date is the update of
    the observation before it (the last above the line), but not before ``onset``. None when no
    observation in that range is below the line.
    """
    if obs_steps.size == 0:
        return None
    lv = line[np.minimum(obs_steps, line.size - 1)]
    with np.errstate(invalid="ignore"):
        below = (running_median(obs_values, width) < lv) & ~np.isnan(lv)
    before = np.flatnonzero(below & (obs_steps >= onset) & (obs_steps <= crossing))
    after = np.flatnonzero(below & (obs_steps > crossing) & (obs_steps <= confirmed))
    if before.size:
        k = int(before[-1])
    elif after.size:
        k = int(after[0])
    else:
        return None
    while k > 0 and below[k - 1] and obs_steps[k - 1] >= onset:
        k -= 1
    return max(int(onset), int(obs_steps[k - 1])) if k > 0 else int(onset)


#: Signals that date a collapse, in order of precedence (rule item 5); ``performance`` is the fallback.
DATE_SOURCES = ("episode_return", "eval_return")


def detect(
    steps: np.ndarray,
    perf: np.ndarray,
    onset: int,
    controls: list[np.ndarray],
    nonfinite_step: int | None,
    cfg: CollapseConfig,
    window_end: int | None = None,
    env: Envelope | None = None,
    *,
    episode_return: np.ndarray | None = None,
    eval_return: np.ndarray | None = None,
    own_best: bool = False,
) -> dict[str, Any]:
    """Outcome of one run.

    ``steps`` and ``perf`` (shape ``(T,)``) are the run's update indices (0..T-1) and raw
    performance (NaN where null); ``controls`` are the *smoothed* curves of its matched
    controls; ``onset``: the run's onset update (:func:`stabilitybench.data_schema.keys.onset_step`);
    ``window_end`` is the first update after the perturbation window (default: onset).
    ``env``: the controls' :func:`envelope` on this run's grid, if the caller already has it
    (it depends only on the controls and ``T``; :func:`collapse_group` shares one per fold).
    ``episode_return`` / ``eval_return`` (shape ``(T,)``, aligned with ``steps``; None or all-null
    where the run lacks them) date the collapse (rule item 5); they never change whether it collapsed.
    ``own_best``: judge against the run's own running best less ``cfg.spike_nats`` instead of the controls'
    line (LM regime groups, :func:`spike_group`; the rule's LM paragraph).
    Returns the outcome columns (see the module docstring) plus ``note``, ``n_controls``, ``control_gain``.
    """
    T = n_updates(steps)
    p = np.full(T, np.nan)
    if T:
        p[steps] = perf
    window = max(1, round(cfg.smooth_frac * T))
    s = smooth(p, window)
    env = envelope(controls, T, cfg) if env is None else env
    line = own_best_line(s, cfg.spike_nats) if own_best else env.line
    start = int(onset)
    hit = first_collapse(s, line, start, cfg, window_end) if T else None
    smoothed_date = perf_date = confirmed = source = None
    if hit is not None:
        smoothed_date = offline_date(centred_smooth(p, window), line, start, hit[0])
        confirmed = hit[1]
        perf_date, source = smoothed_date, "performance"
        for name, values in zip(DATE_SOURCES, (episode_return, eval_return), strict=True):
            x = on_grid(steps, values, T)
            d = None if x is None else episode_date(*observations(x), line, start, hit[0], confirmed,
                                                    cfg.date_median)
            if d is not None:
                perf_date, source = d, name
                break
    nonfinite = None if nonfinite_step is None else int(nonfinite_step)
    # the date before item 5 (a)/(b), and the confirmation step, exactly as the smoothed date gave them
    step_smoothed = smoothed_date
    if nonfinite is not None and (smoothed_date is None or nonfinite <= smoothed_date):
        step_smoothed = confirmed = nonfinite
    kind, step = "none", None
    if perf_date is not None:
        kind, step = "performance", perf_date
    if nonfinite is not None and (step is None or nonfinite <= step):
        kind, step, source = "nonfinite", nonfinite, "nonfinite"
    finite = ffill(np.where(np.isfinite(p), p, np.nan))
    edge = max(1, round(cfg.edge_frac * T))
    tail = finite[-edge:] if T else finite
    final = float(np.nanmean(tail)) if T and np.isfinite(tail).any() else None
    collapsed = step is not None
    end = T - 1
    return {
        "collapsed": collapsed,
        "collapse_kind": kind,
        "collapse_step": step,
        "collapse_step_smoothed": step_smoothed,
        "collapse_date_source": source,
        "collapse_confirmed_step": confirmed,
        "collapse_time": (step - start) if collapsed else None,
        "survival_time": (step - start) if collapsed else (end - start if T else None),
        "censored": not collapsed,
        "transient": (not collapsed) and T > 0 and had_transient(s, line, start, cfg),
        "final_performance": final,
        "note": "; ".join(x for x in (env.note, "own-best spike line (LM regime)" if own_best else "") if x),
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


def control_folds(control_seeds: list[int], max_folds: int) -> dict[int, int]:
    """Fold of each control seed: sorted seeds cut into ``min(n, max_folds)`` chunks (empty with < 2 seeds)."""
    seeds = sorted(set(int(x) for x in control_seeds))
    if len(seeds) < 2:
        return {}
    k = min(len(seeds), max(2, max_folds))
    return {int(x): i for i, chunk in enumerate(np.array_split(np.array(seeds), k)) for x in chunk}


OUTCOME_SCHEMA = {
    "run_id": pl.String, "collapsed": pl.Boolean, "collapse_kind": pl.String, "collapse_step": pl.Int64,
    "collapse_step_smoothed": pl.Int64, "collapse_date_source": pl.String, "collapse_confirmed_step": pl.Int64,
    "collapse_time": pl.Int64, "survival_time": pl.Int64,
    "censored": pl.Boolean, "transient": pl.Boolean, "final_performance": pl.Float64, "note": pl.String,
    "n_controls": pl.Int64, "control_gain": pl.Float64, "rule_fold": pl.Int64,
}


def collapse_group(
    runs: pl.DataFrame,
    perf: Mapping[str, RunCurves | tuple[np.ndarray, np.ndarray]],
    nonfinite: dict[str, int],
    control_mask: np.ndarray,
    cfg: CollapseConfig,
) -> pl.DataFrame:
    """Outcomes of every run of one matched group, cross-fitted over control seeds (module docstring).

    ``runs`` needs ``run_id, seed, onset_step`` (and ``duration_steps`` for the window end; a run of a regime
    kind, :func:`~stabilitybench.data_schema.keys.sustained_mask`, has none: its window ends at its onset);
    ``perf[run_id]``: the run's :class:`RunCurves` (``episode_return`` / ``eval_return`` date the
    collapse where present), or a ``(steps (T,), performance (T,))`` pair (dated on performance,
    as corpora without per-episode returns are); ``control_mask`` (shape ``(n_runs,)``)
    marks the unperturbed controls. Returns ``run_id``, the outcome columns of :func:`detect`
    and ``rule_fold`` (null when the group could not be cross-fitted).
    """
    curves = {rid: RunCurves.of(v) for rid, v in perf.items()}
    ids = runs["run_id"].to_list()
    seeds = [int(x) for x in runs["seed"].to_list()]
    onsets = [onset_step(r) for r in runs.iter_rows(named=True)]
    durs = runs["duration_steps"].to_list() if "duration_steps" in runs.columns else [None] * len(ids)
    regime = sustained_mask(runs).to_list()  # a regime has no perturbation window to outlast (rule item 3)
    own_best = spike_group(runs, control_mask)  # an LM regime group: the own-best spike line (rule, LM paragraph)
    durs = [None if sus else d for d, sus in zip(durs, regime, strict=True)]
    smoothed: dict[str, tuple[int, np.ndarray]] = {}
    for rid, seed, is_ctrl in zip(ids, seeds, control_mask, strict=True):
        if is_ctrl and rid in curves and rid not in nonfinite:
            st, pf = curves[rid].steps, curves[rid].performance
            T = n_updates(st)
            p = np.full(T, np.nan)
            p[st] = pf
            smoothed[rid] = (seed, smooth(p, max(1, round(cfg.smooth_frac * T))))
    folds = control_folds([sd for sd, _ in smoothed.values()], cfg.max_folds)
    k = max(folds.values()) + 1 if folds else 0
    rows = []
    envelopes: dict[tuple[int | bool, int], Envelope] = {}  # one per (fold, run length): the same for all its runs
    for rid, seed, onset, dur, is_ctrl in zip(ids, seeds, onsets, durs, control_mask, strict=True):
        rc = curves.get(rid, RunCurves(np.zeros(0, dtype=np.int64), np.zeros(0)))
        st = rc.steps
        if k:
            fold = folds.get(seed, seed % k)
            controls = [c for sd, c in smoothed.values() if folds[sd] != fold]
        else:
            fold = None
            controls = [] if is_ctrl else [c for _, c in smoothed.values()]
        # the control set is fixed by the fold (uncross-fitted: by whether the run is a control itself)
        key = (fold if k else bool(is_ctrl), n_updates(st))
        if key not in envelopes:
            envelopes[key] = envelope(controls, key[1], cfg)
        wend = onset + (int(dur) if dur is not None and not is_ctrl else 0)
        out = detect(st, rc.performance, onset, controls, nonfinite.get(rid), cfg, wend, env=envelopes[key],
                     episode_return=rc.episode_return, eval_return=rc.eval_return, own_best=own_best)
        if not k and smoothed:
            out["note"] = "; ".join(x for x in (out["note"], "one control seed: not cross-fitted") if x)
        rows.append({"run_id": rid, **out, "rule_fold": fold})
    return pl.DataFrame(rows, schema=OUTCOME_SCHEMA)
