"""CPU-hour and cluster wall-time estimates, and the longest-first run order."""

from __future__ import annotations

import pytest

from stabilitybench.generate.costs import REFERENCE_STEPS_PER_S, estimate, longest_first
from stabilitybench.generate.spec import RunSpec


def spec(algo: str, steps: int, seed: int = 0) -> RunSpec:
    return RunSpec(domain="rl", algo=algo, env="HalfCheetah-v5", seed=seed, total_steps=steps)


def test_estimate_uses_the_reference_throughput_without_a_corpus() -> None:
    specs = [spec("ppo", 240_000), spec("sac", 36_000)]
    est = estimate(specs)
    assert est.run_seconds == (240_000 / REFERENCE_STEPS_PER_S["ppo"], 36_000 / REFERENCE_STEPS_PER_S["sac"])
    assert est.cpu_hours == pytest.approx(sum(est.run_seconds) / 3600)
    assert est.longest_run_hours == pytest.approx(max(est.run_seconds) / 3600)


def test_estimate_prefers_measured_throughput() -> None:
    rows = [{"status": "ok", "stop_reason": "completed", "algo": "ppo", "env": "HalfCheetah-v5",
             "total_steps": 1000, "run_wall_time_s": 2.0}]  # 500 steps/s measured
    est = estimate([spec("ppo", 5000)], rows)
    assert est.run_seconds == (10.0,)
    assert est.sources["ppo"].startswith("corpus")


def test_makespan_is_lpt_list_scheduling() -> None:
    # run costs 5, 4, 3, 3, 3 (hours); LPT on 2 slots: [5, 3] and [4, 3, 3] -> makespan 10
    specs = [spec("ppo", int(h * 3600 * REFERENCE_STEPS_PER_S["ppo"]), seed=i) for i, h in enumerate([3, 5, 3, 4, 3])]
    est = estimate(specs)
    assert est.makespan_hours(1) == pytest.approx(18)
    assert est.makespan_hours(2) == pytest.approx(10)
    assert est.makespan_hours(3) == pytest.approx(7)  # [5], [4, 3], [3, 3]
    assert est.makespan_hours(100) == pytest.approx(est.longest_run_hours)
    with pytest.raises(ValueError):
        est.makespan_hours(0)


def test_longest_first_orders_by_cost_and_keeps_ties_in_profile_order() -> None:
    a, b, c, d = spec("ppo", 1000, 0), spec("sac", 1000, 1), spec("ppo", 1000, 2), spec("td3", 1000, 3)
    # reference: sac 100/s (10 s) > td3 120/s (8.3 s) > ppo (0.4 s)
    assert longest_first([a, b, c, d]) == [b, d, a, c]


def test_pre_is_cpu_time_over_one_plain_ppo_run_at_the_reference_speed() -> None:
    from stabilitybench.generate.costs import PRE_REFERENCE_SECONDS, PRE_STEPS, REFERENCE_PLAIN_PPO_STEPS_PER_S

    assert PRE_REFERENCE_SECONDS == pytest.approx(PRE_STEPS / REFERENCE_PLAIN_PPO_STEPS_PER_S)
    # ten telemetry PPO runs of 100k steps cost 10 x (plain speed / telemetry speed) PRE
    est = estimate([spec("ppo", 100_000, seed=i) for i in range(10)])
    assert est.pre == pytest.approx(10 * REFERENCE_PLAIN_PPO_STEPS_PER_S / REFERENCE_STEPS_PER_S["ppo"])
