"""Shared pieces of the meta-state monitors: standardisation, MSD smoothing, calibration.

A monitor is fitted on a list of *sequences* (one per unperturbed training run), each an
array of shape ``(T_i, p)`` of block-level telemetry features (:mod:`stabilitybench.analysis.data`). It
standardises with the training mean/SD, imputes missing values (NaN, e.g. a sparse
column before its first report) at the training mean (0 after standardisation), and
scores a sequence with a per-step **negative log predictive density per feature**
``nll[t] = -log p(y_t | y_<t) / p``. Rows holding a non-finite raw value score ``+inf``.

**MSD** (meta-state deviation) is the causal rolling mean of ``nll`` over
``smooth`` steps. The alarm threshold ``threshold_`` is set by :meth:`MonitorBase.calibrate`
on held-out unperturbed runs at a target false-positive rate: a run "alarms" if its MSD
exceeds the threshold anywhere in its evaluation window, and the threshold is the
empirical ``1 - fpr`` quantile (``method='higher'``) of the calibration runs' window maxima.
With n calibration runs that is the largest of them whenever ``n < 1/fpr``, so the
*measured* test FPR (with its CI) is the number to trust, not the nominal one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stabilitybench.analysis.errors import InsufficientDataError, NotFittedError
from stabilitybench.analysis.stats import causal_window, windowed_mean


def rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Causal rolling mean of ``x`` (shape ``(T,)``) over ``window`` steps, ignoring NaN; inf propagates."""
    x = np.asarray(x, dtype=float)
    w = max(1, int(window))
    if x.size == 0 or w == 1:
        return x.copy()
    lo, hi = causal_window(x.size, w)
    out = windowed_mean(x, lo, hi, valid=np.isfinite(x))
    n_inf = np.concatenate([[0], np.cumsum(np.isposinf(x))])
    out[(n_inf[hi] - n_inf[lo]) > 0] = np.inf
    return out


def calibration_threshold(window_maxima: Sequence[float] | np.ndarray, fpr: float) -> float:
    """The ``1 - fpr`` empirical quantile (``method='higher'``) of per-run window maxima.

    NaN maxima (a run too short to score) are ignored; with no finite value the threshold
    is ``+inf`` (never alarm).
    """
    a = np.asarray(window_maxima, dtype=float)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return float("inf")
    return float(np.quantile(a, 1 - fpr, method="higher"))


def window_max(score: np.ndarray, steps: np.ndarray, start: int | None, stop: int | None) -> float:
    """Max of ``score`` over blocks whose step lies in ``[start, stop]`` (NaN-aware; NaN if none)."""
    m = np.ones(steps.size, dtype=bool)
    if start is not None:
        m &= steps >= start
    if stop is not None:
        m &= steps <= stop
    vals = score[m]
    vals = vals[~np.isnan(vals)]
    return float(vals.max()) if vals.size else float("nan")


class MonitorBase:
    """Standardisation, smoothing and calibration shared by the monitors and the baselines.

    Subclasses implement ``_fit(list of (T_i, p) standardised arrays)`` and
    ``_nll((T, p) standardised array) -> (T,)``.
    """

    smooth: int = 5
    min_steps: int = 8

    # ---- public API -------------------------------------------------------------
    def fit(self, sequences: Sequence[np.ndarray]) -> MonitorBase:
        """Fit on unperturbed training sequences, each shape ``(T_i, p)``; returns self."""
        seqs = [np.asarray(s, dtype=float) for s in sequences]
        seqs = [s for s in seqs if s.ndim == 2 and s.shape[0] >= self.min_steps]
        if not seqs:
            raise InsufficientDataError(f"{type(self).__name__}.fit: no sequence with >= {self.min_steps} steps")
        p = {s.shape[1] for s in seqs}
        if len(p) != 1:
            raise InsufficientDataError(f"{type(self).__name__}.fit: sequences disagree on feature count {sorted(p)}")
        stacked = np.vstack(seqs)
        finite = np.where(np.isfinite(stacked), stacked, np.nan)
        self.mean_ = np.nan_to_num(np.nanmean(finite, axis=0))
        sd = np.nan_to_num(np.nanstd(finite, axis=0))
        sd[sd <= 1e-12] = 1.0
        self.scale_ = sd
        self.n_features_ = stacked.shape[1]
        self._fit([self._standardise(s)[0] for s in seqs])
        self.threshold_ = float("inf")
        return self

    def nll(self, X: np.ndarray) -> np.ndarray:
        """Per-step negative log predictive density per feature, shape ``(T,)``; +inf at non-finite rows."""
        self._check_fitted()
        Z, bad = self._standardise(np.asarray(X, dtype=float))
        out = self._nll(Z) if Z.shape[0] else np.zeros(0)
        out = np.asarray(out, dtype=float)
        out[bad] = np.inf
        return out

    def score(self, X: np.ndarray) -> np.ndarray:
        """Per-step MSD (smoothed :meth:`nll`), shape ``(T,)``."""
        return rolling_mean(self.nll(X), self.smooth)

    def calibrate(
        self, sequences: Sequence[np.ndarray], fpr: float = 0.05, starts: Sequence[int] | None = None
    ) -> MonitorBase:
        """Set ``threshold_`` from held-out unperturbed sequences (each ``(T_i, p)``) at target ``fpr``.

        ``starts`` (row index per sequence) begins each evaluation window (e.g. the
        onset's block); by default the whole sequence.
        """
        starts = list(starts) if starts is not None else [0] * len(sequences)
        maxima = []
        for X, s in zip(sequences, starts, strict=True):
            sc = self.score(X)[s:]
            sc = sc[~np.isnan(sc)]
            maxima.append(float(sc.max()) if sc.size else float("nan"))
        self.threshold_ = calibration_threshold(maxima, fpr)
        self.calibration_n_ = len(maxima)
        self.target_fpr_ = fpr
        return self

    def alarms(self, X: np.ndarray) -> np.ndarray:
        """Boolean alarm per step, shape ``(T,)``: MSD above ``threshold_``."""
        self._check_fitted()
        with np.errstate(invalid="ignore"):
            return self.score(X) > self.threshold_

    # ---- helpers ----------------------------------------------------------------
    def _standardise(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bad = np.isinf(X).any(axis=1) if X.size else np.zeros(X.shape[0], dtype=bool)
        Z = (X - self.mean_) / self.scale_
        Z = np.where(np.isfinite(Z), Z, 0.0)
        return Z, bad

    def _check_fitted(self) -> None:
        if not hasattr(self, "mean_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit() first")

    def _fit(self, sequences: list[np.ndarray]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _nll(self, Z: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError
