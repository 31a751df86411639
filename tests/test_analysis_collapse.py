"""Collapse rule on synthetic curves whose answer is known by hand."""

from __future__ import annotations

import numpy as np
import polars as pl

from analysis.collapse import CollapseConfig, collapse_group, detect, envelope, first_collapse, smooth

CFG = CollapseConfig(smooth_frac=0.01, drop=0.5, spread_k=2.0, recovery_frac=0.1, min_confirm=0.25, edge_frac=0.05)
T = 1000
STEPS = np.arange(T)


def control(offset: float = 0.0) -> np.ndarray:
    """A control that learns linearly from -300 to -100 (gain 200): negative returns throughout."""
    return np.linspace(-300, -100, T) + offset


def smoothed(curve: np.ndarray) -> np.ndarray:
    return smooth(curve, max(1, round(CFG.smooth_frac * T)))


def test_smooth_is_causal_mean_with_forward_fill() -> None:
    x = np.array([np.nan, 1.0, np.nan, 3.0, np.nan])
    np.testing.assert_allclose(smooth(x, 2), [np.nan, 1.0, 1.0, 2.0, 3.0])


def test_envelope_line_is_half_the_gain_below_the_mean_with_identical_controls() -> None:
    env = envelope([smoothed(control()), smoothed(control())], T, CFG)
    # identical controls: sd = 0, so the margin is drop * gain; the gain is ~200 (edges of the smoothed mean)
    assert 190 < env.gain < 200
    np.testing.assert_allclose(env.mean - env.line, 0.5 * env.gain)


def test_drop_that_stays_is_a_collapse_at_the_crossing() -> None:
    run = control().copy()
    run[500:] = -400.0  # falls to -400 at update 500 and stays; line at t=500 is about -200 - 100 = -300
    out = detect(STEPS, run, 300, [smoothed(control(-5)), smoothed(control(5))], None, CFG)
    assert out["collapsed"] and not out["censored"] and out["cause"] == "performance"
    # smoothing window 10 updates: the smoothed curve crosses -300ish within the window after 500
    assert 500 <= out["collapse_step"] <= 510
    assert out["collapse_time"] == out["collapse_step"] - 300
    assert out["final_performance"] == -400.0


def test_dip_that_recovers_within_the_window_is_not_a_collapse() -> None:
    run = control().copy()
    run[500:550] = -450.0  # 50 updates below, recovery window is 100
    out = detect(STEPS, run, 300, [smoothed(control(-5)), smoothed(control(5))], None, CFG)
    assert not out["collapsed"] and out["censored"]
    assert out["collapse_step"] is None
    assert out["collapse_time"] == T - 1 - 300  # censored at the last update


def test_small_drop_within_margin_is_not_a_collapse() -> None:
    run = control() - 60.0  # 60 below the mean; margin = max(0.5 * 200, 2 * sd=2*7.07) = ~100
    out = detect(STEPS, run, 300, [smoothed(control(-5)), smoothed(control(5))], None, CFG)
    assert not out["collapsed"]


def test_crossing_before_onset_does_not_count() -> None:
    run = control().copy()
    run[100:200] = -600.0  # a dip before onset (recovers), then fine
    out = detect(STEPS, run, 300, [smoothed(control())], None, CFG)
    assert not out["collapsed"]


def test_nonfinite_is_an_immediate_collapse() -> None:
    run = control().copy()
    out = detect(STEPS, run, 300, [smoothed(control())], 420, CFG)
    assert out["collapsed"] and out["collapse_step"] == 420 and out["cause"] == "nonfinite"
    assert out["collapse_time"] == 120


def test_crossing_too_close_to_the_end_cannot_be_confirmed() -> None:
    run = control().copy()
    run[990:] = -900.0  # 10 updates left < min_confirm * W = 25
    assert not detect(STEPS, run, 300, [smoothed(control())], None, CFG)["collapsed"]
    run[960:] = -900.0  # 40 updates left, below until the end: confirmed
    out = detect(STEPS, run, 300, [smoothed(control())], None, CFG)
    assert out["collapsed"] and 960 <= out["collapse_step"] <= 970


def test_first_collapse_needs_the_full_window() -> None:
    s = np.r_[np.zeros(100), -10 * np.ones(30), np.zeros(870)]
    assert first_collapse(s, np.full(1000, -5.0), 0, CFG) is None  # 30 < W = 100
    s = np.r_[np.zeros(100), -10 * np.ones(900)]
    assert first_collapse(s, np.full(1000, -5.0), 0, CFG) == 100


def test_controls_are_judged_leave_one_out() -> None:
    runs = pl.DataFrame({"run_id": ["a", "b", "c", "p"], "onset_step": [300] * 4})
    perf = {"a": (STEPS, control(-3)), "b": (STEPS, control(3)), "c": (STEPS, control(0)),
            "p": (STEPS, np.r_[control()[:400], np.full(600, -500.0)])}
    out = collapse_group(runs, perf, {}, np.array([True, True, True, False]), CFG)
    got = dict(zip(out["run_id"], out["collapsed"], strict=True))
    assert got == {"a": False, "b": False, "c": False, "p": True}
    assert out.filter(pl.col("run_id") == "a")["n_controls"][0] == 2
    assert out.filter(pl.col("run_id") == "p")["n_controls"][0] == 3


def test_one_flat_control_gives_no_assessable_line() -> None:
    env = envelope([np.full(T, 5.0)], T, CFG)
    assert np.isnan(env.line).all() and "not assessable" in env.note
