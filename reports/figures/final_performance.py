"""F12: final performance per configuration, rliable-style (IQM with stratified-bootstrap CIs, performance profiles).

Draws the ``final_performance_iqm`` and ``performance_profiles`` tables that
:mod:`stabilitybench.analysis.aggregates` wrote; computes nothing.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from stabilitybench.data_schema.keys import ConfigKey
from stabilitybench.reports.data import ReportData
from stabilitybench.reports.figures.common import placeholder
from stabilitybench.reports.figures.spec import FigureSpec
from stabilitybench.reports.style import PALETTE, grid, new_axes, outside_legend
from stabilitybench.reports.text import Source

LABEL_KEYS = ("algo", "stochasticity", "perturbation", "magnitude", "duration_steps")


def row_label(row: dict[str, Any]) -> str:
    """``ppo · lr_spike x10 (320 upd)``: the algo, a non-default stochasticity level and the row's configuration
    (:meth:`~stabilitybench.data_schema.keys.ConfigKey.label` of its key columns)."""
    sto = "" if row["stochasticity"] == "default" else f" · {row['stochasticity']}"
    return f"{row['algo']}{sto} · {ConfigKey.of(row).label()}"


def fig_iqm(iqm: pl.DataFrame, ax: Axes | None = None) -> Axes:
    """IQM of the control-normalised final performance per configuration with its 95% CI (horizontal bars)."""
    ax = new_axes(ax)
    rows = iqm.sort(["algo", "perturbation", "magnitude"]).to_dicts()
    for i, r in enumerate(rows):
        lo, hi = r["ci_low"], r["ci_high"]
        color = PALETTE[0] if ConfigKey.of(r).is_control else PALETTE[1]
        if lo is not None and hi is not None:
            ax.plot([lo, hi], [i, i], color=color, lw=4, alpha=0.5, solid_capstyle="butt")
        ax.plot([r["iqm"]], [i], "o", color=color, ms=4)
    ax.set_yticks(range(len(rows)), [f"{row_label(r)} (n={r['n_runs']})" for r in rows], fontsize=7)
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("IQM of final performance / control median")
    ax.invert_yaxis()
    return ax


def fig_profiles(profiles: pl.DataFrame, ax: Axes | None = None) -> Axes:
    """Performance profiles: fraction of runs with normalised score > tau, with 95% CI bands."""
    ax = new_axes(ax)
    for i, ((_key), g) in enumerate(sorted(profiles.group_by(list(LABEL_KEYS)), key=lambda kv: str(kv[0]))):
        g = g.sort("tau")
        color = PALETTE[i % len(PALETTE)]
        ax.plot(g["tau"], g["fraction"], color=color, lw=1.4, label=row_label(g.row(0, named=True)))
        if g["ci_low"].null_count() == 0:
            ax.fill_between(g["tau"], g["ci_low"], g["ci_high"], color=color, alpha=0.15, lw=0)
    ax.set_xlabel("tau (final performance / control median)")
    ax.set_ylabel("fraction of runs with score > tau")
    ax.set_ylim(-0.02, 1.02)
    return ax


def build_aggregates(data: ReportData) -> tuple[Figure, list[str]]:
    iqm, profiles = data.table("final_performance_iqm"), data.table("performance_profiles")
    if iqm is None or profiles is None:
        return placeholder("no configuration has matched unperturbed controls to normalise its final performance",
                           "F12 · final performance (IQM)")
    fig, axes = grid(1, 2, panel=(4.6, max(2.8, 0.22 * iqm.height)))
    fig_iqm(iqm, ax=axes[0])
    fig_profiles(profiles, ax=axes[1])
    outside_legend(axes[1], "configuration", *axes[1].get_legend_handles_labels())
    fig.suptitle("F12 · final performance per configuration: IQM (stratified bootstrap 95% CI) and performance "
                 "profiles", fontsize=11, fontweight="bold")
    return fig, []


def caption(src: Source) -> list[Any]:
    return ["Final performance normalised by the median of the matched unperturbed runs (1 = control level; "
            "analysis/aggregates.py). Left: interquartile mean per configuration with a 95% stratified-bootstrap CI "
            "(runs resampled within each env, as rliable does); right: performance profiles, the fraction of runs "
            "above each threshold, with 95% CI bands."]


SPEC = FigureSpec("F12", "f12_final_performance", "Final performance: IQM and performance profiles",
                  "final_performance", build_aggregates, caption)
