"""F7 (MSD aligned on collapse, lead times) and F8 (question (a)'s ROC, lead times and false alarms).

Drawn from ``early_warning_scores``, ``early_warning_runs``, ``early_warning_roc`` and summary.json; detector
names and labels come from the registry (:mod:`stabilitybench.analysis.detectors`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from stabilitybench.analysis.detectors import detector_label, monitor_names
from stabilitybench.analysis.summary import DetectorKey, Status
from stabilitybench.reports.data import ReportData, finite
from stabilitybench.reports.figures.common import HORIZONTAL, inf_to_top, symlog_y
from stabilitybench.reports.figures.spec import FigureSpec
from stabilitybench.reports.phrases import lead_sentence, not_evaluated, status_or
from stabilitybench.reports.style import PALETTE, grid, new_axes, too_little_data
from stabilitybench.reports.text import Source, ci


def fig_msd_aligned(scores: pl.DataFrame, ew_runs: pl.DataFrame, detector: str = "kalman",
                    ax: Axes | None = None) -> Axes:
    """F7 panel: the monitor's MSD of each collapsed test run, aligned on its collapse, with the thresholds.

    ``scores``: ``early_warning_scores``; ``ew_runs``: ``early_warning_runs``. Dotted lines:
    the calibrated alarm threshold of each fold (one per fold and group).
    """
    ax = new_axes(ax)
    c = ew_runs.filter((pl.col("detector") == detector) & pl.col("collapsed")).select("run_id", "collapse_step",
                                                                                       "onset_step")
    s = scores.filter(pl.col("detector") == detector).join(c, on="run_id").with_columns(
        (pl.col("step") - pl.col("collapse_step")).alias("x"))
    runs = sorted(set(s["run_id"].to_list()))
    cols = sns.color_palette("colorblind", n_colors=max(len(runs), 1))
    for i, (_, g) in enumerate(sorted(s.group_by("run_id"), key=lambda kv: str(kv[0]))):
        g = g.sort("x")
        ax.plot(g["x"], inf_to_top(g["score"].to_numpy()), color=cols[i % len(cols)], lw=0.9, alpha=0.8)
    for thr in sorted(set(s["threshold"].drop_nulls().to_list())):
        ax.axhline(thr, color="#d55e00", ls=":", lw=1.0)
    ax.axvline(0, color="k", lw=1.0)
    symlog_y(ax)
    ax.xaxis.set_major_locator(MaxNLocator(6))
    ax.set_xlabel("updates relative to collapse")
    ax.set_ylabel("MSD (symlog scale)")
    handles = [Line2D([], [], color=cols[0], lw=1, label=f"collapsed test runs (n={len(runs)})"),
               Line2D([], [], color="#d55e00", ls=":", label="calibrated threshold (per fold)"),
               Line2D([], [], color="k", lw=1, label="collapse")]
    ax.legend(handles=handles, loc="upper left", fontsize=7.5, framealpha=0.85)
    ax.set_title(f"{detector_label(detector)} around collapse")
    return ax


def fig_lead_times(ew_runs: pl.DataFrame, detectors: Sequence[str], ax: Axes | None = None) -> Axes:
    """Lead time (updates from first alarm to collapse) of each collapsed run, per detector.

    Runs whose alarm did not come before the collapse have no lead time; the count of
    runs with one is in the tick label.
    """
    ax = new_axes(ax)
    d = ew_runs.filter(pl.col("collapsed") & pl.col("detector").is_in(list(detectors)))
    ticks = []
    for i, det in enumerate(detectors):
        g = d.filter(pl.col("detector") == det)
        leads = g["lead_updates"].drop_nulls().to_numpy().astype(float)
        if leads.size:
            ax.boxplot([leads], positions=[i], widths=0.5, showfliers=False, **HORIZONTAL,
                       medianprops={"color": "k"}, boxprops={"color": "0.4"}, whiskerprops={"color": "0.4"},
                       capprops={"color": "0.4"})
            jitter = (np.random.default_rng(i).random(leads.size) - 0.5) * 0.25  # display jitter only
            ax.scatter(leads, i + jitter, s=14, color=PALETTE[i % len(PALETTE)], zorder=3, lw=0)
        ticks.append(f"{detector_label(det)}\n{leads.size}/{g.height} alarmed first")
    ax.set_yticks(range(len(detectors)), ticks)
    ax.set_ylim(-0.6, len(detectors) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel("lead time: updates from first alarm to collapse")
    ax.axvline(0, color="k", lw=0.6)
    return ax


def _ew_missing(data: ReportData) -> str | None:
    if data.table("early_warning_runs") is None:
        return data.status("early_warning") or "no early-warning evaluation in the results"
    if data.table("early_warning_runs").filter(pl.col("collapsed")).height == 0:  # type: ignore[union-attr]
        return "no collapsed test run, so there is nothing to warn of"
    return None


def build_msd(data: ReportData) -> tuple[Figure, list[str]]:
    why = _ew_missing(data)
    if why is None and data.table("early_warning_scores") is None:
        why = "no early-warning score traces in the results"
    if why:
        fig, axes = grid(1, 1, panel=(6.0, 2.6))
        too_little_data(axes[0], why, "F7 · MSD aligned on collapse")
        return fig, [why]
    fig, axes = grid(1, 2, panel=(5.0, 3.6))
    fig_msd_aligned(data.table("early_warning_scores"), data.table("early_warning_runs"), "kalman",  # type: ignore[arg-type]
                    ax=axes[0])
    fig_lead_times(data.table("early_warning_runs"), monitor_names(), ax=axes[1])  # type: ignore[arg-type]
    axes[1].set_title("monitor lead times")
    fig.suptitle("F7 · meta-state deviation before collapse", fontsize=11, fontweight="bold")
    return fig, []


# =========================================================================== F8
def fig_roc(roc: pl.DataFrame, detectors: Sequence[str], by_detector: Mapping[DetectorKey, Mapping[str, Any]],
            ax: Axes | None = None) -> Axes:
    """F8 panel: question (a)'s empirical ROC of each detector, with its AUROC from summary.json.

    ``roc``: the ``early_warning_roc`` table (the points analysis computed from the same runs as the AUROC);
    ``detectors``: the evaluation's detectors in order (their colours); the AUROC and its CI in the legend are
    ``auroc`` of each detector's ``(detector, "all")`` record in ``by_detector``.
    """
    ax = new_axes(ax, (4.6, 4.2))
    monitors = monitor_names()
    for i, det in enumerate(detectors):
        g = roc.filter(pl.col("detector") == det)
        if g.height == 0:  # a class was empty: no curve
            continue
        a = by_detector[DetectorKey(det)]["auroc"]
        lab = detector_label(det)
        if Status.of(a) is None and finite(a["value"]):
            ci = f" [{a['ci_low']:.2f}, {a['ci_high']:.2f}]" if finite(a.get("ci_low")) else ""
            lab += f"  AUROC {a['value']:.2f}{ci}"
        lw, z = (2.2, 3) if det in monitors else (1.2, 2)
        ax.plot(g["fpr"].to_list(), g["tpr"].to_list(), drawstyle="steps-post", color=PALETTE[i % len(PALETTE)], lw=lw,
                zorder=z, label=lab, ls="-" if det in monitors else "--")
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("false-positive rate (held-out controls)")
    ax.set_ylabel("true-positive rate (collapsing runs)")
    ax.set_title("(a) detection ROC: -log10 p before collapse")
    return ax


def fig_alarm_rates(by_detector: Mapping[DetectorKey, Mapping[str, Any]], ax: Axes | None = None) -> Axes:
    """F8 panel: FPR on held-out unperturbed runs per detector, with its CI and the target (summary.json)."""
    ax = new_axes(ax)
    rows = [(k.detector, v) for k, v in by_detector.items() if k.subset == "all"]
    target = None
    for i, (_det, v) in enumerate(rows):
        m = v["fpr_unperturbed"]
        target = m["target"]
        if not finite(m["value"]):
            continue
        lo, hi = m["ci_low"], m["ci_high"]
        err = [[m["value"] - lo], [hi - m["value"]]] if finite(lo) and finite(hi) else None
        ax.errorbar([m["value"]], [i], xerr=err, fmt="o", color=PALETTE[3], ms=5, capsize=2.5,
                    label="FPR, held-out unperturbed runs" if i == 0 else None)
    if finite(target):
        ax.axvline(target, color="k", ls="--", lw=0.9, label=f"target FPR {target:g}")
    ax.set_yticks(range(len(rows)), [detector_label(d) for d, _ in rows])
    ax.invert_yaxis()
    ax.set_xlim(-0.03, 1.03)
    ax.set_xlabel("share of runs with an alarm (95% CI)")
    ax.set_title("false alarms")
    return ax


def build_roc(data: ReportData) -> tuple[Figure, list[str]]:
    why = _ew_missing(data)
    if why:
        fig, axes = grid(1, 1, panel=(6.0, 2.6))
        too_little_data(axes[0], why, "F8 · early-warning ROC")
        return fig, [why]
    ew = data.table("early_warning_runs")
    assert ew is not None
    roc = data.table("early_warning_roc")
    byd = {key: data.summary.get(*path) for key, path in data.summary.by_detector().items()}
    fig, (a0, al, a1, a2) = grid(2, 2, panel=(5.4, 4.4))
    dets = list(dict.fromkeys(ew["detector"].to_list()))
    fig_roc(roc if roc is not None else pl.DataFrame(schema={"detector": pl.String}), dets, byd, ax=a0)
    al.set_axis_off()
    h, lab = a0.get_legend_handles_labels()
    al.legend(h, lab, loc="center left", title="detector, AUROC [95% CI] from summary.json", fontsize=8.5,
              frameon=False)
    fig_lead_times(ew, dets, ax=a1)
    a1.set_title("lead time before collapse")
    fig_alarm_rates(byd, ax=a2)
    a2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, frameon=False)
    fig.suptitle("F8 · early warning: the meta-state monitors against the baselines (held-out seeds)",
                 fontsize=11, fontweight="bold")
    return fig, []



def caption_msd(src: Source) -> list[Any]:
    kal, gru = src.summary.detector("kalman"), src.summary.detector("gru")
    if kal is None:
        return not_evaluated(src)
    out: list[Any] = lead_sentence(src, kal, "The Kalman monitor")
    out += [" ", *lead_sentence(src, gru, "The GRU monitor")] if gru is not None else []
    return [*out, " The paper reports deviations up to ~100 steps before collapse. Left: MSD of each collapsed test "
            "run aligned on its collapse, with the calibrated thresholds; right: the lead-time distribution."]


def caption_roc(src: Source) -> list[Any]:
    kal = src.summary.detector("kalman")
    if kal is None:
        return not_evaluated(src)
    out: list[Any] = ["ROC of each detector's score maximum from onset to collapse (question (a): performance "
                      "collapses vs held-out controls) on held-out seeds, the points computed by the analysis from the "
                      "same runs as the AUROC; AUROC and 95% bootstrap CI in the legend. The Kalman monitor: AUROC ",
                      *status_or(src, *kal, "auroc")]
    if src.status(*kal, "auroc") is None:
        out += [" (", src.num(*kal, "auroc", "n_pos", digits=0), " collapsing vs ",
                src.num(*kal, "auroc", "n_neg", digits=0), " held-out controls)"]
    return [*out, "; the 'alarm = perturbation active' reference is perfect here by construction (controls are never "
            "perturbed), so question (b) compares with the configuration instead. Its FPR on held-out unperturbed "
            "runs is ", *ci(src, *kal, "fpr_unperturbed"), " (target ", src.num(*kal, "fpr_unperturbed", "target"),
            ", n=", src.num(*kal, "fpr_unperturbed", "n", digits=0), ")."]


SPECS = (
    FigureSpec("F7", "f07_msd_aligned", "MSD aligned on collapse and lead times", "detection_msd", build_msd,
               caption_msd),
    FigureSpec("F8", "f08_early_warning", "Early warning: monitor vs baselines", "detection_roc", build_roc,
               caption_roc),
)
