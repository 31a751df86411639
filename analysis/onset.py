"""Telemetry around the perturbation onset: the rows figure F1 draws (``results/onset_telemetry.parquet``).

Which runs: every control, and per (domain, algo, kind) the strongest magnitude (the longest spike), at one
stochasticity level (``default`` when present, else the most common), so that seeds of different levels are
not pooled. Only natural runs: none that acted on a live monitor's alarm. What: ``performance``,
``grad_norm`` and ``grad_coherence`` read from the corpus and thinned to about :data:`POINTS` points per run
(means of consecutive updates, a display step only), and the Kalman monitor's score from the early-warning
test folds; ``x`` is updates since onset as a fraction of the run's updates, within :data:`WINDOW`. Nothing
here is a statistic: the report draws the median and IQR across seeds of these rows.
"""

from __future__ import annotations

import os

import polars as pl

from stabilitybench.analysis.data import iter_run_steps
from stabilitybench.data_schema.keys import onset_step

#: The window around onset, as fractions of the run's updates.
WINDOW = (-0.1, 0.5)
#: Points per run kept (display thinning only).
POINTS = 240
#: The raw telemetry signals, in the order F1 draws them (then ``msd``).
SIGNALS = ("performance", "grad_norm", "grad_coherence")
#: The per-run key columns every row carries (joins use them, never a label).
KEYS = ("run_id", "domain", "algo", "dimension", "perturbation", "magnitude", "duration_steps", "unperturbed")


def onset_selection(runs: pl.DataFrame) -> pl.DataFrame:
    """The runs F1 shows (module docstring) among ``runs`` (natural runs with an ``unperturbed`` column).

    Adds ``onset`` (:func:`~stabilitybench.data_schema.keys.onset_step`) and ``n_upd`` (updates run, else
    planned); a run without updates is left out.
    """
    r = runs.with_columns(
        pl.struct(["onset_step", "onset_frac", "planned_updates"]).map_elements(onset_step, return_dtype=pl.Int64)
        .alias("onset"),
        pl.col("n_updates").fill_null(pl.col("planned_updates")).alias("n_upd"),
    ).filter(pl.col("n_upd").is_not_null() & (pl.col("n_upd") > 0))
    levels = r["stochasticity"].value_counts(sort=True)["stochasticity"].to_list()
    level = "default" if "default" in levels else (levels[0] if levels else None)
    if level is not None:
        r = r.filter(pl.col("stochasticity") == level)
    ctrl = r.filter(pl.col("unperturbed"))
    pert = r.filter(~pl.col("unperturbed"))
    if pert.height:
        keys = ["domain", "algo", "perturbation"]
        top = pert.group_by(keys).agg(pl.col("magnitude").max().alias("_m"))
        pert = pert.join(top, on=keys).filter(pl.col("magnitude") == pl.col("_m"))
        longest = pert.group_by(keys).agg(pl.col("duration_steps").max().alias("_d"))
        pert = pert.join(longest, on=keys).filter(pl.col("duration_steps") == pl.col("_d")).drop("_m", "_d")
    return pl.concat([ctrl, pert], how="vertical_relaxed")


def _thin(frame: pl.DataFrame, cols: list[str], n_upd: int) -> pl.DataFrame:
    b = max(1, int(n_upd) // POINTS)
    return (frame.with_columns((pl.col("step") // b).alias("_b"))
            .group_by("_b", maintain_order=True)
            .agg(pl.col("step").max(), *[pl.col(c).cast(pl.Float64).mean() for c in cols])
            .drop("_b"))


def onset_telemetry(corpus: str | os.PathLike[str], runs: pl.DataFrame, scores: pl.DataFrame | None) -> pl.DataFrame:
    """The long table of F1: :data:`KEYS` plus ``signal`` (a :data:`SIGNALS` name or ``msd``), ``x`` and ``value``.

    ``runs``: natural runs (manifest columns plus ``unperturbed``); ``scores``: the ``early_warning_scores``
    rows (None without an early-warning evaluation). Only finite values inside :data:`WINDOW`.
    """
    sel = onset_selection(runs)
    meta = sel.select(*KEYS, "onset", "n_upd")
    lo, hi = WINDOW
    parts: list[pl.DataFrame] = []
    for row, steps in iter_run_steps(corpus, sel, list(SIGNALS)):
        thin = _thin(steps, list(SIGNALS), row["n_upd"])
        x = (thin["step"].to_numpy() - row["onset"]) / row["n_upd"]
        keep = (x >= lo) & (x <= hi)
        for s in SIGNALS:
            v = thin[s].to_numpy().astype(float)[keep]
            parts.append(pl.DataFrame({"run_id": row["run_id"], "signal": s, "x": x[keep], "value": v}))
    if scores is not None and scores.height:
        k = scores.filter(pl.col("detector") == "kalman").join(meta.select("run_id", "onset", "n_upd"), on="run_id")
        k = k.with_columns(((pl.col("step") - pl.col("onset")) / pl.col("n_upd")).alias("x"))
        k = k.filter((pl.col("x") >= lo) & (pl.col("x") <= hi))
        parts.append(k.select("run_id", pl.lit("msd").alias("signal"), "x", pl.col("score").alias("value")))
    schema = {"run_id": pl.String, "signal": pl.String, "x": pl.Float64, "value": pl.Float64}
    frame = pl.concat([p.cast(schema) for p in parts], how="vertical_relaxed") if parts else pl.DataFrame(
        schema=schema)
    frame = frame.join(meta.select(KEYS), on="run_id")
    frame = frame.filter(pl.col("value").is_not_null() & pl.col("value").is_finite())
    return frame.select(*KEYS, "signal", "x", "value")


__all__ = ["POINTS", "SIGNALS", "WINDOW", "onset_selection", "onset_telemetry"]
