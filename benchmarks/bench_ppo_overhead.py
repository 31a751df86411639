"""Telemetry overhead: StabilityBench's PPO generator against plain SB3 PPO, side by side.

Both arms build the same env (``make_vec_env``) and the same ``PPO`` (SB3 defaults,
same seed) and train for the same number of env steps on one thread. The telemetry
arm is the real generator (``generate.rl.ppo.run``: callback, optimizer hooks, row
buffers, Arrow table); the baseline is ``PPO.learn`` with no callback. Arms alternate
(plain, telemetry, plain, ...) so drift in machine load hits both alike; we report
medians and the ratio of medians.

    python benchmarks/bench_ppo_overhead.py [--steps 50000] [--repeats 3] [--env HalfCheetah-v5]

Writes ``benchmarks/out/ppo_overhead.json`` and prints a Markdown row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def plain_ppo(env_id: str, steps: int, seed: int, hparams: dict) -> tuple[float, float, int]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from generate.rl.config import PPOConfig

    cfg = PPOConfig(**hparams)
    t0, c0 = time.perf_counter(), time.process_time()
    env = make_vec_env(env_id, n_envs=cfg.n_envs, seed=seed)
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **cfg.sb3_kwargs())
    model.learn(total_timesteps=steps)
    env.close()
    return time.perf_counter() - t0, time.process_time() - c0, model.num_timesteps


def telemetry_ppo(env_id: str, steps: int, seed: int, hparams: dict) -> tuple[float, float, int]:
    from generate.rl.ppo import run
    from generate.spec import RunSpec

    spec = RunSpec(domain="rl", algo="ppo", env=env_id, seed=seed, perturbation="none", total_steps=steps,
                   hparams=hparams)
    t0, c0 = time.perf_counter(), time.process_time()
    result = run(spec)
    return time.perf_counter() - t0, time.process_time() - c0, int(result.steps.column("samples_seen")[-1].as_py())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="HalfCheetah-v5")
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "ppo_overhead.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    hparams: dict = {}

    plain_ppo(args.env, 2048, args.seed, hparams)  # warm-up: imports, MuJoCo compile, allocator
    telemetry_ppo(args.env, 2048, args.seed, hparams)

    times: dict[str, list[float]] = {"plain": [], "telemetry": []}
    cpu: dict[str, list[float]] = {"plain": [], "telemetry": []}
    samples = {}
    for i in range(args.repeats):
        for arm, fn in (("plain", plain_ppo), ("telemetry", telemetry_ppo)):
            elapsed, cpu_s, n = fn(args.env, args.steps, args.seed, hparams)
            times[arm].append(elapsed)
            cpu[arm].append(cpu_s)
            samples[arm] = n
            print(f"repeat {i} {arm:<9} {elapsed:7.2f} s wall {cpu_s:7.2f} s cpu {n / elapsed:7.0f} steps/s",
                  flush=True)

    from generate.rl.config import PPOConfig

    cfg = PPOConfig(**hparams)
    updates = cfg.planned_updates(args.steps)
    med = {arm: statistics.median(v) for arm, v in times.items()}
    ratio = med["telemetry"] / med["plain"]
    med_cpu = {arm: statistics.median(v) for arm, v in cpu.items()}
    result = {
        "benchmark": "ppo_overhead",
        "env": args.env,
        "env_steps": samples["plain"],
        "optimizer_updates": updates,
        "repeats": args.repeats,
        "seconds": times,
        "median_s": med,
        "cpu_seconds": cpu,
        "median_cpu_s": med_cpu,
        "ratio_cpu_telemetry_over_plain": med_cpu["telemetry"] / med_cpu["plain"],
        "steps_per_s": {arm: samples[arm] / t for arm, t in med.items()},
        "ratio_telemetry_over_plain": ratio,
        "overhead_pct": 100 * (ratio - 1),
        "overhead_us_per_update": 1e6 * (med["telemetry"] - med["plain"]) / updates,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    sps = result["steps_per_s"]
    print(json.dumps(result, indent=2))
    print(f"\n| PPO {args.env} | {samples['plain']:,} | {sps['plain']:.0f} | {sps['telemetry']:.0f} | "
          f"{ratio:.3f} | {result['overhead_pct']:+.1f}% | {result['ratio_cpu_telemetry_over_plain']:.3f} | "
          f"{result['overhead_us_per_update']:.0f} µs |")


if __name__ == "__main__":
    main()
