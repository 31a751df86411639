"""The practitioners' spike rules (OLMo-core, llm.c, Megatron, llm-foundry, Lightning): each against a hand
computation from its source's definition, its online form against the whole-series form, and each as a registered
detector that reads raw values back from the pipeline's block features."""

from __future__ import annotations

import numpy as np
import pytest

from stabilitybench.analysis import baselines as bl
from stabilitybench.analysis.baselines import (
    FoundryKillLossSpike,
    LightningSpike,
    LlmcOutlierZ,
    MegatronSpikyLoss,
    OlmoSkipStep,
    foundry_kill_loss_spike,
    lightning_spike,
    llmc_outlier_z,
    megatron_spiky_loss,
    olmo_skip_step,
)
from stabilitybench.analysis.detectors import DETECTORS, default_names, rule_names, saveable_names
from stabilitybench.analysis.early_warning import EarlyWarningConfig, default_detectors, make_detector

NAN, INF = np.nan, np.inf


def close(got: np.ndarray, want: list[float]) -> None:
    np.testing.assert_allclose(got, np.array(want, float), rtol=1e-12, atol=1e-12, equal_nan=True)


# ---- each rule by hand ---------------------------------------------------------------------------------------------


def test_megatron_compares_with_the_max_of_the_first_samples_only() -> None:
    """``|loss| >= 10 * max |loss|`` of the first ``num_samples`` finite losses (frozen, not a running max)."""
    x = [2, 4, 3, 5, 1, 30, 41, 4, NAN, 40, 3, 2]
    stat, alarm = megatron_spiky_loss(np.array(x, float), factor=10, num_samples=3)
    close(stat, [NAN, NAN, NAN, 5 / 4, 1 / 4, 30 / 4, 41 / 4, 4 / 4, INF, 40 / 4, 3 / 4, 2 / 4])
    # 41 >= 40 alarms; 40 still alarms after it (>=, and the reference stays 4: a running max would be 41)
    assert np.flatnonzero(alarm).tolist() == [6, 8, 9]
    stat, alarm = megatron_spiky_loss(np.array([NAN, 1, 2, 3, 25, -31]), factor=10, num_samples=3)
    close(stat, [INF, NAN, NAN, NAN, 25 / 3, 31 / 3])  # a non-finite loss is not one of the samples; |loss|
    assert alarm.tolist() == [True, False, False, False, False, True]


def test_foundry_needs_more_than_patience_consecutive_outliers() -> None:
    """An outlier is ``loss >= 2 * mean(previous window)``; the spike is the (patience + 1)-th in a row."""
    x = np.array([1, 1, 1, 1, 3, 5, 1, 2, 6, 20, 1, 1], float)
    stat, alarm = foundry_kill_loss_spike(x, window=3, multiplier=2, patience=1)
    # ratios from t = 3: 1/1, 3/1, 5/(5/3), 1/3, 2/3, 6/(8/3), 20/3, 1/(28/3), 1/9; the statistic is their
    # minimum over the last patience + 1 = 2 steps
    close(stat, [NAN, NAN, NAN, NAN, 1, 3, 1 / 3, 1 / 3, 2 / 3, 2.25, 3 / 28, 3 / 28])
    assert np.flatnonzero(alarm).tolist() == [5, 9]
    # the source's defaults: patience 4, so four outliers in a row are tolerated and the fifth is the spike
    y = np.array([1, 1, 1, 10, 30, 90, 270, 810, 1], float)
    _, alarm = foundry_kill_loss_spike(y, window=3)
    assert np.flatnonzero(alarm).tolist() == [7]


def test_lightning_spikes_never_enter_the_running_mean() -> None:
    """Spike when not an improvement on the last accepted loss and ``|x - m| >= 2 |m|``, m the mean of the last 3
    accepted losses; from batch 1; a spike is not accepted, a non-finite loss is a spike."""
    x = np.array([1, 1, 2, 1, 5, 1, 10, 12, 11, NAN, 2, 1], float)
    stat, alarm = lightning_spike(x, window=3, rtol=2.0)
    m = 4 / 3  # the mean of the accepted [1, 2, 1] from t = 3 until t = 10
    close(stat, [NAN, 0, 1, 0, (5 - m) / m, 0, (10 - m) / m, (12 - m) / m, (11 - m) / m, INF, (2 - m) / m, 0])
    assert np.flatnonzero(alarm).tolist() == [4, 6, 7, 8, 9]
    assert not lightning_spike(np.array([1, 1, 1, 3 - 1e-9]), window=3)[1].any()  # rtol 2: |x - 1| >= 2 * 1
    assert lightning_spike(np.array([1, 1, 1, 3.0]), window=3)[1].tolist() == [False, False, False, True]


def test_olmo_is_one_sided_with_a_sample_sd_of_the_previous_window() -> None:
    """``x - mean > 6 * std(ddof=1)`` over the previous ``window`` values, once ``max(20, window // 2)`` are held."""
    x = np.array([1.0, 2.0] * 12)
    x[21], x[22], x[23] = 5.0, 1.5, 2.0
    z, alarm = olmo_skip_step(x, window=4, sigma=6.0)
    s = np.sqrt(1 / 3)  # previous [1, 2, 1, 2]: mean 1.5, sd sqrt(1/3)
    want = [NAN] * 19 + [0.5 / s, -0.5 / s, 3.5 / s, -0.75 / np.sqrt(10.75 / 3), -0.375 / np.sqrt(9.6875 / 3)]
    close(z, want)
    assert np.flatnonzero(alarm).tolist() == [21]  # 3.5 / 0.577 = 6.06 > 6
    x[21] = 4.9  # z = 5.89: no skip
    assert not olmo_skip_step(x, window=4)[1].any()
    x[21] = -20.0  # a drop is never skipped
    assert not olmo_skip_step(x, window=4)[1].any()
    g = np.array([1.0, 2.0] * 12)
    g[20] = 6.0  # the grad norm's z at t = 20: 4.5 / sqrt(1/3)
    x[21] = 5.0
    z, alarm = olmo_skip_step(x, g, window=4)
    assert z[20] == pytest.approx(4.5 / s) and np.flatnonzero(alarm).tolist() == [20, 21]
    z, _ = olmo_skip_step(np.linspace(1, 2, 70))  # defaults: window 128, so 64 values before the first check
    assert np.isnan(z[:63]).all() and np.isfinite(z[63:]).all()


def test_llmc_z_includes_the_new_value_in_its_window() -> None:
    """``z = (x - mean) / sd`` over the last ``window`` values *including* x (population SD), NaN until full."""
    x = np.array([1, 2, 1, 2, 1, 2, 10, 2, 1, 2, 2, 2], float)
    z, alarm = llmc_outlier_z(x, window=4, threshold=1.5)
    sd = np.sqrt(52.75 / 4)  # [2, 1, 2, 10] and its three shifts: mean 3.75
    close(z, [NAN] * 4 + [-1, 1, 6.25 / sd, -1.75 / sd, -2.75 / sd, -1.75 / sd, 0.25 / np.sqrt(0.1875),
                          0.25 / np.sqrt(0.1875)])
    assert np.flatnonzero(alarm).tolist() == [6]
    z, _ = llmc_outlier_z(np.full(6, 3.0), window=4)
    close(z, [NAN] * 4 + [0, 0])  # a flat window gives 0, not a division by zero


# ---- online == whole series, for every rule ------------------------------------------------------------------------


def spiky(seed: int, n: int = 400) -> np.ndarray:
    """A positive loss-like series with spikes, a lasting jump and non-finite values."""
    rng = np.random.default_rng(seed)
    x = np.exp(rng.normal(0, 0.2, n)) + np.linspace(3, 1, n)
    x[rng.choice(n, 8, replace=False)] *= rng.uniform(3, 30, 8)
    x[300:] *= 4.0
    x[[150, 151, 260]] = [np.nan, np.inf, np.nan]
    return x


STATES = {
    "olmo": (lambda x: olmo_skip_step(x, window=32, sigma=6.0), lambda: bl._OlmoState(32, 6.0)),
    "llmc": (lambda x: llmc_outlier_z(x, window=32, threshold=3.0), lambda: bl._LlmcState(32, 3.0)),
    "megatron": (lambda x: megatron_spiky_loss(x, 10.0, 50), lambda: bl._MegatronState(10.0, 50)),
    "foundry": (lambda x: foundry_kill_loss_spike(x, 20, 2.0, 2), lambda: bl._FoundryState(20, 2.0, 2)),
    "lightning": (lambda x: lightning_spike(x, 10, 2.0), lambda: bl._LightningState(10, 2.0, None, 1)),
}


@pytest.mark.parametrize("rule", list(STATES))
def test_online_state_reproduces_the_series_function(rule: str) -> None:
    whole, fresh = STATES[rule]
    x = spiky(3)
    stat, alarm = whole(x)
    state = fresh()
    online = [state.step(float(v)) for v in x]
    np.testing.assert_allclose([s for s, _ in online], stat, rtol=1e-10, equal_nan=True)
    assert [a for _, a in online] == alarm.tolist()
    assert alarm.any() and (~alarm).any() and np.isinf(stat[[150, 151, 260]]).all()


# ---- the detectors ---------------------------------------------------------------------------------------------


RULES = {"olmo_skip_step": (OlmoSkipStep, {"window": 128, "sigma": 6.0}),
         "llmc_outlier_z": (LlmcOutlierZ, {"window": 128, "threshold": 6.0}),
         "megatron_spiky_loss": (MegatronSpikyLoss, {"window": 100, "factor": 10.0}),
         "foundry_kill_loss_spike": (FoundryKillLossSpike, {"window": 100, "multiplier": 2.0, "patience": 4}),
         "lightning_spike": (LightningSpike, {"window": 10, "rtol": 2.0, "atol": None, "warmup": 1})}
FEATURES = ["loss", "grad_norm", "entropy"]


def log1p_signed(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def pipeline_features(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X (n, 3) as analysis.data makes it: loss and grad_norm through sign(x) log1p|x|, raw loss, raw grad)``."""
    rng = np.random.default_rng(seed)
    loss = spiky(seed, n)
    loss[~np.isfinite(loss)] = 2.0
    grad = np.exp(rng.normal(0, 0.3, n))
    grad[250] = 40.0
    return np.column_stack([log1p_signed(loss), log1p_signed(grad), rng.normal(size=n)]), loss, grad


def test_registry_keeps_the_sources_parameters_and_leaves_the_rules_out_of_the_defaults() -> None:
    assert set(RULES) == set(rule_names()) <= set(saveable_names())
    assert not set(rule_names()) & set(default_names(True)) and not set(rule_names()) & set(default_detectors())
    cfg = EarlyWarningConfig(baseline_window=6, smooth=3)
    for name, (cls, params) in RULES.items():
        assert DETECTORS[name].family == "baseline" and DETECTORS[name].cls is cls
        det = make_detector(name, FEATURES, cfg)  # selectable by name
        got = det.get_params()
        assert {k: got[k] for k in params} == params and det.smooth == 1  # not the evaluation's window/smoothing
        assert det.column == "loss" and det.transforms["loss"] == "log1p"
    assert make_detector("olmo_skip_step", FEATURES, cfg).grad_column == "grad_norm"
    assert make_detector("megatron_spiky_loss", FEATURES, cfg).grad_column is None
    assert not OlmoSkipStep(["entropy", "grad_norm"]).available  # no loss column: left out
    chosen = LightningSpike(["loss", "value_loss"], loss_column="value_loss")  # PPO's positive loss, on request
    assert chosen.column == "value_loss" and chosen.get_params()["loss_column"] == "value_loss"
    assert chosen.transforms == {"value_loss": "log1p"}


@pytest.mark.parametrize("name", list(RULES))
def test_detector_scores_the_rule_of_the_raw_values(name: str) -> None:
    """Block features (standardised, log1p) are turned back into raw losses: the score is the pure rule's statistic
    of the raw series, the rule's own alarm its alarm, and the online step gives the same numbers."""
    cls = RULES[name][0]
    det = cls(FEATURES).fit([pipeline_features(s)[0] for s in (10, 11)])
    X, loss, grad = pipeline_features(5)
    pure = {"olmo_skip_step": lambda: olmo_skip_step(loss, grad),
            "llmc_outlier_z": lambda: llmc_outlier_z(loss, grad),
            "megatron_spiky_loss": lambda: megatron_spiky_loss(loss),
            "foundry_kill_loss_spike": lambda: foundry_kill_loss_spike(loss),
            "lightning_spike": lambda: lightning_spike(loss)}[name]
    stat, alarm = pure()
    np.testing.assert_allclose(det.score(X), stat, rtol=1e-9, atol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(det.rule_alarms(X), alarm)
    step = det.stepper()
    np.testing.assert_allclose([step(x) for x in X], det.score(X), rtol=1e-10, atol=1e-12, equal_nan=True)
    assert np.isfinite(stat).sum() > 250
    X[7, 2] = np.inf  # a non-finite block scores +inf and alarms, whatever column it is in
    assert np.isinf(det.score(X)[7]) and det.rule_alarms(X)[7]


def test_a_kick_in_the_loss_is_what_the_rules_flag() -> None:
    """A twentyfold loss jump after 150 steady blocks: every rule's own alarm fires at the jump, none before."""
    rng = np.random.default_rng(2)
    loss = np.exp(rng.normal(0, 0.05, 200)) * 2.0
    loss[150:] *= 20.0  # above Megatron's 10x the max of the first 100 blocks (about 2.3)
    X = np.column_stack([log1p_signed(loss), log1p_signed(np.ones(200)), rng.normal(size=200)])
    for name, (cls, _) in RULES.items():
        a = cls(FEATURES).fit([X[:100]]).rule_alarms(X)
        first = int(np.argmax(a)) if a.any() else None
        assert first == (154 if name == "foundry_kill_loss_spike" else 150), name  # foundry: the 5th in a row
