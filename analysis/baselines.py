"""Baseline early-warning detectors, with the monitors' interface (``fit``/``score``/``calibrate``).

Each works on the same block-level feature matrices as the monitors (shape ``(T, p)``,
columns named by ``features``), and its raw score is smoothed with the same causal
rolling mean (``smooth`` blocks), so every detector is calibrated on the same runs to the
same FPR by :meth:`~stabilitybench.analysis.metastate.base.MonitorBase.calibrate`.

* :class:`GradNormZ`: trailing z-score of (log) ``grad_norm`` against its own last
  ``window`` blocks (no training needed).
* :class:`LossSpike`: trailing z-score of the training loss (``train_loss``, else ``loss``).
* :class:`EWSDetector`: critical-slowing-down early-warning signals on the first principal
  component of the telemetry (PCA fitted on the training runs): rolling variance and
  lag-1 autocorrelation over ``window`` blocks, each turned into a trend by Kendall's tau
  over the trailing ``trend`` blocks; the score is the mean of the two taus.
* :class:`PCAReconstruction`: squared reconstruction error per feature of a PCA with
  the 90%-variance number of components, fitted on the training runs.
* :class:`CoherenceDrop`: minus the trailing z-score of ``grad_coherence`` (a drop scores high).

A detector whose column is absent reports ``available = False`` and is left out. Each one also scores a
run one block at a time (``_nll_stepper``, run by :meth:`~stabilitybench.analysis.metastate.base.MonitorBase.stepper`)
with the numbers of its whole-run ``_nll``. :data:`SPECS` registers them
(:mod:`stabilitybench.analysis.detectors`): a new baseline is a class here plus its line in :data:`SPECS`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from stabilitybench.analysis.metastate.base import DetectorSpec, MonitorBase


def trailing_z(x: np.ndarray, window: int, floor: float | None = None) -> np.ndarray:
    """``(x_t - mean(x_{t-w..t-1})) / max(sd(x_{t-w..t-1}), floor)``, shape ``(T,)``; NaN for the first
    ``window`` steps.

    ``floor`` (default: 1e-3 of the whole series' SD, which looks ahead) keeps a flat window from
    dividing by zero; the detectors pass a fixed floor in standardised units, so they stay causal.
    """
    x = np.asarray(x, dtype=float)
    T = x.size
    out = np.full(T, np.nan)
    if T <= window:
        return out
    win = sliding_window_view(x[:-1], window)  # (T - window, window): rows end at t-1
    mu = np.nanmean(win, axis=1)
    sd = np.nanstd(win, axis=1)
    if floor is None:
        floor = 1e-3 * max(float(np.nanstd(x)) if np.isfinite(x).any() else 1.0, 1e-12)
    with np.errstate(invalid="ignore"):
        out[window:] = (x[window:] - mu) / np.maximum(sd, floor)
    return out


def rolling_kendall(x: np.ndarray, window: int) -> np.ndarray:
    """Kendall's tau between time and ``x`` over each trailing ``window``, shape ``(T,)`` (NaN-padded)."""
    x = np.asarray(x, dtype=float)
    T = x.size
    out = np.full(T, np.nan)
    if T < window or window < 3:
        return out
    win = sliding_window_view(x, window)  # (T-window+1, window)
    i, j = np.triu_indices(window, k=1)
    s = np.sign(win[:, j] - win[:, i])  # time increases from i to j
    valid = ~np.isnan(s)
    n = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = np.where(valid, s, 0).sum(axis=1) / n
    out[window - 1 :] = tau
    return out


def rolling_var_ac1(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Rolling variance and lag-1 autocorrelation over trailing ``window`` steps, each ``(T,)``."""
    x = np.asarray(x, dtype=float)
    T = x.size
    var = np.full(T, np.nan)
    ac1 = np.full(T, np.nan)
    if T < window or window < 3:
        return var, ac1
    win = sliding_window_view(x, window)
    d = win - win.mean(axis=1, keepdims=True)
    v = (d**2).mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = (d[:, 1:] * d[:, :-1]).mean(axis=1) / v
    var[window - 1 :] = v
    ac1[window - 1 :] = a
    return var, ac1


#: Floor of a trailing window's SD, in the units of the training controls' SD (the features are standardised).
Z_FLOOR = 1e-3


class _ColumnDetector(MonitorBase):
    """Base of the single-column trailing-z detectors (causal: saveable to a monitor file and run live)."""

    columns: tuple[str, ...] = ()
    sign: float = 1.0

    def __init__(self, features: Sequence[str], window: int = 20, smooth: int = 5) -> None:
        self.features = list(features)
        self.window = window
        self.smooth = smooth
        self.column = next((c for c in self.columns if c in self.features), None)

    @property
    def available(self) -> bool:
        return self.column is not None

    def _fit(self, sequences: list[np.ndarray]) -> None:
        return None  # self-referenced: needs no training

    def _nll(self, Z: np.ndarray) -> np.ndarray:
        j = self.features.index(self.column)
        return self.sign * trailing_z(Z[:, j], self.window, Z_FLOOR)

    def _nll_stepper(self) -> Callable[[np.ndarray], float]:
        """:func:`trailing_z` of the column at the newest block: its last ``window`` values are kept."""
        j, sign, window = self.features.index(self.column), float(self.sign), int(self.window)
        past: deque[float] = deque(maxlen=window)

        def step(z: np.ndarray) -> float:
            x = float(z[j])
            nll = math.nan
            if len(past) == window:
                w = np.fromiter(past, float, window)
                nll = sign * (x - float(np.nanmean(w))) / max(float(np.nanstd(w)), Z_FLOOR)
            past.append(x)
            return nll

        return step

    def get_params(self) -> dict[str, Any]:
        return {"features": list(self.features), "window": self.window, "smooth": self.smooth}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted standardisation (for :mod:`analysis.monitor_file`); the detector has no other parameter."""
        self._check_fitted()
        return {"mean_": np.asarray(self.mean_, float), "scale_": np.asarray(self.scale_, float)}

    @classmethod
    def from_arrays(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> _ColumnDetector:
        """Inverse of :meth:`to_arrays` (with :meth:`get_params`)."""
        m = cls(**params)
        m.mean_, m.scale_ = np.asarray(arrays["mean_"], float), np.asarray(arrays["scale_"], float)
        m.n_features_ = m.mean_.size
        return m


class GradNormZ(_ColumnDetector):
    """Trailing z-score of (log) gradient norm."""

    columns = ("grad_norm",)


class LossSpike(_ColumnDetector):
    """Trailing z-score of the training loss (a spike up scores high)."""

    columns = ("train_loss", "loss", "value_loss")


class CoherenceDrop(_ColumnDetector):
    """Minus the trailing z-score of gradient coherence (a drop scores high)."""

    columns = ("grad_coherence",)
    sign = -1.0


def _principal_axes(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean ``(F,)``, singular values ``(r,)`` and right singular vectors ``(r, F)`` of the stacked
    training sequences (each ``(T_i, F)``), centred."""
    Y = np.vstack(sequences)
    center = Y.mean(axis=0)
    _, s, vt = np.linalg.svd(Y - center, full_matrices=False)
    return center, s, vt


class PCAReconstruction(MonitorBase):
    """Squared PCA reconstruction error per feature; PCA (90% of variance) fitted on training runs."""

    def __init__(self, features: Sequence[str], level: float = 0.9, smooth: int = 5) -> None:
        self.features = list(features)
        self.level = level
        self.smooth = smooth

    available = True

    def _fit(self, sequences: list[np.ndarray]) -> None:
        self.center_, s, vt = _principal_axes(sequences)
        evr = s**2 / max((s**2).sum(), 1e-300)
        k = int(np.searchsorted(np.cumsum(evr), self.level - 1e-12) + 1)
        self.components_ = vt[: min(k, vt.shape[0])]

    def _nll(self, Z: np.ndarray) -> np.ndarray:
        D = Z - self.center_
        R = D - D @ self.components_.T @ self.components_
        return (R**2).mean(axis=1)

    def _nll_stepper(self) -> Callable[[np.ndarray], float]:
        """Row-wise already: :meth:`_nll` of the one block (no state)."""
        return lambda z: float(self._nll(z[None, :])[0])


class EWSDetector(MonitorBase):
    """Rolling variance + lag-1 autocorrelation of the leading PC, as Kendall-tau trends."""

    def __init__(self, features: Sequence[str], window: int = 20, trend: int = 20, smooth: int = 5) -> None:
        self.features = list(features)
        self.window = window
        self.trend = trend
        self.smooth = smooth

    available = True

    def _fit(self, sequences: list[np.ndarray]) -> None:
        self.center_, _, vt = _principal_axes(sequences)
        self.pc1_ = vt[0]

    def _nll(self, Z: np.ndarray) -> np.ndarray:
        x = (Z - self.center_) @ self.pc1_
        var, ac1 = rolling_var_ac1(x, self.window)
        return 0.5 * (rolling_kendall(var, self.trend) + rolling_kendall(ac1, self.trend))

    def _nll_stepper(self) -> Callable[[np.ndarray], float]:
        """:meth:`_nll` at the newest block from the last ``window`` projections and the last ``trend``
        variances and autocorrelations (O(window + trend^2) per block, whatever the run's length)."""
        window, trend = int(self.window), int(self.trend)
        xs: deque[float] = deque(maxlen=window)
        var: deque[float] = deque(maxlen=trend)
        ac1: deque[float] = deque(maxlen=trend)

        def step(z: np.ndarray) -> float:
            xs.append(float((z - self.center_) @ self.pc1_))
            v = a = math.nan
            if len(xs) == window:
                v_, a_ = rolling_var_ac1(np.fromiter(xs, float, window), window)
                v, a = float(v_[-1]), float(a_[-1])
            var.append(v)
            ac1.append(a)
            if len(var) < trend:
                return math.nan
            tv = rolling_kendall(np.fromiter(var, float, trend), trend)[-1]
            ta = rolling_kendall(np.fromiter(ac1, float, trend), trend)[-1]
            return float(0.5 * (tv + ta))

        return step


def _windowed(cls: type[MonitorBase]) -> Callable[[list[str], Any], MonitorBase]:
    """Builder of a baseline that takes ``(features, window, smooth)``: the evaluation's baseline window."""
    def build(features: list[str], cfg: Any) -> MonitorBase:
        return cls(features, window=cfg.baseline_window, smooth=cfg.smooth)

    return build


#: The baselines of the registry (:mod:`stabilitybench.analysis.detectors`), in evaluation order. A new baseline
#: is a class above plus a line here (``saveable`` only for a causal one with ``to_arrays``/``from_arrays``).
SPECS: tuple[DetectorSpec, ...] = (
    DetectorSpec("grad_norm_z", "grad-norm z", "baseline", GradNormZ, _windowed(GradNormZ), saveable=True),
    DetectorSpec("loss_spike", "loss spike z", "baseline", LossSpike, _windowed(LossSpike), saveable=True),
    DetectorSpec("ews_var_ac1", "variance + AC1 trend", "baseline", EWSDetector, _windowed(EWSDetector)),
    DetectorSpec("pca_recon", "PCA reconstruction", "baseline", PCAReconstruction,
                 lambda features, cfg: PCAReconstruction(features, smooth=cfg.smooth)),
    DetectorSpec("coherence_drop", "coherence drop", "baseline", CoherenceDrop, _windowed(CoherenceDrop),
                 saveable=True),
)
