"""F2: dose-response per perturbation kind, drawn from the ``dose_response`` table."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from stabilitybench.data_schema.keys import duration_label, unperturbed_expr
from stabilitybench.reports.data import ReportData, finite
from stabilitybench.reports.figures.common import colors, mag_scale, placeholder
from stabilitybench.reports.figures.spec import FigureSpec
from stabilitybench.reports.phrases import collapse_rule, rule_false_collapse
from stabilitybench.reports.style import grid, new_axes, outside_legend
from stabilitybench.reports.text import Source


def fig_dose_response(dose: pl.DataFrame, kind: str, measure: str = "collapse_probability",
                      ax: Axes | None = None) -> Axes:
    """F2 panel: collapse probability (Clopper-Pearson CI) or final performance (mean ± SD) vs magnitude.

    ``dose``: the ``dose_response`` table; one line per algorithm (and spike duration);
    the unperturbed controls of each algorithm as a dashed horizontal reference.
    """
    ax = new_axes(ax)
    d = dose.filter(pl.col("perturbation") == kind).sort("magnitude")
    algos = sorted(set(dose["algo"].to_list()))
    cols = colors(algos)
    durations = sorted(set(d["duration_steps"].to_list()))
    markers = dict(zip(durations, ["o", "s", "^", "D", "v"], strict=False))
    levels = sorted(set(dose["stochasticity"].to_list()))
    lstyle = dict(zip(levels, ["-", "--", ":", "-."], strict=False))
    for (algo, _env, sto, dur), g in sorted(d.group_by(["algo", "env", "stochasticity", "duration_steps"]),
                                           key=lambda kv: str(kv[0])):
        x = g["magnitude"].to_numpy()
        if measure == "collapse_probability":
            y = g["collapse_probability"].to_numpy()
            lo = y - g["ci_low"].fill_null(np.nan).to_numpy()
            hi = g["ci_high"].fill_null(np.nan).to_numpy() - y
            yerr = np.vstack([lo, hi])
        else:
            y = g["final_performance_mean"].fill_null(np.nan).to_numpy()
            yerr = g["final_performance_sd"].fill_null(0.0).to_numpy()
        lab = (algo + (f" · {sto}" if len(levels) > 1 else "")
               + (f" {duration_label(dur)}" if len(durations) > 1 else ""))
        ax.errorbar(x, y, yerr=yerr, color=cols[algo], marker=markers.get(dur, "o"), ms=4.5, lw=1.3, capsize=2.5,
                    label=lab, ls=lstyle.get(sto, "-"), alpha=0.9)
    ctrl = dose.filter(unperturbed_expr())
    col = "collapse_probability" if measure == "collapse_probability" else "final_performance_mean"
    for r in ctrl.filter(pl.col("algo").is_in(d["algo"].unique().to_list())).sort("algo", "stochasticity").iter_rows(
            named=True):
        if finite(r[col]):
            ax.axhline(float(r[col]), color=cols[r["algo"]], ls=":", lw=1.0, label=f"{r['algo']}"
                       + (f" · {r['stochasticity']}" if len(levels) > 1 else "") + " control")
    mag_scale(ax, d["magnitude"].to_list())
    ax.set_xlabel(f"{kind} magnitude (×)")
    if measure == "collapse_probability":
        ax.set_ylim(-0.04, 1.04)
        ax.set_ylabel("collapse probability\n(95% Clopper–Pearson CI)")
    else:
        ax.set_ylabel("final performance\n(mean ± SD across seeds)")
    return ax


def build_dose_response(data: ReportData) -> tuple[Figure, list[str]]:
    dose = data.table("dose_response")
    kinds = [] if dose is None else sorted(set(dose.filter(~unperturbed_expr())["perturbation"].to_list()))
    if dose is None or not kinds:
        return placeholder("no perturbed configurations in the corpus", "F2 · dose-response")
    fig, axes = grid(2, len(kinds), panel=(3.4, 2.7))
    for j, k in enumerate(kinds):
        a0, a1 = axes[j], axes[len(kinds) + j]
        fig_dose_response(dose, k, "collapse_probability", ax=a0)
        fig_dose_response(dose, k, "final_performance", ax=a1)
        dim = dose.filter(pl.col("perturbation") == k)["dimension"][0]
        a0.set_title(f"{k}\n({str(dim).replace('_', ' ')})")
        if j:
            a0.set_ylabel("")
            a1.set_ylabel("")
    seen: dict[str, Any] = {}
    for ax in axes[: len(kinds)]:  # the union of every panel's entries (kinds differ in durations)
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    outside_legend(axes[len(kinds) - 1], "algorithm (· stochasticity, spike length)", list(seen.values()),
                   list(seen))
    fig.suptitle("F2 · dose-response per perturbation kind", fontsize=11, fontweight="bold")
    return fig, []



def caption(src: Source) -> list[Any]:
    fc = ("collapse", "rule_false_collapse_rate_unperturbed")
    out: list[Any] = ["Top: collapse probability per magnitude with 95% Clopper–Pearson intervals; bottom: final "
                      "performance, mean ± SD across seeds. Dotted: the unperturbed controls. ", *collapse_rule(src),
                      " "]
    if finite(src.get(*fc, "value")):
        out += rule_false_collapse(src)
    else:
        out += ["The collapse rule's false-collapse rate is not measurable here: no matched group has a second "
                "unperturbed run to judge one against (n=", src.num(*fc, "n", digits=0), ")."]
    return out


SPEC = FigureSpec("F2", "f02_dose_response", "Dose-response", "dose_response", build_dose_response, caption)
