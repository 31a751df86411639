"""F5 (PCA scree against the circular-shift null) and F6 (trajectories in PC1-PC2), from the PCA tables."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from stabilitybench.analysis.summary import Status
from stabilitybench.reports.data import ReportData
from stabilitybench.reports.figures.spec import FigureSpec
from stabilitybench.reports.phrases import pca_testable
from stabilitybench.reports.style import PALETTE, grid, new_axes, outside_legend, too_little_data
from stabilitybench.reports.text import Source, ci


def fig_pca_scree(evr: pl.DataFrame, group: str, entry: dict[str, Any] | None = None,
                  ax: Axes | None = None) -> Axes:
    """F5 panel: explained-variance ratio per component, real vs the time-shuffled null.

    ``evr``: the ``pca_explained`` table; ``entry``: ``summary['pca'][group]`` for the
    annotation (components for 90% variance, participation ratio, both vs the null).
    """
    ax = new_axes(ax)
    g = evr.filter(pl.col("group") == group)
    for subset, col, ls in (("all_runs", PALETTE[0], "-"), ("unperturbed_runs", PALETTE[2], "-")):
        s = g.filter(pl.col("subset") == subset).sort("component")
        if s.height == 0:
            continue
        ax.plot(s["component"], s["explained_variance_ratio"], marker="o", ms=3.5, color=col, ls=ls,
                label=subset.replace("_", " "))
        ax.plot(s["component"], s["null_explained_variance_ratio"], color=col, ls=":", lw=1.2,
                label=f"{subset.replace('_', ' ')}, shuffled null")
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance ratio")
    if g.height:
        ax.set_xticks(range(1, int(g["component"].max()) + 1))
    ax.set_title(group)
    if entry and Status.of(entry["all_runs"]) is None:
        a = entry["all_runs"]
        n90, n90_null = a["n_components_90"]["value"], a["null_n_components_90"]["value"]
        pr, pr_null = a["participation_ratio"]["value"], a["null_participation_ratio"]["value"]
        nr = a["n_runs"]
        ax.set_title(f"{group} ({entry['n_features']} features, {nr} run{'' if nr == 1 else 's'})\n"
                     f"90% variance: {n90:g} PCs (null {n90_null:g}) · PR {pr:.2f} (null {pr_null:.2f})", fontsize=8.5)
    return ax


def _pca_groups(data: ReportData) -> list[str]:
    return [k for k, v in data.summary.get("pca").items() if Status.of(v) is None]


def build_pca_scree(data: ReportData) -> tuple[Figure, list[str]]:
    evr = data.table("pca_explained")
    groups = _pca_groups(data)
    if evr is None or not groups:
        fig, axes = grid(1, 1, panel=(6.0, 2.6))
        why = "; ".join(f"{k}: {Status.from_json(v)}" for k, v in data.summary.get("pca").items()
                        if Status.of(v) is not None) or "no PCA"
        too_little_data(axes[0], why, "F5 · PCA scree")
        return fig, [why]
    ncol = min(3, len(groups))
    fig, axes = grid(-(-len(groups) // ncol), ncol, panel=(4.3, 3.3))
    for ax, grp in zip(axes, groups, strict=False):
        fig_pca_scree(evr, grp, data.summary.get("pca", grp), ax=ax)
    for ax in axes[len(groups):]:
        ax.set_axis_off()
    outside_legend(axes[ncol - 1])
    fig.suptitle("F5 · PCA of standardised telemetry vs a time-shuffled null", fontsize=11, fontweight="bold")
    return fig, []


# =========================================================================== F6
def fig_pca_trajectories(traj: pl.DataFrame, runs: pl.DataFrame, group: str, ax: Axes | None = None) -> Axes:
    """F6 panel: block trajectories in PC1-PC2; collapsed runs coloured by updates until collapse.

    ``traj``: the ``pca_trajectories`` table; ``runs``: ``run_id, collapsed, collapse_step``.
    Runs that never collapse are grey; a black cross marks each collapse.
    """
    ax = new_axes(ax)
    t = traj.filter(pl.col("group") == group).join(runs.select("run_id", "collapsed", "collapse_step"),
                                                    on="run_id", how="left")
    calm = t.filter(~pl.col("collapsed").fill_null(False))
    for _, g in calm.sort("run_id").group_by("run_id", maintain_order=True):  # a fixed draw order
        g = g.sort("step")
        ax.plot(g["pc1"], g["pc2"], color="0.72", lw=0.6, alpha=0.6, rasterized=True)
    col = t.filter(pl.col("collapsed").fill_null(False)).with_columns(
        (pl.col("collapse_step") - pl.col("step")).alias("to_collapse")).sort(["run_id", "step"])
    if col.height:
        tc = col["to_collapse"].to_numpy().astype(float)
        vmax = max(float(np.nanmax(np.abs(tc))), 1.0)
        norm = mcolors.Normalize(vmin=-vmax, vmax=vmax)  # 0 (the collapse) sits mid-scale, never white
        sc = ax.scatter(col["pc1"], col["pc2"], c=tc, cmap="viridis", norm=norm, s=5, lw=0, rasterized=True)
        cb = ax.figure.colorbar(sc, ax=ax, shrink=0.85)
        cb.set_label("updates until collapse\n(negative: after collapse)")
        at = (col.filter(pl.col("to_collapse") <= 0).group_by("run_id", maintain_order=True)
              .agg(pl.all().sort_by("step").first()))
        ax.scatter(at["pc1"], at["pc2"], marker="X", color="k", s=40, label="collapse", zorder=3)
    ax.plot([], [], color="0.72", lw=1, label="no collapse")
    ax.set_xlabel("PC1 (standardised units)")
    ax.set_ylabel("PC2 (standardised units)")
    ax.set_title(group)
    ax.legend(loc="best", fontsize=7.5, framealpha=0.85)
    return ax


def build_pca_trajectories(data: ReportData) -> tuple[Figure, list[str]]:
    traj, runs = data.table("pca_trajectories"), data.table("runs")
    groups = [] if traj is None else sorted(set(traj["group"].to_list()))
    if traj is None or runs is None or not groups:
        fig, axes = grid(1, 1, panel=(6.0, 2.6))
        why = "no projected trajectories (PCA not testable)"
        too_little_data(axes[0], why, "F6 · PC1–PC2 trajectories")
        return fig, [why]
    ncol = min(3, len(groups))
    fig, axes = grid(-(-len(groups) // ncol), ncol, panel=(5.0, 4.0))
    for ax, grp in zip(axes, groups, strict=False):
        fig_pca_trajectories(traj, runs, grp, ax=ax)
    for ax in axes[len(groups):]:
        ax.set_axis_off()
    fig.suptitle("F6 · telemetry trajectories in PC1–PC2 (block means)", fontsize=11, fontweight="bold")
    n_col = int(runs["collapsed"].fill_null(False).sum())
    return fig, ([] if n_col else ["no run collapsed: every trajectory is grey"])



def caption_scree(src: Source) -> list[Any]:
    out: list[Any] = ["Explained-variance ratio per principal component of the standardised telemetry (all runs, "
                      "and unperturbed runs only) against the mean of the time-shuffled null (dotted). "]
    for g in src.get("pca"):
        if pca_testable(src, g):
            p = ("pca", g, "all_runs")
            out += [f"{g}: ", *ci(src, *p, "n_components_90", digits=0), " components reach 90% variance (null ",
                    src.num(*p, "null_n_components_90", "value", digits=1), "), participation ratio ",
                    *ci(src, *p, "participation_ratio"), " (null ", src.num(*p, "null_participation_ratio", "value"),
                    "). "]
    return out


def caption_trajectories(src: Source) -> list[Any]:
    return ["Block-mean telemetry of every run projected on the first two principal components (all-runs PCA). Runs "
            "that collapse are coloured by the updates left until their collapse (yellow: long before, dark purple: "
            "after it); a cross marks the collapse; grey: runs that never collapse."]


SPECS = (
    FigureSpec("F5", "f05_pca_scree", "PCA scree against the shuffled null", "pca_dimension", build_pca_scree,
               caption_scree),
    FigureSpec("F6", "f06_pca_trajectories", "Trajectories in PC1–PC2", "pca_trajectories", build_pca_trajectories,
               caption_trajectories),
)
