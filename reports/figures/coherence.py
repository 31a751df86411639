"""F11: gradient coherence before collapse against the reference runs, from ``coherence_aligned``."""

from __future__ import annotations

from typing import Any

import polars as pl
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from stabilitybench.reports.data import ReportData
from stabilitybench.reports.figures.spec import FigureSpec
from stabilitybench.reports.phrases import coherence_rows, direction
from stabilitybench.reports.style import CONTROL_COLOR, PALETTE, grid, new_axes, too_little_data
from stabilitybench.reports.text import Source, ci


def fig_coherence_aligned(coh: pl.DataFrame, ax: Axes | None = None, excess: bool = False,
                          block_updates: int | None = None) -> Axes:
    """F11 panel: gradient coherence of collapsed runs around collapse vs their matched controls.

    ``coh``: the ``coherence_aligned`` table. Thin lines: single runs; thick: median across
    runs with the IQR band (seaborn's estimator over the table's rows). ``excess=True``
    draws run minus controls instead.
    """
    ax = new_axes(ax)
    same = coh.group_by("offset_blocks").agg(pl.col("offset_updates").n_unique().alias("k"))["k"].max() == 1
    x = "offset_updates" if same else "offset_blocks"
    pdf = coh.to_pandas()
    series = [("excess", PALETTE[4], "run − matched controls")] if excess else [
        ("coherence", PALETTE[0], "collapsed runs"), ("control_coherence", CONTROL_COLOR, "matched controls")]
    for col, color, lab in series:
        for _, g in coh.sort("run_id").group_by("run_id", maintain_order=True):  # a fixed draw order
            g = g.sort(x)
            ax.plot(g[x], g[col], color=color, lw=0.5, alpha=0.35)
        sns.lineplot(pdf, x=x, y=col, estimator="median", errorbar=("pi", 50), color=color, lw=2, ax=ax, label=lab)
    ax.axvline(0, color="k", lw=0.9)
    if excess:
        ax.axhline(0, color="0.4", lw=0.8, ls="--")
    ax.set_xlabel("updates relative to collapse" if same else "blocks relative to collapse" + (
        f" (1 block = {block_updates} updates)" if block_updates else ""))
    ax.set_ylabel("excess coherence" if excess else "gradient coherence\n(mean pairwise cosine)")
    ax.legend(loc="lower left", fontsize=7.5, framealpha=0.85)
    return ax


def build_coherence(data: ReportData) -> tuple[Figure, list[str]]:
    coh = data.table("coherence_aligned")
    if coh is None:
        fig, axes = grid(1, 1, panel=(6.0, 2.6))
        why = data.status("coherence_before_collapse") or "no collapsed run with coherence telemetry"
        too_little_data(axes[0], why, "F11 · gradient coherence before collapse")
        return fig, [why]
    fig, axes = grid(1, 2, panel=(4.8, 3.5))
    sizes = {g["block_updates"] for g in data.summary.get("groups")}
    b = sizes.pop() if len(sizes) == 1 else None
    fig_coherence_aligned(coh, ax=axes[0], block_updates=b)
    axes[0].set_title("coherence around collapse")
    fig_coherence_aligned(coh, ax=axes[1], excess=True, block_updates=b)
    axes[1].set_title("excess over matched controls")
    fig.suptitle("F11 · gradient coherence before collapse vs matched unperturbed runs (median, IQR)",
                 fontsize=11, fontweight="bold")
    return fig, []



def caption(src: Source) -> list[Any]:
    coh = coherence_rows(src)
    if not coh:
        return [f"Coherence before collapse: {src.status('coherence_before_collapse')}."]
    out: list[Any] = ["Gradient coherence of collapsed runs around collapse (thin: single runs; thick: median with "
                      "IQR) against the mean of their matched unperturbed runs at the same training time. Mean excess "
                      "before collapse: "]
    for p, label in coh:
        out += [f"{label}: ", *ci(src, *p, digits=3), " (n=", src.num(*p, "n", digits=0), " runs); ",
                *direction(src, *p, neg="a drop, as the paper predicts", pos="a rise, not the drop the paper predicts"),
                ". "]
    return out


SPEC = FigureSpec("F11", "f11_coherence", "Gradient coherence before collapse", "coherence_before_collapse",
                  build_coherence, caption)
