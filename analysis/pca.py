"""Low-dimensionality of the telemetry: PCA on standardised block features against a circular-shift null.

For each (domain, algo) group, every *block* of every run is a row of the feature matrix
(block means of the features of :mod:`stabilitybench.analysis.data`: forward-filled within runs,
log-transformed where heavy-tailed, collinear or algebraically redundant columns removed
first; rows still missing a value are dropped). Columns are standardised (zero mean, unit
variance over the group's rows) and fitted with :class:`sklearn.decomposition.PCA`. The
pooled analysis standardises each group separately, keeps the features that every group
has and weights every (domain, algo) group *equally* (the mean of their correlation
matrices), so the group with the most rows does not dominate.

Reported: the explained-variance ratio, the number of components for 90% of the
variance (``n90``) and the participation ratio ``PR = (sum l)^2 / sum l^2`` of the
eigenvalues ``l``. **Null:** circular-shift surrogates: each column of each run is rotated
in time by its own random offset (:func:`circular_shift`), which keeps every column's
marginal distribution *and* its autocorrelation (apart from the one wrap-around point) but
breaks the alignment between columns; re-standardised and refitted, ``n_null`` times (99 by
default, so the smallest attainable p-value is 0.01). Shared slow trends beat a permutation null
almost surely; they do not beat this one unless the columns co-move beyond what their own
autocorrelation explains. (``null="permute"`` keeps the old within-run permutation for comparison.)

**Detrending.** A circular shift keeps each column's autocorrelation but not its alignment with
training time: columns that all trend with training time (a norm that grows, a loss that falls)
stay correlated in the data but not in the shifted copies, so the null rejects for *any* set of
trending columns, related or not (ten unrelated monotone trends plus AR(1) noise gave p = 1/21).
So before the PCA and before the surrogates each run has its matched group's **control mean
trajectory** removed (:func:`detrend_group`): the mean over the group's unperturbed runs of each
column at each block step (a control is compared with the mean of the *other* controls, so its
own noise is not subtracted from itself). This removes whatever the shared training-time
trajectory is, with no assumed functional form; a per-run fitted time trend would also have
removed the part of each perturbed run's own excursion that looks like a trend, which is the signal
of interest. What remains is each run's deviation from its controls; the null then rejects only
when those deviations co-move across columns more than independent series with the same
autocorrelation would. The detrended runs of a group share the reference's own noise, so their
surrogates share each column's circular offset (:meth:`PCAAccumulator.add_group`); shifting each
run on its own would break that within-column dependence and make the null too easy to beat.

The scaling path (:func:`streaming_pca`) computes the same PCA exactly from streamed
moments (Chan et al. pairwise update of the covariance), in O(p^2) memory.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA


@dataclass(frozen=True)
class PCAResult:
    """Eigen-summary of one fit: ``evr`` shape ``(p,)``, ``n90`` and participation ratio ``pr``."""

    evr: np.ndarray
    n90: int
    pr: float


def standardise(X: np.ndarray) -> np.ndarray:
    """Column-wise z-score of ``X`` (shape ``(n, p)``); constant columns become 0."""
    mu = X.mean(axis=0)
    sd = X.std(axis=0)
    sd[sd <= 0] = 1.0
    return (X - mu) / sd


def summarise(eigvals: np.ndarray, level: float = 0.9) -> PCAResult:
    """``PCAResult`` from eigenvalues (shape ``(p,)``, any order)."""
    lam = np.sort(np.clip(np.asarray(eigvals, dtype=float), 0, None))[::-1]
    total = lam.sum()
    evr = lam / total if total > 0 else np.zeros_like(lam)
    n90 = int(np.searchsorted(np.cumsum(evr), level - 1e-12) + 1) if total > 0 else 0
    pr = float(total**2 / (lam**2).sum()) if total > 0 else 0.0
    return PCAResult(evr, min(n90, lam.size), pr)


def fit(X: np.ndarray, level: float = 0.9) -> tuple[PCA, PCAResult]:
    """Standardise ``X`` (shape ``(n, p)``) and fit a full sklearn PCA."""
    Z = standardise(X)
    pca = PCA(svd_solver="full").fit(Z)
    return pca, summarise(pca.explained_variance_, level)


def time_shuffle(X: np.ndarray, run_index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Permute each column of ``X`` (shape ``(n, p)``) independently within each run.

    ``run_index`` (shape ``(n,)``) labels the run of each row; rows of a run need not be
    contiguous.
    """
    out = np.empty_like(X)
    codes = np.unique(np.asarray(run_index), return_inverse=True)[1]
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    for rows in np.split(order, bounds):
        for j in range(X.shape[1]):
            out[rows, j] = X[rng.permutation(rows), j]
    return out


def circular_shift(X: np.ndarray, run_index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate each column of ``X`` (shape ``(n, p)``) in time by its own random offset, within each run.

    Rows of a run are taken in their order in ``X``; ``run_index`` (shape ``(n,)``) labels the run.
    """
    out = np.empty_like(X)
    codes = np.unique(np.asarray(run_index), return_inverse=True)[1]
    for c in np.unique(codes):
        rows = np.flatnonzero(codes == c)
        out[rows] = _shift_run(X[rows], rng)
    return out


def _shift_run(X: np.ndarray, rng: np.random.Generator, fractions: np.ndarray | None = None) -> np.ndarray:
    """One run's rows ``(T, p)`` with every column rolled by an independent uniform offset.

    ``fractions`` (shape ``(p,)``, in ``[0, 1)``): roll column ``j`` by ``floor(fractions[j] T)`` instead of a fresh
    draw, so that the runs of one group can share each column's offset (:meth:`PCAAccumulator.add_group`).
    """
    T = X.shape[0]
    if T < 2:
        return X.copy()
    shifts = rng.integers(0, T, size=X.shape[1]) if fractions is None else np.floor(fractions * T).astype(int) % T
    idx = (np.arange(T)[:, None] - shifts[None, :]) % T
    return np.take_along_axis(X, idx, axis=0)


def null_distribution(
    X: np.ndarray, run_index: np.ndarray, n_null: int = 99, seed: int = 0, level: float = 0.9,
    null: str = "circular",
) -> list[PCAResult]:
    """``n_null`` PCA summaries of surrogate copies of ``X``: circular shifts (default) or permutations."""
    rng = np.random.default_rng(seed)
    make = circular_shift if null == "circular" else time_shuffle
    out = []
    for _ in range(n_null):
        Z = standardise(make(X, run_index, rng))
        cov = np.cov(Z, rowvar=False) if Z.shape[0] > 1 else np.eye(Z.shape[1])
        out.append(summarise(np.linalg.eigvalsh(np.atleast_2d(cov)), level))
    return out


def _on_grid(steps: np.ndarray, X: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Each column of one run's ``X`` (shape ``(T, p)``, rows at block ``steps`` ``(T,)``) linearly interpolated
    onto ``grid`` (shape ``(K,)``); NaN outside the run's own finite steps, shape ``(K, p)``."""
    order = np.argsort(steps, kind="stable")
    st, X = np.asarray(steps, float)[order], np.asarray(X, float)[order]
    out = np.full((grid.size, X.shape[1]), np.nan)
    for j in range(X.shape[1]):
        ok = np.isfinite(X[:, j])
        if not ok.any():
            continue
        inside = (grid >= st[ok][0]) & (grid <= st[ok][-1])
        out[inside, j] = np.interp(grid[inside], st[ok], X[ok, j])
    return out


def _subtract(steps: np.ndarray, X: np.ndarray, grid: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``X`` (shape ``(T, p)``) minus the reference trajectory ``ref`` (shape ``(K, p)`` on ``grid``), interpolated at
    ``steps`` and held at its end values beyond them; a column with no finite reference becomes NaN."""
    out = np.full(X.shape, np.nan)
    st = np.asarray(steps, float)
    for j in range(X.shape[1]):
        ok = np.isfinite(ref[:, j])
        if ok.any():
            out[:, j] = X[:, j] - np.interp(st, grid[ok], ref[ok, j])
    return out


def detrend_group(runs: Mapping[str, tuple[np.ndarray, np.ndarray]], controls: Collection[str]
                  ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Remove a matched group's control mean trajectory from each of its runs.

    ``runs``: run -> ``(block steps (T,), block features (T, p))`` of one matched group (same domain, algo, env,
    stochasticity: one time axis); ``controls``: the ids of its unperturbed runs (others are ignored). The
    reference is the mean over controls of each column at each block step (each control interpolated onto the
    union of the controls' steps, within its own range; the mean ignores missing values). A perturbed run has the
    mean of *all* controls removed; a control the mean of the *other* controls (leave-one-out), so its own noise
    is not subtracted from itself. Returns ``(run -> detrended features (T, p), runs left out)``: the runs of a
    group without a control, and a group's only control (it has no other control to be compared with).
    """
    ctrl = [r for r in runs if r in set(controls)]
    if not ctrl:
        return {}, sorted(runs)
    grid = np.unique(np.concatenate([np.asarray(runs[r][0], float) for r in ctrl]))
    stack = np.stack([_on_grid(*runs[r], grid) for r in ctrl])  # (C, K, p)
    have = np.isfinite(stack)
    total = np.where(have, stack, 0.0).sum(axis=0)
    count = have.sum(axis=0)
    out: dict[str, np.ndarray] = {}
    left_out: list[str] = []
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_all = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        for rid, (steps, X) in runs.items():
            if rid in ctrl:
                if len(ctrl) < 2:
                    left_out.append(rid)
                    continue
                i = ctrl.index(rid)
                n = count - have[i]
                ref = np.where(n > 0, (total - np.where(have[i], stack[i], 0.0)) / np.maximum(n, 1), np.nan)
            else:
                ref = mean_all
            out[rid] = _subtract(steps, np.asarray(X, float), grid, ref)
    return out, sorted(left_out)


def n_components_for(X: np.ndarray, level: float = 0.9) -> int:
    """Components needed for ``level`` of the variance of standardised ``X`` (shape ``(n, p)``)."""
    return fit(X, level)[1].n90


class StreamingMoments:
    """Exact mean and covariance of rows streamed in chunks (Chan et al. pairwise merge), O(p^2) memory."""

    def __init__(self, p: int) -> None:
        self.n = 0
        self.mean = np.zeros(p)
        self.m2 = np.zeros((p, p))

    def update(self, X: np.ndarray) -> None:
        """Add rows ``X`` (shape ``(m, p)``)."""
        m = X.shape[0]
        if m == 0:
            return
        mu = X.mean(axis=0)
        D = X - mu
        m2 = D.T @ D
        delta = mu - self.mean
        n = self.n + m
        self.m2 += m2 + np.outer(delta, delta) * (self.n * m / n)
        self.mean += delta * (m / n)
        self.n = n

    def covariance(self) -> np.ndarray:
        return self.m2 / max(self.n - 1, 1)


def streaming_pca(chunks: Iterable[np.ndarray], p: int, level: float = 0.9) -> tuple[PCAResult, np.ndarray]:
    """PCA of standardised rows streamed as chunks (each ``(m, p)``); returns the summary and loadings ``(p, p)``.

    Standardising by the global SD is the same as taking the correlation matrix.
    """
    mom = StreamingMoments(p)
    for chunk in chunks:
        mom.update(np.asarray(chunk, dtype=float))
    cov = mom.covariance()
    sd = np.sqrt(np.clip(np.diag(cov), 1e-300, None))
    corr = cov / np.outer(sd, sd)
    lam, vec = np.linalg.eigh(corr)
    order = np.argsort(lam)[::-1]
    return summarise(lam, level), vec[:, order]


class PCAAccumulator:
    """Per-run streaming PCA of one subset of runs, with its surrogate null.

    :meth:`add_run` takes one run's complete feature rows ``X (T, p)``: it updates the exact
    moments of the real data and, for each of ``n_null`` replicates, of a surrogate copy: by
    default each column circularly shifted by its own offset (:func:`circular_shift`); with
    ``null="permute"`` a copy whose columns are permuted independently in time (within this run; for runs longer than
    ``null_rows_per_run`` a random subset of that many rows of the shuffle, which has the
    same distribution and keeps the null's cost bounded). Memory is O(n_null p^2), so a
    corpus of any size streams through run by run. While the rows seen stay under
    ``keep_rows`` they are also kept, and :meth:`result` fits ``sklearn.decomposition.PCA``
    on them (the same numbers as the moments, to rounding; see the tests).
    """

    def __init__(
        self, p: int, n_null: int = 99, seed: int = 0, keep_rows: int = 5_000_000, null_rows_per_run: int = 50_000,
        null: str = "circular",
    ) -> None:
        self.p = p
        self.null_kind = null
        self.null_rows_per_run = null_rows_per_run
        self.real = StreamingMoments(p)
        self.null = [StreamingMoments(p) for _ in range(n_null)]
        self.rng = np.random.default_rng(seed)
        self.keep_rows = keep_rows
        self.kept: list[np.ndarray] | None = []
        self.runs = 0
        self.per_run: list[tuple[int, np.ndarray, np.ndarray]] = []  # (n, mean, m2) of each run

    def add_group(self, runs: list[np.ndarray]) -> None:
        """Add the runs of one matched group (each ``(T_r, p)``, no NaN) whose circular-shift surrogates share each
        column's offset (a fraction of the run's length, drawn once per group, column and replicate).

        For runs detrended by a shared reference (:func:`detrend_group`) the group's runs are dependent within a
        column (they share the reference's own noise); shifting every run's column ``j`` by the same offset keeps
        that dependence in the surrogates, while different columns still get independent offsets. Shifting each
        run on its own would break it and make the null too easy to beat.
        """
        if not runs:
            return
        fractions = self.rng.random((len(self.null), self.p)) if self.null_kind == "circular" else None
        for X in runs:
            self.add_run(X, fractions)

    def add_run(self, X: np.ndarray, fractions: np.ndarray | None = None) -> None:
        """Add one run's rows (shape ``(T, p)``, no NaN); ``fractions`` (shape ``(n_null, p)``): the circular shifts
        of each replicate and column as fractions of ``T`` (default: drawn for this run alone)."""
        if X.shape[0] == 0:
            return
        self.runs += 1
        self.real.update(X)
        one = StreamingMoments(self.p)
        one.update(X)
        self.per_run.append((one.n, one.mean, one.m2))
        T = X.shape[0]
        m = min(T, self.null_rows_per_run)
        for r, mom in enumerate(self.null):
            if self.null_kind == "circular":
                mom.update(_shift_run(X, self.rng, None if fractions is None else fractions[r]))
                continue
            # m rows of a within-run time shuffle: each column's values drawn without replacement,
            # independently per column (m == T is a full permutation)
            mom.update(np.column_stack([X[self.rng.choice(T, size=m, replace=False), j] for j in range(self.p)]))
        if self.kept is not None:
            self.kept.append(X)
            if self.real.n > self.keep_rows:
                self.kept = None

    @property
    def n(self) -> int:
        return self.real.n

    def correlation(self, mom: StreamingMoments | None = None) -> np.ndarray:
        """Correlation matrix (= covariance of the standardised rows), shape ``(p, p)``."""
        cov = (mom or self.real).covariance()
        sd = np.sqrt(np.clip(np.diag(cov), 1e-300, None))
        return cov / np.outer(sd, sd)

    def result(self, level: float = 0.9) -> tuple[PCAResult, np.ndarray, list[PCAResult], str]:
        """(real summary, loadings ``(p, p)`` by column, null summaries, method used)."""
        null = [summarise(np.linalg.eigvalsh(self.correlation(m)), level) for m in self.null]
        if self.kept is not None and self.kept:
            pca, res = fit(np.vstack(self.kept), level)
            return res, pca.components_.T, null, "sklearn.decomposition.PCA (in memory)"
        lam, vec = np.linalg.eigh(self.correlation())
        order = np.argsort(lam)[::-1]
        return summarise(lam, level), vec[:, order], null, "exact streaming moments (correlation eigendecomposition)"

    def bootstrap(self, n_boot: int = 1000, seed: int = 0, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """``n90`` and participation ratio of ``n_boot`` resamples of the runs (with replacement).

        Each replicate merges the resampled runs' stored moments exactly, so no telemetry
        is re-read. Returns two arrays of shape ``(n_boot,)``.
        """
        rng = np.random.default_rng(seed)
        R = len(self.per_run)
        n90 = np.empty(n_boot)
        pr = np.empty(n_boot)
        for b in range(n_boot):
            mom = StreamingMoments(self.p)
            for i in rng.integers(0, R, size=R):
                n, mean, m2 = self.per_run[i]
                _merge(mom, n, mean, m2)
            res = summarise(np.linalg.eigvalsh(self.correlation(mom)), level)
            n90[b], pr[b] = res.n90, res.pr
        return n90, pr

    def standardiser(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and population SD of every feature, each shape ``(p,)``."""
        sd = np.sqrt(np.clip(np.diag(self.real.m2) / max(self.real.n, 1), 0, None))
        sd[sd <= 0] = 1.0
        return self.real.mean.copy(), sd


def _merge(mom: StreamingMoments, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
    """Merge precomputed moments ``(n, mean (p,), m2 (p, p))`` into ``mom`` (Chan et al.)."""
    if n == 0:
        return
    delta = mean - mom.mean
    total = mom.n + n
    mom.m2 = mom.m2 + m2 + np.outer(delta, delta) * (mom.n * n / total)
    mom.mean = mom.mean + delta * (n / total)
    mom.n = total
