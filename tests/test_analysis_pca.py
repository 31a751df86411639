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


# ---------------------------------------------------------------- detrended null (control mean trajectory removed)
TRENDS = (lambda u: u, np.sqrt, lambda u: np.log1p(9 * u), lambda u: 1 - np.exp(-4 * u), lambda u: u**2,
          lambda u: -u, lambda u: -np.sqrt(u), lambda u: np.tanh(3 * u), lambda u: -(u**3), lambda u: u**1.5)


def _ar1(rng: np.random.Generator, T: int, k: int, phi: float = 0.9) -> np.ndarray:
    e = rng.normal(size=(T, k)) * np.sqrt(1 - phi**2)
    z = np.zeros((T, k))
    z[0] = rng.normal(size=k)
    for t in range(1, T):
        z[t] = phi * z[t - 1] + e[t]
    return z


def trending_group(seed: int, factors: int = 0, n_ctrl: int = 4, n_pert: int = 4, T: int = 200):
    """One matched group: ten unrelated monotone trends of training time (the same in every run) plus independent
    AR(1) noise per column; with ``factors`` > 0, also that many latent AR(1) factors loading on all ten columns."""
    rng = np.random.default_rng(seed)
    u = np.linspace(0, 1, T)
    trend = np.column_stack([4.0 * f(u) for f in TRENDS])
    W = rng.normal(size=(factors, len(TRENDS)))
    blocks = {}
    for r in range(n_ctrl + n_pert):
        X = trend + _ar1(rng, T, len(TRENDS)) + (2.0 * _ar1(rng, T, factors) @ W if factors else 0.0)
        blocks[f"{'c' if r < n_ctrl else 'p'}{r}"] = (np.arange(T) * 10 + 9, X, np.zeros(T, bool))
    return blocks, {k for k in blocks if k.startswith("c")}


def _summarise(blocks, controls, detrend: bool, n_null: int = 99, seed: int = 0) -> dict:
    from stabilitybench.analysis.pca_summary import PCAInput, pca_summary

    p = len(TRENDS)
    inp = PCAInput([f"f{j}" for j in range(p)], pca.PCAAccumulator(p, n_null, seed),
                   pca.PCAAccumulator(p, n_null, seed + 1))
    if detrend:
        inp.add_group(blocks, controls)
    else:
        for rid, b in blocks.items():
            inp.add_run_raw(rid, b, rid in controls)
    return pca_summary({("rl", "ppo"): inp}, n_null, 10, seed).summary["rl/ppo"]


def test_detrended_null_does_not_reject_unrelated_trends_but_a_latent_factor_still_rejects() -> None:
    pr_rejects = 0
    for seed in range(4):
        blocks, ctrl = trending_group(seed)
        raw = _summarise(blocks, ctrl, detrend=False)["all_runs"]
        assert raw["p_value_n90_le_null"] == pytest.approx(0.01)  # the old null: trends alone "are" low-dimensional
        det = _summarise(blocks, ctrl, detrend=True)["all_runs"]
        assert det["p_value_n90_le_null"] > 0.05
        pr_rejects += det["p_value_pr_le_null"] <= 0.05
        real = _summarise(*trending_group(seed, factors=3), detrend=True)["all_runs"]
        assert real["p_value_n90_le_null"] == pytest.approx(0.01) and real["p_value_pr_le_null"] == pytest.approx(0.01)
        assert real["n_components_90"]["value"] < real["null_n_components_90"]["ci_low"]
    assert pr_rejects <= 1


def test_detrend_group_removes_the_controls_mean_leave_one_out_for_controls() -> None:
    T = 50
    steps = np.arange(T) * 4 + 3
    trend = np.column_stack([np.linspace(0, 5, T), np.linspace(3, -1, T) ** 2])
    offsets = {"c0": 1.0, "c1": -1.0, "c2": 3.0, "p0": 10.0}
    runs = {r: (steps, trend + o) for r, o in offsets.items()}
    out, left = pca.detrend_group(runs, {"c0", "c1", "c2", "elsewhere"})
    assert left == []
    np.testing.assert_allclose(out["p0"], 10.0 - 1.0, atol=1e-9)  # the mean of all three controls' offsets is 1
    np.testing.assert_allclose(out["c0"], 1.0 - 1.0, atol=1e-9)  # the mean of the other two: (-1 + 3) / 2
    np.testing.assert_allclose(out["c2"], 3.0 - 0.0, atol=1e-9)
    # a control on a coarser grid is interpolated; a run past the controls' last step is held at the end value
    coarse = {"c0": (steps[::2], (trend + 1.0)[::2]), "c1": (steps, trend - 1.0),
              "p0": (np.append(steps, steps[-1] + 4), np.vstack([trend, trend[-1]]) + 2.0)}
    out, _ = pca.detrend_group(coarse, {"c0", "c1"})
    np.testing.assert_allclose(out["p0"][:-2, 0], 2.0, atol=1e-9)  # column 0 is linear in time: exact
    assert out["p0"][-1, 0] == pytest.approx(3.0)  # past c0's last step only c1 (offset -1) is averaged
    # a group's only control has nothing to be compared with; a group without controls cannot be detrended
    assert pca.detrend_group({"c0": runs["c0"], "p0": runs["p0"]}, {"c0"})[1] == ["c0"]
    assert pca.detrend_group({"p0": runs["p0"]}, set()) == ({}, ["p0"])


def test_pca_entry_says_what_its_null_rejects() -> None:
    blocks, ctrl = trending_group(0, T=60)
    det = _summarise(blocks, ctrl, detrend=True, n_null=19)
    assert det["detrending"].startswith("each matched group's control mean trajectory")
    assert "after removing each matched group's control mean trajectory" in det["null_hypothesis"]
    assert det["n_surrogates"] == 19 and "only 19 surrogates" in det["surrogates_note"]
    raw = _summarise(blocks, ctrl, detrend=False, n_null=99)
    assert "with no detrending" in raw["null_hypothesis"] and "surrogates_note" not in raw
    assert pca.PCAAccumulator(3).null.__len__() >= 99  # the default number of surrogates
