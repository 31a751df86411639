"""Telemetry overhead: StabilityBench's RL generator against plain SB3, side by side.

All arms build the same env (``make_vec_env``, plus ``VecNormalize`` when the config
asks for it) and the same SB3 model from the same resolved config and seed, and train
for the same number of env steps on one thread. The telemetry arm is the real generator
(``stabilitybench.generate.rl.train.run``: callback, optimizer hooks, periodic representation probes,
row buffers, Arrow table) with evaluation switched off (``eval_episodes = 0``: evaluation
is extra measurement work, not telemetry); the baseline is ``model.learn`` with no
callback. Arms alternate (plain, telemetry, plain, ...) so drift in machine load hits
both alike; we report medians of wall and process-CPU time and their ratios. The cost of
the periodic dormant/effective-rank probes is reported on its own (``probe_seconds``).
A third arm, ``api``, is plain SB3 plus the public ``SB3Callback`` alone (what a user pays).

    python benchmarks/bench_rl_overhead.py --algo ppo --steps 40960 --repeats 5
    python benchmarks/bench_rl_overhead.py --algo sac --steps 3000 --hparams '{"learning_starts": 500}'

Writes ``benchmarks/out/<algo>_overhead.json`` and prints a Markdown row for BENCHMARKS.md.
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

#: SB3's own PPO defaults (the v1 quick profile's setting), as opposed to the rl-zoo3 values.
SB3_PPO = {"normalize": False, "hidden": 64, "activation": "tanh", "log_std_init": 0.0, "ortho_init": True,
           "n_steps": 2048, "batch_size": 64, "n_epochs": 10, "learning_rate": 3e-4, "gamma": 0.99,
           "gae_lambda": 0.95, "clip_range": 0.2, "ent_coef": 0.0, "vf_coef": 0.5, "max_grad_norm": 0.5}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def spec_for(algo: str, env_id: str, steps: int, seed: int, hparams: dict):
    from stabilitybench.generate.spec import RunSpec

    return RunSpec(domain="rl", algo=algo, env=env_id, seed=seed, perturbation="none", total_steps=steps,
                   hparams={**hparams, "eval_episodes": 0})


def _sb3_arm(algo: str, env_id: str, steps: int, seed: int, hparams: dict,
             with_callback: bool) -> tuple[float, float, int, float]:
    """Plain SB3 from the generator's resolved config; ``with_callback`` adds the public ``SB3Callback``
    (a Recorder without a corpus). The clock includes building the env and the model, as the generator's does."""
    from stabilitybench.generate.adapters.sb3 import SB3Callback
    from stabilitybench.generate.perturbations import TrainingClock, build
    from stabilitybench.generate.recorder import Recorder
    from stabilitybench.generate.rl.config import resolve
    from stabilitybench.generate.rl.envs import make_train_env
    from stabilitybench.generate.rl.train import _build_model

    spec = spec_for(algo, env_id, steps, seed, hparams)
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = resolve(algo, env_id, "default", dict(spec.hparams))
    env = make_train_env(env_id, seed, cfg.n_envs, cfg.normalize, cfg.gamma, build("none", 1.0, 0, 1),
                         TrainingClock())
    model = _build_model(spec, cfg, env)
    rec = Recorder(None, algo=algo, env=env_id, seed=seed) if with_callback else None
    model.learn(total_timesteps=steps, callback=SB3Callback(rec) if rec is not None else None)
    if rec is not None:
        rec.steps_table()
    env.close()
    return time.perf_counter() - t0, time.process_time() - c0, model.num_timesteps, 0.0


def plain(algo: str, env_id: str, steps: int, seed: int, hparams: dict) -> tuple[float, float, int, float]:
    return _sb3_arm(algo, env_id, steps, seed, hparams, with_callback=False)


def api(algo: str, env_id: str, steps: int, seed: int, hparams: dict) -> tuple[float, float, int, float]:
    """Plain SB3 plus the public ``SB3Callback`` (a Recorder without a corpus): what a user pays."""
    return _sb3_arm(algo, env_id, steps, seed, hparams, with_callback=True)


def telemetry(algo: str, env_id: str, steps: int, seed: int, hparams: dict) -> tuple[float, float, int, float]:
    from stabilitybench.generate.rl.train import run

    spec = spec_for(algo, env_id, steps, seed, hparams)
    t0, c0 = time.perf_counter(), time.process_time()
    result = run(spec)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, int(result.steps.column("samples_seen")[-1].as_py()), result.config["probe_seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algo", default="ppo", choices=["ppo", "sac", "td3"])
    ap.add_argument("--env", default="HalfCheetah-v5")
    ap.add_argument("--steps", type=int, default=40_960)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hparams", default=None, help="JSON overrides; PPO defaults to SB3's own values")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    hparams = json.loads(args.hparams) if args.hparams else (SB3_PPO if args.algo == "ppo" else {})
    out = args.out or Path(__file__).parent / "out" / f"{args.algo}_overhead.json"

    warm = min(args.steps, 2048 if args.algo == "ppo" else 600)  # imports, MuJoCo compile, allocator
    warm_hp = hparams if args.algo == "ppo" else {**hparams, "learning_starts": 100}
    arms = {"plain": plain, "api": api, "telemetry": telemetry}
    for fn in arms.values():
        fn(args.algo, args.env, warm, args.seed, warm_hp)

    wall: dict[str, list[float]] = {arm: [] for arm in arms}
    cpu: dict[str, list[float]] = {arm: [] for arm in arms}
    probe_s: list[float] = []
    samples = {}
    for i in range(args.repeats):  # interleaved: plain, api, telemetry, plain, api, telemetry, ...
        for arm, fn in arms.items():
            w, c, n, p = fn(args.algo, args.env, args.steps, args.seed, hparams)
            wall[arm].append(w)
            cpu[arm].append(c)
            samples[arm] = n
            if arm == "telemetry":
                probe_s.append(p)
            print(f"repeat {i} {arm:<9} {w:7.2f} s wall {c:7.2f} s cpu {n / w:7.0f} steps/s", flush=True)

    from stabilitybench.generate.rl.config import resolve

    cfg = resolve(args.algo, args.env, "default", {**hparams})
    updates = cfg.planned_updates(args.steps)
    med = {arm: statistics.median(v) for arm, v in wall.items()}
    med_cpu = {arm: statistics.median(v) for arm, v in cpu.items()}
    pair = {arm: [w / p for w, p in zip(wall[arm], wall["plain"], strict=True)] for arm in ("api", "telemetry")}
    result = {
        "benchmark": f"{args.algo}_overhead",
        "algo": args.algo,
        "env": args.env,
        "hparams": hparams,
        "env_steps": samples["plain"],
        "optimizer_updates": updates,
        "repeats": args.repeats,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "median_wall_s": med,
        "median_cpu_s": med_cpu,
        "steps_per_s": {arm: samples[arm] / t for arm, t in med.items()},
        "pair_ratios_wall": pair,
        "median_pair_ratio_wall": {arm: statistics.median(v) for arm, v in pair.items()},
        "ratio_wall": {arm: med[arm] / med["plain"] for arm in ("api", "telemetry")},
        "ratio_cpu": {arm: med_cpu[arm] / med_cpu["plain"] for arm in ("api", "telemetry")},
        "overhead_us_per_update": {arm: 1e6 * (med[arm] - med["plain"]) / max(updates, 1)
                                   for arm in ("api", "telemetry")},
        "probe_seconds_median": statistics.median(probe_s),
        "probe_share_of_telemetry_run": statistics.median(probe_s) / med["telemetry"],
        "load_average": os.getloadavg(),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    for arm in ("api", "telemetry"):
        pr = pair[arm]
        print(f"| {args.algo.upper()} {args.env} | {arm} | {samples['plain']:,} | {updates:,} | {args.repeats} | "
              f"{result['ratio_wall'][arm]:.3f} | {statistics.median(pr):.3f} [{min(pr):.3f}, {max(pr):.3f}] | "
              f"{result['ratio_cpu'][arm]:.3f} | {result['overhead_us_per_update'][arm]:.0f} µs |")


if __name__ == "__main__":
    main()
