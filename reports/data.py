"""What a report draws from: ``results/`` (via :mod:`stabilitybench.analysis.results`) and, for F1 only, the corpus.

Every number a caption or table quotes comes from ``summary.json``; the figures draw the
results tables. The one exception is F1 (telemetry around the perturbation onset), which
needs raw per-update telemetry that ``results/`` does not hold: it reads the runs'
``performance``, ``grad_norm`` and ``grad_coherence`` through :func:`stabilitybench.analysis.data.iter_run_steps`
and thins them to about :data:`F1_POINTS` points per run (means of consecutive updates, a
display step only). Nothing in F1 is quoted as a number.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from stabilitybench.analysis.data import is_unperturbed
from stabilitybench.analysis.results import load_table
from stabilitybench.analysis.summary import ResultsNotFoundError, StatusKind, Summary, read_summary
from stabilitybench.analysis.survival import group_label
from stabilitybench.data_schema import DIMENSIONS as ALL_DIMENSIONS
from stabilitybench.reports.errors import ResultsMissingError

#: The perturbation dimensions, in the order the paper (and data_schema.DIMENSIONS) lists them.
DIMENSIONS = tuple(d for d in ALL_DIMENSIONS if d != "none")
#: F1 window around onset, as fractions of the run's updates.
F1_WINDOW = (-0.1, 0.5)
#: Points per run kept for F1 (display thinning only).
F1_POINTS = 240
F1_SIGNALS = ("performance", "grad_norm", "grad_coherence")


@dataclass
class ReportData:
    """A results folder read once: ``summary`` (summary.json, typed) and the tables, loaded lazily."""

    results: Path
    summary: Summary
    corpus: Path | None = None
    _tables: dict[str, pl.DataFrame | None] = field(default_factory=dict, repr=False)

    def table(self, name: str) -> pl.DataFrame | None:
        """A results table (see :data:`stabilitybench.analysis.results.TABLES`), or None when analysis wrote none."""
        if name not in self._tables:
            frame = load_table(self.results, name)
            self._tables[name] = frame if frame is not None and frame.height else None
        return self._tables[name]

    def status(self, *keys: str) -> str | None:
        """The text of the NOT_TESTABLE status of the entry at ``keys`` (which must exist), or None."""
        st = self.summary.status(*keys)
        return st.text if st is not None and st.kind is StatusKind.NOT_TESTABLE else None


def load(results: str | os.PathLike[str], corpus: str | os.PathLike[str] | None = None) -> ReportData:
    """Open a results folder written by ``stabilitybench analyze``.

    ``corpus`` overrides the corpus path recorded in summary.json (used by F1 only; a
    missing corpus makes F1's telemetry rows "too little data", not an error).
    """
    path = Path(results)
    if not path.is_dir():
        raise ResultsMissingError(f"{path}: no such results folder (run `stabilitybench analyze --out {path}` first)")
    try:
        summary = read_summary(path)
    except ResultsNotFoundError as exc:
        raise ResultsMissingError(str(exc)) from None
    c = Path(corpus) if corpus is not None else (Path(summary.corpus) if summary.corpus else None)
    return ReportData(path, summary, c)


# --------------------------------------------------------------------------- F1 telemetry
def _label(kind: str, magnitude: float | None) -> str:
    """F1's legend label: ``"control"``, or the configuration label without the duration."""
    return "control" if kind == "none" else group_label(kind, magnitude)


def onset_selection(runs: pl.DataFrame) -> pl.DataFrame:
    """The runs F1 shows: every control, and per (domain, algo, kind) the strongest magnitude (longest spike),
    at one stochasticity level (``default`` when present, else the most common).

    Adds ``label`` (``"lr_spike ×100"`` or ``"control"``) and ``onset`` (the onset update;
    for controls the update at the same onset fraction; a run with neither is left out).
    """
    r = runs.with_columns(
        pl.when(pl.col("onset_step").is_not_null()).then(pl.col("onset_step"))
        .otherwise((pl.col("onset_frac") * pl.col("n_updates")).round().cast(pl.Int64))
        .alias("onset"),
        pl.col("n_updates").fill_null(pl.col("planned_updates")).alias("n_upd"),
        is_unperturbed(runs).alias("_control"),
    ).filter(pl.col("n_upd").is_not_null() & (pl.col("n_upd") > 0) & pl.col("onset").is_not_null())
    levels = r["stochasticity"].value_counts(sort=True)["stochasticity"].to_list()
    level = "default" if "default" in levels else (levels[0] if levels else None)
    if level is not None:  # one stochasticity level, so seeds of different levels are not pooled
        r = r.filter(pl.col("stochasticity") == level)
    ctrl = r.filter(pl.col("_control")).drop("_control")
    pert = r.filter(~pl.col("_control")).drop("_control")
    if pert.height:
        top = (pert.group_by(["domain", "algo", "perturbation"])
               .agg(pl.col("magnitude").max().alias("_m")))
        pert = pert.join(top, on=["domain", "algo", "perturbation"]).filter(pl.col("magnitude") == pl.col("_m"))
        longest = pert.group_by(["domain", "algo", "perturbation"]).agg(pl.col("duration_steps").max().alias("_d"))
        pert = (pert.join(longest, on=["domain", "algo", "perturbation"])
                .filter(pl.col("duration_steps") == pl.col("_d")).drop("_m", "_d"))
    sel = pl.concat([ctrl, pert], how="vertical_relaxed")
    return sel.with_columns(
        pl.struct(["perturbation", "magnitude"]).map_elements(
            lambda s: _label(s["perturbation"], s["magnitude"]), return_dtype=pl.String).alias("label"))


def _thin(frame: pl.DataFrame, cols: list[str], n_upd: int) -> pl.DataFrame:
    b = max(1, int(n_upd) // F1_POINTS)
    return (frame.with_columns((pl.col("step") // b).alias("_b"))
            .group_by("_b", maintain_order=True)
            .agg(pl.col("step").max(), *[pl.col(c).cast(pl.Float64).mean() for c in cols])
            .drop("_b"))


def _iter_steps(corpus: Path, sel: pl.DataFrame) -> Iterator[tuple[dict[str, Any], pl.DataFrame]]:
    """The selected runs' telemetry, read only from runs whose files ``verify`` accepts now.

    The corpus may have changed since ``analyze``: each selected run is checked against the
    corpus's manifest (:func:`stabilitybench.data_schema.verify.readable_runs`); a damaged run is left out of F1
    and named in one :class:`~stabilitybench.data_schema.errors.SkippedRunsWarning`, a run the manifest no longer
    has is left out silently (F1 then says the corpus holds no telemetry for it).
    """
    from stabilitybench.analysis.data import iter_run_steps
    from stabilitybench.data_schema import read_manifest
    from stabilitybench.data_schema.verify import readable_runs

    wanted = set(sel["run_id"].to_list())
    rows = [r for r in read_manifest(corpus).to_pylist() if r["run_id"] in wanted]
    readable = readable_runs(corpus, rows)
    readable.report(stacklevel=4)
    yield from iter_run_steps(corpus, sel.filter(pl.col("run_id").is_in(readable.run_ids)), list(F1_SIGNALS))


def onset_telemetry(data: ReportData) -> tuple[pl.DataFrame | None, dict[str, str]]:
    """Long frame for F1 and the reasons for signals that cannot be drawn.

    Columns: ``run_id, algo, dimension, label, signal, x`` (updates since onset as a
    fraction of the run) and ``value``. ``signal`` is one of performance, grad_norm,
    grad_coherence, msd. The dict maps a signal to a "too little data" reason.
    """
    reasons: dict[str, str] = {}
    runs = data.table("runs")
    if runs is None:
        return None, {s: "no runs table in the results" for s in (*F1_SIGNALS, "msd")}
    sel = onset_selection(runs)
    meta = sel.select("run_id", "algo", "dimension", "label", "onset", "n_upd")
    parts: list[pl.DataFrame] = []
    lo, hi = F1_WINDOW
    if data.corpus is None or not Path(data.corpus).is_dir():
        for s in F1_SIGNALS:
            reasons[s] = f"the corpus ({data.corpus}) is not here; pass --corpus to draw raw telemetry"
    else:
        n_read = 0
        for row, steps in _iter_steps(Path(data.corpus), sel):
            n_read += steps.height
            thin = _thin(steps, list(F1_SIGNALS), row["n_upd"])
            x = (thin["step"].to_numpy() - row["onset"]) / row["n_upd"]
            keep = (x >= lo) & (x <= hi)
            for s in F1_SIGNALS:
                v = thin[s].to_numpy().astype(float)[keep]
                parts.append(pl.DataFrame({"run_id": row["run_id"], "signal": s, "x": x[keep], "value": v}))
        if n_read == 0:
            for s in F1_SIGNALS:
                reasons[s] = (f"the corpus at {data.corpus} holds no telemetry for the runs in these results "
                              "(was it regenerated after `analyze`? pass --corpus)")
    scores = data.table("early_warning_scores")
    if scores is None:
        reasons["msd"] = data.status("early_warning") or "no early-warning scores in the results"
    else:
        k = scores.filter(pl.col("detector") == "kalman").join(meta, on="run_id")
        if k.height == 0:
            reasons["msd"] = "no Kalman monitor scores for the selected runs"
        else:
            k = k.with_columns(((pl.col("step") - pl.col("onset")) / pl.col("n_upd")).alias("x"))
            k = k.filter((pl.col("x") >= lo) & (pl.col("x") <= hi))
            parts.append(k.select("run_id", pl.lit("msd").alias("signal"), "x", pl.col("score").alias("value")))
    if not parts:
        return None, reasons
    frame = pl.concat(parts, how="vertical_relaxed").join(meta.select("run_id", "algo", "dimension", "label"),
                                                          on="run_id")
    frame = frame.filter(pl.col("value").is_not_null() & pl.col("value").is_finite())
    for s in (*F1_SIGNALS, "msd"):
        if s not in reasons and frame.filter(pl.col("signal") == s).height == 0:
            reasons[s] = "no finite values in the window around onset"
    return frame, reasons


def finite(x: Any) -> bool:
    """True for a real, finite number."""
    return isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool) and bool(np.isfinite(x))
