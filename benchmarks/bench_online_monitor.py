"""Online-monitor overhead: SB3 PPO with telemetry vs telemetry + a live meta-state monitor, side by side.

Two arms, alternating (api, api+monitor, api, ...) so drift in machine load hits both alike:

* ``api``: plain SB3 PPO with the public ``SB3Callback`` (a Recorder without a corpus);
* ``api+monitor``: the same plus an ``Intervention(OnlineMonitor, actions=["log"])``: every row goes
  through the online monitor (transform, forward fill, block sums; one Kalman or GRU step per block).

The monitor is fitted (``stabilitybench.fit_monitor``) on a warm-up run's telemetry with the
quick profile's block length (B = 31 updates) and every numeric column the analysis would use; its
threshold is calibrated on that same run (the benchmark measures cost, not detection). A
micro-benchmark also times ``OnlineMonitor.update`` alone on the recorded rows (microseconds per row),
the number least affected by a loaded machine.

    python benchmarks/bench_online_monitor.py --steps 40960 --repeats 3 [--kind kalman|gru]

Writes ``benchmarks/out/online_monitor_overhead.json`` and prints a Markdown row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import polars as pl
import torch

BENCH = Path(__file__).resolve().parent


def _rl_bench():
    """``bench_rl_overhead`` (its SB3 PPO settings and ``cpu_name``), imported from this folder."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_rl_overhead", BENCH / "bench_rl_overhead.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


RL = _rl_bench()
SB3_PPO, cpu_name = RL.SB3_PPO, RL.cpu_name


def ppo_arm(env_id: str, steps: int, seed: int, monitor_file=None) -> tuple[float, float, pl.DataFrame]:
    """One PPO run with the public callback (and, with ``monitor_file``, a live monitor): wall, CPU, steps."""
    from stabilitybench.generate.adapters.sb3 import SB3Callback
    from stabilitybench.generate.intervention import Intervention
    from stabilitybench.generate.perturbations import TrainingClock, build
    from stabilitybench.generate.recorder import Recorder
    from stabilitybench.generate.rl.config import resolve
    from stabilitybench.generate.rl.envs import make_train_env
    from stabilitybench.generate.rl.train import _build_model
    from stabilitybench.generate.spec import RunSpec

    spec = RunSpec(domain="rl", algo="ppo", env=env_id, seed=seed, total_steps=steps,
                   hparams={**SB3_PPO, "eval_episodes": 0})
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = resolve("ppo", env_id, "default", dict(spec.hparams))
    env = make_train_env(env_id, seed, cfg.n_envs, cfg.normalize, cfg.gamma, build("none", 1.0, 0, 1),
                         TrainingClock())
    model = _build_model(spec, cfg, env)
    rec = Recorder(None, algo="ppo", env=env_id, seed=seed)
    guard = Intervention(monitor_file.online(), rec, actions=["log"]) if monitor_file is not None else None
    model.learn(total_timesteps=steps, callback=SB3Callback(rec, intervention=guard))
    frame = pl.from_arrow(rec.steps_table())
    env.close()
    return time.perf_counter() - t0, time.process_time() - c0, frame


def fit_on(frame: pl.DataFrame, kind: str, block: int):
    from stabilitybench import fit_monitor
    from stabilitybench.analysis.data import CANDIDATE_FEATURES

    feats = [c for c in CANDIDATE_FEATURES if c in frame.columns and frame[c].drop_nulls().len() > 1
             and c not in ("lr", "update_norm", "param_norm")]
    det = None
    if kind == "gru":
        from stabilitybench.analysis.metastate.gru import GRUMonitor

        det = GRUMonitor(hidden=32, epochs=30)
    return fit_monitor([frame], [frame], feats, block, detector=det)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="HalfCheetah-v5")
    ap.add_argument("--steps", type=int, default=40_960)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--block", type=int, default=31, help="updates per block (quick profile: 15680 // 500 = 31)")
    ap.add_argument("--kind", default="kalman", choices=["kalman", "gru"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = args.out or Path(__file__).parent / "out" / "online_monitor_overhead.json"

    _, _, warm = ppo_arm(args.env, max(args.steps, 4096), args.seed + 1)  # imports, MuJoCo, and the fit data
    monitor = fit_on(warm, args.kind, args.block)
    rows = warm.to_dicts()
    online = monitor.online()
    t0 = time.perf_counter()
    for row in rows:
        online.update(row)
    per_row_us = (time.perf_counter() - t0) / len(rows) * 1e6

    wall: dict[str, list[float]] = {"api": [], "api+monitor": []}
    cpu: dict[str, list[float]] = {"api": [], "api+monitor": []}
    n_rows = 0
    for i in range(args.repeats):
        for arm in wall:
            w, c, frame = ppo_arm(args.env, args.steps, args.seed, monitor if arm == "api+monitor" else None)
            wall[arm].append(w)
            cpu[arm].append(c)
            n_rows = frame.height
            print(f"repeat {i} {arm:<12} {w:7.2f} s wall {c:7.2f} s cpu", flush=True)
    ratio = [m / a for m, a in zip(wall["api+monitor"], wall["api"], strict=True)]
    ratio_cpu = [m / a for m, a in zip(cpu["api+monitor"], cpu["api"], strict=True)]
    med = {arm: statistics.median(v) for arm, v in wall.items()}
    result = {
        "benchmark": "online_monitor_overhead", "env": args.env, "env_steps": args.steps, "updates": n_rows,
        "repeats": args.repeats, "kind": args.kind, "block_updates": args.block, "features": monitor.features,
        "wall_seconds": wall, "cpu_seconds": cpu, "median_wall_s": med,
        "wall_ratio_per_repeat": ratio, "cpu_ratio_per_repeat": ratio_cpu,
        "median_wall_ratio": statistics.median(ratio), "median_cpu_ratio": statistics.median(ratio_cpu),
        "update_us_per_row": per_row_us,
        "update_share_of_api_wall": per_row_us * 1e-6 * n_rows / med["api"],
        "cpu": cpu_name(), "torch_threads": torch.get_num_threads(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("median_wall_ratio", "median_cpu_ratio", "update_us_per_row",
                                              "update_share_of_api_wall")}, indent=2))
    print(f"| {args.kind}, B={args.block} | {args.env} {args.steps} steps ({n_rows} updates), {args.repeats} repeats "
          f"| {med['api']:.1f} s | {med['api+monitor']:.1f} s | {statistics.median(ratio):.3f} "
          f"| {per_row_us:.1f} us/row ({100 * result['update_share_of_api_wall']:.2f}% of the api arm) |")


if __name__ == "__main__":
    main()
