"""The dose-finding figure: collapse fraction per magnitude and the fitted logistic curve, one panel per curve.

Plotting only: :mod:`stabilitybench.calibrate` computes the points and curves.
"""

from __future__ import annotations

import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from stabilitybench.reports.style import PALETTE, grid, too_little_data


def fig_dose_finding(points: pl.DataFrame, curves: pl.DataFrame, eds: pl.DataFrame) -> Figure:
    """``points``: label, magnitude, n, collapsed (counts per dose); ``curves``: label, magnitude, p
    (fitted curve, empty where no fit); ``eds``: label, ed50, ci_low, ci_high, status. One panel per label."""
    labels = eds["label"].to_list()
    ncols = min(3, max(1, len(labels)))
    nrows = -(-max(1, len(labels)) // ncols)
    fig, axes = grid(nrows, ncols, panel=(4.0, 3.0))
    for ax in axes[len(labels):]:
        ax.set_axis_off()
    for ax, label in zip(axes, labels, strict=False):
        pts = points.filter(pl.col("label") == label)
        if pts.height == 0:
            too_little_data(ax, "no finished runs", title=label)
            continue
        frac = (pts["collapsed"] / pts["n"]).to_numpy()
        ax.scatter(pts["magnitude"].to_numpy(), frac, s=12 + 10 * pts["n"].to_numpy(), color=PALETTE[0],
                   alpha=0.8, label="collapsed / runs (size: runs)", zorder=3)
        cur = curves.filter(pl.col("label") == label)
        if cur.height:
            ax.plot(cur["magnitude"].to_numpy(), cur["p"].to_numpy(), color=PALETTE[1], label="logistic fit")
        ed = eds.filter(pl.col("label") == label).row(0, named=True)
        if ed["ed50"] is not None:
            ax.axvline(ed["ed50"], color=PALETTE[2], ls="--", lw=1, label="ED50")
            lo = ed["ci_low"] if ed["ci_low"] is not None else pts["magnitude"].min()
            hi = ed["ci_high"] if ed["ci_high"] is not None else pts["magnitude"].max()
            bounded = ed["ci_low"] is not None and ed["ci_high"] is not None
            ax.axvspan(lo, hi, color=PALETTE[2], alpha=0.12,
                       label="ED50 95% CI" if bounded else "ED50 95% CI (unbounded)")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("magnitude")
        ax.set_ylabel("collapse fraction")
        ax.set_title(f"{label}\n({ed['status']})", fontsize=8.5)
    if labels:
        axes[0].legend(loc="upper left", fontsize=7)
    return fig
