"""Small statistics helpers shared by the analysis modules: intervals, AUROC, bootstrap.

All intervals are two-sided at level ``1 - alpha`` (default 95%). Bootstraps resample
*runs* (the unit of replication), never steps, and are seeded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps


def windowed_mean(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``out[i]`` = mean of ``x[lo[i]:hi[i]]`` over the entries where ``valid``; NaN where there are none.

    Shapes: ``x`` and ``valid`` ``(T,)``, ``lo`` and ``hi`` ``(T,)`` indices into ``[0, T]``. O(T) by
    cumulative sums, so causal, centred or any other windows cost the same.
    """
    c = np.concatenate([[0.0], np.cumsum(np.where(valid, x, 0.0))])
    n = np.concatenate([[0], np.cumsum(valid)])
    cnt = n[hi] - n[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (c[hi] - c[lo]) / cnt
    out[cnt == 0] = np.nan
    return out


def causal_window(size: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` of the trailing window of ``window`` steps ending at each of ``size`` steps (inclusive)."""
    hi = np.arange(1, size + 1)
    return np.maximum(0, hi - max(1, int(window))), hi


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float | None, float | None]:
    """Exact binomial CI of a proportion ``k/n``; ``(None, None)`` when ``n == 0``."""
    if n == 0:
        return None, None
    lo = 0.0 if k == 0 else float(sps.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(sps.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def auroc(pos: Sequence[float] | np.ndarray, neg: Sequence[float] | np.ndarray) -> float | None:
    """Mann-Whitney AUROC: P(score_pos > score_neg) + 0.5 P(tie). None if a class is empty.

    ``+inf`` scores (non-finite telemetry) rank above every finite score.
    """
    p = np.asarray(pos, dtype=float)
    n = np.asarray(neg, dtype=float)
    if p.size == 0 or n.size == 0:
        return None
    p = np.where(np.isnan(p), -np.inf, p)
    n = np.where(np.isnan(n), -np.inf, n)
    gt = (p[:, None] > n[None, :]).sum()
    eq = (p[:, None] == n[None, :]).sum()
    return float((gt + 0.5 * eq) / (p.size * n.size))


def bootstrap_ci(
    stat: Callable[[np.ndarray], float | None],
    n: int,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    strata: np.ndarray | None = None,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of ``stat(indices)`` over ``n`` units (runs).

    ``stat`` receives an int array of resampled unit indices, shape ``(n,)``, and
    returns a number or None (dropped). ``strata`` (shape ``(n,)``) resamples within each
    stratum (e.g. collapsing vs non-collapsing runs for an AUROC) so every replicate
    keeps both classes. Returns ``(None, None)`` when fewer than 10% of replicates give
    a value.
    """
    if n == 0:
        return None, None
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
    values = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(g, size=g.size, replace=True) for g in groups if g.size])
        v = stat(idx)
        if v is not None and np.isfinite(v):
            values.append(v)
    if len(values) < max(1, n_boot // 10):
        return None, None
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def iqr(x: Sequence[float] | np.ndarray) -> tuple[float | None, float | None]:
    """(25th, 75th) percentiles, or (None, None) for an empty input."""
    a = np.asarray(x, dtype=float)
    if a.size == 0:
        return None, None
    q1, q3 = np.quantile(a, [0.25, 0.75])
    return float(q1), float(q3)


def number(value: Any, n: int | None = None, ci: tuple[Any, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A headline number for ``summary.json``: ``{"value", "n", "ci_low", "ci_high", ...}``."""
    out: dict[str, Any] = {"value": _plain(value), "n": n}
    lo, hi = ci if ci is not None else (None, None)
    out["ci_low"], out["ci_high"] = _plain(lo), _plain(hi)
    out.update({k: _plain(v) for k, v in extra.items()})
    return out


def not_testable(reason: str, **extra: Any) -> dict[str, Any]:
    """The summary entry of an analysis that the data cannot support."""
    return {"status": f"not testable: {reason}", **{k: _plain(v) for k, v in extra.items()}}


def _plain(v: Any) -> Any:
    """JSON-safe scalar: numpy types to Python, non-finite floats to None."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if np.isfinite(f) else None
    if isinstance(v, np.bool_):
        return bool(v)
    return v
