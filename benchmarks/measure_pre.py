"""Measure today's plain-PPO-run equivalent (PRE) on this machine.

One PRE is the CPU time of one plain SB3 PPO run: SB3's defaults, HalfCheetah-v5, 100k env steps,
one torch thread, no callback. Budgets in this project are stated in PRE because these shared machines
vary by more than 2x from day to day; run this side by side with the job whose cost you want in PRE.

    python benchmarks/measure_pre.py [--steps 100000] [--seed 0]

Prints one JSON line: wall and process-CPU seconds, steps/s, and the ratio to the reference PRE
(``stabilitybench.generate.costs.PRE_REFERENCE_SECONDS``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from stabilitybench.generate.costs import PRE_REFERENCE_SECONDS, PRE_STEPS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=PRE_STEPS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--env", default="HalfCheetah-v5")
    args = ap.parse_args()
    torch.set_num_threads(1)
    venv = make_vec_env(args.env, n_envs=1, seed=args.seed)
    model = PPO("MlpPolicy", venv, seed=args.seed, device="cpu")
    w0, c0 = time.perf_counter(), time.process_time()
    model.learn(total_timesteps=args.steps)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    pre_today = cpu * PRE_STEPS / args.steps
    print(json.dumps({
        "env": args.env, "steps": args.steps, "seed": args.seed, "machine": platform.processor() or platform.machine(),
        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "steps_per_s": round(args.steps / wall, 1),
        "pre_seconds_today": round(pre_today, 2),
        "today_over_reference": round(pre_today / PRE_REFERENCE_SECONDS, 3),
    }))


if __name__ == "__main__":
    main()
