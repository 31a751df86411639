"""Final performance per configuration the way RL papers report it (Agarwal et al. 2021, as in ``rliable``).

* **Score.** A run's ``final_performance`` normalised by the matched unperturbed runs (same
  domain, algo, env and stochasticity level): ``score = 1 + (x - m0) / |m0|`` with ``m0`` the
  controls' median final performance. 1 = the controls' median; for a positive ``m0`` it is
  ``x / m0`` (the fraction of control performance); it grows with ``x`` whatever the sign of
  ``m0``. Runs without a matched control (or with ``m0 = 0``) get no score.
* **Task.** The env: scores of one configuration are pooled over its envs.
* **Configuration.** (domain, algo, stochasticity, perturbation, magnitude, duration).
* **IQM** (interquartile mean: the 25% trimmed mean, rliable's ``aggregate_iqm``) of the pooled
  scores, with a **stratified bootstrap** 95% percentile CI: runs are resampled within each env
  (envs may hold different numbers of runs).
* Computed with :func:`scipy.stats.bootstrap` over independent samples, not the ``rliable``
  package: rliable needs ``arch``, and arch 7.2 does not import with pandas 3, which a fresh
  install resolves (tried in tests/test_light_install.py's clean venv).
* **Performance profile**: the fraction of runs with ``score > tau`` for a grid of ``tau``, with
  the same stratified bootstrap CI per ``tau``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl
from scipy import stats

from stabilitybench.data_schema.keys import GROUP_KEYS, ConfigKey, control_mask

CONFIG_KEYS = ("domain", "algo", "stochasticity", "perturbation", "magnitude", "duration_steps")
#: Thresholds of the performance profile (in control-normalised score).
TAUS = tuple(np.round(np.linspace(0.0, 1.5, 31), 3))
_EMPTY = {"domain": pl.String, "algo": pl.String, "stochasticity": pl.String, "perturbation": pl.String,
          "magnitude": pl.Float64, "duration_steps": pl.Int64, "config": pl.String}


def normalised_scores(runs: pl.DataFrame) -> pl.DataFrame:
    """``runs`` (one row per run: the keys above, ``final_performance``) plus ``control_median`` and ``score``.

    A run is a control when :func:`stabilitybench.data_schema.keys.control_mask` says so; its matched controls
    share its :data:`~stabilitybench.data_schema.keys.GROUP_KEYS`.
    """
    controls = (runs.filter(control_mask(runs)).filter(pl.col("final_performance").is_not_null())
                .group_by(list(GROUP_KEYS)).agg(pl.col("final_performance").median().alias("control_median")))
    out = runs.join(controls, on=list(GROUP_KEYS), how="left")
    m0 = pl.col("control_median")
    score = pl.when(m0.is_not_null() & (m0 != 0)).then(1 + (pl.col("final_performance") - m0) / m0.abs())
    return out.with_columns(score.alias("score"))


def _by_config(scored: pl.DataFrame) -> list[tuple[dict, list[np.ndarray]]]:
    """[(configuration keys, [scores of env 1, scores of env 2, ...]), ...] with at least one score."""
    usable = scored.filter(pl.col("score").is_not_null() & pl.col("score").is_finite())
    groups = []
    for key, g in sorted(usable.group_by(list(CONFIG_KEYS)), key=lambda kv: tuple(str(k) for k in kv[0])):
        tasks = [t["score"].to_numpy() for _, t in sorted(g.group_by("env"), key=lambda kv: str(kv[0]))]
        keys = dict(zip(CONFIG_KEYS, key, strict=True))
        keys["config"] = ConfigKey.of(keys).label()
        groups.append((keys, tasks))
    return groups


def _stratified(tasks: list[np.ndarray], statistic: Callable[[np.ndarray], np.ndarray], n_boot: int,
                seed: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``statistic`` of the pooled scores and its 95% percentile CI, resampling runs within each env.

    ``tasks``: one score array per env. ``statistic`` maps ``(..., n)`` to ``(k, ...)`` (over the last axis).
    The resampling is :func:`scipy.stats.bootstrap` over independent samples (one per env), which is
    rliable's stratified bootstrap; an env with one run enters as it is (its only resample). Returns
    ``(point (k,), low (k,) | None, high (k,) | None)``; no CI when no env has two runs.
    """
    point = statistic(np.concatenate(tasks))
    varied = tuple(t for t in tasks if t.size > 1)
    if not varied:
        return point, None, None
    fixed = np.concatenate([t for t in tasks if t.size == 1] or [np.empty(0)])

    def pooled(*xs: np.ndarray, axis: int = -1) -> np.ndarray:
        rest = np.broadcast_to(fixed, (*xs[0].shape[:-1], fixed.size))
        return statistic(np.concatenate([*xs, rest], axis=-1))

    with warnings.catch_warnings():  # a configuration whose scores are all equal has a degenerate bootstrap
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap(varied, pooled, n_resamples=n_boot, method="percentile", vectorized=True,
                              rng=np.random.default_rng(seed))
    return point, np.atleast_1d(res.confidence_interval.low), np.atleast_1d(res.confidence_interval.high)


def _iqm(x: np.ndarray) -> np.ndarray:
    """Interquartile mean (25% trimmed mean, as rliable's ``aggregate_iqm``) over the last axis, shape ``(1, ...)``."""
    return np.asarray(stats.trim_mean(x, 0.25, axis=-1))[None]


def _above(taus: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Fraction of scores above each tau, over the last axis: ``(..., n)`` -> ``(len(taus), ...)``."""
    return lambda x: (x[None] > taus.reshape(-1, *[1] * x.ndim)).mean(axis=-1)


def iqm_table(runs: pl.DataFrame, n_boot: int = 2000, seed: int = 0) -> pl.DataFrame:
    """One row per configuration: ``n_runs, n_envs, iqm, ci_low, ci_high`` (95%), ``median``, ``mean``."""
    rows = []
    for key, tasks in _by_config(normalised_scores(runs)):
        pooled = np.concatenate(tasks)
        point, lo, hi = _stratified(tasks, _iqm, n_boot, seed)
        rows.append({**key, "n_runs": int(pooled.size), "n_envs": len(tasks), "iqm": float(point[0]),
                     "ci_low": None if lo is None else float(lo[0]), "ci_high": None if hi is None else float(hi[0]),
                     "median": float(np.median(pooled)), "mean": float(pooled.mean())})
    return pl.DataFrame(rows) if rows else pl.DataFrame(schema={**_EMPTY, "n_runs": pl.Int64, "n_envs": pl.Int64,
                                                                "iqm": pl.Float64, "ci_low": pl.Float64,
                                                                "ci_high": pl.Float64, "median": pl.Float64,
                                                                "mean": pl.Float64})


def performance_profiles(runs: pl.DataFrame, taus: Sequence[float] = TAUS, n_boot: int = 2000,
                         seed: int = 0) -> pl.DataFrame:
    """One row per (configuration, tau): ``fraction`` of runs with score > tau and its 95% CI."""
    taus = np.asarray(taus, dtype=float)
    rows = []
    for key, tasks in _by_config(normalised_scores(runs)):
        pooled = np.concatenate(tasks)
        point, lo, hi = _stratified(tasks, _above(taus), n_boot, seed)
        lo = [None] * len(taus) if lo is None else lo.tolist()
        hi = [None] * len(taus) if hi is None else hi.tolist()
        for i, tau in enumerate(taus):
            rows.append({**key, "tau": float(tau), "fraction": float(point[i]), "ci_low": lo[i], "ci_high": hi[i],
                         "n_runs": int(pooled.size)})
    return pl.DataFrame(rows) if rows else pl.DataFrame(schema={**_EMPTY, "tau": pl.Float64, "fraction": pl.Float64,
                                                                "ci_low": pl.Float64, "ci_high": pl.Float64,
                                                                "n_runs": pl.Int64})
