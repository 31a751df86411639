"""The report's figures F1-F11 (F12 is reports/aggregates.py, F13 reports/intervention.py): one panel function
per plot, ``ax=None`` in, axes out.

Each panel function draws precomputed results (tables written by ``analysis``) and returns
its axes; it computes no statistic. ``build_*`` functions compose the panels of one figure
from a :class:`~stabilitybench.reports.data.ReportData` and return ``(figure, reasons)``, where
``reasons`` lists the "too little data" messages shown in place of panels. :data:`FIGURES`
lists them in report order with their file stems under ``<out>/figures/``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
import polars as pl
import seaborn as sns
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from stabilitybench.analysis.summary import DetectorKey, Status, StatusKind
from stabilitybench.reports.aggregates import build_aggregates
from stabilitybench.reports.data import DIMENSIONS, F1_WINDOW, ReportData, finite, onset_telemetry
from stabilitybench.reports.intervention import build_intervention
from stabilitybench.reports.style import (
    CONTROL_COLOR,
    PALETTE,
    SEQUENTIAL,
    grid,
    new_axes,
    outside_legend,
    too_little_data,
)

SIGNAL_LABELS = {
    "performance": "performance\n(return; −val loss for LM)",
    "grad_norm": "gradient norm\n(L2, before clipping)",
    "grad_coherence": "gradient coherence\n(mean pairwise cosine)",
    "msd": "MSD, Kalman monitor\n(nats per feature)",
}
DETECTOR_LABELS = {
    "kalman": "Kalman monitor (MSD)", "gru": "GRU monitor (MSD)", "grad_norm_z": "grad-norm z",
    "loss_spike": "loss spike z", "ews_var_ac1": "variance + AC1 trend", "pca_recon": "PCA reconstruction",
    "coherence_drop": "coherence drop",
}
MONITORS = ("kalman", "gru")
# matplotlib >= 3.10 takes orientation=, older ones vert= (deprecated since 3.11)
_HORIZONTAL: dict[str, Any] = (
    {"orientation": "horizontal"} if tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 10)
    else {"vert": False})


def _colors(keys: Sequence[str]) -> dict[str, Any]:
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}


def _mag_scale(ax: Axes, mags: Sequence[float]) -> None:
    m = [float(x) for x in mags if finite(x)]
    if m and min(m) > 0 and max(m) / min(m) >= 10:
        ax.set_xscale("log")


def _symlog_y(ax: Axes) -> None:
    """Symlog y (MSD spans decades); the negative side is cut at -2 (an MSD barely goes below 0)."""
    ax.set_yscale("symlog", linthresh=1.0)
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, -2.0), hi)


def _inf_to_top(v: np.ndarray) -> np.ndarray:
    """For display: +inf (a non-finite run) drawn just above the largest finite score."""
    v = np.asarray(v, float)
    fin = v[np.isfinite(v)]
    top = (fin.max() * 1.5 if fin.size and fin.max() > 0 else 1.0)
    return np.where(np.isposinf(v), top, v)


# =========================================================================== F1
def fig_onset_telemetry(frame: pl.DataFrame, signal: str, dimension: str, ax: Axes | None = None,
                        colors: dict[str, Any] | None = None) -> Axes:
    """F1 panel: one telemetry signal around onset for one dimension; median and IQR band across seeds.

    ``frame``: long rows ``run_id, algo, dimension, label, signal, x, value`` (see
    :func:`stabilitybench.reports.data.onset_telemetry`); controls (``label == 'control'``) are drawn in grey.
    """
    ax = new_axes(ax)
    d = frame.filter(pl.col("signal") == signal)
    pert = d.filter(pl.col("dimension") == dimension)
    ctrl = d.filter((pl.col("label") == "control") & pl.col("algo").is_in(pert["algo"].unique().to_list()))
    algos = sorted(set(pert["algo"].to_list()))
    styles = dict(zip(algos, ["-", "--", ":", "-."], strict=False))
    labels = sorted(set(pert["label"].to_list()))
    cols = colors or _colors(labels)
    for (algo, label), g in sorted(pert.group_by(["algo", "label"]), key=lambda kv: str(kv[0])):
        sns.lineplot(g.to_pandas(), x="x", y="value", estimator="median", errorbar=("pi", 50),
                     color=cols[label], linestyle=styles.get(algo, "-"), ax=ax, legend=False, linewidth=1.3)
    for algo, g in sorted(ctrl.group_by("algo"), key=lambda kv: str(kv[0])):
        sns.lineplot(g.to_pandas(), x="x", y="value", estimator="median", errorbar=("pi", 50), color=CONTROL_COLOR,
                     linestyle=styles.get(algo[0], "-"), ax=ax, legend=False, linewidth=1.0)
    ax.axvline(0, color="k", lw=0.8, ls=":")
    if signal == "grad_norm" and d["value"].min() is not None and d["value"].min() > 0:
        ax.set_yscale("log")
    if signal == "msd":
        _symlog_y(ax)
    ax.set_xlabel("updates since onset (fraction of the run)")
    ax.set_ylabel(SIGNAL_LABELS.get(signal, signal))
    return ax


def build_onset_telemetry(data: ReportData) -> tuple[Figure, list[str]]:
    frame, reasons = onset_telemetry(data)
    dims = [d for d in DIMENSIONS if frame is not None and d in set(frame["dimension"].to_list())]
    signals = ["performance", "grad_norm", "grad_coherence", "msd"]
    if not dims:
        fig, axes = grid(1, 1, panel=(6.0, 2.6))
        why = "no perturbed runs with telemetry around onset" if frame is not None else "; ".join(
            sorted(set(reasons.values())))
        too_little_data(axes[0], why, "F1 · telemetry around perturbation onset")
        return fig, [why]
    fig, axes = grid(len(signals), len(dims), panel=(5.2 if len(dims) == 1 else 3.9, 2.5))
    assert frame is not None
    labels = sorted(set(frame.filter(pl.col("label") != "control")["label"].to_list()))
    colors = _colors(labels)
    algos = sorted(set(frame.filter(pl.col("label") != "control")["algo"].to_list()))
    handles = [Line2D([], [], color=colors[lb], lw=1.5, label=lb) for lb in labels]
    handles.append(Line2D([], [], color=CONTROL_COLOR, lw=1.2, label="unperturbed control"))
    if len(algos) > 1:
        handles += [Line2D([], [], color="k", ls=ls, lw=1.0, label=a)
                    for a, ls in zip(algos, ["-", "--", ":", "-."], strict=False)]
    shown: list[str] = []
    drawn = [s for s in signals if s not in reasons] or signals
    for i, s in enumerate(signals):
        for j, dim in enumerate(dims):
            ax = axes[i * len(dims) + j]
            if s in reasons:
                too_little_data(ax, reasons[s])
                if reasons[s] not in shown:
                    shown.append(reasons[s])
                continue
            fig_onset_telemetry(frame, s, dim, ax=ax, colors=colors)
            ax.set_xlim(*F1_WINDOW)
            if s != drawn[-1]:
                ax.set_xlabel("")
            if j:
                ax.set_ylabel("")
            if i == 0:
                ax.set_title(dim.replace("_", " "))
            if j == len(dims) - 1 and i == min(k for k, sg in enumerate(signals) if sg not in reasons):
                outside_legend(ax, "perturbation (strongest)", handles=handles, labels=[h.get_label() for h in handles])
    fig.suptitle("F1 · telemetry around perturbation onset\n(median and IQR across seeds; strongest magnitude "
                 "of each kind)", fontsize=11, fontweight="bold")
    return fig, [f"{s}: {r}" for s, r in reasons.items()]


# =========================================================================== F2
def fig_dose_response(dose: pl.DataFrame, kind: str, measure: str = "collapse_probability",
                      ax: Axes | None = None) -> Axes:
    """F2 panel: collapse probability (Clopper-Pearson CI) or final performance (mean ± SD) vs magnitude.

    ``dose``: the ``dose_response`` table; one line per algorithm (and spike duration);
    the unperturbed controls of each algorithm as a dashed horizontal reference.
    """
    ax = new_axes(ax)
    d = dose.filter(pl.col("perturbation") == kind).sort("magnitude")
    algos = sorted(set(dose["algo"].to_list()))
    cols = _colors(algos)
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
        lab = algo + (f" · {sto}" if len(levels) > 1 else "") + (f" ({dur} upd)" if len(durations) > 1 else "")
        ax.errorbar(x, y, yerr=yerr, color=cols[algo], marker=markers.get(dur, "o"), ms=4.5, lw=1.3, capsize=2.5,
                    label=lab, ls=lstyle.get(sto, "-"), alpha=0.9)
    ctrl = dose.filter(pl.col("perturbation") == "none")
    col = "collapse_probability" if measure == "collapse_probability" else "final_performance_mean"
    for r in ctrl.filter(pl.col("algo").is_in(d["algo"].unique().to_list())).sort("algo", "stochasticity").iter_rows(
            named=True):
        if finite(r[col]):
            ax.axhline(float(r[col]), color=cols[r["algo"]], ls=":", lw=1.0, label=f"{r['algo']}"
                       + (f" · {r['stochasticity']}" if len(levels) > 1 else "") + " control")
    _mag_scale(ax, d["magnitude"].to_list())
    ax.set_xlabel(f"{kind} magnitude (×)")
    if measure == "collapse_probability":
        ax.set_ylim(-0.04, 1.04)
        ax.set_ylabel("collapse probability\n(95% Clopper–Pearson CI)")
    else:
        ax.set_ylabel("final performance\n(mean ± SD across seeds)")
    return ax


def build_dose_response(data: ReportData) -> tuple[Figure, list[str]]:
    dose = data.table("dose_response")
    kinds = [] if dose is None else sorted(set(dose.filter(pl.col("perturbation") != "none")["perturbation"].to_list()))
    if dose is None or not kinds:
        fig, axes = grid(1, 1, panel=(6.0, 2.6))
        why = "no perturbed configurations in the corpus"
        too_little_data(axes[0], why, "F2 · dose-response")
        return fig, [why]
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


# =========================================================================== F3
def fig_km(km: pl.DataFrame, configs: pl.DataFrame, kind: str, ax: Axes | None = None,
           follow_up: dict[str, float] | None = None) -> Axes:
    """F3 panel: Kaplan-Meier survival (no collapse yet) per magnitude of ``kind``, 95% CI bands.

    ``km``: the ``km`` table; ``configs``: ``config, perturbation, magnitude, duration_steps`` (from
    ``dose_response``) to place each KM group; the unperturbed group is drawn in grey.
    ``follow_up``: per group, the longest observed time (censoring included), to which the last
    step of the curve is extended (the KM table holds event times only).
    """
    ax = new_axes(ax)
    cols = [c for c in ("magnitude", "duration_steps") if c in configs.columns]
    groups = configs.filter(pl.col("perturbation") == kind).unique("config").sort([*cols, "config"])
    pal = sns.color_palette(SEQUENTIAL, n_colors=max(groups.height, 1) + 1)
    todo = [(r["config"], pal[i], "-") for i, r in enumerate(groups.iter_rows(named=True))]
    todo.append(("none", CONTROL_COLOR, "--"))
    follow_up = follow_up or {}
    key = "config" if "config" in km.columns else "group"  # km groups are "stratum: config" since analysis v2
    mine = km.filter(pl.col(key).is_in(groups["config"].to_list()))
    stratum = mine["stratum"][0] if "stratum" in km.columns and mine.height else None
    for cfg, color, ls in todo:
        g = km.filter(pl.col(key) == cfg)
        if stratum is not None:  # one stratum (domain/algo/env) per panel: the kind's, and its matched controls
            g = g.filter(pl.col("stratum") == stratum)
        g = g.sort("time")
        if g.height == 0:
            continue
        t = g["time"].to_numpy().astype(float)
        y, lo, hi = (g[c].to_numpy().astype(float) for c in ("survival", "ci_low", "ci_high"))
        end = follow_up.get(cfg)
        if end is not None and np.isfinite(end) and end > t[-1]:
            t, y, lo, hi = (np.append(a, b) for a, b in ((t, end), (y, y[-1]), (lo, lo[-1]), (hi, hi[-1])))
        n = int(g["n_runs"][0])
        ax.step(t, y, where="post", color=color, ls=ls, lw=1.5,
                label=("unperturbed" if cfg == "none" else cfg.replace(f"{kind} ", "")) + f" (n={n})")
        ax.fill_between(t, lo, hi, step="post", color=color, alpha=0.15, lw=0)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("updates since onset")
    ax.set_ylabel("P(no collapse yet)")
    ax.set_title(kind)
    return ax


def build_km(data: ReportData) -> tuple[Figure, list[str]]:
    km, dose = data.table("km"), data.table("dose_response")
    if km is None or dose is None:
        fig, axes = grid(1, 1, panel=(6.0, 2.6))
        why = "no Kaplan-Meier table (no run with a collapse time)"
        too_little_data(axes[0], why, "F3 · Kaplan–Meier")
        return fig, [why]
    if float(km["n_events"].sum()) == 0:
        fig, axes = grid(1, 1, panel=(6.0, 2.6))
        why = "no run collapsed, so every survival curve stays at 1 (all runs censored)"
        too_little_data(axes[0], why, "F3 · Kaplan–Meier")
        return fig, [why]
    configs = dose.select("config", "perturbation", "magnitude", "duration_steps")
    kinds = sorted(set(configs.filter(pl.col("perturbation") != "none")["perturbation"].to_list()))
    if not kinds:
        kinds = ["none"]
    runs = data.table("runs")
    follow: dict[str, float] = {}
    if runs is not None:  # display extent only: how long each group was followed (max over its runs)
        labelled = runs.join(configs.unique(["perturbation", "magnitude", "duration_steps"]),
                             on=["perturbation", "magnitude", "duration_steps"], how="left")
        labelled = labelled.with_columns(pl.when(pl.col("perturbation") == "none").then(pl.lit("none"))
                                         .otherwise(pl.col("config")).alias("config"))
        for (cfg,), g in labelled.group_by(["config"]):
            m = g["survival_time" if "survival_time" in g.columns else "collapse_time"].max()
            if cfg is not None and m is not None:
                follow[str(cfg)] = float(m)  # type: ignore[arg-type]
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


# =========================================================================== F4
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


# =========================================================================== F5
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
    for _, g in calm.group_by("run_id"):
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
        at = col.filter(pl.col("to_collapse") <= 0).group_by("run_id").agg(pl.all().sort_by("step").first())
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


# =========================================================================== F7
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
        ax.plot(g["x"], _inf_to_top(g["score"].to_numpy()), color=cols[i % len(cols)], lw=0.9, alpha=0.8)
    for thr in sorted(set(s["threshold"].drop_nulls().to_list())):
        ax.axhline(thr, color="#d55e00", ls=":", lw=1.0)
    ax.axvline(0, color="k", lw=1.0)
    _symlog_y(ax)
    ax.xaxis.set_major_locator(MaxNLocator(6))
    ax.set_xlabel("updates relative to collapse")
    ax.set_ylabel("MSD (symlog scale)")
    handles = [Line2D([], [], color=cols[0], lw=1, label=f"collapsed test runs (n={len(runs)})"),
               Line2D([], [], color="#d55e00", ls=":", label="calibrated threshold (per fold)"),
               Line2D([], [], color="k", lw=1, label="collapse")]
    ax.legend(handles=handles, loc="upper left", fontsize=7.5, framealpha=0.85)
    ax.set_title(f"{DETECTOR_LABELS.get(detector, detector)} around collapse")
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
            ax.boxplot([leads], positions=[i], widths=0.5, showfliers=False, **_HORIZONTAL,
                       medianprops={"color": "k"}, boxprops={"color": "0.4"}, whiskerprops={"color": "0.4"},
                       capprops={"color": "0.4"})
            jitter = (np.random.default_rng(i).random(leads.size) - 0.5) * 0.25  # display jitter only
            ax.scatter(leads, i + jitter, s=14, color=PALETTE[i % len(PALETTE)], zorder=3, lw=0)
        ticks.append(f"{DETECTOR_LABELS.get(det, det)}\n{leads.size}/{g.height} alarmed first")
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
    fig_lead_times(data.table("early_warning_runs"), MONITORS, ax=axes[1])  # type: ignore[arg-type]
    axes[1].set_title("monitor lead times")
    fig.suptitle("F7 · meta-state deviation before collapse", fontsize=11, fontweight="bold")
    return fig, []


# =========================================================================== F8
def fig_roc(ew_runs: pl.DataFrame, by_detector: Mapping[DetectorKey, Mapping[str, Any]], ax: Axes | None = None
            ) -> Axes:
    """F8 panel: empirical ROC of each detector's window maximum (collapsed vs not), AUROC from summary.json.

    The curve is the display of the per-run scores in ``early_warning_runs``; the AUROC and its
    CI in the legend are ``auroc`` of each detector's ``(detector, "all")`` record in ``by_detector``.
    """
    ax = new_axes(ax, (4.6, 4.2))
    dets = list(dict.fromkeys(ew_runs["detector"].to_list()))
    for i, det in enumerate(dets):
        g = ew_runs.filter(pl.col("detector") == det)
        y = g["collapsed"].to_numpy().astype(bool)
        if "detection_score" in g.columns:  # question (a): collapses (performance) vs held-out controls
            g = g.filter((pl.col("unperturbed") & ~pl.col("collapsed"))
                         | (~pl.col("unperturbed") & (pl.col("collapse_kind") == "performance")))
            y = g["collapsed"].to_numpy().astype(bool)
        s = np.array(g["detection_score" if "detection_score" in g.columns else "window_max"].to_list(), dtype=float)
        s = np.where(np.isnan(s), -np.inf, s)
        if y.all() or not y.any():
            continue
        thr = np.unique(s)[::-1]
        tpr = [0.0, *[(s[y] >= t).mean() for t in thr]]
        fpr = [0.0, *[(s[~y] >= t).mean() for t in thr]]
        a = by_detector[DetectorKey(det)]["auroc"]
        lab = DETECTOR_LABELS.get(det, det)
        if Status.of(a) is None and finite(a["value"]):
            ci = f" [{a['ci_low']:.2f}, {a['ci_high']:.2f}]" if finite(a.get("ci_low")) else ""
            lab += f"  AUROC {a['value']:.2f}{ci}"
        lw, z = (2.2, 3) if det in MONITORS else (1.2, 2)
        ax.plot(fpr, tpr, drawstyle="steps-post", color=PALETTE[i % len(PALETTE)], lw=lw, zorder=z, label=lab,
                ls="-" if det in MONITORS else "--")
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
    ax.set_yticks(range(len(rows)), [DETECTOR_LABELS.get(d, d) for d, _ in rows])
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
    byd = {key: data.summary.get(*path) for key, path in data.summary.by_detector().items()}
    fig, (a0, al, a1, a2) = grid(2, 2, panel=(5.4, 4.4))
    fig_roc(ew, byd, ax=a0)
    al.set_axis_off()
    h, lab = a0.get_legend_handles_labels()
    al.legend(h, lab, loc="center left", title="detector, AUROC [95% CI] from summary.json", fontsize=8.5,
              frameon=False)
    dets = list(dict.fromkeys(ew["detector"].to_list()))
    fig_lead_times(ew, dets, ax=a1)
    a1.set_title("lead time before collapse")
    fig_alarm_rates(byd, ax=a2)
    a2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, frameon=False)
    fig.suptitle("F8 · early warning: the meta-state monitors against the baselines (held-out seeds)",
                 fontsize=11, fontweight="bold")
    return fig, []


# =========================================================================== F9
def fig_dissociation(runs: pl.DataFrame, measure: str, rho: Sequence[dict[str, Any]] = (),
                     ax: Axes | None = None, hue: str = "config") -> Axes:
    """F9 panel: final performance against a stability measure, one point per run, coloured by configuration.

    ``runs``: ``final_performance``, ``measure`` (``collapse_time`` or ``max_msd``), ``config``,
    ``collapsed``; ``rho``: the ``dissociation`` rows of that measure (annotated, not computed).
    """
    ax = new_axes(ax)
    d = runs.filter(pl.col(measure).is_not_null() & pl.col("final_performance").is_not_null())
    configs = sorted(set(d[hue].to_list()))
    pal = sns.color_palette("colorblind" if len(configs) <= 10 else "husl", n_colors=max(len(configs), 1))
    for i, cfg in enumerate(configs):
        g = d.filter(pl.col(hue) == cfg)
        x = _inf_to_top(g[measure].to_numpy())
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
    runs, dose = data.table("runs"), data.table("dose_response")
    diss = data.summary.get("regularities", "dissociation")
    if runs is None or dose is None:
        fig, axes = grid(1, 1, panel=(6.0, 2.6))
        why = "no runs table"
        too_little_data(axes[0], why, "F9 · dissociation")
        return fig, [why]
    labels = dose.select("perturbation", "magnitude", "duration_steps", "config").unique(
        ["perturbation", "magnitude", "duration_steps"])
    r = runs.join(labels, on=["perturbation", "magnitude", "duration_steps"], how="left").with_columns(
        pl.col("config").fill_null(pl.col("perturbation")))
    r = r.with_columns(pl.when(pl.col("dimension") == "none").then(pl.lit("none")).otherwise(pl.col("config"))
                       .alias("config"))
    ew = data.table("early_warning_runs")
    measures = ["survival_time" if "survival_time" in r.columns else "collapse_time"]
    if ew is not None:
        msd = "window_score" if "window_score" in ew.columns else "window_max"
        r = r.join(ew.filter(pl.col("detector") == "kalman").select("run_id", pl.col(msd).alias("max_msd")),
                   on="run_id", how="left")
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


# =========================================================================== F10
def fig_stochasticity(buffer: dict[str, Any], ax: Axes | None = None) -> Axes:
    """F10 panel: collapse probability of perturbed runs per stochasticity level (CI), and Cox HRs of the level."""
    ax = new_axes(ax)
    per = buffer["collapse_probability"]
    for i, r in enumerate(per):
        if not finite(r.get("value")):
            continue
        err = [[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]] if finite(r.get("ci_low")) else None
        ax.errorbar([i], [r["value"]], yerr=err, fmt="o", color=PALETTE[i % len(PALETTE)], ms=7, capsize=3)
        ax.annotate(f"n={r['n']}", (i, r["value"]), xytext=(8, 0), textcoords="offset points", fontsize=7.5,
                    va="center")
    ax.set_xticks(range(len(per)), [str(r["level"]) for r in per])
    ax.set_xlim(-0.6, len(per) - 0.4)
    ax.set_ylim(-0.04, 1.04)
    ax.set_xlabel("stochasticity level")
    ax.set_ylabel("collapse probability, perturbed runs\n(95% Clopper–Pearson CI)")
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
    d = dose.filter(pl.col("perturbation") != "none")
    levels = sorted(set(d["stochasticity"].to_list()))
    cols = _colors(levels)
    kinds = sorted(set(d["perturbation"].to_list()))
    markers = dict(zip(kinds, ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<"], strict=False))
    for (lv, kind, _algo), g in sorted(d.group_by(["stochasticity", "perturbation", "algo"]),
                                       key=lambda kv: str(kv[0])):
        g = g.sort("magnitude")
        ax.plot(g["magnitude"], g["collapse_probability"], marker=markers.get(kind, "o"), color=cols[lv], lw=1.0,
                ms=4.5, alpha=0.85)
    _mag_scale(ax, d["magnitude"].to_list())
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


# =========================================================================== F11
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
        for _, g in coh.group_by("run_id"):
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


# =========================================================================== registry
@dataclass(frozen=True)
class FigureSpec:
    """One report figure: its id, file stem under ``figures/``, heading and builder."""

    id: str
    stem: str
    title: str
    build: Callable[[ReportData], tuple[Figure, list[str]]]


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("F1", "f01_onset_telemetry", "Telemetry around perturbation onset", build_onset_telemetry),
    FigureSpec("F2", "f02_dose_response", "Dose-response", build_dose_response),
    FigureSpec("F3", "f03_kaplan_meier", "Kaplan–Meier survival per magnitude", build_km),
    FigureSpec("F4", "f04_cox_forest", "Cox hazard ratios", build_cox),
    FigureSpec("F5", "f05_pca_scree", "PCA scree against the shuffled null", build_pca_scree),
    FigureSpec("F6", "f06_pca_trajectories", "Trajectories in PC1–PC2", build_pca_trajectories),
    FigureSpec("F7", "f07_msd_aligned", "MSD aligned on collapse and lead times", build_msd),
    FigureSpec("F8", "f08_early_warning", "Early warning: monitor vs baselines", build_roc),
    FigureSpec("F9", "f09_dissociation", "Dissociation of performance and stability", build_dissociation),
    FigureSpec("F10", "f10_stochasticity", "Stochasticity buffer", build_stochasticity),
    FigureSpec("F11", "f11_coherence", "Gradient coherence before collapse", build_coherence),
    FigureSpec("F12", "f12_final_performance", "Final performance: IQM and performance profiles", build_aggregates),
    FigureSpec("F13", "f13_intervention", "Intervention on the live monitor's alarm", build_intervention),
)
