"""F9: final performance against stability, one point per run, from ``results/dissociation_runs.parquet``.

The points are the runs regularity 1's statistic ranks (analysis writes them), so the figure and the
Spearman rho annotated on it describe the same runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from stabilitybench.analysis.summary import Status
from stabilitybench.reports.data import ReportData, finite
from stabilitybench.reports.figures.common import inf_to_top, placeholder
from stabilitybench.reports.figures.spec import FigureSpec
from stabilitybench.reports.style import grid, new_axes, outside_legend
from stabilitybench.reports.text import Source, ci


def fig_dissociation(runs: pl.DataFrame, measure: str, rho: Sequence[dict[str, Any]] = (),
                     ax: Axes | None = None, hue: str = "config") -> Axes:
    """F9 panel: final performance against a stability measure, one point per run, coloured by configuration.

    ``runs``: ``final_performance``, ``measure`` (``survival_time`` or ``max_msd``), ``config``,
    ``collapsed``; ``rho``: the ``dissociation`` rows of that measure (annotated, not computed).
    """
    ax = new_axes(ax)
    d = runs.filter(pl.col(measure).is_not_null() & pl.col("final_performance").is_not_null())
    configs = sorted(set(d[hue].to_list()))
    pal = sns.color_palette("colorblind" if len(configs) <= 10 else "husl", n_colors=max(len(configs), 1))
    for i, cfg in enumerate(configs):
        g = d.filter(pl.col(hue) == cfg)
        x = inf_to_top(g[measure].to_numpy())
        coll = g["collapsed"].fill_null(False).to_numpy()
        ax.scatter(x[coll], g["final_performance"].to_numpy()[coll], color=pal[i], s=26, marker="o", lw=0,
                   label=cfg if coll.any() else None)
        ax.scatter(x[~coll], g["final_performance"].to_numpy()[~coll], facecolor="none", edgecolor=pal[i], s=26,
                   marker="o", label=None if coll.any() else cfg)
    if measure == "max_msd":
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("max MSD after onset (Kalman, symlog)")
    else:
        ax.set_xlabel("collapse time: updates from onset\n(hollow = censored, never collapsed)")
    ax.set_ylabel("final performance")
    lines = []
    for r in rho:
        if Status.of(r) is None and finite(r["value"]):
            ci = f" [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" if finite(r.get("ci_low")) else ""
            lines.append(f"ρ {r['level']} = {r['value']:.2f}{ci}, n={r['n']}")
        else:
            lines.append(f"ρ {r['level']}: {Status.from_json(r)}")
    ax.set_title("\n".join(lines) if lines else measure, fontsize=8.5, fontweight="normal", loc="left")
    return ax


def build_dissociation(data: ReportData) -> tuple[Figure, list[str]]:
    """F9 from ``dissociation_runs``: exactly the runs the Spearman rho of summary.json ranks (natural runs)."""
    r = data.table("dissociation_runs")
    diss = data.summary.get("regularities", "dissociation")
    if r is None:
        return placeholder("no runs behind the decoupling statistic (rerun `stabilitybench analyze` if these "
                           "results predate results/dissociation_runs.parquet)", "F9 · dissociation")
    measures = ["survival_time"]
    if data.table("early_warning_runs") is not None:
        measures.append("max_msd")
    fig, axes = grid(1, len(measures), panel=(5.0, 3.9))
    reasons = []
    hue = "config" if r["config"].n_unique() <= 20 else "perturbation"  # too many configurations for a legend
    for ax, m in zip(axes, measures, strict=True):
        rows = [x for x in diss if x["measure"] == m]
        fig_dissociation(r, m, rows, ax=ax, hue=hue)
        reasons += [f"{m} ({x['level']}): {Status.from_json(x)}" for x in rows if Status.of(x) is not None]
    if len(measures) == 1:
        reasons.append("max MSD: " + (data.status("early_warning") or "no early-warning evaluation"))
    outside_legend(axes[-1], title="configuration" if hue == "config" else "perturbation kind",
                   ncol=1 if r[hue].n_unique() <= 12 else 2)
    fig.suptitle("F9 · is final performance decoupled from stability? (Spearman ρ across configurations and runs)",
                 fontsize=11, fontweight="bold")
    return fig, reasons


def caption(src: Source) -> list[Any]:
    out: list[Any] = ["Final performance against stability, one point per run (filled: collapsed; hollow: censored), "
                      "coloured by configuration: the runs the Spearman ρ ranks (runs that acted on a live monitor's "
                      "alarm are left out, as in the statistic). "]
    for i, d in enumerate(src.get("regularities", "dissociation")):
        p = ("regularities", "dissociation", i)
        st = Status.of(d)
        if st is not None:
            out += [f"ρ with {d['measure']} per {d['level']}: {st}. "]
        else:
            out += [f"Spearman ρ with {d['measure']} per {d['level']}: ", *ci(src, *p), " (n=",
                    src.num(*p, "n", digits=0), ", p=", src.num(*p, "p_value", kind="g"), "). "]
    return out


SPEC = FigureSpec("F9", "f09_dissociation", "Dissociation of performance and stability", "dissociation",
                  build_dissociation, caption)
