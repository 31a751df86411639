"""PCA summaries, the time-shuffled null and the streaming path."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from stabilitybench.analysis import pca


def low_dim_runs(n_runs: int = 4, T: int = 500, p: int = 8, k: int = 2, noise: float = 0.1, seed: int = 0):
    """Rows driven by k smooth latent trends (random walks) through a fixed loading matrix."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(k, p))
    X, rid = [], []
    for r in range(n_runs):
        z = np.cumsum(rng.normal(size=(T, k)), axis=0)
        X.append(z @ W + noise * rng.normal(size=(T, p)))
        rid += [f"run{r}"] * T
    return np.vstack(X), np.array(rid)


def test_summarise_by_hand() -> None:
    res = pca.summarise(np.array([3.0, 1.0, 0.0, 0.0]))
    np.testing.assert_allclose(res.evr, [0.75, 0.25, 0.0, 0.0])
    assert res.n90 == 2
    assert res.pr == pytest.approx(16 / 10)  # (3+1)^2 / (9+1)


def test_low_dimensional_structure_beats_the_time_shuffled_null() -> None:
    X, rid = low_dim_runs()
    _, real = pca.fit(X)
    assert real.n90 <= 2
    null = pca.null_distribution(X, rid, n_null=5, seed=1, null="permute")
    # shuffling each column in time within runs destroys the shared trends: near-isotropic
    assert min(r.n90 for r in null) > real.n90
    assert min(r.pr for r in null) > real.pr + 1


def test_time_shuffle_keeps_each_runs_marginals() -> None:
    X, rid = low_dim_runs(n_runs=3, T=50)
    Y = pca.time_shuffle(X, rid, np.random.default_rng(0))
    for r in np.unique(rid):
        m = rid == r
        np.testing.assert_allclose(np.sort(X[m], axis=0), np.sort(Y[m], axis=0))
    assert not np.allclose(X, Y)


def test_streaming_pca_matches_sklearn_on_standardised_data() -> None:
    X, _ = low_dim_runs(n_runs=3, T=400)
    res, vec = pca.streaming_pca(np.array_split(X, 7), X.shape[1])
    sk = PCA().fit(pca.standardise(X))
    np.testing.assert_allclose(res.evr, sk.explained_variance_ratio_, atol=1e-10)
    for j in range(2):
        assert abs(abs(vec[:, j] @ sk.components_[j]) - 1) < 1e-8


def test_accumulator_streaming_equals_in_memory_and_bootstraps_over_runs() -> None:
    X, rid = low_dim_runs(n_runs=5, T=300)
    runs = [X[rid == r] for r in np.unique(rid)]
    mem = pca.PCAAccumulator(X.shape[1], n_null=4, seed=0)
    stream = pca.PCAAccumulator(X.shape[1], n_null=4, seed=0, keep_rows=10)  # forgets rows: moments only
    for r in runs:
        mem.add_run(r)
        stream.add_run(r)
    a, _va, null_a, how_a = mem.result()
    b, _vb, null_b, how_b = stream.result()
    assert how_a.startswith("sklearn") and how_b.startswith("exact streaming")
    np.testing.assert_allclose(a.evr, b.evr, atol=1e-10)
    assert a.n90 == b.n90 and a.pr == pytest.approx(b.pr)
    assert [n.n90 for n in null_a] == [n.n90 for n in null_b]  # same seed, same shuffles
    assert min(n.n90 for n in null_a) > a.n90
    n90, pr = mem.bootstrap(n_boot=50, seed=0)
    assert n90.shape == (50,) and np.all(n90 >= 1) and np.median(n90) == a.n90
    assert np.all((pr > 1) & (pr < X.shape[1]))


def test_null_subsampling_matches_the_full_shuffle() -> None:
    X, rid = low_dim_runs(n_runs=3, T=3000)
    sub = pca.PCAAccumulator(X.shape[1], n_null=10, seed=0, null_rows_per_run=600, null="permute")
    full = pca.PCAAccumulator(X.shape[1], n_null=10, seed=0, null="permute")
    for r in np.unique(rid):
        sub.add_run(X[rid == r])
        full.add_run(X[rid == r])
    assert sub.null[0].n == 1800 and full.null[0].n == sub.real.n == 9000
    real, _, null_sub, _ = sub.result()
    _, _, null_full, _ = full.result()
    pr_sub, pr_full = np.mean([n.pr for n in null_sub]), np.mean([n.pr for n in null_full])
    assert abs(pr_sub - pr_full) < 0.1 * pr_full
    assert pr_sub > real.pr + 1


def ar1_runs(n_runs: int = 6, T: int = 400, p: int = 6, phi: float = 0.95, shared: float = 0.0, seed: int = 0):
    """Columns that are AR(1) with coefficient ``phi``; ``shared`` > 0 adds one common AR(1) factor."""
    rng = np.random.default_rng(seed)
    X, rid = [], []
    for r in range(n_runs):
        e = rng.normal(size=(T, p + 1))
        z = np.zeros((T, p + 1))
        for t in range(1, T):
            z[t] = phi * z[t - 1] + e[t]
        X.append(z[:, :p] + shared * z[:, [p]])
        rid += [r] * T
    return np.vstack(X), np.array(rid)


def test_circular_shift_keeps_each_column_and_its_autocorrelation() -> None:
    X, rid = ar1_runs(n_runs=2, T=300)
    Y = pca.circular_shift(X, rid, np.random.default_rng(0))
    for r in (0, 1):
        for j in range(X.shape[1]):
            a, b = X[rid == r, j], Y[rid == r, j]
            assert np.allclose(np.sort(a), np.sort(b))
            shift = next(k for k in range(a.size) if np.allclose(np.roll(a, k), b))  # it is a rotation
            assert 0 <= shift < a.size


def test_circular_shift_null_of_independent_ar1_columns_matches_the_real_count() -> None:
    """Independent, strongly autocorrelated columns: no cross-column structure, so the null equals the real count
    (a permutation null would instead call their spurious sample correlations "structure")."""
    X, rid = ar1_runs()
    _, real = pca.fit(X)
    null = pca.null_distribution(X, rid, n_null=20, seed=3)
    assert int(np.median([r.n90 for r in null])) == real.n90
    acc = pca.PCAAccumulator(X.shape[1], n_null=20, seed=3)
    for r in np.unique(rid):
        acc.add_run(X[rid == r])
    res, _, null_acc, _ = acc.result()
    assert int(np.median([r.n90 for r in null_acc])) == res.n90


def test_shared_factor_beats_the_circular_shift_null() -> None:
    X, rid = ar1_runs(shared=3.0)
    _, real = pca.fit(X)
    null = pca.null_distribution(X, rid, n_null=20, seed=3)
    assert real.n90 < min(r.n90 for r in null)
