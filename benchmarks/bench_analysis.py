"""Scaling of the analysis primitives: load + PCA fit + Kalman score on 10^6 .. 10^8 step rows.

    python benchmarks/bench_analysis.py [--rows 1e6 1e7 1e8] [--rows-per-run 500000] [--workdir /tmp/sb_bench]

For each size a synthetic corpus is written once through ``data_schema.write_table``
(schema v1 steps files, Hive layout, zstd; runs of ``--rows-per-run`` updates driven by a
3-dimensional AR(1) latent, with PPO-like sparse loss columns reported every 320 rows).
Each size is then measured in a fresh child process, so the peak RSS
(``ru_maxrss``) belongs to that size alone:

* ``streaming``: the path that scales. Pass 1 reads one run file at a time (polars lazy
  scan, column projection), builds the features exactly as the analysis does
  (:func:`stabilitybench.analysis.data.feature_frame`: forward fill, log transform) and feeds the exact
  streaming covariance (:func:`stabilitybench.analysis.pca.streaming_pca`): ``load_s`` and ``pca_s``.
  A :class:`~stabilitybench.analysis.metastate.KalmanMonitor` is fitted on the block means (~500 blocks
  per run, as in the analysis) of the first 3 runs (``kalman_fit_s``). Pass 2 reads the files
  again and scores *every* row with the
  steady-state filter (``kalman_score_s``, excluding the re-read). Memory stays
  O(rows per run).
* ``in_memory`` (sizes up to 10^7 by default): one lazy scan of the whole corpus
  collected at once plus an sklearn PCA of all rows: ``load_s``, ``pca_s`` and peak RSS
  (the naive approach, for comparison).
* ``pipeline`` (up to 10^7 by default): the whole :func:`stabilitybench.analysis.pipeline.run_analysis`,
  which reads run by run; the synthetic runs are all unperturbed with distinct seeds, so
  this is the cost of loading, PCA with its null, fitting and scoring every detector.

Writes ``benchmarks/out/analysis_scaling.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FEATURES = ["loss", "grad_norm", "grad_coherence", "update_norm", "param_norm", "value_loss", "entropy", "approx_kl"]
SPARSE = {"loss", "value_loss", "entropy", "approx_kl"}


def write_corpus(root: Path, rows: int, rows_per_run: int, seed: int = 0) -> None:
    """A synthetic steps corpus of ``rows`` rows (skipped when its manifest already exists)."""
    import pyarrow as pa
    from scipy import signal

    from stabilitybench.data_schema import STEPS_SCHEMA, steps_path, write_manifest, write_table

    if (root / "manifest.parquet").exists():
        return
    rng = np.random.default_rng(seed)
    n_runs = max(1, rows // rows_per_run)
    W = rng.normal(size=(3, len(FEATURES)))
    manifest = []
    for r in range(n_runs):
        T = rows_per_run if r < n_runs - 1 else rows - rows_per_run * (n_runs - 1)
        z = np.column_stack([signal.lfilter([1.0], [1.0, -a], rng.normal(size=T)) for a in (0.999, 0.99, 0.9)])
        X = z @ W * 0.1 + 0.3 * rng.normal(size=(T, len(FEATURES)))
        cols = {}
        for j, name in enumerate(FEATURES):
            x = X[:, j]
            if name in ("grad_norm", "update_norm", "param_norm", "approx_kl"):
                x = np.exp(x)
            if name in SPARSE:
                m = np.zeros(T, dtype=bool)
                m[319::320] = True
                cols[name] = pa.array(np.where(m, x, np.nan), from_pandas=True)
            else:
                cols[name] = x
        rid = f"bench{r:05d}"
        row = {"run_id": rid, "domain": "rl", "algo": "ppo", "env": "Bench-v0", "seed": r, "perturbation": "none",
               "dimension": "none", "stochasticity": "default", "total_steps": T, "status": "ok",
               "code_version": "bench", "schema_version": "1.0", "config_json": "{}", "n_updates": T}
        steps = np.arange(T)
        table = pa.table({
            "run_id": pa.array([rid] * T), "step": steps, "samples_seen": steps, "wall_time_s": steps * 1e-3,
            "perturbation_active": np.zeros(T, dtype=bool), **cols,
            "domain": ["rl"] * T, "algo": ["ppo"] * T, "env": ["Bench-v0"] * T, "perturbation": ["none"] * T,
        })
        write_table(table, steps_path(root, row), STEPS_SCHEMA)
        manifest.append(row)
    write_manifest(root, manifest)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_streaming(root: Path) -> dict:
    import polars as pl

    from stabilitybench.analysis.data import feature_frame, to_blocks
    from stabilitybench.analysis.metastate import KalmanMonitor
    from stabilitybench.analysis.pca import streaming_pca

    files = sorted(root.glob("steps/**/*.parquet"))
    cols = ["run_id", "step", *FEATURES]
    t_load = t_pca = 0.0
    rows = 0
    fit_blocks = []

    def chunks():
        nonlocal t_load, rows
        for i, f in enumerate(files):
            t0 = time.perf_counter()
            fr = feature_frame(pl.scan_parquet(f).select(cols).collect(), FEATURES)
            X = fr.drop_nulls().select(FEATURES).to_numpy()
            t_load += time.perf_counter() - t0
            rows += fr.height
            if i < 3:
                block = max(1, fr.height // 500)  # as the analysis does: ~500 blocks per run
                fit_blocks.append(to_blocks(fr, FEATURES, block).drop_nulls().select(FEATURES).to_numpy())
            yield X

    t0 = time.perf_counter()
    res, _ = streaming_pca(chunks(), len(FEATURES))
    t_pca = time.perf_counter() - t0 - t_load

    t0 = time.perf_counter()
    mon = KalmanMonitor(n_latent="pca90", n_iter=20).fit(fit_blocks)
    t_fit = time.perf_counter() - t0

    t_score = t_reload = 0.0
    scored = 0
    for f in files:
        t0 = time.perf_counter()
        X = feature_frame(pl.scan_parquet(f).select(cols).collect(), FEATURES).select(FEATURES).to_numpy()
        t_reload += time.perf_counter() - t0
        t0 = time.perf_counter()
        s = mon.score(X)
        t_score += time.perf_counter() - t0
        scored += int(np.isfinite(s).sum())
    return {"mode": "streaming", "rows": rows, "files": len(files), "load_s": t_load, "pca_s": t_pca,
            "pca_n90": res.n90, "kalman_latent": mon.n_latent_, "kalman_fit_s": t_fit, "kalman_score_s": t_score,
            "rows_scored": scored, "reload_s": t_reload, "peak_rss_mb": _peak_mb()}


def measure_in_memory(root: Path) -> dict:
    from stabilitybench.analysis.data import feature_frame
    from stabilitybench.analysis.pca import fit
    from stabilitybench.data_schema import scan_steps

    t0 = time.perf_counter()
    steps = scan_steps(root).select(["run_id", "step", *FEATURES]).collect().sort(["run_id", "step"])
    fr = feature_frame(steps, FEATURES)
    X = fr.drop_nulls().select(FEATURES).to_numpy()
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, res = fit(X)
    t_pca = time.perf_counter() - t0
    return {"mode": "in_memory", "rows": int(steps.height), "load_s": t_load, "pca_s": t_pca, "pca_n90": res.n90,
            "peak_rss_mb": _peak_mb()}


def measure_pipeline(root: Path) -> dict:
    import tempfile

    from stabilitybench.analysis.pipeline import run_analysis

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        summary = run_analysis(root, out, update_corpus=False)
        total = time.perf_counter() - t0
    t = summary["timings_s"]
    return {"mode": "pipeline", "rows": None, "load_s": t["load_s"],
            "pca_s": t["pca_s"], "early_warning_s": t["early_warning_s"], "total_s": total,
            "peak_rss_mb": _peak_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", type=float, default=[1e6, 1e7])
    ap.add_argument("--rows-per-run", type=int, default=500_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sb_bench"))
    ap.add_argument("--in-memory-max", type=float, default=1e7, help="largest size also measured in memory")
    ap.add_argument("--pipeline-max", type=float, default=1e7,
                    help="largest size also run through the whole `run_analysis` (monitors included)")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="streaming", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:  # child process
        fn = {"streaming": measure_streaming, "in_memory": measure_in_memory, "pipeline": measure_pipeline}[args.mode]
        print(json.dumps(fn(args.measure)))
        return
    results = []
    for size in args.rows:
        n = int(size)
        root = args.workdir / f"rows_{n}"
        t0 = time.perf_counter()
        write_corpus(root, n, args.rows_per_run)
        gen = time.perf_counter() - t0
        modes = ["streaming"] + (["in_memory"] if n <= args.in_memory_max else []) + (
            ["pipeline"] if n <= args.pipeline_max else [])
        for mode in modes:
            out = subprocess.run([sys.executable, __file__, "--measure", str(root), "--mode", mode],
                                 capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res.update(target_rows=n, generate_s=gen)
            res["rows"] = res.get("rows") or n
            results.append(res)
            print(json.dumps(res), flush=True)
    meta = {"python": platform.python_version(), "cpus": os.cpu_count(),
            "polars_max_threads": os.environ.get("POLARS_MAX_THREADS")}
    out_dir = Path(__file__).parent / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "analysis_scaling.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print("\n| rows | mode | load s | PCA s | Kalman fit s | Kalman score s | total s | peak RSS MB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    nan = float("nan")
    for r in results:
        total = r.get("total_s") or sum(r.get(k, 0.0) for k in ("load_s", "pca_s", "kalman_fit_s", "kalman_score_s"))
        print(f"| {r['rows']:.0e} | {r['mode']} | {r['load_s']:.1f} | {r['pca_s']:.1f} | "
              f"{r.get('kalman_fit_s', nan):.1f} | {r.get('kalman_score_s', nan):.1f} | {total:.1f} | "
              f"{r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
