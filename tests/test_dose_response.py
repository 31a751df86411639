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


def test_one_mixed_dose_is_quasi_separated_not_ok() -> None:
    """All survive below 4, all collapse above, both outcomes at 4: the MLE does not exist (a plain GLM returns a
    slope near 30 with an SE in the tens of thousands); the status says so and no ED is given."""
    m = [1, 1, 2, 2, 4, 4, 8, 8]
    y = [False, False, False, False, False, True, True, True]
    fit = DoseResponseModel().fit(m, y)
    assert fit.status_ is DoseStatus.QUASI_SEPARATED
    assert fit.mixed_dose_ == 4.0 and fit.bracket_ == (2.0, 8.0)
    s = fit.summary()
    assert s["status"] == "quasi_separated" and s["ed50"] is None and s["mixed_dose"] == 4.0
    # the mixed dose at the edge of the doses tried: the bracket closes on it
    edge = DoseResponseModel().fit([1, 1, 2, 2], [False, True, True, True])
    assert edge.status_ is DoseStatus.QUASI_SEPARATED and edge.bracket_ == (1.0, 2.0)
    # next stage: the mixed dose itself and doses on either side of it, inside the bracket
    doses = next_doses(m, y, m_min=1, m_max=100, k=3)
    assert 4.0 in doses and min(doses) < 4.0 < max(doses)
    assert 2.0 < min(doses) and max(doses) < 8.0


def test_a_mixed_top_dose_below_half_plans_past_m_max() -> None:
    """The Swimmer lr_regime calibration: nothing collapsed up to x27, 2 of 8 at x30 = m_max. The ED50 lies above
    x30, so the next doses must go past it (up to the cap, 2 x m_max); they stayed at or below x30 before."""
    m = [3, 3, 6.46, 6.46, 13.9, 13.9, 20.4, 20.4, 24.8, 24.8, 27.25, 27.25] + [30.0] * 8
    y = [False] * 12 + [True, True] + [False] * 6
    assert DoseResponseModel().fit(m, y).status_ is DoseStatus.QUASI_SEPARATED
    doses = next_doses(m, y, m_min=3, m_max=30, k=3)
    assert max(doses) > 30 and max(doses) <= 60 and 30.0 in doses
    # at or above half collapsed at the top dose the ED50 is inside: nothing past m_max
    y_half = [False] * 12 + [True] * 4 + [False] * 4
    assert max(next_doses(m, y_half, m_min=3, m_max=30, k=3)) <= 30
    # mirrored: a mixed bottom dose with most collapsed plans below m_min
    m_low, y_low = [1.0] * 8 + [2, 2, 4, 4], [True] * 6 + [False] * 2 + [True] * 4
    assert DoseResponseModel().fit(m_low, y_low).status_ is DoseStatus.QUASI_SEPARATED
    assert min(next_doses(m_low, y_low, m_min=1, m_max=10, k=3)) < 1.0


def test_an_ok_fit_past_m_max_plans_where_its_ed50_is() -> None:
    """The same calibration one stage on: 2 of 16 at x30 = m_max, 1 of 2 at x45. The fit is ok with its ED50 near
    x43; clipping ED20..ED80 to [m_min, m_max] sent every next dose back to x30. Now they span the doses tried."""
    m = [3, 3, 6.46, 6.46, 13.9, 13.9, 20.4, 20.4, 24.8, 24.8, 27.25, 27.25, 28.6, 28.6] + [30.0] * 16 + [45, 45]
    y = [False] * 14 + [True, True] + [False] * 14 + [True, False]
    fit = DoseResponseModel().fit(m, y)
    assert fit.status_ is DoseStatus.OK and fit.effective_dose(0.5).value > 30
    doses = next_doses(m, y, m_min=3, m_max=30, k=3)
    assert len(doses) == 3 and min(doses) > 30 and max(doses) <= 45


def _extrapolated_above() -> tuple[list[float], list[bool]]:
    """Collapses rise with dose but stay under half at the largest dose tried (6 of 20 at m = 1)."""
    m = [0.05] * 20 + [0.1357] * 20 + [0.3684] * 20 + [1.0] * 20
    y = [False] * 20 + [True] + [False] * 19 + [True] * 2 + [False] * 18 + [True] * 6 + [False] * 14
    return m, y


def test_ed50_outside_the_doses_tried_is_extrapolated() -> None:
    m, y = _extrapolated_above()
    fit = DoseResponseModel().fit(m, y)
    assert fit.status_ is DoseStatus.EXTRAPOLATED and fit.extrapolation_ == "above"
    s = fit.summary()
    assert s["status"] == "extrapolated" and s["ed50"] > s["m_max"] == 1.0
    # the same rule below the smallest dose tried: most runs collapse already at the smallest dose
    low = DoseResponseModel().fit([10.0] * 20 + [20.0] * 20, [True] * 14 + [False] * 6 + [True] * 18 + [False] * 2)
    assert low.status_ is DoseStatus.EXTRAPOLATED and low.extrapolation_ == "below"
    assert low.effective_dose(0.5).value < 10.0
    # a clean curve with its ED50 inside the range stays ok
    rng = np.random.default_rng(5)
    mm, yy = _simulate(rng, ed50=4.0, slope=2.5, doses=log_grid(1, 16, 5), seeds=20)
    assert DoseResponseModel().fit(mm, yy).status_ is DoseStatus.OK


def test_next_doses_go_beyond_m_max_up_to_the_cap_for_an_extrapolated_ed50() -> None:
    m, y = _extrapolated_above()
    doses = next_doses(m, y, m_min=0.05, m_max=1.0, k=3)
    assert len(doses) == 3 and min(doses) > 1.0
    assert max(doses) == pytest.approx(2.0)  # the default cap: EXTRAPOLATION_FACTOR x m_max
    wide = next_doses(m, y, m_min=0.05, m_max=1.0, k=3, m_cap=50.0)
    assert min(wide) > 1.0 and max(wide) > 2.0 and max(wide) <= 50.0
    # the cap reached: nothing left to try (the ED50 lies beyond it)
    capped = [*m, *[2.0] * 4]
    assert next_doses(capped, [*y, False, False, True, False], m_min=0.05, m_max=1.0, k=3, m_cap=2.0) == []
    # an ED50 below the smallest dose tried: doses under it, down to the floor
    below = next_doses([10.0] * 20 + [20.0] * 20, [True] * 14 + [False] * 6 + [True] * 18 + [False] * 2,
                       m_min=10.0, m_max=100.0, k=3)
    assert below and max(below) < 10.0 and min(below) >= 5.0
