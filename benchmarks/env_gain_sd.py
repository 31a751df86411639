"""Which MuJoCo v5 task shows a collapse against control noise? Plain SB3 PPO's gain-to-SD ratio per env.

For each env and seed: plain SB3 PPO (defaults, one thread, no callback) for ``--steps`` env steps;
``first`` = mean return of the first 10 training episodes, ``last`` = mean of the last 10. Per env:
gain = mean(last) - mean(first), SD = across-seed SD of ``last``, ratio = gain / SD, and seconds per run.
A collapse is visible against control noise only where the ratio is large (issue 12).

    python benchmarks/env_gain_sd.py --envs Hopper-v5,Reacher-v5 --seeds 0,1,2,3,4 [--steps 100000] [--out f.json]

Each (env, seed) result is appended to ``--out`` as one JSON line as soon as it finishes, so a long
measurement can be stopped and resumed (done pairs are skipped).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env


def one_run(env_id: str, seed: int, steps: int) -> dict[str, object]:
    torch.set_num_threads(1)
    venv = make_vec_env(env_id, n_envs=1, seed=seed)
    model = PPO("MlpPolicy", venv, seed=seed, device="cpu")
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps)
    seconds = time.perf_counter() - t0
    returns = [float(r) for r in venv.envs[0].get_episode_rewards()]
    return {"env": env_id, "seed": seed, "steps": steps, "seconds": round(seconds, 1), "episodes": len(returns),
            "first": float(np.mean(returns[:10])), "last": float(np.mean(returns[-10:])), "returns": returns}


def summarise(rows: list[dict]) -> list[dict[str, object]]:
    out = []
    for env in sorted({r["env"] for r in rows}):
        rs = [r for r in rows if r["env"] == env]
        first, last = [r["first"] for r in rs], [r["last"] for r in rs]
        sd = statistics.stdev(last) if len(last) > 1 else float("nan")
        gain = statistics.mean(last) - statistics.mean(first)
        out.append({"env": env, "seeds": len(rs), "first": round(statistics.mean(first), 1),
                    "last": round(statistics.mean(last), 1), "sd_last": round(sd, 1),
                    "gain_over_sd": round(gain / sd, 2) if sd > 0 else None,
                    "s_per_run": round(statistics.median(r["seconds"] for r in rs), 1)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", default="InvertedPendulum-v5,InvertedDoublePendulum-v5,Hopper-v5,Reacher-v5,Swimmer-v5")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--out", default="benchmarks/out/env_gain_sd.jsonl")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    done = {(r["env"], r["seed"], r["steps"]) for r in rows}
    for env in args.envs.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            if (env, seed, args.steps) in done:
                continue
            row = one_run(env, seed, args.steps)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "returns"}), flush=True)
    for s in summarise([r for r in rows if r["steps"] == args.steps]):
        print(json.dumps(s))


if __name__ == "__main__":
    main()
