"""Small statistics helpers shared by the analysis modules: intervals, AUROC, bootstrap.

All intervals are two-sided at level ``1 - alpha`` (default 95%). Statistics come from libraries:
the Mann-Whitney AUROC on ``scipy.stats.rankdata`` (tested against ``sklearn.metrics.roc_auc_score``,
+-inf included), statsmodels
``proportion_confint(method="beta")`` (Clopper-Pearson) and ``scipy.stats.bootstrap`` (BCa), resampling
*seeds* (clusters of runs that share one) rather than runs or steps; every bootstrap is seeded.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as sps
from statsmodels.stats.proportion import proportion_confint

# summary.json's value types are defined in stabilitybench.analysis.summary; re-exported for older imports
from stabilitybench.analysis.summary import not_testable, number  # noqa: F401


def ffill(x: np.ndarray) -> np.ndarray:
    """Forward-fill NaNs along a 1-D array (leading NaNs stay NaN): a sparse column's value holds until the next
    report. The project's one forward fill of a NumPy array (collapse curves, monitor files)."""
    if x.size == 0:
        return x.copy()
    idx = np.where(np.isnan(x), -1, np.arange(x.size))
    np.maximum.accumulate(idx, out=idx)
    return np.where(idx >= 0, x[np.maximum(idx, 0)], np.nan)


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
    """Exact binomial CI of ``k/n`` (statsmodels ``proportion_confint(method="beta")``); ``(None, None)`` if n = 0."""
    if n == 0:
        return None, None
    lo, hi = proportion_confint(int(k), int(n), alpha=alpha, method="beta")
    return float(lo), float(hi)


def auroc(pos: Sequence[float] | np.ndarray, neg: Sequence[float] | np.ndarray) -> float | None:
    """AUROC = P(score_pos > score_neg) + 0.5 P(tie), as the Mann-Whitney U statistic; None if a class is empty.

    ``U = sum of the positives' mid-ranks - n_pos (n_pos + 1) / 2`` (``scipy.stats.rankdata``), ``AUROC =
    U / (n_pos n_neg)``: the same number as ``sklearn.metrics.roc_auc_score`` (tested against it, +-inf
    included) at a fraction of its cost, which matters inside bootstraps. ``+inf`` scores (non-finite
    telemetry) rank above every finite score and tie with each other; NaN ranks below every score.
    """
    p = np.asarray(pos, dtype=float).ravel()
    n = np.asarray(neg, dtype=float).ravel()
    if p.size == 0 or n.size == 0:
        return None
    p = np.where(np.isnan(p), -np.inf, p)
    n = np.where(np.isnan(n), -np.inf, n)
    if p.size * n.size <= 250_000:  # small samples: count the pairs directly (same U, far less overhead)
        gt = np.count_nonzero(p[:, None] > n[None, :])
        eq = np.count_nonzero(p[:, None] == n[None, :])
        return float((gt + 0.5 * eq) / (p.size * n.size))
    ranks = sps.rankdata(np.concatenate([p, n]))
    u = ranks[: p.size].sum() - p.size * (p.size + 1) / 2.0
    return float(u / (p.size * n.size))


PAIRWISE_MAX = 4_000_000  # stratified_auroc compares every positive with every negative up to this many pairs


def stratified_auroc(score: np.ndarray, label: np.ndarray, strata: np.ndarray) -> tuple[float | None, int]:
    """AUROC that compares positives with negatives of the *same* stratum only.

    ``sum_s AUC_s * n_pos_s * n_neg_s / sum_s n_pos_s * n_neg_s`` over the strata holding both classes, so a
    score that only encodes the stratum (e.g. the dose) gets exactly 0.5. Returns ``(auroc or None, number of
    within-stratum pairs)``. Shapes: all ``(n,)``. The weighted sum equals (within-stratum pairs won + half
    the tied ones) / within-stratum pairs, which is how it is counted (one positive x negative comparison
    matrix, masked to equal strata: it runs inside bootstraps); NaN and +-inf as in :func:`auroc`.
    """
    score, label, strata = np.asarray(score, float), np.asarray(label, bool), np.asarray(strata)
    score = np.where(np.isnan(score), -np.inf, score)
    pos, neg = score[label], score[~label]
    if pos.size * neg.size > PAIRWISE_MAX:  # large samples: one Mann-Whitney per stratum
        num = den = 0.0
        for s in np.unique(strata):
            m = strata == s
            a = auroc(score[m & label], score[m & ~label])
            if a is not None:
                w = np.count_nonzero(m & label) * np.count_nonzero(m & ~label)
                num += a * w
                den += w
        return (num / den if den else None), int(den)
    same = strata[label][:, None] == strata[~label][None, :]
    den = int(np.count_nonzero(same))
    if not den:
        return None, 0
    gt = np.count_nonzero(same & (pos[:, None] > neg[None, :]))
    eq = np.count_nonzero(same & (pos[:, None] == neg[None, :]))
    return float((gt + 0.5 * eq) / den), den


def cluster_bootstrap_ci(
    stat: Callable[[np.ndarray], float | None],
    clusters: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float | None, float | None, str]:
    """CI of ``stat(run indices)`` resampling whole *clusters* (e.g. seeds) with ``scipy.stats.bootstrap`` (BCa).

    ``clusters`` (shape ``(n,)``) labels each run; a replicate draws clusters with replacement and passes
    the indices of all their runs (repeated as drawn) to ``stat``, which returns a number or None. BCa
    needs every replicate (and jackknife value) to be defined; when it is not (a replicate without
    one class, fewer than 3 clusters) the percentile interval of the defined replicates is returned
    instead, if at least half of them are. Returns ``(low, high, method)``.
    """
    clusters = np.asarray(clusters)
    labels = np.unique(clusters)
    members = [np.flatnonzero(clusters == c) for c in labels]
    if labels.size < 2:
        return None, None, "not computable: fewer than 2 clusters"

    def f(sample: np.ndarray) -> float:
        idx = np.concatenate([members[int(i)] for i in sample])
        v = stat(idx)
        return float(v) if v is not None and np.isfinite(v) else float("nan")

    data = (np.arange(labels.size),)
    kw = {"n_resamples": n_boot, "confidence_level": 1 - alpha, "vectorized": False, "rng": np.random.default_rng(seed)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.bootstrap(data, f, method="BCa", **kw) if labels.size >= 3 else None
        if res is not None and np.isfinite(res.confidence_interval.low) and np.isfinite(res.confidence_interval.high):
            return float(res.confidence_interval.low), float(res.confidence_interval.high), "BCa, clusters = seeds"
        if res is None:
            res = sps.bootstrap(data, f, method="percentile", **kw)
    # the BCa call's replicates are the ones a percentile call with the same seed would draw: reuse them
    dist = np.asarray(res.bootstrap_distribution, float)
    dist = dist[np.isfinite(dist)]
    if dist.size < max(1, n_boot // 2):
        return None, None, "not computable: too few defined replicates"
    lo, hi = np.quantile(dist, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi), "percentile (BCa undefined), clusters = seeds"


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
    a value. Runs that share a seed are not independent: prefer :func:`cluster_bootstrap_ci`.
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
