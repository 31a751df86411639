"""F10: does controlled stochasticity buffer collapse? From summary.json's stochasticity buffer and
``dose_response``."""

from __future__ import annotations

from typing import Any

import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from stabilitybench.analysis.regularities import level_order
from stabilitybench.analysis.summary import Status
from stabilitybench.data_schema.keys import unperturbed_expr
from stabilitybench.reports.data import ReportData, finite
from stabilitybench.reports.figures.common import colors, mag_scale
from stabilitybench.reports.figures.spec import FigureSpec
from stabilitybench.reports.style import grid, new_axes, outside_legend, too_little_data
from stabilitybench.reports.text import Source, ci


def fig_stochasticity(buffer: dict[str, Any], ax: Axes | None = None) -> Axes:
    """F10 panel: collapse probability of perturbed runs per stochasticity level (CI), and Cox HRs of the level."""
    ax = new_axes(ax)
    per = buffer["collapse_probability"]
    cols = colors(level_order([str(r["level"]) for r in per]))  # the dose-response panel's colours
    for i, r in enumerate(per):
        if not finite(r.get("value")):
            continue
        err = [[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]] if finite(r.get("ci_low")) else None
        ax.errorbar([i], [r["value"]], yerr=err, fmt="o", color=cols[str(r["level"])], ms=7, capsize=3)
        ax.annotate(f"n={r['n']}", (i, r["value"]), xytext=(8, 0), textcoords="offset points", fontsize=7.5,
                    va="center")
    ax.set_xticks(range(len(per)), [str(r["level"]) for r in per])
    ax.set_xlim(-0.6, len(per) - 0.4)
    ax.set_ylim(-0.04, 1.04)
    ax.set_xlabel("stochasticity level")
    ax.set_ylabel("collapse probability, cells run at\nevery level (95% Clopper–Pearson CI)")
    hrs = [h for h in buffer["cox_hazard_ratios"] if finite(h["value"])]
    if hrs:
        txt = "\n".join(f"HR {h['covariate'].split('=', 1)[-1]} vs reference: {h['value']:.2f}"
                        + (f" [{h['ci_low']:.2f}, {h['ci_high']:.2f}]" if finite(h.get("ci_high")) else "")
                        for h in hrs)
        cox_status = Status.from_json(buffer["cox_status"])
        if not cox_status.ok:
            txt += f"\n(Cox: {cox_status.kind.label}; orientation only)"
        ax.text(0.02, 0.98, txt, transform=ax.transAxes, va="top", fontsize=7.5,
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.8"})
    return ax


def fig_stochasticity_dose(dose: pl.DataFrame, ax: Axes | None = None) -> Axes:
    """F10 panel: collapse probability against magnitude (all kinds), one line per stochasticity level."""
    ax = new_axes(ax)
    d = dose.filter(~unperturbed_expr())
    levels = level_order(d["stochasticity"].to_list())
    cols = colors(levels)
    kinds = sorted(set(d["perturbation"].to_list()))
    markers = dict(zip(kinds, ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<"], strict=False))
    for (lv, kind, _algo), g in sorted(d.group_by(["stochasticity", "perturbation", "algo"]),
                                       key=lambda kv: str(kv[0])):
        g = g.sort("magnitude")
        ax.plot(g["magnitude"], g["collapse_probability"], marker=markers.get(kind, "o"), color=cols[lv], lw=1.0,
                ms=4.5, alpha=0.85)
    mag_scale(ax, d["magnitude"].to_list())
    ax.set_ylim(-0.04, 1.04)
    ax.set_xlabel("perturbation magnitude (×)")
    ax.set_ylabel("collapse probability")
    handles = [Line2D([], [], color=cols[lv], lw=2, label=lv) for lv in levels]
    handles += [Line2D([], [], color="0.3", marker=markers[k], ls="", label=k) for k in kinds]
    outside_legend(ax, "stochasticity / kind", handles=handles, labels=[h.get_label() for h in handles])
    return ax


def build_stochasticity(data: ReportData) -> tuple[Figure, list[str]]:
    buf = data.summary.get("regularities", "stochasticity_buffer")
    status = Status.from_json(buf)
    dose = data.table("dose_response")
    if not status.ok or dose is None:
        fig, axes = grid(1, 1, panel=(6.0, 2.6))
        why = status.text if not status.ok else "no dose-response table"
        too_little_data(axes[0], why, "F10 · stochasticity buffer")
        return fig, [why]
    fig, axes = grid(1, 2, panel=(4.6, 3.6))
    fig_stochasticity(buf, ax=axes[0])
    axes[0].set_title("per level")
    fig_stochasticity_dose(dose, ax=axes[1])
    axes[1].set_title("dose-response by level")
    fig.suptitle("F10 · does controlled stochasticity buffer collapse?", fontsize=11, fontweight="bold")
    return fig, []



def caption(src: Source) -> list[Any]:
    buf = ("regularities", "stochasticity_buffer")
    buf_status = src.status(*buf)
    if buf_status is None or not buf_status.ok:
        return [f"Stochasticity buffer: {buf_status}."]
    out: list[Any] = ["Collapse probability of perturbed runs per stochasticity level (95% CI) and the dose-response "
                      "per level. "]
    for i, lv in enumerate(src.get(*buf, "collapse_probability")):
        p = (*buf, "collapse_probability", i)
        out += [f"{lv['level']}: ", *ci(src, *p), " (n=", src.num(*p, "n", digits=0), "). "]
    return out


SPEC = FigureSpec("F10", "f10_stochasticity", "Stochasticity buffer", "stochasticity_buffer", build_stochasticity,
                  caption)
