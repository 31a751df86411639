# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Querying the StabilityBench corpus without project code
#
# The corpus is plain Parquet (zstd, Hive-partitioned steps), so polars, DuckDB and pandas read it
# directly. This notebook runs as a script too:
#
# ```bash
# python notebooks/query_corpus.py [CORPUS]        # or STABILITYBENCH_CORPUS=... ; default: corpus/
# ```
#
# It writes its plot to `$STABILITYBENCH_NOTEBOOK_OUT` (default `notebooks/out/`).
# `runs.parquet` (written by `stabilitybench analyze`) adds the outcomes (`collapsed`,
# `collapse_time`, ...); without it the manifest is used and outcome columns are skipped.

# %%
from __future__ import annotations

import os
import sys
from pathlib import Path

import duckdb
import matplotlib

matplotlib.use("Agg")  # a script has no display; in Jupyter the figure still shows inline via display()
import matplotlib.pyplot as plt
import pandas as pd
import polars as pl

# argv[1] when it is a folder (Jupyter passes its own "-f kernel.json" arguments), else the env var
_arg = next((a for a in sys.argv[1:] if Path(a).is_dir()), None)
CORPUS = Path(_arg or os.environ.get("STABILITYBENCH_CORPUS", "corpus"))
OUT = Path(os.environ.get("STABILITYBENCH_NOTEBOOK_OUT", "notebooks/out"))
if not (CORPUS / "manifest.parquet").exists():
    sys.exit(f"error: {CORPUS}/manifest.parquet not found (generate a corpus, or pass its path)")
STEPS_GLOB = str(CORPUS / "steps" / "**" / "*.parquet")
RUNS_FILE = CORPUS / ("runs.parquet" if (CORPUS / "runs.parquet").exists() else "manifest.parquet")
print(f"corpus: {CORPUS} (run table: {RUNS_FILE.name})")

# %% [markdown]
# ## 1. The run table with polars
# One row per run: the spec (algo, env, perturbation, magnitude, seed, ...) and its status.

# %%
runs = pl.read_parquet(RUNS_FILE).filter(pl.col("status") == "ok")
print(runs.group_by("algo", "perturbation", "magnitude").agg(pl.len().alias("runs")).sort("algo", "perturbation"))

# %% [markdown]
# ## 2. Polars lazy scans with filters
# `scan_parquet` reads nothing until `.collect()`. The filters on the Hive partition columns
# (`algo`, `perturbation`) prune whole directories, the `step` filter and the column
# projection are pushed down into the Parquet reader.

# %%
steps = pl.scan_parquet(STEPS_GLOB, hive_partitioning=True)
ppo_spike = (
    steps.filter((pl.col("algo") == "ppo") & (pl.col("perturbation") != "none") & pl.col("perturbation_active"))
    .select("run_id", "step", "lr", "grad_norm", "grad_coherence")
)
print("optimized plan (the filters sit inside the Parquet scan):")
print("\n".join(ppo_spike.explain().splitlines()[:12]))
during = ppo_spike.group_by("run_id").agg(
    pl.len().alias("updates_perturbed"),
    pl.col("lr").max().alias("max_lr"),
    pl.col("grad_norm").max().alias("max_grad_norm"),
).collect()
print("PPO runs while the perturbation was active:")
print(during)

# %% [markdown]
# ## 3. DuckDB: SQL joins of runs x steps
# Mean gradient norm and coherence before and after the onset of each run, next to its spec.

# %%
con = duckdb.connect()
con.execute(f"create view runs as select * from read_parquet('{RUNS_FILE}')")
con.execute(f"create view steps as select * from read_parquet('{STEPS_GLOB}', hive_partitioning = true)")
outcome = "r.collapsed, r.collapse_time," if RUNS_FILE.name == "runs.parquet" else ""
sql = f"""
select r.algo, r.perturbation, r.magnitude, r.seed, {outcome}
       avg(s.grad_norm)      filter (where s.step <  r.onset_step) as grad_norm_before,
       avg(s.grad_norm)      filter (where s.step >= r.onset_step) as grad_norm_after,
       avg(s.grad_coherence) filter (where s.step <  r.onset_step) as coherence_before,
       avg(s.grad_coherence) filter (where s.step >= r.onset_step) as coherence_after,
       count(*) as updates
from runs r join steps s using (run_id)
where r.status = 'ok'
group by all
order by r.algo, r.perturbation, r.magnitude, r.seed
"""
per_run = con.sql(sql)
per_run.show(max_width=200)

# %% [markdown]
# ## 4. Hand-off to pandas
# `.df()` gives a pandas DataFrame; here a pivot of the gradient-norm ratio (after / before onset).

# %%
df: pd.DataFrame = per_run.df()
df["grad_norm_ratio"] = df["grad_norm_after"] / df["grad_norm_before"]
pivot = df.pivot_table(index=["perturbation", "magnitude"], columns="algo", values="grad_norm_ratio", aggfunc="median")
print("median grad-norm ratio after/before onset, per configuration and algorithm:")
print(pivot.round(3).to_string())

# %% [markdown]
# ## 5. A custom plot
# Gradient norm of every run of the first algorithm with a perturbed run, aligned on the onset.

# %%
algo = (runs.filter(pl.col("perturbation") != "none")["algo"].to_list() or runs["algo"].to_list())[0]
sel = runs.filter(pl.col("algo") == algo).select("run_id", "perturbation", "magnitude", "onset_step")
traces = (
    steps.filter((pl.col("algo") == algo) & pl.col("run_id").is_in(sel["run_id"].to_list()))
    .select("run_id", "step", "grad_norm")
    .collect()
    .join(sel, on="run_id")
    .with_columns((pl.col("step") - pl.col("onset_step")).alias("since_onset"))
    .to_pandas()
)
fig, ax = plt.subplots(figsize=(7, 3.5))
for (rid, kind, mag), g in traces.groupby(["run_id", "perturbation", "magnitude"]):
    label = "control" if kind == "none" else f"{kind} x{mag:g}"
    ax.plot(g["since_onset"], g["grad_norm"], lw=1, alpha=0.8, color="0.5" if kind == "none" else None,
            label=f"{label} ({rid[:6]})")
ax.axvline(0, color="k", ls=":", lw=1)
ax.set_yscale("log")
ax.set_xlabel("optimizer updates since perturbation onset")
ax.set_ylabel("gradient norm (L2, before clipping)")
ax.set_title(f"{algo}: gradient norm around the perturbation onset")
ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
fig.tight_layout()
OUT.mkdir(parents=True, exist_ok=True)
plot_path = OUT / "grad_norm_around_onset.png"
fig.savefig(plot_path, dpi=110)
print(f"plot written: {plot_path}")
