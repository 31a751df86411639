"""Meta-state monitors: recover a known linear system; GRU sanity; calibration; persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import linalg

from stabilitybench.analysis.errors import InsufficientDataError, NotFittedError
from stabilitybench.analysis.metastate import GRUMonitor, KalmanMonitor, calibration_threshold, rolling_mean

K, P, NOISE = 3, 10, 0.2
A_TRUE = np.diag([0.97, 0.9, 0.8])
Q_TRUE = np.diag(1 - np.diag(A_TRUE) ** 2)  # unit stationary variance per latent


def c_true() -> np.ndarray:
    rng = np.random.default_rng(42)
    return np.linalg.qr(rng.normal(size=(P, K)))[0] * 3.0


def simulate(T: int, rng: np.random.Generator) -> np.ndarray:
    C = c_true()
    z = rng.normal(size=K)
    out = np.empty((T, P))
    for t in range(T):
        z = A_TRUE @ z + rng.multivariate_normal(np.zeros(K), Q_TRUE)
        out[t] = C @ z + NOISE * rng.normal(size=P)
    return out


def oracle_predictions(Y: np.ndarray) -> np.ndarray:
    """One-step predictions of the steady-state Kalman filter with the true parameters."""
    C = c_true()
    R = NOISE**2 * np.eye(P)
    Pp = linalg.solve_discrete_are(A_TRUE.T, C.T, Q_TRUE, R)
    Kg = Pp @ C.T @ np.linalg.inv(C @ Pp @ C.T + R)
    x = np.zeros(K)
    out = np.empty_like(Y)
    for t in range(Y.shape[0]):
        out[t] = C @ x
        x = A_TRUE @ (x + Kg @ (Y[t] - C @ x))
    return out


@pytest.fixture(scope="module")
def data() -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    return [simulate(400, rng) for _ in range(3)], simulate(800, rng)


def test_kalman_recovers_latent_dimension_and_predictions(data) -> None:
    train, test = data
    m = KalmanMonitor(n_latent="pca90", n_iter=40).fit(train)
    assert m.n_latent_ == K
    assert np.all(np.diff(m.loglik_) > -1e-6 * np.abs(m.loglik_[:-1]))  # EM never decreases the likelihood
    pred = m.predict(test)
    oracle = oracle_predictions(test)
    burn = 20  # the oracle starts at 0, the fitted filter at its mu0
    mse_fit = np.mean((pred[burn:] - test[burn:]) ** 2)
    mse_oracle = np.mean((oracle[burn:] - test[burn:]) ** 2)
    assert mse_fit <= 1.05 * mse_oracle
    # and the predictions themselves agree with the oracle's (up to a small fraction of the signal variance)
    assert np.mean((pred[burn:] - oracle[burn:]) ** 2) < 0.02 * test.var(axis=0).sum() / P
    # the fitted transition has the true eigenvalues (latent basis is arbitrary, spectrum is not)
    np.testing.assert_allclose(np.sort(np.abs(np.linalg.eigvals(m.A_))), np.sort(np.diag(A_TRUE)), atol=0.05)


def test_kalman_msd_rises_on_a_shifted_system_and_calibration_hits_the_quantile(data, tmp_path: Path) -> None:
    train, test = data
    m = KalmanMonitor(n_latent=3, n_iter=20, smooth=5).fit(train)
    base = m.score(test)
    shifted = test.copy()
    shifted[400:] = shifted[400:] @ np.diag(np.r_[-1.0, np.ones(P - 1)])  # break the loading structure
    assert np.nanmean(m.score(shifted)[420:]) > 2 * np.nanmean(base[420:])
    cal = [simulate(300, np.random.default_rng(s)) for s in range(10, 30)]
    m.calibrate(cal, fpr=0.1)
    maxima = [np.nanmax(m.score(c)) for c in cal]
    assert m.threshold_ == np.quantile(maxima, 0.9, method="higher")
    assert np.mean([mx > m.threshold_ for mx in maxima]) <= 0.1
    path = tmp_path / "kalman.npz"
    m.save(path)
    m2 = KalmanMonitor.load(path)
    np.testing.assert_allclose(m2.score(test), m.score(test))
    assert m2.threshold_ == m.threshold_


def test_kalman_scores_nonfinite_rows_as_inf(data) -> None:
    train, test = data
    m = KalmanMonitor(n_latent=3, n_iter=5).fit(train)
    x = test[:50].copy()
    x[10, 0] = np.inf
    assert np.isposinf(m.nll(x)[10]) and np.isfinite(m.nll(x)[11])


def test_gru_learns_the_system_and_round_trips(data, tmp_path: Path) -> None:
    train, test = data
    g = GRUMonitor(hidden=16, epochs=120, seed=0).fit(train)
    assert g.train_loss_[-1] < g.train_loss_[0] - 0.5
    pred = g.predict(test)
    # much better than predicting the mean, not far from the optimal linear filter
    mse = np.mean((pred[20:] - test[20:]) ** 2)
    assert mse < 0.5 * np.mean((test[20:] - test.mean(axis=0)) ** 2)
    assert mse < 1.5 * np.mean((oracle_predictions(test)[20:] - test[20:]) ** 2)
    path = tmp_path / "gru.pt"
    g.save(path)
    np.testing.assert_allclose(GRUMonitor.load(path).nll(test), g.nll(test), equal_nan=True)


def test_gru_minibatch_steps_are_seeded_and_fit_as_well_as_full_batch(data) -> None:
    train, test = data  # 3 runs x 400 steps: 33 windows of 64
    full = GRUMonitor(hidden=16, epochs=120, seed=0, batch_windows=64).fit(train)
    mb = GRUMonitor(hidden=16, epochs=120, seed=0, batch_windows=8).fit(train)
    again = GRUMonitor(hidden=16, epochs=120, seed=0, batch_windows=8).fit(train)
    other = GRUMonitor(hidden=16, epochs=120, seed=1, batch_windows=8).fit(train)
    np.testing.assert_array_equal(mb.nll(test), again.nll(test))  # same seed, same draws
    assert not np.allclose(mb.nll(test)[1:], other.nll(test)[1:])
    # train_nll_ is the fitted model on every window, not the last minibatch's loss
    assert mb.train_nll_ != mb.train_loss_[-1]
    assert abs(mb.train_nll_ - full.train_nll_) < 0.25 * abs(full.train_nll_ - full.train_loss_[0])


def test_errors_before_fit_and_with_no_data() -> None:
    with pytest.raises(NotFittedError):
        KalmanMonitor().score(np.zeros((5, 2)))
    with pytest.raises(InsufficientDataError):
        KalmanMonitor().fit([np.zeros((3, 2))])


def test_calibration_threshold_and_rolling_mean_by_hand() -> None:
    assert calibration_threshold([1.0, 2.0, 3.0], 0.05) == 3.0
    assert calibration_threshold(list(range(1, 101)), 0.05) == 96
    assert calibration_threshold([np.nan], 0.05) == np.inf
    np.testing.assert_allclose(rolling_mean(np.array([1.0, 3.0, np.nan, 5.0]), 2), [1.0, 2.0, 3.0, 5.0])
    assert np.isposinf(rolling_mean(np.array([1.0, np.inf, 1.0, 1.0]), 2)[2])


def _brute_force_e_step(seqs, A, C, d, Q, R, mu0, P0):
    """Kalman filter + RTS smoother one sequence and one step at a time, every covariance recomputed."""
    k, p = A.shape[0], C.shape[0]
    tot = {"Szz": 0, "Sz1z0": 0, "Syz": 0, "Sz": 0, "ll": 0.0}
    for Y in seqs:
        T = Y.shape[0]
        mp, Pp, mf, Pf = np.zeros((T, k)), np.zeros((T, k, k)), np.zeros((T, k)), np.zeros((T, k, k))
        m, P = mu0, P0
        for t in range(T):
            mp[t], Pp[t] = m, P
            S = C @ P @ C.T + np.diag(R)
            e = Y[t] - C @ m - d
            tot["ll"] += -0.5 * (e @ np.linalg.solve(S, e) + np.linalg.slogdet(S)[1] + p * np.log(2 * np.pi))
            K = P @ C.T @ np.linalg.inv(S)
            mf[t], Pf[t] = m + K @ e, P - K @ C @ P
            m, P = A @ mf[t], A @ Pf[t] @ A.T + Q
        ms, Ps = mf.copy(), Pf.copy()
        cross = np.zeros((k, k))
        for t in range(T - 2, -1, -1):
            J = Pf[t] @ A.T @ np.linalg.inv(Pp[t + 1])
            ms[t] = mf[t] + J @ (ms[t + 1] - mp[t + 1])
            Ps[t] = Pf[t] + J @ (Ps[t + 1] - Pp[t + 1]) @ J.T
            cross += Ps[t + 1] @ J.T + np.outer(ms[t + 1], ms[t])
        tot["Szz"] = tot["Szz"] + Ps.sum(0) + ms.T @ ms
        tot["Sz1z0"] = tot["Sz1z0"] + cross
        tot["Syz"] = tot["Syz"] + Y.T @ ms
        tot["Sz"] = tot["Sz"] + ms.sum(0)
    return tot


def test_the_batched_steady_state_e_step_equals_the_brute_force_one() -> None:
    """The E-step shortcuts (covariances copied once steady; equal-length sequences filtered as one batch)
    change nothing: sequences of three lengths, one shorter than the covariance transient."""
    from stabilitybench.analysis.metastate.kalman import _e_step

    rng = np.random.default_rng(11)
    k, p = 2, 5
    A = np.array([[0.9, 0.2], [-0.1, 0.8]])
    C = rng.normal(size=(p, k))
    seqs = [rng.normal(size=(T, p)) for T in (120, 120, 4, 90, 120)]
    args = (A, C, rng.normal(size=p) * 0.1, 0.3 * np.eye(k), np.full(p, 0.5), np.zeros(k), 2 * np.eye(k))
    st, ll = _e_step(seqs, *args)
    ref = _brute_force_e_step(seqs, *args)
    assert ll == pytest.approx(ref["ll"], rel=1e-10)
    for key in ("Szz", "Sz1z0", "Syz", "Sz"):
        np.testing.assert_allclose(st[key], ref[key], rtol=1e-9, atol=1e-9)
