"""Dose-response fit and adaptive design (analysis.dose_response), on simulated responders with known ED50."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stabilitybench.analysis.dose_response import (
    DoseResponseModel,
    DoseStatus,
    fieller_ratio_ci,
    log_grid,
    next_doses,
)
from stabilitybench.analysis.errors import InsufficientDataError, NotFittedError


def _simulate(rng: np.random.Generator, ed50: float, slope: float, doses: list[float], seeds: int):
    """A logistic responder on log dose: P(collapse) = expit(slope * (log m - log ed50))."""
    m = np.repeat(np.asarray(doses, dtype=float), seeds)
    p = 1 / (1 + np.exp(-slope * (np.log(m) - math.log(ed50))))
    return m, rng.random(m.size) < p


def test_recovers_known_ed50_within_ci() -> None:
    rng = np.random.default_rng(0)
    m, y = _simulate(rng, ed50=7.0, slope=2.0, doses=log_grid(1, 50, 6), seeds=20)
    fit = DoseResponseModel().fit(m, y)
    assert fit.status_ is DoseStatus.OK
    ed = fit.effective_dose(0.5)
    assert ed.ci_low is not None and ed.ci_high is not None
    assert ed.ci_low < 7.0 < ed.ci_high
    assert ed.ci_low < ed.value < ed.ci_high
    # ED20 < ED50 < ED80 for an increasing responder
    assert fit.effective_dose(0.2).value < ed.value < fit.effective_dose(0.8).value


def test_ed50_ci_covers_at_nominal_rate() -> None:
    """Fieller's 95% CI of ED50 covers the true value in ~95% of 300 simulated studies."""
    rng = np.random.default_rng(1)
    covered = total = 0
    for _ in range(300):
        m, y = _simulate(rng, ed50=3.0, slope=1.5, doses=log_grid(0.5, 20, 5), seeds=16)
        fit = DoseResponseModel().fit(m, y)
        if fit.status_ is not DoseStatus.OK:
            continue
        ed = fit.effective_dose(0.5)
        lo = ed.ci_low if ed.ci_low is not None else 0.0
        hi = ed.ci_high if ed.ci_high is not None else math.inf
        covered += lo <= 3.0 <= hi
        total += 1
    assert total >= 280
    assert 0.90 <= covered / total <= 0.99


def test_matches_closed_form_on_noiseless_proportions() -> None:
    """With outcomes whose proportions lie exactly on a logistic curve, the MLE is that curve."""
    a, b = -2.0, 1.5
    doses = [1.0, 2.0, 4.0, 8.0]
    m, y = [], []
    for d in doses:
        p = 1 / (1 + math.exp(-(a + b * math.log(d))))
        k = round(p * 1000)
        m += [d] * 1000
        y += [True] * k + [False] * (1000 - k)
    fit = DoseResponseModel().fit(m, y)
    assert fit.params_[0] == pytest.approx(a, abs=0.02)
    assert fit.params_[1] == pytest.approx(b, abs=0.02)
    assert fit.effective_dose(0.5).value == pytest.approx(math.exp(-a / b), rel=0.02)


def test_statuses_for_degenerate_outcomes() -> None:
    none = DoseResponseModel().fit([1, 2, 4], [False, False, False])
    assert none.status_ is DoseStatus.NO_COLLAPSE
    assert none.summary()["ed50"] is None and none.summary()["m_max"] == 4.0
    assert DoseResponseModel().fit([1, 2, 4], [True, True, True]).status_ is DoseStatus.ALL_COLLAPSE
    sep = DoseResponseModel().fit([1, 1, 2, 4, 4], [False, False, False, True, True])
    assert sep.status_ is DoseStatus.SEPARATED and sep.bracket_ == (2.0, 4.0)
    dec = DoseResponseModel().fit([1, 1, 1, 1, 8, 8, 8, 8], [True, True, True, False, False, True, False, False])
    assert dec.status_ is DoseStatus.NOT_INCREASING
    assert dec.effective_dose(0.5).value is None


def test_bad_input_and_unfitted() -> None:
    with pytest.raises(InsufficientDataError):
        DoseResponseModel().fit([], [])
    with pytest.raises(InsufficientDataError):
        DoseResponseModel().fit([0.0, 1.0], [False, True])
    with pytest.raises(NotFittedError):
        DoseResponseModel().effective_dose(0.5)


def test_fieller_is_unbounded_for_an_insignificant_slope() -> None:
    assert fieller_ratio_ci(1.0, 0.1, 0.01, 1.0, 0.0) == (None, None)
    lo, hi = fieller_ratio_ci(2.0, 1.0, 0.0, 0.0, 0.0)  # no uncertainty: the point itself
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)


def test_adaptive_design_converges_near_ed50() -> None:
    """Three rounds of next_doses on a simulated responder put the doses around the true ED50."""
    rng = np.random.default_rng(3)
    true_ed50, slope = 12.0, 2.5
    m: list[float] = []
    y: list[bool] = []
    for _ in range(4):
        doses = next_doses(m, y, m_min=0.5, m_max=200.0, k=3)
        assert doses, "the design stopped although the responder has an ED50 in range"
        mm, yy = _simulate(rng, true_ed50, slope, doses, seeds=8)
        m += mm.tolist()
        y += yy.tolist()
    fit = DoseResponseModel().fit(m, y)
    ed = fit.effective_dose(0.5)
    assert fit.status_ is DoseStatus.OK
    assert ed.ci_low < true_ed50 < ed.ci_high
    last = next_doses(m, y, m_min=0.5, m_max=200.0, k=3)
    assert min(last) < true_ed50 < max(last)


def test_design_stops_without_ed50_below_m_max() -> None:
    assert next_doses([], [], 1, 100, k=3) == [1.0, 10.0, 100.0]
    assert next_doses([1, 10, 100], [False, False, False], 1, 100) == []
    up = next_doses([1, 10], [False, False], 1, 100)
    assert up and min(up) > 10 and max(up) == 100.0
    assert next_doses([1, 10], [True, True], 1, 100) == []
