"""Final performance per configuration the way RL papers report it (Agarwal et al. 2021, ``rliable``).

* **Score.** A run's ``final_performance`` normalised by the matched unperturbed runs (same
  domain, algo, env and stochasticity level): ``score = 1 + (x - m0) / |m0|`` with ``m0`` the
  controls' median final performance. 1 = the controls' median; for a positive ``m0`` it is
  ``x / m0`` (the fraction of control performance); it grows with ``x`` whatever the sign of
  ``m0``. Runs without a matched control (or with ``m0 = 0``) get no score.
* **Task.** The env: scores of one configuration are pooled over its envs.
* **Configuration.** (domain, algo, stochasticity, perturbation, magnitude, duration).
* **IQM** (interquartile mean, ``rliable.metrics.aggregate_iqm``) of the pooled scores, with a
  **stratified bootstrap** CI: runs are resampled within each env
  (``rliable.library.get_interval_estimates``; envs may hold different numbers of runs).
* **Performance profile**: the fraction of runs with ``score > tau`` for a grid of ``tau``, with
  the same stratified bootstrap CI per ``tau``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import polars as pl

from analysis.survival import group_label

CONFIG_KEYS = ("domain", "algo", "stochasticity", "perturbation", "magnitude", "duration_steps")
MATCH_KEYS = ("domain", "algo", "env", "stochasticity")
#: Thresholds of the performance profile (in control-normalised score).
TAUS = tuple(np.round(np.linspace(0.0, 1.5, 31), 3))
_EMPTY = {"domain": pl.String, "algo": pl.String, "stochasticity": pl.String, "perturbation": pl.String,
          "magnitude": pl.Float64, "duration_steps": pl.Int64, "config": pl.String}


def normalised_scores(runs: pl.DataFrame) -> pl.DataFrame:
    """``runs`` (one row per run: the keys above, ``final_performance``) plus ``control_median`` and ``score``.

    A run is a control when its ``perturbation`` is ``none``.
    """
    controls = (runs.filter((pl.col("perturbation") == "none") & pl.col("final_performance").is_not_null())
                .group_by(list(MATCH_KEYS)).agg(pl.col("final_performance").median().alias("control_median")))
    out = runs.join(controls, on=list(MATCH_KEYS), how="left")
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
        keys["config"] = group_label(keys["perturbation"], keys["magnitude"], keys["duration_steps"])
        groups.append((keys, tasks))
    return groups


def _interval(tasks: list[np.ndarray], func, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from rliable import library as rly

    with warnings.catch_warnings():  # rliable passes arch the random_state it deprecates; the draw is the same
        warnings.simplefilter("ignore", FutureWarning)
        point, interval = rly.get_interval_estimates({"c": list(tasks)}, func, reps=n_boot,
                                                     random_state=np.random.RandomState(seed))
    return np.atleast_1d(point["c"]), np.asarray(interval["c"]).reshape(2, -1)


def iqm_table(runs: pl.DataFrame, n_boot: int = 2000, seed: int = 0) -> pl.DataFrame:
    """One row per configuration: ``n_runs, n_envs, iqm, ci_low, ci_high`` (95%), ``median``, ``mean``."""
    from rliable import metrics

    rows = []
    for key, tasks in _by_config(normalised_scores(runs)):
        pooled = np.concatenate(tasks)
        if pooled.size < 2:
            point, lo, hi = float(pooled.mean()), None, None
        else:
            p, ci = _interval(tasks, lambda *xs: np.array([metrics.aggregate_iqm(np.concatenate(xs))]), n_boot, seed)
            point, lo, hi = float(p[0]), float(ci[0, 0]), float(ci[1, 0])
        rows.append({**key, "n_runs": int(pooled.size), "n_envs": len(tasks), "iqm": point, "ci_low": lo,
                     "ci_high": hi, "median": float(np.median(pooled)), "mean": float(pooled.mean())})
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
        if pooled.size < 2:
            point, lo, hi = (pooled[None, :] > taus[:, None]).mean(axis=1), [None] * len(taus), [None] * len(taus)
        else:
            point, ci = _interval(tasks, lambda *xs: (np.concatenate(xs)[None, :] > taus[:, None]).mean(axis=1),
                                  n_boot, seed)
            lo, hi = ci[0].tolist(), ci[1].tolist()
        for i, tau in enumerate(taus):
            rows.append({**key, "tau": float(tau), "fraction": float(point[i]), "ci_low": lo[i], "ci_high": hi[i],
                         "n_runs": int(pooled.size)})
    return pl.DataFrame(rows) if rows else pl.DataFrame(schema={**_EMPTY, "tau": pl.Float64, "fraction": pl.Float64,
                                                                "ci_low": pl.Float64, "ci_high": pl.Float64,
                                                                "n_runs": pl.Int64})
