"""CPU-time estimates for a matrix, from measured throughput.

Throughput (env steps per second of one core) comes, in order of preference, from
runs already in the corpus (median over ``ok`` runs of the same algorithm, and the
same env when there are any) or from the reference values measured on this project's
2-core CI-class VM (see BENCHMARKS.md). Estimates carry their source.
"""

from __future__ import annotations

import heapq
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from stabilitybench.generate.spec import RunSpec

#: env steps (RL) or tokens (LM) per second on one core of the reference VM (AMD EPYC, 2 cores),
#: measured 2026-11-25 with full telemetry; PPO with SB3's defaults, GPT-2 ``tiny``. See
#: BENCHMARKS.md. Used only without corpus data; GPT-2 ``small`` belongs on a GPU and is not covered.
REFERENCE_STEPS_PER_S: dict[str, float] = {"ppo": 2400.0, "sac": 100.0, "td3": 120.0, "gpt2": 10_000.0}

#: Per (algo, env) where the env's cost differs much from HalfCheetah's. PPO Swimmer-v5 with full telemetry:
#: median 100 s per 50k-step run (34 runs of calibration/ppo_swimmer.toml, two at a time, 2026-12-03) on a day
#: when one plain PPO run (measure_pre.py) took 126 s per 100k steps = 3.3x the reference; scaled to the
#: reference day: 50k / (100 s / 3.3) = 1,650 steps/s. Runs slowed by other jobs (> 200 s) left out.
REFERENCE_ENV_STEPS_PER_S: dict[tuple[str, str], float] = {("ppo", "Swimmer-v5"): 1650.0}

#: Plain SB3 PPO (defaults, HalfCheetah-v5, one thread, no callback) on the same VM and day as
#: ``REFERENCE_STEPS_PER_S`` (BENCHMARKS.md, RL telemetry overhead, plain arm).
REFERENCE_PLAIN_PPO_STEPS_PER_S = 2635.0
#: One **plain-PPO-run equivalent** (PRE): the CPU seconds of one plain SB3 PPO run (SB3 defaults,
#: HalfCheetah-v5, 100k steps, 1 thread) at the reference speed. Budgets are stated in PRE because these
#: machines vary by more than 2x from day to day; ``benchmarks/measure_pre.py`` measures today's PRE.
PRE_STEPS = 100_000
PRE_REFERENCE_SECONDS = PRE_STEPS / REFERENCE_PLAIN_PPO_STEPS_PER_S


@dataclass(frozen=True)
class Estimate:
    runs: int
    cpu_hours: float
    sources: dict[str, str]  # algo -> where its throughput came from
    run_seconds: tuple[float, ...] = ()  # per run, in the order of the specs

    @property
    def longest_run_hours(self) -> float:
        return max(self.run_seconds, default=0.0) / 3600

    @property
    def pre(self) -> float:
        """The cost in plain-PPO-run equivalents, valid when the estimate used reference throughputs
        (``estimate(specs)`` with no manifest rows): both sides then come from the same machine and day."""
        return self.cpu_hours * 3600 / PRE_REFERENCE_SECONDS

    def makespan_hours(self, slots: int) -> float:
        """Wall hours on ``slots`` single-core workers when runs are started longest first (LPT list scheduling).

        Assumes every slot runs at the measured single-core throughput (a parallel efficiency of 1;
        BENCHMARKS.md has the measured one) and ignores start-up; never less than the longest run.
        """
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        finish = [0.0] * min(slots, max(len(self.run_seconds), 1))
        for seconds in sorted(self.run_seconds, reverse=True):
            heapq.heapreplace(finish, finish[0] + seconds)
        return max(finish) / 3600


def measured_throughput(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """Median env steps/s per (algo, env) over completed runs of a manifest."""
    samples: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("stop_reason") == "completed" and (r.get("run_wall_time_s") or 0) > 0:
            samples.setdefault((r["algo"], r["env"]), []).append(r["total_steps"] / r["run_wall_time_s"])
    return {k: statistics.median(v) for k, v in samples.items()}


def estimate(specs: list[RunSpec], manifest_rows: Iterable[dict[str, Any]] = ()) -> Estimate:
    measured = measured_throughput(manifest_rows)
    by_algo: dict[str, list[float]] = {}
    for (algo, _env), sps in measured.items():
        by_algo.setdefault(algo, []).append(sps)
    per_run, sources = [], {}
    for s in specs:
        if (s.algo, s.env) in measured:
            sps, src = measured[(s.algo, s.env)], "corpus (same algo and env)"
        elif s.algo in by_algo:
            sps, src = statistics.median(by_algo[s.algo]), "corpus (same algo, other envs)"
        elif (s.algo, s.env) in REFERENCE_ENV_STEPS_PER_S:
            sps, src = REFERENCE_ENV_STEPS_PER_S[(s.algo, s.env)], "reference VM (BENCHMARKS.md)"
        else:
            sps, src = REFERENCE_STEPS_PER_S.get(s.algo, 100.0), "reference VM (BENCHMARKS.md)"
        per_run.append(s.total_steps / sps)
        sources.setdefault(s.algo, src)
    return Estimate(runs=len(specs), cpu_hours=sum(per_run) / 3600, sources=sources, run_seconds=tuple(per_run))


def longest_first(specs: list[RunSpec], manifest_rows: Iterable[dict[str, Any]] = ()) -> list[RunSpec]:
    """``specs`` ordered by estimated cost, longest first (ties keep profile order): the LPT order that keeps
    a pool or cluster from ending on one long run started last."""
    seconds = estimate(specs, manifest_rows).run_seconds
    order = sorted(range(len(specs)), key=lambda i: -seconds[i])
    return [specs[i] for i in order]
