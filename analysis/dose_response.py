"""Dose-response of collapse: a logistic fit on log magnitude, ED50 with its CI, and an adaptive design.

The powered corpus places each perturbation kind at its ED50, the magnitude at which about half the
seeds collapse, so that the outcome varies *within* a configuration (DESIGN.md, "the paper's claims").
This module holds the statistics of that dose finding; it runs nothing. ``stabilitybench calibrate``
(or a notebook) feeds it ``(magnitude, collapsed)`` pairs decided by the analysis collapse rule.

Model
-----
``P(collapse | m) = expit(a + b log m)``, fitted by maximum likelihood with statsmodels'
``GLM(family=Binomial())``. The dose with collapse probability ``p`` is

    ED_p = exp((logit(p) - a) / b),

a ratio of normal estimates, so its CI comes from **Fieller's theorem** on ``(logit(p) - a) / b``
(exact for the ratio under asymptotic normality of ``(a, b)``, and unbounded when the slope is not
significantly positive: then the CI is reported as unbounded instead of a misleading delta-method
interval).

Outcomes the fit cannot support are statuses, not errors (:class:`DoseStatus`):

* ``no_collapse``: no run collapsed up to the largest magnitude tried. Reported as
  "no ED50 below m_max": a finding about the kind, not a failure.
* ``all_collapse``: every run collapsed, down to the smallest magnitude tried ("ED50 below m_min").
* ``separated``: the outcomes are perfectly separated by magnitude (a monotone likelihood). The MLE
  does not exist; the ED50 is only bracketed by the largest surviving and smallest collapsing dose.
* ``quasi_separated``: quasi-complete separation: every run below one dose survived, every run above it
  collapsed, and that one *mixed dose* has both outcomes. The MLE still does not exist (the fitted slope
  runs off, e.g. 19 with an unbounded CI); the ED50 is only bracketed by the neighbouring doses tried.
* ``extrapolated``: the fit exists but its ED50 lies outside the magnitudes tried ``[m_min, m_max]``:
  the ED50 (reported, with its CI) is an extrapolation of the logistic form, not a calibrated dose.
* ``not_increasing``: the fitted slope is not positive: the kind's collapse does not grow with its
  magnitude over the range tried.

Only ``ok`` is a calibrated curve; :func:`next_doses` plans the next stage from every other status.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
import statsmodels.api as sm
from scipy import stats as sps

from stabilitybench.analysis.errors import InsufficientDataError, NotFittedError


class DoseStatus(str, Enum):
    """What a dose-response fit could establish."""

    OK = "ok"
    NO_COLLAPSE = "no_collapse"
    ALL_COLLAPSE = "all_collapse"
    SEPARATED = "separated"
    QUASI_SEPARATED = "quasi_separated"
    EXTRAPOLATED = "extrapolated"
    NOT_INCREASING = "not_increasing"


#: How far beyond the design's range :func:`next_doses` may go for an ``extrapolated`` ED50 when no explicit
#: ``m_cap`` / ``m_floor`` is given: up to ``EXTRAPOLATION_FACTOR x m_max`` (down to ``m_min / EXTRAPOLATION_FACTOR``).
EXTRAPOLATION_FACTOR = 2.0


@dataclass(frozen=True)
class EffectiveDose:
    """ED_p: the magnitude at which a fraction ``p`` of runs collapse, with a ``1 - alpha`` CI.

    ``ci_low``/``ci_high`` are ``None`` where Fieller's interval is unbounded on that side.
    """

    p: float
    value: float | None
    ci_low: float | None
    ci_high: float | None


def fieller_ratio_ci(
    num: float, den: float, var_num: float, var_den: float, cov: float, alpha: float = 0.05
) -> tuple[float | None, float | None]:
    """Fieller's ``1 - alpha`` CI of ``num / den`` for jointly normal estimates.

    Returns ``(None, None)`` when the denominator is not significantly different from zero
    (``den² / var_den <= z²``): the confidence set is then unbounded (or the whole line).
    """
    z2 = float(sps.norm.ppf(1 - alpha / 2)) ** 2
    a = den * den - z2 * var_den
    if a <= 0:
        return None, None
    b = num * den - z2 * cov
    c = num * num - z2 * var_num
    disc = b * b - a * c
    if disc < 0:  # cannot happen when a > 0 and the covariance is positive semi-definite
        return None, None
    root = math.sqrt(disc)
    return (b - root) / a, (b + root) / a


class DoseResponseModel:
    """Logistic dose-response on log magnitude (sklearn/lifelines style: ``fit`` returns self).

    Parameters
    ----------
    alpha:
        CI level is ``1 - alpha``.

    Fitted attributes
    -----------------
    status_: :class:`DoseStatus`
    params_: ``(a, b)`` intercept and slope on ``log(magnitude)`` (NaN unless ``status_`` is OK,
        EXTRAPOLATED or NOT_INCREASING)
    cov_: 2x2 covariance of ``params_``
    n_runs_, n_collapsed_: counts
    m_min_, m_max_: the magnitude range tried
    bracket_: separated: ``(largest magnitude with a survivor, smallest magnitude with a collapse)``;
        quasi-separated: ``(largest dose tried below the mixed dose, smallest dose tried above it)`` (the
        mixed dose itself where it is the smallest / largest dose tried); else ``None``
    mixed_dose_: the one dose with both outcomes under quasi-separation, else ``None``
    extrapolation_: ``"above"`` / ``"below"`` the doses tried when ``status_`` is EXTRAPOLATED, else ``None``
    """

    def __init__(self, alpha: float = 0.05) -> None:
        self.alpha = alpha

    def fit(self, magnitude: Sequence[float] | np.ndarray, collapsed: Sequence[bool] | np.ndarray) -> DoseResponseModel:
        """Fit on one kind's runs. Shapes: ``magnitude`` ``(n,)`` > 0, ``collapsed`` ``(n,)`` bool."""
        m = np.asarray(magnitude, dtype=float)
        y = np.asarray(collapsed, dtype=float)
        if m.shape != y.shape or m.ndim != 1:
            raise InsufficientDataError(f"magnitude and collapsed must be 1-D, equal length: {m.shape}, {y.shape}")
        if m.size == 0:
            raise InsufficientDataError("no runs to fit a dose-response on")
        if not np.all(np.isfinite(m)) or np.any(m <= 0):
            raise InsufficientDataError("magnitudes must be finite and > 0 for a fit on log magnitude")
        self.n_runs_, self.n_collapsed_ = int(m.size), int(y.sum())
        self.m_min_, self.m_max_ = float(m.min()), float(m.max())
        self.params_ = (math.nan, math.nan)
        self.cov_ = np.full((2, 2), np.nan)
        self.bracket_: tuple[float, float] | None = None
        self.mixed_dose_: float | None = None
        self.extrapolation_: str | None = None
        if self.n_collapsed_ == 0:
            self.status_ = DoseStatus.NO_COLLAPSE
            return self
        if self.n_collapsed_ == self.n_runs_:
            self.status_ = DoseStatus.ALL_COLLAPSE
            return self
        top_survivor, low_collapse = float(m[y == 0].max()), float(m[y == 1].min())
        if top_survivor < low_collapse:  # complete separation: the MLE slope is +inf
            self.status_ = DoseStatus.SEPARATED
            self.bracket_ = (top_survivor, low_collapse)
            return self
        if top_survivor == low_collapse:  # quasi-complete separation at one mixed dose: the MLE slope is +inf too
            c = top_survivor
            below, above = m[m < c], m[m > c]
            self.status_ = DoseStatus.QUASI_SEPARATED
            self.mixed_dose_ = c
            self.bracket_ = (float(below.max()) if below.size else c, float(above.min()) if above.size else c)
            return self
        x = sm.add_constant(np.log(m), has_constant="add")
        res = sm.GLM(y, x, family=sm.families.Binomial()).fit()
        self.params_ = (float(res.params[0]), float(res.params[1]))
        self.cov_ = np.asarray(res.cov_params(), dtype=float)
        if self.params_[1] <= 0:
            self.status_ = DoseStatus.NOT_INCREASING
            return self
        ed50 = math.exp(-self.params_[0] / self.params_[1])
        self.extrapolation_ = "above" if ed50 > self.m_max_ else "below" if ed50 < self.m_min_ else None
        self.status_ = DoseStatus.OK if self.extrapolation_ is None else DoseStatus.EXTRAPOLATED
        return self

    def _check(self) -> None:
        if not hasattr(self, "status_"):
            raise NotFittedError("DoseResponseModel: call fit() first")

    def predict_proba(self, magnitude: Sequence[float] | np.ndarray) -> np.ndarray:
        """Fitted collapse probability at each magnitude, shape ``(k,)`` (NaN without a fitted slope)."""
        self._check()
        a, b = self.params_
        return 1.0 / (1.0 + np.exp(-(a + b * np.log(np.asarray(magnitude, dtype=float)))))

    def effective_dose(self, p: float) -> EffectiveDose:
        """ED_p with Fieller's CI; value ``None`` unless ``status_`` is OK or EXTRAPOLATED (then an extrapolation
        of the fitted curve: check ``status_`` before using it as a dose)."""
        self._check()
        if not 0 < p < 1:
            raise ValueError(f"p must be in (0, 1), got {p}")
        if self.status_ not in (DoseStatus.OK, DoseStatus.EXTRAPOLATED):
            return EffectiveDose(p, None, None, None)
        a, b = self.params_
        num = math.log(p / (1 - p)) - a
        lo, hi = fieller_ratio_ci(num, b, self.cov_[0, 0], self.cov_[1, 1], -self.cov_[0, 1], self.alpha)
        return EffectiveDose(
            p, math.exp(num / b), None if lo is None else math.exp(lo), None if hi is None else math.exp(hi)
        )

    def summary(self) -> dict[str, object]:
        """JSON/TOML-ready summary: status, counts, range, ED20/ED50/ED80 with CIs, bracket; ``mixed_dose``
        (quasi-separated) and ``extrapolation`` (``"above"``/``"below"`` the doses tried) where they apply."""
        self._check()
        out: dict[str, object] = {
            "status": self.status_.value,
            "n_runs": self.n_runs_,
            "n_collapsed": self.n_collapsed_,
            "m_min": self.m_min_,
            "m_max": self.m_max_,
            "alpha": self.alpha,
        }
        for p in (0.2, 0.5, 0.8):
            ed = self.effective_dose(p)
            tag = f"ed{round(p * 100)}"
            out[tag], out[f"{tag}_ci_low"], out[f"{tag}_ci_high"] = ed.value, ed.ci_low, ed.ci_high
        if self.bracket_ is not None:
            out["bracket_low"], out["bracket_high"] = self.bracket_
        if self.mixed_dose_ is not None:
            out["mixed_dose"] = self.mixed_dose_
        if self.extrapolation_ is not None:
            out["extrapolation"] = self.extrapolation_
        return out


def log_grid(m_min: float, m_max: float, k: int) -> list[float]:
    """``k`` log-spaced magnitudes from ``m_min`` to ``m_max`` inclusive (4 significant digits)."""
    if not 0 < m_min <= m_max or k < 1:
        raise ValueError(f"need 0 < m_min <= m_max and k >= 1, got {m_min}, {m_max}, {k}")
    if k == 1 or m_min == m_max:
        return [float(f"{m_max:.4g}")]
    return [float(f"{v:.4g}") for v in np.geomspace(m_min, m_max, k)]


def next_doses(
    magnitude: Sequence[float] | np.ndarray,
    collapsed: Sequence[bool] | np.ndarray,
    m_min: float,
    m_max: float,
    k: int = 3,
    m_cap: float | None = None,
    m_floor: float | None = None,
) -> list[float]:
    """The magnitudes to try next in an adaptive dose-finding design.

    ``magnitude``/``collapsed``: shape ``(n,)``, the runs so far; ``[m_min, m_max]``: the design's range;
    ``m_cap``/``m_floor``: the furthest the design may go *beyond* that range when the fitted ED50 lies outside
    it (default ``EXTRAPOLATION_FACTOR x m_max`` and ``m_min / EXTRAPOLATION_FACTOR``).

    Stage 1 (no data) is a ``k``-point log grid over ``[m_min, m_max]``. After that, the doses follow
    the current fit:

    * fitted (OK): ED20, ED50 and ED80 (``k`` points from ED20 to ED80), clipped to the allowed range, which
      includes every dose already tried (a quasi-separated or extrapolated stage may have gone past ``m_max``);
    * extrapolated (ED50 above the largest dose tried): ``k`` points above the largest dose tried, up to the
      fitted ED80, bounded by ``m_max`` when the ED50 is inside the design's range and by ``m_cap`` when it is
      beyond ``m_max`` (``[]`` once the largest dose tried reaches that bound: the ED50 lies beyond the cap).
      Mirrored for an ED50 below the smallest dose tried (down to ED20, bounded by ``m_min`` / ``m_floor``);
    * separated: ``k`` log-spaced points inside the bracket, where the transition is;
    * quasi-separated: the mixed dose and points on either side of it, halfway (in log dose) to the
      neighbouring doses tried (or a factor 1.5 within the design's range where it has no neighbour; past ``m_max``,
      up to ``m_cap``, when the mixed dose is the largest tried and fewer than half collapsed there, the ED50 then
      lying above every dose tried; mirrored below ``m_min``);
    * no collapse yet: ``k`` points between the largest dose tried and ``m_max`` (``[]`` once ``m_max``
      has been tried: the kind has no ED50 below ``m_max``);
    * all collapsed: ``k`` points between ``m_min`` and the smallest dose tried (``[]`` once ``m_min``
      has been tried);
    * not increasing: the ``k``-point log grid again (more seeds over the whole range).
    """
    m = np.asarray(magnitude, dtype=float)
    if m.size == 0:
        return log_grid(m_min, m_max, k)
    cap = EXTRAPOLATION_FACTOR * m_max if m_cap is None else float(m_cap)
    floor = m_min / EXTRAPOLATION_FACTOR if m_floor is None else float(m_floor)
    fit = DoseResponseModel().fit(m, collapsed)
    s = fit.status_
    if s is DoseStatus.OK:
        lo, hi = fit.effective_dose(0.2).value, fit.effective_dose(0.8).value
        assert lo is not None and hi is not None
        # clipped to the design's range widened to the doses already tried (an earlier stage may have gone past it)
        r_lo, r_hi = min(m_min, float(m.min())), max(m_max, float(m.max()))
        lo, hi = min(max(lo, r_lo), r_hi), min(max(hi, r_lo), r_hi)
        return sorted(set(log_grid(lo, hi, k)))
    if s is DoseStatus.EXTRAPOLATED:
        return _beyond(fit, m_min, m_max, k, cap, floor)
    if s is DoseStatus.SEPARATED:
        assert fit.bracket_ is not None
        b_lo, b_hi = fit.bracket_
        inner = np.geomspace(b_lo, b_hi, k + 2)[1:-1]
        return [float(f"{v:.4g}") for v in inner]
    if s is DoseStatus.QUASI_SEPARATED:
        y = np.asarray(collapsed, dtype=float)
        return _around_mixed_dose(fit, m_min, m_max, k, float(y[m == fit.mixed_dose_].mean()), cap, floor)
    if s is DoseStatus.NO_COLLAPSE:
        top = float(m.max())
        return [] if top >= m_max else log_grid(min(top * 1.5, m_max), m_max, k)
    if s is DoseStatus.ALL_COLLAPSE:
        bottom = float(m.min())
        return [] if bottom <= m_min else log_grid(m_min, max(bottom / 1.5, m_min), k)
    return log_grid(m_min, m_max, k)


def _beyond(fit: DoseResponseModel, m_min: float, m_max: float, k: int, cap: float, floor: float) -> list[float]:
    """``k`` doses past the doses tried, towards an extrapolated ED50 (see :func:`next_doses`)."""
    ed50 = fit.effective_dose(0.5).value
    assert ed50 is not None
    if fit.extrapolation_ == "above":
        top = fit.m_max_
        bound = m_max if ed50 <= m_max else max(cap, m_max)
        far = fit.effective_dose(0.8).value or ed50
        hi = min(max(far, ed50), bound)
        if top >= bound or hi <= top:
            return []
        return sorted({v for v in log_grid(top, hi, k + 1)[1:] if v > top})
    bottom = fit.m_min_
    bound = m_min if ed50 >= m_min else min(floor, m_min)
    near = fit.effective_dose(0.2).value or ed50
    lo = max(min(near, ed50), bound)
    if bottom <= bound or lo >= bottom:
        return []
    return sorted({v for v in log_grid(lo, bottom, k + 1)[:-1] if v < bottom})


def _around_mixed_dose(fit: DoseResponseModel, m_min: float, m_max: float, k: int, rate: float = 0.5,
                       cap: float | None = None, floor: float | None = None) -> list[float]:
    """The mixed dose of a quasi-separated fit and ``k - 1`` doses bracketing it (see :func:`next_doses`).

    ``rate``: the collapse rate at the mixed dose. When the mixed dose is the largest dose tried and fewer than half
    collapsed there, the ED50 lies above every dose tried: the doses above go past ``m_max`` up to ``cap`` (as for an
    extrapolated fit), since staying at or below ``m_max`` could never bracket it. Mirrored below (``floor``).
    """
    assert fit.mixed_dose_ is not None and fit.bracket_ is not None
    c = fit.mixed_dose_
    lo, hi = fit.bracket_
    top = max(m_max, cap if cap is not None and rate < 0.5 else m_max)
    bottom = min(m_min, floor if floor is not None and rate > 0.5 else m_min)
    lo_edge = math.sqrt(lo * c) if lo < c else max(min(bottom, c), c / 1.5)
    hi_edge = math.sqrt(c * hi) if hi > c else min(max(top, c), c * 1.5)
    n_below = (k - 1) // 2
    n_above = k - 1 - n_below
    below = np.geomspace(lo_edge, c, n_below + 1)[:-1] if lo_edge < c else np.array([])
    above = np.geomspace(c, hi_edge, n_above + 1)[1:] if hi_edge > c else np.array([])
    return sorted({float(f"{v:.4g}") for v in (*below, c, *above)})
