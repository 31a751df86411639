"""Linear-Gaussian state-space meta-state monitor: Kalman filter, parameters by EM.

Model (standardised telemetry ``y_t``, shape ``(p,)``; latent meta-state ``z_t``, ``(k,)``)::

    z_t = A z_{t-1} + w_t,        w_t ~ N(0, Q)
    y_t = C z_t + d + v_t,        v_t ~ N(0, R),  R diagonal
    z_0 ~ N(mu0, P0)

Parameters are estimated by EM (Shumway & Stoffer 1982; Ghahramani & Hinton 1996) on
several training sequences, starting from PCA (``C`` = leading loadings, ``A`` = least
squares on the projected states). ``n_latent='pca90'`` takes ``k`` = the number of
principal components for 90% of the training variance (:mod:`stabilitybench.analysis.pca`).

Scoring uses the **steady-state** filter: the gain from the discrete algebraic Riccati
equation, so the one-step predictor ``zhat_{t+1} = F zhat_t + G (y_t - d)`` with
``F = A (I - K C)``, ``G = A K`` is linear time-invariant. It runs in C through
``scipy.signal.lfilter`` on F's eigenbasis (k scalar recursions), which keeps the score of
10^8 rows fast; a Python loop is the fallback when F is not diagonalisable. The
predictive density is ``N(C zhat_t + d, S)`` with ``S = C P C' + R`` (P the steady-state
prior covariance), and the score is ``nll[t] = -log N(y_t; C zhat_t + d, S) / p``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import linalg, signal

from stabilitybench.analysis.metastate.base import MonitorBase


class KalmanMonitor(MonitorBase):
    """Linear-Gaussian SSM monitor.

    Parameters
    ----------
    n_latent: latent dimension k, or ``'pca90'`` (components for 90% of the training variance).
    n_iter: maximum EM iterations; ``tol``: stop when the relative log-likelihood gain is below it.
    smooth: MSD smoothing window (steps).

    Fitted attributes: ``A_ (k,k)``, ``C_ (p,k)``, ``d_ (p,)``, ``Q_ (k,k)``, ``R_ (p,)``,
    ``mu0_ (k,)``, ``P0_ (k,k)``, ``n_latent_``, ``loglik_`` (per EM iteration),
    ``mean_``/``scale_`` (standardisation), ``threshold_`` (after :meth:`calibrate`).
    """

    def __init__(
        self, n_latent: int | str = "pca90", n_iter: int = 50, tol: float = 1e-4, smooth: int = 5, seed: int = 0
    ) -> None:
        self.n_latent = n_latent
        self.n_iter = n_iter
        self.tol = tol
        self.smooth = smooth
        self.seed = seed

    # ---- fitting -------------------------------------------------------------------
    def _choose_k(self, Y: np.ndarray) -> int:
        p = Y.shape[1]
        if self.n_latent == "pca90":
            from stabilitybench.analysis.pca import n_components_for

            k = n_components_for(Y, 0.9)
        else:
            k = int(self.n_latent)
        return int(np.clip(k, 1, p))

    def _fit(self, seqs: list[np.ndarray]) -> None:
        Y = np.vstack(seqs)
        p = Y.shape[1]
        k = self._choose_k(Y)
        self.n_latent_ = k
        # PCA initialisation
        mu = Y.mean(axis=0)
        _, _, vt = np.linalg.svd(Y - mu, full_matrices=False)
        W = vt[:k].T  # (p, k)
        C, d = W.copy(), mu.copy()
        Zs = [(s - mu) @ W for s in seqs]
        prev = np.vstack([z[:-1] for z in Zs])
        nxt = np.vstack([z[1:] for z in Zs])
        A = np.linalg.lstsq(prev, nxt, rcond=None)[0].T
        resid = nxt - prev @ A.T
        Q = np.cov(resid, rowvar=False).reshape(k, k) + 1e-6 * np.eye(k)
        R = np.maximum(((Y - mu) - (Y - mu) @ W @ W.T).var(axis=0), 1e-3)
        mu0 = np.mean([z[0] for z in Zs], axis=0)
        P0 = np.cov(np.vstack(Zs), rowvar=False).reshape(k, k) + 1e-6 * np.eye(k)
        self.loglik_: list[float] = []
        for _ in range(self.n_iter):
            stats, ll = _e_step(seqs, A, C, d, Q, R, mu0, P0)
            self.loglik_.append(ll)
            A, C, d, Q, R, mu0, P0 = _m_step(stats, p, k)
            if len(self.loglik_) > 1 and abs(self.loglik_[-1] - self.loglik_[-2]) < self.tol * abs(self.loglik_[-2]):
                break
        self.A_, self.C_, self.d_, self.Q_, self.R_, self.mu0_, self.P0_ = A, C, d, Q, R, mu0, P0
        self._steady_state()

    def _steady_state(self) -> None:
        A, C, Q, R = self.A_, self.C_, self.Q_, np.diag(self.R_)
        try:
            P = linalg.solve_discrete_are(A.T, C.T, Q, R)  # prior (predicted) covariance
        except (ValueError, np.linalg.LinAlgError):
            P = self.P0_.copy()
            for _ in range(2000):
                S = C @ P @ C.T + R
                K = P @ C.T @ np.linalg.inv(S)
                P_new = A @ (P - K @ C @ P) @ A.T + Q
                if np.max(np.abs(P_new - P)) < 1e-10:
                    P = P_new
                    break
                P = P_new
        P = (P + P.T) / 2
        S = C @ P @ C.T + R
        S = (S + S.T) / 2
        K = P @ C.T @ np.linalg.inv(S)  # (k, p): filtered = prior + K (y - C prior - d)
        self.P_ = P
        self.S_ = S
        self.K_ = K
        _sign, logdet = np.linalg.slogdet(S)
        self._logdet = float(logdet)
        self._S_inv = np.linalg.inv(S)

    # ---- scoring -----------------------------------------------------------------------
    def predict(self, X: np.ndarray) -> np.ndarray:
        """One-step-ahead predictions of the *raw* telemetry, shape ``(T, p)`` (row t predicts X[t] from X[:t])."""
        self._check_fitted()
        Z, _ = self._standardise(np.asarray(X, dtype=float))
        return self._predict_std(Z) * self.scale_ + self.mean_

    def _predict_std(self, Z: np.ndarray) -> np.ndarray:
        zhat_t = self._prior_states(Z, transposed=True)  # (k, T): BLAS-friendly layout for tall inputs
        return (self.C_ @ zhat_t).T + self.d_

    def _prior_states(self, Y: np.ndarray, transposed: bool = False) -> np.ndarray:
        """Steady-state prior means zhat_{t|t-1}, shape ``(T, k)`` (``(k, T)`` if ``transposed``)."""
        A, C, K = self.A_, self.C_, self.K_
        k = A.shape[0]
        F = A @ (np.eye(k) - K @ C)
        G = A @ K
        U_t = G @ (Y - self.d_).T  # (k, T): input term
        T = Y.shape[0]
        out = np.empty((T, k))
        x0 = self.mu0_
        lam, V = np.linalg.eig(F)
        cond = np.linalg.cond(V) if V.size else 1.0
        if np.isfinite(cond) and cond < 1e8:
            real = bool(np.all(np.abs(lam.imag) < 1e-12))
            dtype = float if real else complex
            if real:
                lam, V = lam.real, V.real
            Vinv = np.linalg.inv(V)
            Ue = np.ascontiguousarray((Vinv @ U_t).astype(dtype))  # (k, T) eigen-coordinates
            xe0 = Vinv @ x0
            xe = np.empty((k, T), dtype=dtype)
            xe[:, 0] = xe0
            if T > 1:
                for i in range(k):
                    # x_{t+1} = lam x_t + u_t: lfilter([1], [1, -lam]) gives y_n = lam y_{n-1} + u_n with
                    # y_n = x_{n+1}; the initial condition y_{-1} = x_0 enters as zi = lam x_0.
                    xe[i, 1:], _ = signal.lfilter(np.array([1.0], dtype=dtype), np.array([1.0, -lam[i]], dtype=dtype),
                                                  Ue[i, :-1], zi=np.array([lam[i] * xe0[i]], dtype=dtype))
            out = V @ xe if real else np.real(V @ xe)
            return out if transposed else out.T
        x = x0.copy()
        for t in range(T):  # fallback: defective F
            out[t] = x
            x = F @ x + U_t[:, t]
        return out.T if transposed else out

    def _nll(self, Z: np.ndarray) -> np.ndarray:
        E = Z - self._predict_std(Z)
        maha = np.einsum("ti,ij,tj->t", E, self._S_inv, E)
        p = Z.shape[1]
        return 0.5 * (maha + self._logdet + p * np.log(2 * np.pi)) / p

    def _nll_stepper(self) -> Callable[[np.ndarray], float]:
        """The steady-state predictor one block at a time: score ``z`` against ``C zhat + d``, then
        ``zhat <- F zhat + G (z - d)`` (k x k work; :meth:`_nll` runs the same recursion in F's eigenbasis)."""
        k = self.A_.shape[0]
        F = self.A_ @ (np.eye(k) - self.K_ @ self.C_)
        G = self.A_ @ self.K_
        C, d, S_inv = self.C_, self.d_, self._S_inv
        const = self._logdet + C.shape[0] * np.log(2 * np.pi)
        x = np.array(self.mu0_, dtype=float)

        def step(z: np.ndarray) -> float:
            nonlocal x
            e = z - C @ x - d
            nll = 0.5 * (float(e @ S_inv @ e) + const) / z.size
            x = F @ x + G @ (z - d)
            return nll

        return step

    def fit_summary(self) -> dict[str, Any]:
        """Latent size and EM iterations (a monitor loaded from a file has no EM history: 0)."""
        return {"n_latent": self.n_latent_, "em_iterations": len(getattr(self, "loglik_", []))}

    # ---- persistence ---------------------------------------------------------------------
    _PARAMS = ("A_", "C_", "d_", "Q_", "R_", "mu0_", "P0_", "mean_", "scale_", "threshold_")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write parameters and settings to an ``.npz`` file."""
        self._check_fitted()
        arrays: dict[str, Any] = {k: np.asarray(getattr(self, k)) for k in self._PARAMS}
        arrays["settings"] = np.array([repr(self.get_params())])
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KalmanMonitor:
        """Read a monitor written by :meth:`save`."""
        import ast

        with np.load(path, allow_pickle=False) as f:
            m = cls(**ast.literal_eval(str(f["settings"][0])))
            for k in cls._PARAMS:
                v = f[k]
                setattr(m, k, float(v) if v.ndim == 0 else v)
        m.n_latent_ = m.A_.shape[0]
        m.n_features_ = m.C_.shape[0]
        m._steady_state()
        return m

    def get_params(self) -> dict[str, Any]:
        return {"n_latent": self.n_latent, "n_iter": self.n_iter, "tol": self.tol, "smooth": self.smooth,
                "seed": self.seed}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted parameters as plain arrays (for :mod:`stabilitybench.analysis.monitor_file`)."""
        self._check_fitted()
        return {k: np.asarray(getattr(self, k), dtype=float) for k in self._PARAMS}

    @classmethod
    def from_arrays(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> KalmanMonitor:
        """Inverse of :meth:`to_arrays` (with :meth:`get_params`)."""
        m = cls(**params)
        for k in cls._PARAMS:
            v = np.asarray(arrays[k], dtype=float)
            setattr(m, k, float(v) if v.ndim == 0 else v)
        m.n_latent_ = m.A_.shape[0]
        m.n_features_ = m.C_.shape[0]
        m._steady_state()
        return m


# ---------------------------------------------------------------------------------- EM
_STEADY_TOL = 1e-11  # covariance change (absolute, standardised units) below which the recursion has converged


def _covariances(
    T: int, A: np.ndarray, C: np.ndarray, Q: np.ndarray, R: np.ndarray, P0: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Data-independent covariance recursions of the filter and smoother for length ``T``.

    Returns prior ``Pp (T,k,k)``, filtered ``Pf``, smoothed ``Ps``, gains ``K (T,k,p)``,
    smoother gains ``J (T-1,k,k)``, innovation log-dets ``(T,)`` and inverse innovation
    covariances ``(T,p,p)``. Shared by every sequence of an EM iteration.

    Both recursions reach a steady state within a few dozen steps (the Riccati recursion of a
    stable, observable model): once a step changes the covariance by less than ``_STEADY_TOL``,
    the remaining steps are copies, so the cost is that of the transients, not of ``T``.
    """
    k, p = A.shape[0], C.shape[0]
    Rm = np.diag(R)
    eye_p = np.eye(p)
    Pp = np.empty((T, k, k))
    Pf = np.empty((T, k, k))
    K = np.empty((T, k, p))
    logdet = np.empty(T)
    Sinv = np.empty((T, p, p))
    P = P0
    steady = T  # first index from which Pp, Pf, K, Sinv and logdet are constant
    for t in range(T):
        Pp[t] = P
        S = C @ P @ C.T + Rm
        S = (S + S.T) / 2
        cf = linalg.cho_factor(S)
        Sinv[t] = linalg.cho_solve(cf, eye_p)
        logdet[t] = 2 * np.log(np.diag(cf[0])).sum()
        K[t] = P @ C.T @ Sinv[t]
        Pf[t] = P - K[t] @ C @ P
        Pf[t] = (Pf[t] + Pf[t].T) / 2
        P = A @ Pf[t] @ A.T + Q
        if t > 0 and np.max(np.abs(Pp[t] - Pp[t - 1])) < _STEADY_TOL:
            steady = t
            for arr in (Pp, Pf, K, Sinv, logdet):
                arr[t + 1:] = arr[t]
            break
    Ps = np.empty((T, k, k))
    J = np.empty((max(T - 1, 0), k, k))
    Ps[-1] = Pf[-1]
    t = T - 2
    if steady < T - 1:  # J is constant where Pf[t] and Pp[t+1] are; Ps converges going backwards
        J_ss = Pf[steady] @ A.T @ np.linalg.inv(Pp[steady])
        while t >= steady:
            J[t] = J_ss
            Ps[t] = Pf[t] + J_ss @ (Ps[t + 1] - Pp[t + 1]) @ J_ss.T
            t -= 1
            if np.max(np.abs(Ps[t + 1] - Ps[t + 2])) < _STEADY_TOL:
                J[steady:t + 1] = J_ss
                Ps[steady:t + 1] = Ps[t + 1]
                t = steady - 1
    while t >= 0:
        J[t] = Pf[t] @ A.T @ np.linalg.inv(Pp[t + 1])
        Ps[t] = Pf[t] + J[t] @ (Ps[t + 1] - Pp[t + 1]) @ J[t].T
        t -= 1
    return Pp, Pf, Ps, K, J, logdet, Sinv


def _e_step(
    seqs: Sequence[np.ndarray], A: np.ndarray, C: np.ndarray, d: np.ndarray, Q: np.ndarray, R: np.ndarray,
    mu0: np.ndarray, P0: np.ndarray,
) -> tuple[dict[str, Any], float]:
    """Kalman filter + RTS smoother on each sequence; returns summed sufficient statistics and log-likelihood.

    The covariance recursions do not depend on the data, so they are computed once per sequence
    length and shared; the mean recursions run on all sequences of one length at once (a batch
    ``(N, T, p)``), so the Python loop is over time steps, not over runs x time steps.
    """
    k = A.shape[0]
    p = C.shape[0]
    st: dict[str, Any] = {k_: 0.0 for k_ in ("Szz", "Szz_prev", "Szz_next", "Sz1z0", "Syz", "Sy", "Sz", "Syy")}
    st.update(n=0, n_trans=0, Ez0=[], Pz0=[])
    ll = 0.0
    by_length: dict[int, list[int]] = {}
    for i, Y in enumerate(seqs):
        by_length.setdefault(Y.shape[0], []).append(i)
    for T, members in sorted(by_length.items()):
        _Pp, _Pf, Ps, Kg, Js, logdet, Sinv = _covariances(T, A, C, Q, R, P0)
        Yb = np.stack([seqs[i] for i in members])  # (N, T, p)
        N = Yb.shape[0]
        mp = np.empty((N, T, k))
        mf = np.empty((N, T, k))
        E = np.empty((N, T, p))
        m = np.broadcast_to(mu0, (N, k))
        for t in range(T):
            mp[:, t] = m
            e = Yb[:, t] - m @ C.T - d
            E[:, t] = e
            mf[:, t] = m + e @ Kg[t].T
            m = mf[:, t] @ A.T
        ll += float(-0.5 * (np.einsum("nti,tij,ntj->", E, Sinv, E) + N * logdet.sum() + N * T * p * np.log(2 * np.pi)))
        ms = np.empty((N, T, k))
        ms[:, -1] = mf[:, -1]
        for t in range(T - 2, -1, -1):
            ms[:, t] = mf[:, t] + (ms[:, t + 1] - mp[:, t + 1]) @ Js[t].T
        # E[z_{t+1} z_t'] = Ps[t+1] J[t]' + ms[t+1] ms[t]'
        cross = N * np.einsum("tij,tkj->ik", Ps[1:], Js[: T - 1]) + np.einsum("nti,ntj->ij", ms[:, 1:], ms[:, :-1])
        Ezz_sum = N * Ps.sum(axis=0) + np.einsum("nti,ntj->ij", ms, ms)
        st["Szz"] = st["Szz"] + Ezz_sum
        st["Szz_prev"] = st["Szz_prev"] + Ezz_sum - (N * Ps[-1] + ms[:, -1].T @ ms[:, -1])
        st["Szz_next"] = st["Szz_next"] + Ezz_sum - (N * Ps[0] + ms[:, 0].T @ ms[:, 0])
        st["Sz1z0"] = st["Sz1z0"] + cross
        st["Syz"] = st["Syz"] + np.einsum("nti,ntj->ij", Yb, ms)
        st["Sy"] = st["Sy"] + Yb.sum(axis=(0, 1))
        st["Sz"] = st["Sz"] + ms.sum(axis=(0, 1))
        st["Syy"] = st["Syy"] + np.einsum("nti,nti->i", Yb, Yb)
        st["n"] += N * T
        st["n_trans"] += N * (T - 1)
        st["Ez0"].extend(ms[:, 0])
        st["Pz0"].extend([Ps[0]] * N)
    return st, float(ll)


def _m_step(st: dict[str, Any], p: int, k: int) -> tuple[np.ndarray, ...]:
    """Closed-form M-step (R diagonal)."""
    A = st["Sz1z0"] @ np.linalg.inv(st["Szz_prev"])
    Q = (st["Szz_next"] - A @ st["Sz1z0"].T) / st["n_trans"]
    Q = (Q + Q.T) / 2 + 1e-8 * np.eye(k)
    # [C d] from E[[z;1][z;1]']
    n = st["n"]
    M = np.zeros((k + 1, k + 1))
    M[:k, :k] = st["Szz"]
    M[:k, k] = M[k, :k] = st["Sz"]
    M[k, k] = n
    B = np.hstack([st["Syz"], st["Sy"][:, None]])  # (p, k+1)
    Cd = B @ np.linalg.inv(M)
    C, d = Cd[:, :k], Cd[:, k]
    # R = diag(E[(y - C z - d)(y - C z - d)']) / n
    R = (st["Syy"] - np.einsum("ij,ij->i", Cd, B)) / n
    R = np.maximum(R, 1e-4)
    Ez0 = np.array(st["Ez0"])
    mu0 = Ez0.mean(axis=0)
    P0 = np.mean(st["Pz0"], axis=0) + (np.cov(Ez0, rowvar=False).reshape(k, k) if len(Ez0) > 1 else 0.0)
    P0 = (P0 + P0.T) / 2 + 1e-6 * np.eye(k)
    return A, C, d, Q, R, mu0, P0
