"""Split-conformal alarm thresholds and calibrated exceedance p-values.

A detector's run-level score (its maximum over an evaluation window) on ``n`` held-out
unperturbed *calibration* runs defines, for a new score ``s``, the conformal p-value::

    p(s) = (1 + #{calibration scores >= s}) / (n + 1)

If the new run is exchangeable with the calibration runs (an unperturbed run of the same
group, scored over the same window), ``P(p <= alpha) <= floor(alpha (n + 1)) / (n + 1) <= alpha``:
this is the **guaranteed FPR bound**, with equality for continuous scores. An alarm is
``p <= alpha``. The smallest attainable p-value is ``1 / (n + 1)``, so the target ``alpha`` is
reachable only when ``n >= 1/alpha - 1`` (19 runs for 5%): with fewer, no FPR claim at
``alpha`` is made (``claim_ok_`` is False) and alarms are raised at the smallest attainable
level ``1 / (n + 1)`` instead, whose bound is reported as it is.

p-values put every detector, fold and group on one scale, so scores are pooled across folds
or groups only as p-values (``-log10 p`` for rankings), never as raw scores of separately
fitted models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from stabilitybench.analysis.errors import NotFittedError


def min_calibration_runs(alpha: float) -> int:
    """Fewest calibration runs for which a conformal p-value can reach ``alpha`` (19 for 0.05)."""
    return max(1, math.ceil(1 / alpha - 1 - 1e-9))


class ConformalCalibrator:
    """Conformal calibration of run-level scores (sklearn style: ``fit`` returns self, fitted attrs end in ``_``).

    ``alpha``: target false-positive rate. After :meth:`fit`: ``n_`` calibration runs,
    ``alpha_used_`` (``alpha``, or ``1/(n+1)`` when ``alpha`` is unreachable), ``threshold_`` (alarm
    when the score exceeds it), ``guaranteed_fpr_`` (the bound at ``alpha_used_``) and ``claim_ok_``.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        self.alpha = alpha

    def fit(self, calibration_scores: Sequence[float] | np.ndarray) -> ConformalCalibrator:
        """Calibrate on run-level scores of held-out unperturbed runs (shape ``(n,)``; NaN ignored)."""
        a = np.asarray(calibration_scores, dtype=float)
        a = np.sort(a[~np.isnan(a)])
        self.scores_ = a
        self.n_ = int(a.size)
        self.claim_ok_ = self.n_ >= min_calibration_runs(self.alpha)
        self.alpha_used_ = self.alpha if self.claim_ok_ else (1.0 / (self.n_ + 1) if self.n_ else 0.0)
        self.guaranteed_fpr_ = math.floor(self.alpha_used_ * (self.n_ + 1) + 1e-9) / (self.n_ + 1)
        # p(s) <= alpha_used  <=>  #{cal >= s} <= k - 1 with k = floor(alpha_used (n+1))  <=>  s > a[n - k]
        k = math.floor(self.alpha_used_ * (self.n_ + 1) + 1e-9)
        self.threshold_ = float(a[self.n_ - k]) if 1 <= k <= self.n_ else float("inf")
        return self

    def p_value(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """Conformal exceedance p-values of ``scores`` (any shape); NaN stays NaN, +inf gets ``1/(n+1)``."""
        if not hasattr(self, "scores_"):
            raise NotFittedError("ConformalCalibrator is not fitted: call fit() first")
        s = np.asarray(scores, dtype=float)
        ge = self.n_ - np.searchsorted(self.scores_, s, side="left")  # #{cal >= s}
        p = (1.0 + ge) / (self.n_ + 1.0)
        return np.where(np.isnan(s), np.nan, p)

    def alarms(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """``p <= alpha_used_`` (NaN scores never alarm)."""
        p = self.p_value(scores)
        with np.errstate(invalid="ignore"):
            return p <= self.alpha_used_ + 1e-12

    def summary(self) -> dict[str, Any]:
        """What a summary entry needs: ``n_calibration``, the levels and the guaranteed bound."""
        return {"n_calibration": self.n_, "target_fpr": self.alpha, "alpha_used": self.alpha_used_,
                "guaranteed_fpr_bound": self.guaranteed_fpr_, "claim_ok": self.claim_ok_,
                "min_calibration_runs": min_calibration_runs(self.alpha)}
