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
* the practitioners' spike rules (:class:`SpikeRule`, :data:`RULE_SPECS`), each also a pure function of a raw
  series: OLMo-core's skip-step (:func:`olmo_skip_step`), llm.c's outlier z (:func:`llmc_outlier_z`), Megatron's
  spiky loss (:func:`megatron_spiky_loss`), llm-foundry's ``KillLossSpike`` (:func:`foundry_kill_loss_spike`) and
  Lightning's ``SpikeDetection`` (:func:`lightning_spike`). Their score is the rule's statistic, unsmoothed, and
  :meth:`SpikeRule.rule_alarms` is the rule's own alarm; they are registered but not evaluated by default.

A detector whose column is absent reports ``available = False`` and is left out. Each one also scores a
run one block at a time (``_nll_stepper``, run by :meth:`~stabilitybench.analysis.metastate.base.MonitorBase.stepper`)
with the numbers of its whole-run ``_nll``. :data:`SPECS` registers them
(:mod:`stabilitybench.analysis.detectors`): a new baseline is a class here plus its line in :data:`SPECS`.
"""

from __future__ import annotations

import math
import warnings
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


class AdamRMSRise(_ColumnDetector):
    """Trailing z-score of Adam's RMS update ratio, RMS(g^2 / v) (a rise scores high): the precursor of Wortsman et
    al. 2023 (arXiv 2304.13013), where the second moment under-estimates the gradient 1-8 iterations before a loss
    spike (column ``adam_update_ratio_rms``, schema 1.3)."""

    columns = ("adam_update_ratio_rms",)


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


# ---- the practitioners' spike rules -------------------------------------------------------------------------------
#
# Five rules that large-model training codes ship, each written here as a pure function of one raw 1-D series
# (shape ``(T,)`` -> statistic ``(T,)`` and the rule's own alarm ``(T,)``) with the parameters of its source, and as a
# detector class below. Conventions shared by all five (each source treats these cases differently or not at all):
# a non-finite current value scores ``+inf`` and alarms (every source stops, skips or fails on it somewhere); a
# non-finite past value is left out of the rule's reference statistics; a statistic that the rule has not yet
# defined (warm-up) is NaN and never alarms.


def _past_window(x: np.ndarray, window: int) -> np.ndarray:
    """Row ``t`` holds ``x[t-window .. t-1]`` (NaN before the start): a ``(T, window)`` view."""
    padded = np.concatenate([np.full(window, np.nan), x[:-1]]) if x.size else np.full(window, np.nan)
    return sliding_window_view(padded, window)[: x.size]


def _finite_or_nan(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float).ravel()
    return np.where(np.isfinite(x), x, np.nan)


def _z_with_zero_sd(d: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """``d / sd`` where ``sd > 0``; ``sign(d) * inf`` (0 for ``d = 0``) where ``sd = 0``; NaN where either is."""
    with np.errstate(invalid="ignore", divide="ignore"):
        z = d / sd
    flat = sd == 0
    df = d[flat]
    z[flat] = np.where(df > 0, np.inf, np.where(df < 0, -np.inf, np.where(df == 0, 0.0, np.nan)))
    return z


def _olmo_one(x: np.ndarray, window: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """OLMo-core's rule on one series: ``(z, alarm)``, see :func:`olmo_skip_step`."""
    ref = _finite_or_nan(x)
    win = _past_window(ref, window)
    n = np.isfinite(win).sum(axis=1)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(win, axis=1)
        sd = np.nanstd(win, axis=1, ddof=1)
    active = (np.arange(ref.size) + 1 >= max(20, window // 2)) & (n >= 2)
    d = ref - mean
    z = np.where(active, _z_with_zero_sd(d, sd), np.nan)
    with np.errstate(invalid="ignore"):
        alarm = active & (d > sigma * sd)
    bad = ~np.isfinite(np.asarray(x, float))
    z[bad], alarm[bad] = np.inf, True
    return z, alarm


def olmo_skip_step(loss: np.ndarray, grad_norm: np.ndarray | None = None, window: int = 128,
                   sigma: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """OLMo-core ``SkipStepOptimizer``: skip the update when the loss (or the grad norm) exceeds the mean of
    its last ``window`` values by more than ``sigma`` standard deviations.

    Source (``olmo_core/optim/skip_step_optimizer.py``, ``get_step_factor``): the optimizer keeps the last
    ``window + 1`` values (current included); once it holds ``max(20, window // 2)`` of them it skips when
    ``x_t - mean > sigma * std`` over the *previous* values, ``std`` being ``torch.std`` (``ddof = 1``), for the loss
    or for the grad norm. Defaults: ``window = 128`` (``rolling_interval_length``), ``sigma = 6`` (``sigma_factor``).

    Shapes: ``loss`` and ``grad_norm`` ``(T,)``. Returns ``(statistic, alarm)``, each ``(T,)``: the statistic is
    ``max(z_loss, z_grad)`` with ``z = (x_t - mean) / std`` (NaN in the first ``max(20, window // 2) - 1`` steps),
    and ``alarm`` is the source's skip decision (``statistic > sigma``).
    """
    z, alarm = _olmo_one(loss, window, sigma)
    if grad_norm is not None:
        zg, ag = _olmo_one(grad_norm, window, sigma)
        z, alarm = np.fmax(z, zg), alarm | ag
    return z, alarm


def _llmc_one(x: np.ndarray, window: int) -> np.ndarray:
    ref = _finite_or_nan(x)
    T = ref.size
    z = np.full(T, np.nan)
    if T > window:
        win = sliding_window_view(ref, window)[1:]  # row t - window: x[t-window+1 .. t], the current value included
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(win, axis=1)
            sd = np.nanstd(win, axis=1)
        d = ref[window:] - mean
        with np.errstate(invalid="ignore", divide="ignore"):
            z[window:] = np.where(sd == 0, 0.0, d / sd)
    z[~np.isfinite(np.asarray(x, float))] = np.inf
    return z


def llmc_outlier_z(loss: np.ndarray, grad_norm: np.ndarray | None = None, window: int = 128,
                   threshold: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """llm.c ``OutlierDetector``: the z-score of each new value against a window of ``window`` values that
    *includes* it (population SD; 0 when the SD is 0), NaN until the window has filled.

    Source (``llmc/outlier_detector.h``, ``update_detector``; used in ``train_gpt2.cu`` on the loss and on the grad
    norm): the first ``window = 128`` values only fill the buffer; from the ``window + 1``-th on, the oldest value is
    dropped, the new one pushed, and ``z = (x - mean) / sd`` returned. ``train_gpt2.cu`` skips the update when
    ``zloss > -sl`` or ``zgrad > -sg``; those flags default to 0 (off), so ``threshold`` is this toolkit's choice: 6,
    OLMo-core's factor, so that the two rules differ only in how they estimate the window's statistics.

    Shapes: ``(T,)``. Returns ``(statistic, alarm)``: ``max(z_loss, z_grad)`` and ``statistic > threshold``.
    """
    z = _llmc_one(loss, window)
    if grad_norm is not None:
        z = np.fmax(z, _llmc_one(grad_norm, window))
    with np.errstate(invalid="ignore"):
        return z, z > threshold


def megatron_spiky_loss(loss: np.ndarray, factor: float = 10.0,
                        num_samples: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Megatron-LM ``--check-for-spiky-loss``: a loss at least ``factor`` times the largest loss of the first
    ``num_samples`` is spiky.

    Source (``megatron/core/rerun_state_machine.py``, ``is_unexpectedly_large``, called with
    ``threshold = SPIKY_LOSS_FACTOR = 10``): the first ``num_samples = 100`` finite values only record the maximum
    of ``|loss|`` (non-finite values are skipped: they are checked separately); every later value is flagged when
    ``|loss| >= factor * max``. The reference is *not* a running maximum: it is frozen after those samples.

    Shape ``(T,)``. Returns ``(statistic, alarm)``: ``|loss| / max`` (NaN before the reference exists) and
    ``statistic >= factor``.
    """
    x = np.asarray(loss, dtype=float).ravel()
    fin = np.isfinite(x)
    stat = np.full(x.size, np.nan)
    alarm = np.zeros(x.size, dtype=bool)
    idx = np.flatnonzero(fin)
    if idx.size > num_samples:
        ref = float(np.max(np.abs(x[idx[:num_samples]])))
        after = np.zeros(x.size, dtype=bool)
        after[idx[num_samples]:] = True
        after &= fin
        ax = np.abs(x[after])
        stat[after] = ax / ref if ref > 0 else np.inf
        alarm[after] = ax >= ref * factor
    stat[~fin], alarm[~fin] = np.inf, True
    return stat, alarm


def foundry_kill_loss_spike(loss: np.ndarray, window: int = 100, multiplier: float = 2.0,
                            patience: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """llm-foundry ``KillLossSpike``: a loss spike is more than ``patience`` consecutive outliers, an outlier
    being a loss at least ``multiplier`` times the mean of the previous ``window`` losses.

    Source (``llmfoundry/callbacks/kill_loss_spike_callback.py``): once the rolling window (``window_size = 100``,
    every loss appended) is full, ``train_loss >= running_loss_avg * outlier_multiplier`` (``= 2``) counts an
    outlier and any other loss resets the count; the spike fires when the count exceeds ``patience = 4``, i.e.
    on the 5th consecutive outlier. (Its second check, half the window above an absolute ``loss_cap = 10``, is
    in nats of a 50k-token vocabulary and is not used here.)

    Shape ``(T,)``. Returns ``(statistic, alarm)``: the statistic is the minimum of ``loss / window mean`` over the
    last ``patience + 1`` steps (NaN until they all have a full window; NaN where the mean is not positive), so for
    a positive loss ``alarm`` (the source's decision) is ``statistic >= multiplier``.
    """
    x = np.asarray(loss, dtype=float).ravel()
    ref = _finite_or_nan(x)
    T = ref.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(_past_window(ref, window), axis=1)
    full = np.arange(T) >= window
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(full & (mean > 0), ref / mean, np.nan)
        outlier = full & (ref >= mean * multiplier)
    bad = ~np.isfinite(x)
    ratio[bad & full] = np.inf
    outlier[bad & full] = True
    k = patience + 1
    stat = np.full(T, np.nan)
    alarm = np.zeros(T, dtype=bool)
    if T >= k:
        stat[k - 1:] = sliding_window_view(ratio, k).min(axis=1)
        alarm[k - 1:] = sliding_window_view(outlier, k).all(axis=1)
    stat[bad] = np.inf
    alarm[bad] = True
    return stat, alarm


class _LightningState:
    """Lightning ``SpikeDetection``'s state for one run (see :func:`lightning_spike`); ``step(x) -> (stat, alarm)``."""

    def __init__(self, window: int, rtol: float | None, atol: float | None, warmup: int) -> None:
        self.values: deque[float] = deque(maxlen=int(window))
        self.rtol, self.atol, self.warmup = rtol, atol, int(warmup)
        self.last = 0.0
        self.t = 0

    def step(self, x: float) -> tuple[float, bool]:
        t, self.t = self.t, self.t + 1
        if not math.isfinite(x):
            return (math.inf, True) if t >= self.warmup else (math.nan, False)
        stat, spike = math.nan, False
        if t >= self.warmup and self.values:
            m = math.fsum(self.values) / len(self.values)
            if x - self.last <= 0.0:  # an improvement is never a spike
                stat = 0.0
            else:
                dev = abs(x - m)
                stat = dev / abs(m) if m != 0 else math.inf
                spike = (self.atol is None or dev >= abs(self.atol)) and (self.rtol is None
                                                                          or dev >= abs(self.rtol * m))
        if not spike:  # the source raises on a spike, so a spike never enters its running mean
            self.values.append(x)
            self.last = x
        return stat, spike


def lightning_spike(loss: np.ndarray, window: int = 10, rtol: float | None = 2.0, atol: float | None = None,
                    warmup: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Lightning ``SpikeDetection`` (``lightning/fabric/utilities/spike.py``, mode ``"min"``): from batch
    ``warmup = 1`` on, a loss is a spike when it is not an improvement on the last accepted loss and
    ``|loss - m| >= rtol * |m|`` (``rtol = 2``; ``atol`` unset), ``m`` the mean of the last ``window = 10``
    accepted finite losses; a non-finite loss is a spike (``finite_only=True``).

    The source stops training at a spike (``TrainingSpikeException``) and a spike never updates its running mean
    or last value; run passively here, a spike is likewise left out of them, so after a lasting jump every later
    loss stays a spike (what a user of the callback would see on every restart).

    Shape ``(T,)``. Returns ``(statistic, alarm)``: ``|loss - m| / |m|`` (0 for an improvement, NaN before any
    accepted loss or during warm-up) and the source's decision, which for a positive loss is ``statistic >= rtol``.
    """
    state = _LightningState(window, rtol, atol, warmup)
    out = [state.step(float(v)) for v in np.asarray(loss, dtype=float).ravel()]
    stat = np.array([s for s, _ in out], dtype=float)
    alarm = np.array([a for _, a in out], dtype=bool)
    return stat, alarm


# ---- the same rules one value at a time (the detectors' online steps) -------------------------------------------


class _OlmoState:
    """:func:`olmo_skip_step` on one series, one value at a time: ``step(x) -> (z, alarm)``."""

    def __init__(self, window: int, sigma: float) -> None:
        self.past: deque[float] = deque(maxlen=int(window))
        self.sigma, self.min_len, self.t = float(sigma), max(20, int(window) // 2), 0

    def step(self, x: float) -> tuple[float, bool]:
        t, self.t = self.t, self.t + 1
        arr = np.fromiter(self.past, float, len(self.past))
        self.past.append(x if math.isfinite(x) else math.nan)
        if not math.isfinite(x):
            return math.inf, True
        if t + 1 < self.min_len or np.isfinite(arr).sum() < 2:
            return math.nan, False
        d = np.array([x - float(np.nanmean(arr))])
        sd = np.array([float(np.nanstd(arr, ddof=1))])
        return float(_z_with_zero_sd(d, sd)[0]), bool(d[0] > self.sigma * sd[0])


class OlmoSkipDecision:
    """OLMo-core's skip decision for a live training loop, one update at a time (the skip-step arm of issue 26).

    ``step(grad_norm, loss=None) -> (statistic, skip)``: :func:`olmo_skip_step`'s rule on the pre-clip gradient norm
    and, where the loop hands it over, the loss; each series keeps its own last ``window`` values (every value is
    kept, skipped or not, as ``SkipStepOptimizer`` keeps them). ``statistic`` is ``max(z_grad, z_loss)`` (NaN while
    a series holds fewer than ``max(20, window // 2)`` values); ``skip`` is the source's decision.
    """

    def __init__(self, window: int = 128, sigma: float = 6.0) -> None:
        self.window, self.sigma = int(window), float(sigma)
        self._grad = _OlmoState(self.window, self.sigma)
        self._loss: _OlmoState | None = None

    def step(self, grad_norm: float, loss: float | None = None) -> tuple[float, bool]:
        z, skip = self._grad.step(float(grad_norm))
        if loss is not None:
            if self._loss is None:
                self._loss = _OlmoState(self.window, self.sigma)
            zl, skip_l = self._loss.step(float(loss))
            z, skip = float(np.fmax(z, zl)), skip or skip_l
        return z, skip


class _LlmcState:
    """:func:`llmc_outlier_z` on one series, one value at a time: ``step(x) -> (z, alarm)``."""

    def __init__(self, window: int, threshold: float) -> None:
        self.buf: deque[float] = deque(maxlen=int(window))
        self.window, self.threshold = int(window), float(threshold)

    def step(self, x: float) -> tuple[float, bool]:
        full = len(self.buf) == self.window
        self.buf.append(x if math.isfinite(x) else math.nan)
        if not math.isfinite(x):
            return math.inf, True
        if not full:
            return math.nan, False
        arr = np.fromiter(self.buf, float, self.window)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, sd = float(np.nanmean(arr)), float(np.nanstd(arr))
        z = 0.0 if sd == 0 else (x - mean) / sd
        return z, z > self.threshold


class _MegatronState:
    """:func:`megatron_spiky_loss` one value at a time: ``step(x) -> (ratio, alarm)``."""

    def __init__(self, factor: float, num_samples: int) -> None:
        self.factor, self.num_samples, self.count, self.ref = float(factor), int(num_samples), 0, 0.0

    def step(self, x: float) -> tuple[float, bool]:
        if not math.isfinite(x):
            return math.inf, True
        if self.count < self.num_samples:
            self.count += 1
            self.ref = max(self.ref, abs(x))
            return math.nan, False
        ratio = abs(x) / self.ref if self.ref > 0 else math.inf
        return ratio, abs(x) >= self.ref * self.factor


class _FoundryState:
    """:func:`foundry_kill_loss_spike` one value at a time: ``step(x) -> (min ratio, alarm)``."""

    def __init__(self, window: int, multiplier: float, patience: int) -> None:
        self.past: deque[float] = deque(maxlen=int(window))
        self.window, self.multiplier = int(window), float(multiplier)
        self.ratios: deque[float] = deque(maxlen=int(patience) + 1)
        self.outliers: deque[bool] = deque(maxlen=int(patience) + 1)

    def step(self, x: float) -> tuple[float, bool]:
        full = len(self.past) == self.window
        arr = np.fromiter(self.past, float, len(self.past))
        self.past.append(x if math.isfinite(x) else math.nan)
        r, out = math.nan, False
        if full and not math.isfinite(x):
            r, out = math.inf, True
        elif full:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = float(np.nanmean(arr))
            r = x / mean if mean > 0 else math.nan
            out = bool(x >= mean * self.multiplier)
        self.ratios.append(r)
        self.outliers.append(out)
        if not math.isfinite(x):
            return math.inf, True
        if len(self.ratios) < self.ratios.maxlen:
            return math.nan, False
        return float(np.min(np.fromiter(self.ratios, float))), all(self.outliers)


# ---- the rules as detectors ----------------------------------------------------------------------------------------


class SpikeRule(MonitorBase):
    """Base of the practitioners' rules as detectors: the score is the rule's own statistic, unsmoothed.

    **Steps and blocks.** A rule's "step" is one row of the matrix it is given: one block of this toolkit (the
    mean of ``B`` updates, :mod:`stabilitybench.analysis.data`), so ``window`` counts blocks and spans ``window * B``
    updates; with ``FeatureConfig(block_updates=1)`` a block is one update and the rule runs as its source does.
    **Values.** The rule reads the raw scale: each block feature is turned back from its standardisation and from
    the pipeline's ``sign(x) log1p(|x|)`` (``transforms``, default the pipeline's own for the column), so a block's
    value is ``expm1`` of the block mean of ``log1p(loss)``: a geometric-type mean of the block's losses. A missing
    value (before the column's first report) is read as the training mean, as every detector imputes it.
    **Columns.** The loss: ``loss_column`` if given, else ``train_loss``, else ``loss``, else ``value_loss`` (as
    :class:`LossSpike`); the OLMo-core and llm.c rules also read ``grad_norm`` where it is a feature (their sources
    check both). The ratio rules (Megatron, llm-foundry, Lightning) assume a positive loss, as a cross-entropy is;
    PPO's total ``loss`` can be negative (``loss_column="value_loss"`` is positive).
    **Score and alarm.** :meth:`score` is the rule's statistic (``smooth = 1``), to be calibrated like any other
    detector; :meth:`rule_alarms` is the rule's own fixed alarm, as its source decides (plus a non-finite block).
    The detectors need no training beyond the standardisation; they are causal and saveable (monitor files).
    """

    columns: tuple[str, ...] = ("train_loss", "loss", "value_loss")
    grad_columns: tuple[str, ...] = ()

    def __init__(self, features: Sequence[str], window: int, smooth: int = 1,
                 transforms: dict[str, str] | None = None, loss_column: str | None = None) -> None:
        self.features = list(features)
        self.window = int(window)
        self.smooth = smooth
        self.loss_column = loss_column
        order = (loss_column,) if loss_column is not None else self.columns
        self.column = next((c for c in order if c in self.features), None)
        self.grad_column = next((c for c in self.grad_columns if c in self.features), None)
        read = [c for c in (self.column, self.grad_column) if c is not None]
        self.transforms = dict(transforms) if transforms else {c: _pipeline_transform(c) for c in read}

    @property
    def available(self) -> bool:
        return self.column is not None

    def _fit(self, sequences: list[np.ndarray]) -> None:
        return None  # the rule itself has no parameter to learn

    def _rule(self, loss: np.ndarray, grad: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The pure rule: ``(statistic (T,), alarm (T,))`` of the raw series."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _states(self) -> list[Any]:
        """One fresh online state per column read (loss first): each ``step(x) -> (statistic, alarm)``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _raw(self, Z: np.ndarray, column: str) -> np.ndarray:
        """Column ``column`` of standardised ``Z`` (``(T, p)`` or ``(p,)``) on its raw scale: ``(T,)`` or ``()``."""
        j = self.features.index(column)
        y = Z[..., j] * self.scale_[j] + self.mean_[j]
        return np.sign(y) * np.expm1(np.abs(y)) if self.transforms.get(column) == "log1p" else y

    def _series(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self._raw(Z, self.column), (self._raw(Z, self.grad_column) if self.grad_column else None)

    def _nll(self, Z: np.ndarray) -> np.ndarray:
        return self._rule(*self._series(Z))[0]

    def _nll_stepper(self) -> Callable[[np.ndarray], float]:
        """The rule's online state(s) advanced by one block; several columns combine as ``max`` (NaN ignored)."""
        states = self._states()
        cols = [c for c in (self.column, self.grad_column) if c is not None]

        def step(z: np.ndarray) -> float:
            stats = [s.step(float(self._raw(z, c)))[0] for s, c in zip(states, cols, strict=True)]
            return float(np.fmax.reduce(np.array(stats))) if len(stats) > 1 else stats[0]

        return step

    def rule_alarms(self, X: np.ndarray) -> np.ndarray:
        """The rule's own alarm per block, shape ``(T,)``, as its source decides (a non-finite block alarms)."""
        self._check_fitted()
        Z, bad = self._standardise(np.asarray(X, dtype=float))
        alarm = self._rule(*self._series(Z))[1] if Z.shape[0] else np.zeros(0, dtype=bool)
        return np.asarray(alarm, bool) | bad

    def get_params(self) -> dict[str, Any]:
        return {"features": list(self.features), "window": self.window, "smooth": self.smooth,
                "transforms": dict(self.transforms), "loss_column": self.loss_column}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted standardisation (for :mod:`analysis.monitor_file`); the rule has no other parameter."""
        self._check_fitted()
        return {"mean_": np.asarray(self.mean_, float), "scale_": np.asarray(self.scale_, float)}

    @classmethod
    def from_arrays(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> SpikeRule:
        """Inverse of :meth:`to_arrays` (with :meth:`get_params`)."""
        m = cls(**params)
        m.mean_, m.scale_ = np.asarray(arrays["mean_"], float), np.asarray(arrays["scale_"], float)
        m.n_features_ = m.mean_.size
        return m


def _pipeline_transform(column: str) -> str:
    """The transform :func:`stabilitybench.analysis.data.feature_frame` applies to ``column`` (undone by a rule)."""
    from stabilitybench.analysis.data import LOG_COLUMNS

    return "log1p" if column in LOG_COLUMNS else "identity"


class OlmoSkipStep(SpikeRule):
    """OLMo-core ``SkipStepAdamW`` (:func:`olmo_skip_step`): loss or grad norm above mean + 6 SD of the last 128."""

    grad_columns = ("grad_norm",)

    def __init__(self, features: Sequence[str], window: int = 128, sigma: float = 6.0, smooth: int = 1,
                 transforms: dict[str, str] | None = None, loss_column: str | None = None) -> None:
        super().__init__(features, window, smooth, transforms, loss_column)
        self.sigma = float(sigma)

    def _rule(self, loss: np.ndarray, grad: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return olmo_skip_step(loss, grad, self.window, self.sigma)

    def _states(self) -> list[Any]:
        return [_OlmoState(self.window, self.sigma) for _ in range(1 + (self.grad_column is not None))]

    def get_params(self) -> dict[str, Any]:
        return {**super().get_params(), "sigma": self.sigma}


class LlmcOutlierZ(SpikeRule):
    """llm.c ``OutlierDetector`` (:func:`llmc_outlier_z`): z of the loss (and grad norm) in a window of 128."""

    grad_columns = ("grad_norm",)

    def __init__(self, features: Sequence[str], window: int = 128, threshold: float = 6.0, smooth: int = 1,
                 transforms: dict[str, str] | None = None, loss_column: str | None = None) -> None:
        super().__init__(features, window, smooth, transforms, loss_column)
        self.threshold = float(threshold)

    def _rule(self, loss: np.ndarray, grad: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return llmc_outlier_z(loss, grad, self.window, self.threshold)

    def _states(self) -> list[Any]:
        return [_LlmcState(self.window, self.threshold) for _ in range(1 + (self.grad_column is not None))]

    def get_params(self) -> dict[str, Any]:
        return {**super().get_params(), "threshold": self.threshold}


class MegatronSpikyLoss(SpikeRule):
    """Megatron-LM ``--check-for-spiky-loss`` (:func:`megatron_spiky_loss`): ``|loss| / max |loss|`` of the first
    ``window`` (``num_samples`` = 100) blocks; the rule alarms at 10."""

    def __init__(self, features: Sequence[str], window: int = 100, factor: float = 10.0, smooth: int = 1,
                 transforms: dict[str, str] | None = None, loss_column: str | None = None) -> None:
        super().__init__(features, window, smooth, transforms, loss_column)
        self.factor = float(factor)

    def _rule(self, loss: np.ndarray, grad: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return megatron_spiky_loss(loss, self.factor, self.window)

    def _states(self) -> list[Any]:
        return [_MegatronState(self.factor, self.window)]

    def get_params(self) -> dict[str, Any]:
        return {**super().get_params(), "factor": self.factor}


class FoundryKillLossSpike(SpikeRule):
    """llm-foundry ``KillLossSpike`` (:func:`foundry_kill_loss_spike`): 5 consecutive losses >= 2x the mean of the
    previous 100."""

    def __init__(self, features: Sequence[str], window: int = 100, multiplier: float = 2.0, patience: int = 4,
                 smooth: int = 1, transforms: dict[str, str] | None = None, loss_column: str | None = None) -> None:
        super().__init__(features, window, smooth, transforms, loss_column)
        self.multiplier, self.patience = float(multiplier), int(patience)

    def _rule(self, loss: np.ndarray, grad: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return foundry_kill_loss_spike(loss, self.window, self.multiplier, self.patience)

    def _states(self) -> list[Any]:
        return [_FoundryState(self.window, self.multiplier, self.patience)]

    def get_params(self) -> dict[str, Any]:
        return {**super().get_params(), "multiplier": self.multiplier, "patience": self.patience}


class LightningSpike(SpikeRule):
    """Lightning ``SpikeDetection`` (:func:`lightning_spike`): a non-improving loss 2x its running mean of 10 away."""

    def __init__(self, features: Sequence[str], window: int = 10, rtol: float | None = 2.0,
                 atol: float | None = None, warmup: int = 1, smooth: int = 1,
                 transforms: dict[str, str] | None = None, loss_column: str | None = None) -> None:
        super().__init__(features, window, smooth, transforms, loss_column)
        self.rtol, self.atol, self.warmup = rtol, atol, int(warmup)

    def _rule(self, loss: np.ndarray, grad: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return lightning_spike(loss, self.window, self.rtol, self.atol, self.warmup)

    def _states(self) -> list[Any]:
        return [_LightningState(self.window, self.rtol, self.atol, self.warmup)]

    def get_params(self) -> dict[str, Any]:
        return {**super().get_params(), "rtol": self.rtol, "atol": self.atol, "warmup": self.warmup}


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
    DetectorSpec("adam_rms_z", "Adam RMS update-ratio z", "baseline", AdamRMSRise, _windowed(AdamRMSRise),
                 saveable=True),
)

#: The practitioners' spike rules (:class:`SpikeRule`), registered as baselines with their sources' parameters
#: (windows in blocks, ``smooth = 1``: the score is the rule's statistic). They are *not* in the evaluation's default
#: set (:func:`stabilitybench.analysis.detectors.default_names`); select them by name, e.g.
#: ``EarlyWarningConfig(detectors=(*default_detectors(), *rule_names()))``.
RULE_SPECS: tuple[DetectorSpec, ...] = (
    DetectorSpec("olmo_skip_step", "OLMo-core skip-step (6 SD, 128)", "baseline", OlmoSkipStep,
                 lambda features, cfg: OlmoSkipStep(features), saveable=True),
    DetectorSpec("llmc_outlier_z", "llm.c outlier z (128)", "baseline", LlmcOutlierZ,
                 lambda features, cfg: LlmcOutlierZ(features), saveable=True),
    DetectorSpec("megatron_spiky_loss", "Megatron spiky loss (10x max)", "baseline", MegatronSpikyLoss,
                 lambda features, cfg: MegatronSpikyLoss(features), saveable=True),
    DetectorSpec("foundry_kill_loss_spike", "llm-foundry KillLossSpike (2x, 100, patience 4)", "baseline",
                 FoundryKillLossSpike, lambda features, cfg: FoundryKillLossSpike(features), saveable=True),
    DetectorSpec("lightning_spike", "Lightning SpikeDetection (10, rtol 2)", "baseline", LightningSpike,
                 lambda features, cfg: LightningSpike(features), saveable=True),
)
