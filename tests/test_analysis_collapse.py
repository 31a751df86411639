"""Collapse rule on synthetic curves whose answer is known by hand."""

from __future__ import annotations

import numpy as np
import polars as pl

from stabilitybench.analysis.collapse import CollapseConfig, collapse_group, detect, envelope, first_collapse, smooth

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
    assert out["collapsed"] and not out["censored"] and out["collapse_kind"] == "performance"
    # offline (centred, window 10) date: within half a window of the true drop at 500; the causal
    # crossing comes later and the online confirmation a whole window W = 100 after it
    assert 495 <= out["collapse_step"] <= 502
    # no episode returns: dated on performance, the smoothed date itself (as before the lag-free dates)
    assert out["collapse_date_source"] == "performance" and out["collapse_step_smoothed"] == out["collapse_step"]
    assert out["collapse_confirmed_step"] >= out["collapse_step"] + 100
    assert out["collapse_time"] == out["collapse_step"] - 300 == out["survival_time"]
    assert not out["transient"]
    assert out["final_performance"] == -400.0


def test_dip_that_recovers_within_the_window_is_not_a_collapse() -> None:
    run = control().copy()
    run[500:550] = -450.0  # 50 updates below, recovery window is 100
    out = detect(STEPS, run, 300, [smoothed(control(-5)), smoothed(control(5))], None, CFG)
    assert not out["collapsed"] and out["censored"] and out["collapse_kind"] == "none"
    assert out["collapse_step"] is None and out["collapse_time"] is None  # null when censored
    assert out["collapse_step_smoothed"] is None and out["collapse_date_source"] is None
    assert out["survival_time"] == T - 1 - 300  # censored at the last update
    assert out["transient"]  # 50 updates below >= min_confirm * W = 25


def test_transient_drop_confined_to_the_window_that_recovers_is_not_a_collapse() -> None:
    """A drop lasting the whole (long) perturbation window, longer than W, then recovering: a transient."""
    run = control().copy()
    run[300:550] = -500.0  # 250 updates below (> W = 100) while the perturbation acts, then back on the curve
    controls = [smoothed(control(-5)), smoothed(control(5))]
    out = detect(STEPS, run, 300, controls, None, CFG, window_end=550)
    assert not out["collapsed"] and out["transient"] and out["collapse_kind"] == "none"
    # without the window rule (window_end = onset) the same curve would have been called a collapse
    assert detect(STEPS, run, 300, controls, None, CFG)["collapsed"]
    # the same drop that stays below for W after the window ends is a collapse
    run[550:700] = -500.0
    out = detect(STEPS, run, 300, controls, None, CFG, window_end=550)
    assert out["collapsed"] and not out["transient"] and out["collapse_confirmed_step"] == 649


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
    assert out["collapsed"] and out["collapse_step"] == 420 and out["collapse_kind"] == "nonfinite"
    assert out["collapse_time"] == 120 == out["survival_time"] and out["collapse_confirmed_step"] == 420
    assert out["collapse_date_source"] == "nonfinite" and out["collapse_step_smoothed"] == 420


def test_crossing_too_close_to_the_end_cannot_be_confirmed() -> None:
    run = control().copy()
    run[990:] = -900.0  # 10 updates left < min_confirm * W = 25
    assert not detect(STEPS, run, 300, [smoothed(control())], None, CFG)["collapsed"]
    run[960:] = -900.0  # 40 updates left, below until the end: confirmed
    out = detect(STEPS, run, 300, [smoothed(control())], None, CFG)
    assert out["collapsed"] and 955 <= out["collapse_step"] <= 970 and out["collapse_confirmed_step"] == T - 1


def test_first_collapse_needs_the_full_window() -> None:
    s = np.r_[np.zeros(100), -10 * np.ones(30), np.zeros(870)]
    assert first_collapse(s, np.full(1000, -5.0), 0, CFG) is None  # 30 < W = 100
    s = np.r_[np.zeros(100), -10 * np.ones(900)]
    assert first_collapse(s, np.full(1000, -5.0), 0, CFG) == (100, 199)
    # a perturbation window ending at 600 moves the confirmation to 600 + W
    assert first_collapse(s, np.full(1000, -5.0), 0, CFG, window_end=600) == (100, 699)


def test_controls_and_perturbed_runs_are_cross_fitted_over_control_seeds() -> None:
    runs = pl.DataFrame({"run_id": ["a", "b", "c", "p"], "seed": [0, 1, 2, 1], "onset_step": [300] * 4,
                         "duration_steps": [1, 1, 1, 50]})
    perf = {"a": (STEPS, control(-3)), "b": (STEPS, control(3)), "c": (STEPS, control(0)),
            "p": (STEPS, np.r_[control()[:400], np.full(600, -500.0)])}
    out = collapse_group(runs, perf, {}, np.array([True, True, True, False]), CFG)
    got = dict(zip(out["run_id"], out["collapsed"], strict=True))
    assert got == {"a": False, "b": False, "c": False, "p": True}
    folds = dict(zip(out["run_id"], out["rule_fold"], strict=True))
    assert folds["p"] == folds["b"]  # the perturbed run of seed 1 meets the same envelope as control b
    assert out["n_controls"].to_list() == [2, 2, 2, 2]  # every envelope leaves its own fold out


def test_one_control_seed_is_not_cross_fitted() -> None:
    runs = pl.DataFrame({"run_id": ["a", "p"], "seed": [0, 0], "onset_step": [300] * 2, "duration_steps": [1, 10]})
    perf = {"a": (STEPS, control()), "p": (STEPS, np.r_[control()[:400], np.full(600, -500.0)])}
    out = collapse_group(runs, perf, {}, np.array([True, False]), CFG)
    assert out["collapsed"].to_list() == [False, True] and out["rule_fold"].null_count() == 2
    assert "no matched unperturbed runs" in out["note"][0] and "not cross-fitted" in out["note"][1]


def test_one_flat_control_gives_no_assessable_line() -> None:
    env = envelope([np.full(T, 5.0)], T, CFG)
    assert np.isnan(env.line).all() and "not assessable" in env.note
