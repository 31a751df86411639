"""Parallel efficiency of the execution backends: N independent runs on 1 worker against 2 workers.

For each backend (the local process pool, and Ray on an in-process instance) the same N
real PPO runs (distinct seeds, identical size) are executed into a fresh corpus with 1
worker and then with 2, and ``efficiency = T1 / (2 * T2)`` is reported: 1.0 means the
second core halves the wall time. The measurements run in one process, one after the
other, on the same machine. ``ceiling`` is the reference: the same number of fresh
spawned processes doing pure single-thread torch compute, i.e. what this machine allows
when nothing but the second core is shared. For Ray, ``ray.init`` / ``ray.shutdown`` are timed
separately and kept out of T (they are paid once per ``generate``, not per run); the
wall time with them included is reported too.

    python benchmarks/bench_parallel.py --runs 8 --steps 16384

Writes ``benchmarks/out/parallel.json`` and prints Markdown rows for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rl_overhead import SB3_PPO, cpu_name

from stabilitybench.generate.backends import LocalPool, RayCluster
from stabilitybench.generate.runner import run_matrix
from stabilitybench.generate.spec import RunSpec


def specs(n: int, steps: int) -> list[RunSpec]:
    return [RunSpec(domain="rl", algo="ppo", env="HalfCheetah-v5", seed=1000 + i, total_steps=steps,
                    hparams={**SB3_PPO, "eval_episodes": 0}) for i in range(n)]


def timed(matrix: list[RunSpec], backend: object) -> tuple[float, float]:
    """(wall time of the matrix, mean wall time of one run inside its worker: ``run_one``'s own clock)."""
    corpus = Path(tempfile.mkdtemp(prefix="bench_parallel_")) / "corpus"
    rows: list[dict] = []
    try:
        t0 = time.perf_counter()
        report = run_matrix(matrix, corpus, backend=backend, on_result=rows.append)  # type: ignore[arg-type]
        wall = time.perf_counter() - t0
        assert (report.ran, report.ok) == (len(matrix), len(matrix)), report.failures
        return wall, statistics.mean(r["run_wall_time_s"] for r in rows)
    finally:
        shutil.rmtree(corpus.parent, ignore_errors=True)


def _compute(seconds_of_matmul: int) -> float:
    """The machine's ceiling workload: fixed single-thread torch compute in a fresh process (no MuJoCo, no I/O)."""
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    a = torch.randn(256, 256)
    for _ in range(seconds_of_matmul * 2200):  # ~1 s of this VM's core per 2,200 iterations
        a = torch.tanh(a @ a * 0.01)
    return time.perf_counter() - t0


def ceiling_timed(n: int, seconds: int, workers: int) -> tuple[float, float]:
    """The same shape of job (n fresh spawned processes, ``workers`` at a time) doing pure compute."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
        inner = pool.map(_compute, [seconds] * n, chunksize=1)
    return time.perf_counter() - t0, statistics.mean(inner)


def ray_timed(matrix: list[RunSpec], cpus: int) -> tuple[tuple[float, float], float]:
    """(``timed``, ray.init + ray.shutdown time) on an in-process Ray instance of ``cpus`` CPUs."""
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 1024**2)
    start = time.perf_counter() - t0
    try:
        result = timed(matrix, RayCluster())
    finally:
        t1 = time.perf_counter()
        ray.shutdown()
        start += time.perf_counter() - t1
    return result, start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=8, help="independent runs per measurement (even)")
    ap.add_argument("--steps", type=int, default=16384, help="env steps per PPO run")
    ap.add_argument("--backends", default="ceiling,local,ray",
                    help="ceiling = pure torch compute in the same process pattern: what the machine allows")
    ap.add_argument("--ceiling-seconds", type=int, default=6, help="compute seconds per ceiling task")
    args = ap.parse_args()
    matrix = specs(args.runs, args.steps)
    results: dict[str, dict[str, float]] = {}
    for name in args.backends.split(","):
        if name == "ceiling":
            (t1, r1), (t2, r2) = (ceiling_timed(args.runs, args.ceiling_seconds, k) for k in (1, 2))
            results[name] = {}
        elif name == "local":
            (t1, r1), (t2, r2) = timed(matrix, LocalPool(1)), timed(matrix, LocalPool(2))
            results[name] = {}
        elif name == "ray":
            ((t1, r1), s1), ((t2, r2), s2) = ray_timed(matrix, 1), ray_timed(matrix, 2)
            results[name] = {"ray_start_stop_s_1": s1, "ray_start_stop_s_2": s2,
                             "efficiency_incl_start": (t1 + s1) / (2 * (t2 + s2))}
        else:
            raise SystemExit(f"unknown backend {name!r}")
        # run_s_*: the mean time a run takes inside its worker; run_slowdown > 1 means the runs themselves
        # got slower side by side (shared caches, memory bandwidth), not the scheduling around them
        results[name].update({"T1_s": t1, "T2_s": t2, "efficiency": t1 / (2 * t2), "run_s_1": r1, "run_s_2": r2,
                              "run_slowdown": r2 / r1})
        print(f"{name}: {json.dumps(results[name])}", flush=True)

    machine = f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    out = {"machine": machine, "runs": args.runs, "steps": args.steps, "results": results}
    path = Path(__file__).resolve().parent / "out" / "parallel.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"\n{machine}; {args.runs} PPO runs x {args.steps} env steps")
    print("| backend | T1 (1 worker) | T2 (2 workers) | efficiency T1/(2·T2) | one run, 1 → 2 workers | note |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        note = (f"ray.init+shutdown {r['ray_start_stop_s_1']:.1f} / {r['ray_start_stop_s_2']:.1f} s not in T; "
                f"with it {r['efficiency_incl_start']:.3f}" if name == "ray" else "")
        print(f"| {name} | {r['T1_s']:.1f} s | {r['T2_s']:.1f} s | **{r['efficiency']:.3f}** | "
              f"{r['run_s_1']:.2f} → {r['run_s_2']:.2f} s (×{r['run_slowdown']:.3f}) | {note} |")


if __name__ == "__main__":
    main()
