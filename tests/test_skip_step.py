"""The skip-step arm (issue 26): OLMo-core's rule as a gate on a live optimizer, and the count-matched random arm."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from scipy import stats as sps

from stabilitybench import Probe, Recorder
from stabilitybench.analysis.baselines import OlmoSkipDecision, olmo_skip_step
from stabilitybench.generate.intervention import (
    RANDOM_SALT,
    check_hparams,
    from_hparams,
    parse_counts,
    schedule_for,
    spaced_uniform,
)
from stabilitybench.generate.skip_step import SkipStep


def loop(n: int = 120, spikes: tuple[int, ...] = (), gate: dict | None = None, drop: tuple[int, ...] = (),
         seed: int = 0) -> tuple[Recorder, torch.nn.Module, torch.optim.Optimizer, SkipStep | None]:
    """A tiny regression loop; at each update in ``spikes`` the loss is scaled by 1e4 (a gradient spike); at each in
    ``drop`` the loop calls no ``step()`` at all (the reference for a skipped update)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    guard = None
    with Recorder(None, "skip", domain="lm", algo="mlp", env="synthetic", seed=seed) as rec:
        probe = Probe(opt, rec)
        if gate is not None:
            guard = from_hparams({"intervention": "skip_step", **gate}, rec)
            assert isinstance(guard, SkipStep)
            guard.attach(opt, probe, {"model": model, "optimizer": opt})
        for t in range(n):
            x = torch.randn(16, 6)
            loss = torch.nn.functional.mse_loss(model(x), x[:, :1] * x[:, 1:2]) * (1e4 if t in spikes else 1.0)
            opt.zero_grad()
            loss.backward()
            if t in drop:
                continue
            opt.step()
        if guard is not None:
            guard.finish()
    return rec, model, opt, guard


def test_a_flagged_update_is_not_applied_at_all() -> None:
    """A spike at update 70 is skipped: the run then equals, bit for bit, the loop that never called step() there
    (parameters, Adam's moments and step count), and its row says update_norm 0."""
    rec, model, opt, guard = loop(spikes=(70,), gate={})
    assert guard is not None and guard.skipped_ == [70] and guard.statistics_[0] > 6
    _, ref_model, ref_opt, _ = loop(spikes=(70,), drop=(70,))
    for a, b in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b)
        sa, sb = opt.state[a], ref_opt.state[b]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
        assert float(sa["step"]) == float(sb["step"]) == 119
    row = rec.rows[70]
    assert row["update_norm"] == 0.0 and row["grad_norm"] > 100 * rec.rows[69]["grad_norm"]
    assert len(rec.rows) == 120
    ev = [e for e in rec.events if e["event"] == "skip_step"]
    assert [(e["step"], e["value"]) for e in ev] == [(70, guard.statistics_[0])]


def test_without_a_flag_the_gate_changes_nothing() -> None:
    _, plain, _, _ = loop()
    _, gated, _, guard = loop(gate={})
    assert guard is not None and guard.skipped_ == []
    for a, b in zip(plain.parameters(), gated.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_live_decisions_are_the_offline_rule_on_the_recorded_norms() -> None:
    """The gate's decisions equal analysis.baselines.olmo_skip_step on the grad norms the probe recorded (the
    same rule, one owner), here with a window and sigma that make it fire often."""
    rec, _, _, guard = loop(n=200, spikes=(60, 61, 130), gate={"skip_step_window": 16, "skip_step_sigma": 2.0})
    gn = np.array([r["grad_norm"] for r in rec.rows])
    _, alarm = olmo_skip_step(gn, None, window=16, sigma=2.0)
    assert guard is not None and len(guard.skipped_) >= 3
    assert guard.skipped_ == np.flatnonzero(alarm).tolist()
    skipped = np.array([r["update_norm"] for r in rec.rows])[guard.skipped_]
    assert (skipped == 0).all()


def test_the_decision_reads_the_loss_when_the_loop_hands_it_over() -> None:
    rule = OlmoSkipDecision(window=32, sigma=6.0)
    rng = np.random.default_rng(0)
    out = [rule.step(1.0 + 0.01 * rng.normal(), 2.0 + 0.01 * rng.normal()) for _ in range(40)]
    assert not any(skip for _, skip in out)
    z, skip = rule.step(1.0, 50.0)  # the loss spikes, the grad norm does not
    assert skip and z > 6
    assert OlmoSkipDecision(window=32).step(1.0)[1] is False  # too little history: never skips


def test_skip_step_stands_alone() -> None:
    for bad in ({"intervention": "skip_step,rollback"}, {"intervention": "skip_step", "monitor": "m.npz"},
                {"intervention": "skip_step", "intervention_schedule": "random"},
                {"intervention": "skip_step", "skip_step_window": 1}):
        with pytest.raises(ValueError):
            check_hparams(bad)
    check_hparams({"intervention": "skip_step", "skip_step_window": 64, "skip_step_sigma": 4.0})


@pytest.mark.slow
def test_a_generated_ppo_run_skips_and_keeps_every_row(tmp_path) -> None:
    """The arm at the generator's scale: a PPO run with ``intervention = "skip_step"`` (a rule loose enough to fire)
    keeps one row per update, zero update norm at each skipped update, and one event per skip."""
    from stabilitybench.generate.rl.train import run
    from stabilitybench.generate.spec import RunSpec

    base = {"domain": "rl", "algo": "ppo", "env": "Swimmer-v5", "seed": 3, "total_steps": 1024,
            "perturbation": "none", "onset_frac": 0.3}
    small = {"n_steps": 256, "batch_size": 64, "n_epochs": 2, "hidden": 32, "eval_episodes": 0}
    plain = run(RunSpec.from_dict({**base, "hparams": small}))
    gated = run(RunSpec.from_dict({**base, "hparams": {**small, "intervention": "skip_step", "skip_step_window": 8,
                                                        "skip_step_sigma": 1.0}}))
    steps, events = pl.from_arrow(gated.steps), pl.from_arrow(gated.events)
    skips = events.filter(pl.col("event") == "skip_step")["step"].to_list()
    assert steps.height == pl.from_arrow(plain.steps).height and 0 < len(skips) < steps.height
    assert (steps.filter(pl.col("step").is_in(skips))["update_norm"] == 0).all()
    assert (steps.filter(~pl.col("step").is_in(skips))["update_norm"] > 0).all()


# ---- the count-matched random arm ------------------------------------------------------------------------------
def test_spaced_uniform_keeps_its_gap_and_covers_the_window() -> None:
    rng = np.random.default_rng(0)
    draws = [spaced_uniform(rng, 3, 1000, 200) for _ in range(3000)]
    assert all(len(d) == 3 and d == sorted(d) and min(np.diff(d)) >= 200 and 0 <= d[0] and d[-1] <= 1000
               for d in draws)
    first = np.array([d[0] for d in draws])
    # the first of 3 order statistics on 0..600: P(first >= k) = ((601 - k) / 601)^3
    k = 200
    assert abs((first >= k).mean() - ((601 - k) / 601) ** 3) < 0.03
    assert spaced_uniform(rng, 9, 1000, 200) and len(spaced_uniform(rng, 9, 1000, 200)) == 6  # capped: 1000 // 200 + 1
    assert spaced_uniform(rng, 0, 1000, 200) == []


def test_the_random_arm_matches_the_pinned_counts(tmp_path) -> None:
    (tmp_path / "counts.json").write_text('{"counts": [0, 2, 5]}')
    assert parse_counts(str(tmp_path / "counts.json")) == [0, 2, 5] and parse_counts("1, 3") == [1, 3]
    with pytest.raises(ValueError, match="each >= 0"):
        parse_counts("1, -2")
    hp = {"intervention": "rollback,lr_backoff", "intervention_schedule": "random", "intervention_window": 8000,
          "intervention_counts": "0, 2, 5", "intervention_duration": 200}
    sizes = np.array([len(schedule_for(hp, 0, s).schedule) for s in range(1500)])
    assert set(sizes) == {0, 2, 5} and sps.chisquare(np.bincount(sizes)[[0, 2, 5]]).pvalue > 1e-3
    at = sorted(schedule_for(hp, 0, 11).schedule)
    assert len(at) and all(np.diff(at) >= 200)
    # without counts: today's single random alarm, the same draw as before
    single = {k: v for k, v in hp.items() if k != "intervention_counts"}
    assert list(schedule_for(single, 100, 5).schedule) == [
        100 + int(np.random.default_rng([5, RANDOM_SALT]).integers(0, 8001))]


def test_the_skip_event_is_a_declared_event_kind() -> None:
    from stabilitybench.data_schema.schema import EVENT_KINDS
    from stabilitybench.generate.skip_step import EVENT

    assert EVENT in EVENT_KINDS


def test_every_count_matched_alarm_is_acted_on() -> None:
    """Alarms packed as tightly as the window allows are each acted on: none falls in the previous action's
    cooldown (with alarms only the cooldown apart, the second of such a pair was ignored)."""
    from stabilitybench.generate.intervention import Intervention

    hp = {"intervention": "lr_backoff", "intervention_schedule": "random", "intervention_window": 22,
          "intervention_counts": "3", "intervention_duration": 10, "intervention_factor": 0.5}
    for seed in range(8):
        torch.manual_seed(seed)
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        with Recorder(None, "count", domain="lm", algo="mlp", env="synthetic", seed=seed) as rec:
            probe = Probe(opt, rec)
            guard = from_hparams(hp, rec, onset_step=5, seed=seed)
            assert isinstance(guard, Intervention)
            guard.attach(opt, probe)
            for _ in range(60):
                loss = model(torch.randn(8, 4)).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            guard.finish()
        assert len([e for e in rec.events if e["event"] == "alarm"]) == 3
        assert len([e for e in rec.events if e["event"] == "lr_backoff"]) == 3, seed
