"""F1: telemetry around the perturbation onset, drawn from ``results/onset_telemetry.parquet``.

Analysis selects the runs and thins their telemetry (:mod:`stabilitybench.analysis.onset`); this module draws
the median and IQR band across seeds of those rows (seaborn's estimator), one column per stability dimension.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from stabilitybench.analysis.onset import SIGNALS, WINDOW
from stabilitybench.data_schema.keys import config_label_expr
from stabilitybench.reports.data import DIMENSIONS, ReportData
from stabilitybench.reports.figures.common import SIGNAL_LABELS, colors, placeholder, symlog_y
from stabilitybench.reports.figures.spec import FigureSpec
from stabilitybench.reports.style import CONTROL_COLOR, grid, new_axes, outside_legend, too_little_data
from stabilitybench.reports.text import Source

_STYLES = ["-", "--", ":", "-."]


def fig_onset_telemetry(frame: pl.DataFrame, signal: str, dimension: str, ax: Axes | None = None,
                        colors_: dict[str, Any] | None = None) -> Axes:
    """F1 panel: one telemetry signal around onset for one dimension; median and IQR band across seeds.

    ``frame``: the ``onset_telemetry`` table with a ``label`` column (the configuration without its
    duration, :func:`~stabilitybench.data_schema.keys.config_label_expr`); controls (``unperturbed``) in grey.
    """
    ax = new_axes(ax)
    d = frame.filter(pl.col("signal") == signal)
    pert = d.filter(pl.col("dimension") == dimension)
    ctrl = d.filter(pl.col("unperturbed") & pl.col("algo").is_in(pert["algo"].unique().to_list()))
    algos = sorted(set(pert["algo"].to_list()))
    styles = dict(zip(algos, _STYLES, strict=False))
    labels = sorted(set(pert["label"].to_list()))
    cols = colors_ or colors(labels)
    for (algo, label), g in sorted(pert.group_by(["algo", "label"]), key=lambda kv: str(kv[0])):
        sns.lineplot(g.to_pandas(), x="x", y="value", estimator="median", errorbar=("pi", 50),
                     color=cols[label], linestyle=styles.get(algo, "-"), ax=ax, legend=False, linewidth=1.3)
    for algo, g in sorted(ctrl.group_by("algo"), key=lambda kv: str(kv[0])):
        sns.lineplot(g.to_pandas(), x="x", y="value", estimator="median", errorbar=("pi", 50), color=CONTROL_COLOR,
                     linestyle=styles.get(algo[0], "-"), ax=ax, legend=False, linewidth=1.0)
    ax.axvline(0, color="k", lw=0.8, ls=":")
    if signal == "grad_norm" and d["value"].min() is not None and d["value"].min() > 0:
        ax.set_yscale("log")
    if signal == "msd":
        symlog_y(ax)
    ax.set_xlabel("updates since onset (fraction of the run)")
    ax.set_ylabel(SIGNAL_LABELS.get(signal, signal))
    return ax


def _reasons(data: ReportData, frame: pl.DataFrame) -> dict[str, str]:
    """Per signal without rows, why (the early-warning status for the monitor's score)."""
    reasons: dict[str, str] = {}
    for s in (*SIGNALS, "msd"):
        if frame.filter(pl.col("signal") == s).height:
            continue
        if s == "msd" and data.table("early_warning_scores") is None:
            reasons[s] = data.status("early_warning") or "no early-warning scores in the results"
        elif s == "msd":
            reasons[s] = "no Kalman monitor scores for the selected runs"
        else:
            reasons[s] = "no finite values in the window around onset"
    return reasons


def build_onset_telemetry(data: ReportData) -> tuple[Figure, list[str]]:
    table = data.table("onset_telemetry")
    if table is None:
        return placeholder("no telemetry around onset in the results (no run with updates; rerun "
                           "`stabilitybench analyze` if these results predate results/onset_telemetry.parquet)",
                           "F1 · telemetry around perturbation onset")
    frame = table.with_columns(config_label_expr(("perturbation", "magnitude")).alias("label"))
    reasons = _reasons(data, frame)
    dims = [d for d in DIMENSIONS if d in set(frame["dimension"].to_list())]
    signals = [*SIGNALS, "msd"]
    if not dims:
        return placeholder("no perturbed runs with telemetry around onset", "F1 · telemetry around perturbation onset")
    fig, axes = grid(len(signals), len(dims), panel=(5.2 if len(dims) == 1 else 3.9, 2.5))
    pert = frame.filter(~pl.col("unperturbed"))
    labels = sorted(set(pert["label"].to_list()))
    cols = colors(labels)
    algos = sorted(set(pert["algo"].to_list()))
    handles = [Line2D([], [], color=cols[lb], lw=1.5, label=lb) for lb in labels]
    handles.append(Line2D([], [], color=CONTROL_COLOR, lw=1.2, label="unperturbed control"))
    if len(algos) > 1:
        handles += [Line2D([], [], color="k", ls=ls, lw=1.0, label=a) for a, ls in zip(algos, _STYLES, strict=False)]
    shown: list[str] = []
    drawn = [s for s in signals if s not in reasons] or signals
    for i, s in enumerate(signals):
        for j, dim in enumerate(dims):
            ax = axes[i * len(dims) + j]
            if s in reasons:
                too_little_data(ax, reasons[s])
                if reasons[s] not in shown:
                    shown.append(reasons[s])
                continue
            fig_onset_telemetry(frame, s, dim, ax=ax, colors_=cols)
            ax.set_xlim(*WINDOW)
            if s != drawn[-1]:
                ax.set_xlabel("")
            if j:
                ax.set_ylabel("")
            if i == 0:
                ax.set_title(dim.replace("_", " "))
            if j == len(dims) - 1 and i == min(k for k, sg in enumerate(signals) if sg not in reasons):
                outside_legend(ax, "perturbation (strongest)", handles=handles, labels=[h.get_label() for h in handles])
    fig.suptitle("F1 · telemetry around perturbation onset\n(median and IQR across seeds; strongest magnitude "
                 "of each kind)", fontsize=11, fontweight="bold")
    return fig, [f"{s}: {r}" for s, r in reasons.items()]


def caption(src: Source) -> list[Any]:
    return ["Performance, gradient norm, gradient coherence and the Kalman monitor's MSD around the perturbation "
            "onset (dotted line at 0), as a fraction of each run's updates; median across seeds with the IQR band, "
            "for the strongest magnitude of each perturbation kind (one stochasticity level: 'default' when "
            "present), one column per stability dimension; grey: unperturbed controls. Runs that acted on a live "
            "monitor's alarm are left out. The telemetry was read from the corpus by the analysis "
            "(results/onset_telemetry.parquet); the MSD comes from the held-out test folds of the early-warning "
            "evaluation."]


SPEC = FigureSpec("F1", "f01_onset_telemetry", "Telemetry around perturbation onset", "onset_telemetry",
                  build_onset_telemetry, caption)
