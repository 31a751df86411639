"""F3 (Kaplan-Meier survival per magnitude) and F4 (Cox hazard ratios), drawn from ``km`` and summary.json."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from stabilitybench.analysis.summary import Status, StatusKind
from stabilitybench.data_schema.keys import (
    NO_PERTURBATION,
    ConfigKey,
    intervention_arm,
    unperturbed_expr,
)
from stabilitybench.reports.data import ReportData, finite
from stabilitybench.reports.figures.common import placeholder
from stabilitybench.reports.figures.spec import FigureSpec
from stabilitybench.reports.phrases import logrank_all
from stabilitybench.reports.style import (
    CONTROL_COLOR,
    PALETTE,
    SEQUENTIAL,
    grid,
    new_axes,
    outside_legend,
    too_little_data,
)
from stabilitybench.reports.text import Source


def _rows_of(km: pl.DataFrame, key: ConfigKey, cols: Sequence[str] = ("magnitude", "duration_steps")) -> pl.DataFrame:
    """The ``km`` rows of configuration ``key``, matched on the key columns ``perturbation`` and ``cols``
    (never on the label)."""
    if key.is_control:
        return km.filter(pl.col("perturbation") == NO_PERTURBATION)
    match = pl.col("perturbation") == key.perturbation
    if "magnitude" in cols:
        match &= pl.col("magnitude").eq_missing(pl.lit(key.magnitude, dtype=pl.Float64))
    if "duration_steps" in cols:
        match &= pl.col("duration_steps").eq_missing(pl.lit(key.duration, dtype=pl.Int64))
    return km.filter(match)


def fig_km(km: pl.DataFrame, configs: pl.DataFrame, kind: str, ax: Axes | None = None,
           follow_up: dict[ConfigKey, float] | None = None) -> Axes:
    """F3 panel: Kaplan-Meier survival (no collapse yet) per magnitude of ``kind``, 95% CI bands.

    ``km``: the ``km`` table; ``configs``: ``perturbation, magnitude, duration_steps`` (from ``dose_response``)
    to place each KM group, matched on those key columns; the unperturbed group is drawn in grey.
    ``follow_up``: per configuration, the longest observed time (censoring included), to which the last
    step of the curve is extended (the KM table holds event times only).
    """
    ax = new_axes(ax)
    cols = [c for c in ("magnitude", "duration_steps") if c in configs.columns]
    groups = configs.filter(pl.col("perturbation") == kind).unique("config").sort([*cols, "config"])
    pal = sns.color_palette(SEQUENTIAL, n_colors=max(groups.height, 1) + 1)
    todo = [(ConfigKey.of(r).pooled(), pal[i], "-", ConfigKey.of(r).label().removeprefix(f"{kind} "))
            for i, r in enumerate(groups.iter_rows(named=True))]
    todo.append((ConfigKey(NO_PERTURBATION, None, None), CONTROL_COLOR, "--", "unperturbed"))
    follow_up = follow_up or {}
    mine = pl.concat([_rows_of(km, key, cols) for key, *_ in todo[:-1]]) if len(todo) > 1 else km.clear()
    stratum = mine["stratum"][0] if "stratum" in km.columns and mine.height else None
    for key, color, ls, name in todo:
        g = _rows_of(km, key, cols)
        if stratum is not None:  # one stratum (domain/algo/env) per panel: the kind's, and its matched controls
            g = g.filter(pl.col("stratum") == stratum)
        g = g.sort("time")
        if g.height == 0:
            continue
        t = g["time"].to_numpy().astype(float)
        y, lo, hi = (g[c].to_numpy().astype(float) for c in ("survival", "ci_low", "ci_high"))
        end = follow_up.get(key)
        if end is not None and np.isfinite(end) and end > t[-1]:
            t, y, lo, hi = (np.append(a, b) for a, b in ((t, end), (y, y[-1]), (lo, lo[-1]), (hi, hi[-1])))
        n = int(g["n_runs"][0])
        ax.step(t, y, where="post", color=color, ls=ls, lw=1.5,
                label=f"{name} (n={n})")
        ax.fill_between(t, lo, hi, step="post", color=color, alpha=0.15, lw=0)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("updates since onset")
    ax.set_ylabel("P(no collapse yet)")
    ax.set_title(kind)
    return ax


def build_km(data: ReportData) -> tuple[Figure, list[str]]:
    km, dose = data.table("km"), data.table("dose_response")
    if km is None or dose is None:
        return placeholder("no Kaplan-Meier table (no run with a collapse time)", "F3 · Kaplan–Meier")
    if float(km["n_events"].sum()) == 0:
        return placeholder("no run collapsed, so every survival curve stays at 1 (all runs censored)",
                           "F3 · Kaplan–Meier")
    configs = dose.select("config", "perturbation", "magnitude", "duration_steps")
    kinds = sorted(set(configs.filter(~unperturbed_expr())["perturbation"].to_list()))
    if not kinds:
        kinds = [NO_PERTURBATION]
    runs = data.table("runs")
    follow: dict[ConfigKey, float] = {}
    if runs is not None:  # display extent only: how long each group was followed (max over its natural runs)
        natural = runs.filter(intervention_arm(runs) == "none")  # as the KM table: no run that acted on an alarm
        time = "survival_time" if "survival_time" in natural.columns else "collapse_time"
        for r in natural.iter_rows(named=True):
            if r[time] is not None:
                key = ConfigKey.of(r).pooled()
                follow[key] = max(follow.get(key, float("-inf")), float(r[time]))
    ncol = min(4, len(kinds))
    nrow = -(-len(kinds) // ncol)
    fig, axes = grid(nrow, ncol, panel=(4.0, 3.0))
    t_ev = km.filter(pl.col("n_events") > 0)["time"].max()
    t_end = max(follow.values(), default=0.0)
    for ax, k in zip(axes, kinds, strict=False):
        fig_km(km, configs, k, ax=ax, follow_up=follow)
        if t_ev is not None and t_end > 3 * float(t_ev):  # type: ignore[arg-type]
            # zoom on the collapses; say where the (flat, censored) curves end
            ax.set_xlim(-0.03 * 1.5 * float(t_ev), 1.5 * float(t_ev))  # type: ignore[arg-type]
            ax.text(0.98, 0.88, f"curves stay flat to {t_end:,.0f} updates →\n(remaining runs censored)",
                    transform=ax.transAxes, ha="right", va="center", fontsize=7.5, color="0.35")
        outside_legend(ax, title="magnitude") if ncol == 1 else ax.legend(fontsize=7, loc="lower left",
                                                                          frameon=True, framealpha=0.8)
    for ax in axes[len(kinds):]:
        ax.set_axis_off()
    ev = int(km["n_events"].sum())
    fig.suptitle(f"F3 · Kaplan–Meier survival per magnitude, 95% CI ({ev} collapses)", fontsize=11,
                 fontweight="bold")
    return fig, []



def fig_cox_forest(coefficients: Sequence[dict[str, Any]], status: Status | None = None,
                   ax: Axes | None = None) -> Axes:
    """F4: Cox hazard ratios with 95% CIs (log scale). Rows without a finite CI are marked "not estimable".

    ``status``: the fit's status; anything but OK greys the estimates out (orientation only).
    """
    ax = new_axes(ax, (6.0, 0.5 + 0.45 * max(1, len(coefficients))))
    rows = list(coefficients)[::-1]
    ok_fit = status is None or status.ok
    for i, c in enumerate(rows):
        v, lo, hi, p = c["value"], c["ci_low"], c["ci_high"], c["p_value"]
        # a zero-width or astronomically wide interval is a diverged fit, not an estimate
        estimable = (finite(v) and finite(lo) and finite(hi) and 0 < lo < hi and 1e-6 < v < 1e6
                     and hi / lo < 1e8)
        if estimable:
            color = PALETTE[0] if ok_fit else "0.5"
            ax.plot([lo, hi], [i, i], color=color, lw=2)
            ax.plot([v], [i], "o", color=color, ms=6)
            ax.annotate(f"HR {v:.3g} [{lo:.3g}, {hi:.3g}]" + (f", p={p:.2g}" if finite(p) else ""), (hi, i),
                        xytext=(6, 0), textcoords="offset points", va="center", fontsize=7.5, color="0.2")
        else:
            ax.annotate("not estimable", (1, i), xytext=(8, 0), textcoords="offset points", va="center",
                        fontsize=8, color="#d55e00")
    ax.axvline(1, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yticks(range(len(rows)), [str(c["covariate"]) for c in rows])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("hazard ratio of collapse (95% CI, log scale; >1 = collapses sooner)")
    if not ok_fit:
        ax.set_title(f"fit status: {status}\n(grey: shown for orientation only)", fontsize=8.5, color="#d55e00",
                     loc="left", fontweight="normal")
    return ax


def build_cox(data: ReportData) -> tuple[Figure, list[str]]:
    cox = data.summary.get("survival", "cox")
    status = Status.from_json(cox)
    coefs = cox["coefficients"] if status.kind in (StatusKind.OK, StatusKind.SEPARATED) else []
    fig, axes = grid(1, 1, panel=(7.5, 0.9 + 0.5 * max(1, len(coefs))))
    if not coefs:
        why = status.text if not status.ok else "the Cox model has no covariate"
        too_little_data(axes[0], why, "F4 · Cox hazard ratios")
        return fig, [why]
    fig_cox_forest(coefs, status, ax=axes[0])
    fig.suptitle(f"F4 · Cox proportional hazards (n={cox['n']}, {cox['n_events']} collapses)",
                 fontsize=11, fontweight="bold")
    return fig, []



def caption_km(src: Source) -> list[Any]:
    return ["Kaplan–Meier probability of no collapse yet against updates since onset, one panel per kind and one "
            "curve per magnitude, with 95% exponential-Greenwood bands; dashed grey: unperturbed runs. ",
            *logrank_all(src)]


def caption_cox(src: Source) -> list[Any]:
    cox = ("survival", "cox")
    out: list[Any] = ["Cox proportional-hazards model of time to collapse (Efron ties), hazard ratios with 95% CIs; ",
                      "early_msd and early_coherence are per SD. Fit status: ", str(src.status(*cox)),
                      ". n = ", src.num(*cox, "n", digits=0), " runs, ", src.num(*cox, "n_events", digits=0),
                      " collapses"]
    if src.has(*cox, "concordance"):
        out += [", concordance ", src.num(*cox, "concordance")]
    return [*out, "."]


SPECS = (
    FigureSpec("F3", "f03_kaplan_meier", "Kaplan–Meier survival per magnitude", "survival_km", build_km, caption_km),
    FigureSpec("F4", "f04_cox_forest", "Cox hazard ratios", "survival_cox", build_cox, caption_cox),
)
