"""notebooks/query_corpus.py runs as a plain script on the smoke corpus (polars, DuckDB, pandas, a plot)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "query_corpus.py"


def test_query_notebook_runs_on_the_smoke_corpus(smoke_analyzed: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, _ = smoke_analyzed  # analyzed: the notebook joins the outcome columns analyze wrote into the corpus
    env = {**os.environ, "STABILITYBENCH_NOTEBOOK_OUT": str(tmp_path), "POLARS_MAX_THREADS": "2"}
    res = subprocess.run([sys.executable, str(NOTEBOOK), str(corpus)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"corpus: {corpus} (run table: runs.parquet)" in out  # analyze wrote the outcomes into the corpus
    assert "PPO runs while the perturbation was active" in out and "lr_spike" in out
    assert "coherence_after" in out and "collapsed" in out  # the DuckDB join, with outcome columns
    assert "median grad-norm ratio" in out
    plot = tmp_path / "grad_norm_around_onset.png"
    assert f"plot written: {plot}" in out and plot.stat().st_size > 5_000


def test_query_notebook_reads_the_corpus_from_the_environment(tmp_path: Path) -> None:
    env = {**os.environ, "STABILITYBENCH_CORPUS": str(tmp_path / "missing")}
    res = subprocess.run([sys.executable, str(NOTEBOOK)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1 and "missing/manifest.parquet not found" in res.stderr
