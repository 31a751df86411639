"""The intervention figure: collapse rate with and without acting on the live monitor's alarm, per kind.

Draws :func:`stabilitybench.analysis.intervention.intervention_table` as it is (no statistics here): per perturbation
kind, a grey bar for the runs without an action and one coloured bar per action arm, over the same
matched pairs; the paired difference's CI is printed above each action bar. Controls (the table's
``controls`` column) come first: there every collapse of the action arm is a cost of false alarms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from stabilitybench.data_schema.keys import unperturbed_expr
from stabilitybench.reports.data import ReportData
from stabilitybench.reports.figures.spec import FigureSpec
from stabilitybench.reports.style import CONTROL_COLOR, PALETTE, grid, new_axes, outside_legend, too_little_data
from stabilitybench.reports.text import Source


def fig_intervention(table: pl.DataFrame, ax: Axes | None = None) -> Axes:
    """Grouped bars of ``collapse_rate_without`` / ``collapse_rate_with`` per perturbation and arm; returns the axes."""
    if table.height == 0:
        return too_little_data(ax, "no matched pairs (run the intervention profile, then analyze)",
                               "intervention: collapse rate")
    ax = new_axes(ax, (6.5, 3.6))
    if "monitor" in table.columns:  # one bar per (monitor, action)
        table = table.with_columns(pl.concat_str([pl.col("monitor").fill_null("?"), pl.col("arm")], separator=": ")
                                   .alias("arm"))
    controls = set(table.filter(pl.col("controls"))["perturbation"].to_list()) if "controls" in table.columns \
        else set(table.filter(unperturbed_expr())["perturbation"].to_list())
    kinds = sorted(table["perturbation"].unique().to_list(), key=lambda k: (k not in controls, k))
    arms = sorted(table["arm"].unique().to_list())
    width = 0.8 / (len(arms) + 1)
    for i, kind in enumerate(kinds):
        sub = table.filter(pl.col("perturbation") == kind)
        without = float(np.nanmean(sub["collapse_rate_without"].to_numpy()))  # one value per kind: same runs
        ax.bar(i - 0.4 + width / 2, without, width, color=CONTROL_COLOR, label="no action" if i == 0 else None)
        for j, arm in enumerate(arms):
            r = sub.filter(pl.col("arm") == arm)
            if r.height == 0:
                continue
            row = r.row(0, named=True)
            x = i - 0.4 + width * (j + 1.5)
            ax.bar(x, row["collapse_rate_with"], width, color=PALETTE[j % len(PALETTE)],
                   label=arm if i == 0 else None)
            lo, hi = row["collapse_diff_ci_low"], row["collapse_diff_ci_high"]
            ci = f"[{lo:+.2f}, {hi:+.2f}]" if lo is not None and hi is not None else "n/a"
            ax.annotate(f"n={row['n_pairs']}\n{ci}", (x, row["collapse_rate_with"]), ha="center", va="bottom",
                        fontsize=6, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(kinds)), [("control" if k in controls else k) for k in kinds], rotation=20)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("collapse rate (matched pairs)")
    ax.set_title("with vs without acting on the alarm\n(text: pairs, 95% CI of the paired difference)")
    outside_legend(ax, "arm")
    return ax


def build_intervention(data: ReportData) -> tuple[Figure, list[str]]:
    """F13: :func:`fig_intervention` of ``results/intervention.parquet`` (or why there is none)."""
    table = data.table("intervention")
    fig, axes = grid(1, 1, panel=(7.5, 3.8))
    if table is None:
        why = data.status("intervention") or "no run acted on a live monitor's alarm (the intervention profile)"
        too_little_data(axes[0], why, "F13 · intervention")
        return fig, [why]
    fig_intervention(table, ax=axes[0])
    fig.suptitle("F13 · acting on the live monitor's alarm: collapse rate with vs without (matched pairs)",
                 fontsize=11, fontweight="bold")
    return fig, []


def caption(src: Source) -> list[Any]:
    if src.ran("intervention"):
        return ["Collapse rate of matched pairs without (grey) and with acting on the live monitor's alarm, per "
                "perturbation and monitor (", src.num("intervention", "n_pairs", digits=0), " pairs; text: pairs and "
                "the 95% CI of the paired difference). Table 'Intervention' has final performance."]
    return ["Intervention: " + (src.status("intervention").text if src.has("intervention") else  # type: ignore[union-attr]
                                "not in this summary (analysed before the intervention stage existed)") + "."]


SPEC = FigureSpec("F13", "f13_intervention", "Intervention on the live monitor's alarm", "intervention",
                  build_intervention, caption)
