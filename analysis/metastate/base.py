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

Every detector (monitor or baseline) also scores a run **one block at a time**:
:meth:`MonitorBase.stepper` returns a :class:`Stepper`, O(1) time and memory per block, whose
numbers are those of :meth:`MonitorBase.score` on the whole run (live scoring,
:mod:`stabilitybench.analysis.online`). A :class:`DetectorSpec` describes one detector for the
registry :mod:`stabilitybench.analysis.detectors` (it lives here, beside the interface, so that a
detector's own module can declare its spec without importing the registry).
"""

from __future__ import annotations

import importlib
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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


def window_mean(values: Sequence[float]) -> float:
    """:func:`rolling_mean` at the newest entry of its window ``values``: NaN ignored, ``+inf`` wins."""
    total, n = 0.0, 0
    for v in values:
        if v == math.inf:
            return math.inf
        if math.isfinite(v):
            total += v
            n += 1
    return total / n if n else math.nan


class Stepper:
    """A fitted detector's score of one run, one block at a time: ``stepper(x) -> score``.

    ``x`` (shape ``(p,)``) is one block's raw features, as a row of the ``X`` given to
    :meth:`MonitorBase.score`: standardised with the fitted mean/SD (missing values at 0), a row
    holding ``+-inf`` scores ``nll = +inf``, and the score is the mean of the last ``smooth`` finite
    ``nll`` (``+inf`` if one of them is). ``nll_step(z) -> float`` is the detector's own one-step
    ``nll`` of a standardised block (it advances the detector's state). The scores equal
    ``score(X)`` row by row up to floating-point round-off; O(1) time and memory per block.
    """

    def __init__(self, detector: MonitorBase, nll_step: Callable[[np.ndarray], float]) -> None:
        detector._check_fitted()
        self._mean = np.asarray(detector.mean_, float)
        self._scale = np.asarray(detector.scale_, float)
        self._nll_step = nll_step
        self._smooth = max(1, int(detector.smooth))
        self._recent: deque[float] = deque(maxlen=self._smooth)

    def __call__(self, x: np.ndarray) -> float:
        x = np.asarray(x, dtype=float).reshape(-1)
        with np.errstate(invalid="ignore"):
            z = (x - self._mean) / self._scale
        z = np.where(np.isfinite(z), z, 0.0)
        nll = float(self._nll_step(z))
        if np.isinf(x).any():
            nll = math.inf
        if self._smooth == 1:  # rolling_mean with a window of 1 is the identity
            return nll
        self._recent.append(nll)
        return window_mean(self._recent)


class MonitorBase:
    """Standardisation, smoothing and calibration shared by the monitors and the baselines.

    Subclasses implement ``_fit(list of (T_i, p) standardised arrays)``,
    ``_nll((T, p) standardised array) -> (T,)`` and its one-block form ``_nll_stepper() ->
    (z (p,) -> nll)`` (what :meth:`stepper` runs live).
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

    def stepper(self) -> Stepper:
        """A fresh :class:`Stepper` for one run: ``stepper(x)`` with one block's raw features ``x (p,)``
        returns that block's score, the number :meth:`score` gives for the same row of the whole run."""
        self._check_fitted()
        return Stepper(self, self._nll_stepper())

    def fit_summary(self) -> dict[str, Any]:
        """What the fit found that a report quotes beside the threshold (e.g. the Kalman latent size); ``{}``."""
        return {}

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

    def _nll_stepper(self) -> Callable[[np.ndarray], float]:  # pragma: no cover - abstract
        """``step(z (p,)) -> nll`` of one standardised block, advancing the run's state (``_nll`` one row at a time)."""
        raise NotImplementedError(f"{type(self).__name__} has no one-block step (_nll_stepper)")


#: The families of the registry: fitted models of normal telemetry, the simpler detectors they are compared
#: with, and the references of question (b) (scored in :mod:`stabilitybench.analysis.questions`, not built here).
FAMILIES = ("monitor", "baseline", "reference")


@dataclass(frozen=True)
class DetectorSpec:
    """One detector of the registry :data:`stabilitybench.analysis.detectors.DETECTORS`.

    * ``name``: the key in tables (``detector`` column), ``cfg.detectors`` and monitor files (``kind``);
    * ``label``: how reports name it;
    * ``family``: ``monitor`` | ``baseline`` | ``reference``;
    * ``impl``: the class, or ``"module:Class"`` imported on first use (the GRU needs torch); ``None``
      for a reference; :attr:`cls` resolves it;
    * ``build(features, cfg) -> detector``: a fresh, unfitted detector reading the columns ``features``
      with the settings of an :class:`~stabilitybench.analysis.early_warning.EarlyWarningConfig`;
    * ``saveable``: it saves to a monitor file and runs live (causal, with ``to_arrays``/``from_arrays``);
    * ``needs_torch``: left out of the default detectors where torch is not installed;
    * ``echo``: also evaluated with the intervention-echo columns, as ``<name>+echo``;
    * ``fit_order``: parallel fits are dispatched in this order (the slowest first), ties in registry order.
    """

    name: str
    label: str
    family: str
    impl: type[MonitorBase] | str | None = None
    build: Callable[[list[str], Any], MonitorBase] | None = None
    saveable: bool = False
    needs_torch: bool = False
    echo: bool = False
    fit_order: int = 2

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"detector {self.name!r}: family {self.family!r} is not one of {', '.join(FAMILIES)}")
        if self.family != "reference" and (self.impl is None or self.build is None):
            raise ValueError(f"detector {self.name!r}: a {self.family} needs impl and build")

    @property
    def cls(self) -> type[MonitorBase]:
        """The detector class (imported now if ``impl`` names it)."""
        if self.impl is None:
            raise TypeError(f"{self.name!r} is a reference: it has no detector class")
        if isinstance(self.impl, str):
            module, _, name = self.impl.partition(":")
            return getattr(importlib.import_module(module), name)
        return self.impl

    def is_class_of(self, detector: object) -> bool:
        """Whether ``detector`` is an instance of exactly this spec's class (without importing a lazy one)."""
        if self.impl is None:
            return False
        if isinstance(self.impl, str):
            t = type(detector)
            return f"{t.__module__}:{t.__qualname__}" == self.impl
        return type(detector) is self.impl
