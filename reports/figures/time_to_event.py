"""F14: question (c), time to event: the share of collapses warned against false alarms per 10k stable updates.

Drawn from ``results/time_to_event_curves`` (:mod:`stabilitybench.analysis.time_to_event_stage` computes every point:
one curve per detector over a grid of thresholds, and each detector's operating point at the threshold calibrated to 1
false alarm per 10k stable updates on the controls, with its CIs); the caption quotes summary.json
``early_warning.time_to_event``. Nothing is computed here. One panel per domain and horizon h; the no-kick reference,
"updates since the regime began", is the dashed grey curve every detector is read against.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from stabilitybench.analysis.detectors import detector_label
from stabilitybench.analysis.summary import Status
from stabilitybench.reports.data import ReportData, finite
from stabilitybench.reports.figures.common import placeholder
from stabilitybench.reports.figures.spec import FigureSpec
from stabilitybench.reports.style import CONTROL_COLOR, PALETTE, grid, new_axes, outside_legend
from stabilitybench.reports.text import Source, ci

TITLE = "F14 · collapse without a kick: collapses warned vs false alarms (question (c))"
#: The reference's label in ``time_to_event_curves`` (``stabilitybench.analysis.time_to_event_stage.REFERENCE``).
REFERENCE = "time_since_start"
#: Line styles of the detectors' curves, one per pass through the colour palette (more detectors than colours, e.g.
#: the 20 of ``analyze --spike-rules``, still get a distinct colour-and-dash pair); the reference is dashed grey.
LINESTYLES = ("-", "-.", ":")
#: The false-alarm rate the operating points are calibrated to (per 10k stable updates).
TARGET_FA = 1.0


def fig_warning_curves(curves: pl.DataFrame, ax: Axes | None = None) -> Axes:
    """One panel: warned fraction against false alarms per 10k stable updates, one curve per detector of ``curves``
    (the rows of one domain and horizon of ``time_to_event_curves``), the reference dashed grey, each calibrated
    operating point with its 95% CIs as error bars; returns the axes."""
    ax = new_axes(ax, (6.0, 4.0))
    dets = [d for d in dict.fromkeys(curves["detector"].to_list()) if d != REFERENCE] + \
        ([REFERENCE] if REFERENCE in curves["detector"].to_list() else [])
    for i, det in enumerate(dets):
        g = curves.filter(pl.col("detector") == det)
        ref = det == REFERENCE
        color = CONTROL_COLOR if ref else PALETTE[i % len(PALETTE)]
        style = "--" if ref else LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)]  # past the palette: a new dash
        c = g.filter((pl.col("point") == "curve") & pl.col("fa_per_10k").is_not_null()).sort("fa_per_10k")
        label = "updates since the regime began (no-kick reference)" if ref else detector_label(det)
        ax.plot(c["fa_per_10k"].to_numpy(), c["warned_fraction"].to_numpy(), drawstyle="steps-post", color=color,
                lw=1.6 if ref else 1.1, ls=style, label=label, zorder=3 if ref else 2)
        p = g.filter(pl.col("point") == "calibrated")
        if p.height and finite(p["fa_per_10k"][0]) and finite(p["warned_fraction"][0]):
            x, y = float(p["fa_per_10k"][0]), float(p["warned_fraction"][0])
            xerr = _err(x, p["fa_ci_low"][0], p["fa_ci_high"][0])
            yerr = _err(y, p["warned_ci_low"][0], p["warned_ci_high"][0])
            ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="o", ms=4, color=color, capsize=2, lw=0.8, zorder=4)
    ax.axvline(TARGET_FA, color="k", lw=0.7, ls=":", label=f"{TARGET_FA:g} false alarm / 10k updates (calibration)")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false alarms per 10,000 stable updates (symlog)")
    ax.set_ylabel("share of collapses warned (lead 1..h)")
    return ax


def _err(v: float, lo: Any, hi: Any) -> np.ndarray | None:
    """Asymmetric error bar ``(2, 1)`` of ``v`` from its CI ends (None without a CI)."""
    if not (finite(lo) and finite(hi)):
        return None
    return np.array([[max(0.0, v - float(lo))], [max(0.0, float(hi) - v)]])


def build(data: ReportData) -> tuple[Figure, list[str]]:
    """F14: one :func:`fig_warning_curves` panel per (domain, horizon) of ``time_to_event_curves``, or why not."""
    curves = data.table("time_to_event_curves")
    if curves is None:
        st = data.summary.optional("early_warning", "time_to_event")
        why = Status.from_json(st).text if Status.of(st) is not None and not Status.from_json(st).ok else \
            "no time-to-event table in the results (question (c) needs regime runs: the spontaneous profile)"
        return placeholder(why, TITLE)
    panels = curves.select("domain", "horizon").unique(maintain_order=True).sort(["domain", "horizon"]).rows()
    fig, axes = grid(1, len(panels), panel=(6.0, 4.4))
    for ax, (dom, h) in zip(axes, panels, strict=True):
        sub = curves.filter((pl.col("domain") == dom) & (pl.col("horizon") == h))
        fig_warning_curves(sub, ax=ax)
        n = sub["n_collapsed"].drop_nulls()
        ax.set_title(f"{dom}: h = {h} updates ({int(n.max()) if n.len() else 0} collapsed regime runs)")
    outside_legend(axes[-1], "detector (dot: calibrated threshold, 95% CIs)")
    fig.suptitle(TITLE, fontsize=11, fontweight="bold")
    return fig, []


def caption(src: Source) -> list[Any]:
    """Per domain the n's, and at the largest horizon the reference's and each detector's share of collapses warned at
    the calibrated threshold with its CI, quoted from summary.json."""
    path = ("early_warning", "time_to_event")
    if not src.has(*path):
        return ["Time to event (c): not in this summary (analysed before question (c) existed)."]
    st = src.status(*path)
    if st is None or not st.ok:
        return [f"Time to event (c): {st.text if st is not None else 'no status'}."]
    out: list[Any] = ["Question (c): at every block of every regime run (trained throughout at one elevated setting, "
                      "no kick) and control, does the score say 'collapse within the next h updates'? Curves: the "
                      "share of collapsed regime runs warned with lead 1..h against false alarms per 10,000 stable "
                      "updates, over thresholds; dots: the threshold calibrated to 1 false alarm per 10,000 control "
                      "updates, with 95% CIs (Clopper-Pearson; exact Poisson and run-clustered bootstrap)."]
    for dom in src.get(*path, "by_domain") or {}:
        base = (*path, "by_domain", dom)
        if src.status(*base) is not None:
            out += [f" {dom}: {src.status(*base).text}."]  # type: ignore[union-attr]
            continue
        h = str(max(src.get(*base, "horizons")))
        out += [f" {dom} (h = {h} updates): ", src.num(*base, "n_collapsed", digits=0), " collapsed of ",
                src.num(*base, "n_regime_runs", digits=0), " regime runs, ", src.num(*base, "n_controls", digits=0),
                " controls. Warned at the calibrated threshold: reference "]
        out += _warned(src, (*base, "reference"), h)
        for det in src.get(*base, "detectors"):
            out += [f"; {detector_label(det)} ", *_warned(src, (*base, "detectors", det), h)]
        out += ["."]
    return out


def _warned(src: Source, entry: tuple[str, ...], h: str) -> list[Any]:
    """``v [lo, hi] (n)`` of one entry's warned fraction (lead 1..h) at horizon ``h``, or its status."""
    if src.status(*entry) is not None:
        return [src.status(*entry).text]  # type: ignore[union-attr]
    w = (*entry, "horizons", h, "warned", "1")
    if src.status(*w) is not None:
        return [src.status(*w).text]  # type: ignore[union-attr]
    return [*ci(src, *w, digits=2), " (n=", src.num(*w, "n", digits=0), ")"]


SPEC = FigureSpec("F14", "f14_time_to_event", "Collapse without a kick: time to event", "time_to_event", build,
                  caption)
