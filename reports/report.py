"""``build_report``: results/ in, ``<out>/index.html`` + ``index.md`` + ``figures/*.png|svg`` out.

Layout only: every number in a caption or table is a :class:`~stabilitybench.reports.text.Num` read from
summary.json; the figures draw the results tables (see :mod:`stabilitybench.reports.figures`).
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stabilitybench.analysis.questions import REFERENCES
from stabilitybench.analysis.summary import Status, StatusKind
from stabilitybench.data_schema.io import atomic_path
from stabilitybench.reports.data import ReportData, finite, load
from stabilitybench.reports.errors import OutputPathError
from stabilitybench.reports.figures import DETECTOR_LABELS, FIGURES, MONITORS
from stabilitybench.reports.style import save
from stabilitybench.reports.text import Num, Source, Table, ci, render_html, render_md

FIG_DIR = "figures"


# =========================================================================== tables
def _status_or(src: Source, *path: str | int) -> list[Any]:
    """``ci`` of a summary number, or its status in words when it has one (e.g. not testable)."""
    st = src.status(*path)
    return [st.text] if st is not None else ci(src, *path)


def monitor_table(src: Source) -> Table | None:
    """Question (a), detection: one row per detector (monitors, baselines, the perturbation-on reference)."""
    if src.summary.early_warning_status is not None:
        return None
    rows = []
    for d in src.get("early_warning", "detection"):
        p = ("early_warning", "detection", d)
        nonfinite: list[Any] = ["—"]  # the perturbation-on reference has no non-finite line
        if src.has(*p, "nonfinite") and not src.get(*p, "nonfinite", "n"):
            nonfinite = ["no non-finite collapse"]
        elif src.has(*p, "nonfinite"):
            nonfinite = [src.num(*p, "nonfinite", "value", digits=0, kind="pct"), " of ",
                         src.num(*p, "nonfinite", "n", digits=0)]
        lead: list[Any] = [*ci(src, *p, "median_lead_updates", digits=0), ", n=",
                           src.num(*p, "median_lead_updates", "n", digits=0)]
        f = (*p, "fpr_held_out_controls")
        rows.append([
            [DETECTOR_LABELS.get(d, d) + (" ★" if d.split("+")[0] in MONITORS else "")],
            [src.num(*p, "n_collapsed", digits=0), " / ", src.num(*p, "n_controls", digits=0)],
            _status_or(src, *p, "auroc"),
            [src.num(*p, "frac_collapses_preceded", "value", digits=0, kind="pct"), " of ",
             src.num(*p, "frac_collapses_preceded", "n", digits=0)],
            lead,
            [*ci(src, *f), " (n_cal=", src.num(*f, "n_calibration", digits=0), ", n_test=",
             src.num(*f, "n_test", digits=0), "; bound ", src.num(*f, "guaranteed_fpr_bound"), ")"],
            nonfinite,
        ])
    note = ["(a) Detection on held-out seeds. ★ meta-state monitors; '+echo' = with the intervention-echo columns "
            "(lr, update_norm, param_norm). Positives: performance collapses; negatives: held-out controls. An alarm "
            "counts only strictly before the offline collapse date; lead in optimizer updates from that date (CI: "
            "bootstrap over seeds). FPR on held-out controls with its Clopper–Pearson CI and the conformal bound at "
            "the level used; with fewer than 19 calibration runs no FPR claim is made. Non-finite collapses on their "
            "own: the share with an alarm strictly before the non-finite step."]
    return Table("(a) Detection: alarms before collapse vs false alarms on held-out controls",
                 ["detector", "n collapsed / controls", "AUROC [95% CI]", "collapses preceded", "median lead, updates",
                  "FPR, held-out controls", "non-finite preceded"], rows, note)


def prediction_table(src: Source) -> Table | None:
    """Question (b), prediction at the landmark: AUROC pooled and stratified, and Delta AUROC vs the references."""
    if src.summary.early_warning_status is not None:
        return None
    pred = src.get("early_warning", "prediction")
    refs = src.get("early_warning", "prediction_references")
    rows = []
    for d in [*pred, *refs]:
        p = ("early_warning", "prediction" if d in pred else "prediction_references", d)
        deltas: list[Any] = []
        for ref in REFERENCES:  # a reference row has no delta against itself
            if src.has(*p, "delta_auroc", ref):
                deltas += [f"{ref}: pooled ", *_status_or(src, *p, "delta_auroc", ref, "pooled"), ", stratified ",
                           *_status_or(src, *p, "delta_auroc", ref, "stratified"), "; "]
        rows.append([
            [DETECTOR_LABELS.get(d, d) + ("" if d in pred else " (reference)")],
            [src.num(*p, "n_pos", digits=0), " / ", src.num(*p, "n_neg", digits=0)],
            _status_or(src, *p, "auroc"), _status_or(src, *p, "auroc_stratified"), deltas or ["—"]])
    note = ["(b) Prediction among perturbed runs still standing at the landmark L (end of the perturbation window + "
            "1 block): scores over [onset, L] (as -log10 conformal p) against collapse after L. Stratified: only "
            "pairs within one kind × magnitude × duration, so recognising the dose earns nothing. ΔAUROC (pooled and "
            "stratified) against the cross-validated configuration-only model (within a cell: its cell mean, 0.5 by "
            "definition), the kick-size model and 'alarm = perturbation active', with a cluster bootstrap over seeds."]
    return Table("(b) Prediction at the landmark: does the monitor beat the configuration?",
                 ["detector", "n collapse after L / survive", "AUROC [95% CI]", "AUROC, stratified",
                  "ΔAUROC vs references [95% CI]"], rows, note)


def intervention_table(src: Source) -> Table | None:
    """The intervention experiment: matched pairs with vs without acting on the live monitor's alarm."""
    if not src.has("intervention") or src.status("intervention") is not None:
        return None
    rows = []
    for i, r in enumerate(src.get("intervention", "rows")):
        p = ("intervention", "rows", i)
        rows.append([
            ["control" if r["perturbation"] == "none" else f"{r['perturbation']} ×{r['magnitude']:g}"],
            [str(r.get("monitor") or "—"), ": ", r["arm"]], [src.num(*p, "n_pairs", digits=0)],
            [src.num(*p, "collapse_rate_without", digits=0, kind="pct"), " → ",
             src.num(*p, "collapse_rate_with", digits=0, kind="pct")],
            [src.num(*p, "collapse_diff"), " [", src.num(*p, "collapse_diff_ci_low"), ", ",
             src.num(*p, "collapse_diff_ci_high"), "]"],
            [src.num(*p, "perf_diff", digits=1), " [", src.num(*p, "perf_diff_ci_low", digits=1), ", ",
             src.num(*p, "perf_diff_ci_high", digits=1), "]"],
            [src.num(*p, "runs_alarmed", digits=0), " / ", src.num(*p, "runs_acted", digits=0)],
        ])
    note = ["Runs that acted on a live monitor's alarm against their no-action twins (same seed, same perturbation), "
            "judged by the collapse rule against the natural controls only. Controls: every alarm is a false alarm "
            "and the paired performance difference is its cost. CIs: percentile bootstrap over pairs."]
    return Table("Intervention: collapse and final performance with vs without acting on the alarm",
                 ["perturbation", "monitor: action", "pairs", "collapse rate without → with",
                  "Δ collapse [95% CI]", "Δ final performance [95% CI]", "runs alarmed / acted"], rows, note)


def collapse_table(src: Source) -> Table:
    rows = []
    for i, r in enumerate(src.get("collapse", "dose_response")):
        p = ("collapse", "dose_response", i)
        perf: list[Any] = [src.num(*p, "final_performance_mean", digits=1)]
        if finite(r["final_performance_sd"]):
            perf += [" ± ", src.num(*p, "final_performance_sd", digits=1)]
        rows.append([[f"{r['algo']} · {r['env']} · {r['stochasticity']}"], [r["config"]],
                     [src.num(*p, "n_collapsed", digits=0), "/", src.num(*p, "n_runs", digits=0)],
                     [src.num(*p, "collapse_probability"), " [", src.num(*p, "ci_low"), ", ", src.num(*p, "ci_high"),
                      "]"],
                     [src.num(*p, "median_collapse_time", digits=0)], perf])
    fc = ("collapse", "rule_false_collapse_rate_unperturbed")
    c = ("config", "collapse")
    note = ["Collapse rule: causal rolling mean of performance (", src.num(*c, "smooth_frac", digits=0, kind="pct"),
            " of the run) below the matched controls' mean minus max(", src.num(*c, "drop", digits=2),
            " × their learning gain, ", src.num(*c, "spread_k", digits=1), " × their across-seed SD), with no "
            "recovery within ", src.num(*c, "recovery_frac", digits=0, kind="pct"), " of the run; non-finite "
            "telemetry is an immediate collapse. The rule's false-collapse rate on unperturbed runs (judged "
            "leave-one-out): ", *ci(src, *fc), " (n=", src.num(*fc, "n", digits=0), ")."]
    return Table("Collapse per configuration (dose-response)",
                 ["group", "configuration", "collapsed", "P(collapse) [95% CI]", "median collapse time, updates",
                  "final performance, mean ± SD"], rows, note)


def survival_tables(src: Source) -> list[Table]:
    rows = []
    for i, r in enumerate(src.get("survival", "logrank")):
        p = ("survival", "logrank", i)
        st = Status.from_json(r)
        if not st.ok:  # no statistic: the row says why
            rows.append([[r["comparison"]], ["—"], ["—"], ["—"], [src.num(*p, "n", digits=0) if "n" in r else "—"],
                         [src.num(*p, "n_events", digits=0) if "n_events" in r else "—"], [st.text]])
            continue
        rows.append([[r["comparison"]], [src.num(*p, "chi2", digits=2)], [src.num(*p, "df", digits=0)],
                     [src.num(*p, "p_value", digits=2, kind="g")], [src.num(*p, "n", digits=0)],
                     [src.num(*p, "n_events", digits=0)], [st.text]])
    out = [Table("Survival: log-rank tests", ["comparison", "χ²", "df", "p", "runs", "collapses", "status"], rows)]
    cox = src.get("survival", "cox")
    cox_status = Status.from_json(cox)
    fitted = cox_status.kind in (StatusKind.OK, StatusKind.SEPARATED)
    crow = []
    for i, c in enumerate(cox["coefficients"] if fitted else []):
        p = ("survival", "cox", "coefficients", i)
        crow.append([[c["covariate"]], ci(src, *p, digits=3, kind="g"), [src.num(*p, "p_value", kind="g")]])
    note: list[Any] = [f"Status: {cox_status.text}. n = ", src.num("survival", "cox", "n", digits=0),
                       " runs, ", src.num("survival", "cox", "n_events", digits=0), " collapses"]
    if fitted:
        note += ["; concordance ", src.num("survival", "cox", "concordance"), f" ({cox['concordance_from']})"]
    note.append(". Dropped covariates: " + (", ".join(cox["dropped_covariates"]) or "none") + ".")
    if cox_status.kind is StatusKind.SEPARATED:
        note.append(" With monotone likelihood the hazard ratios above have no finite maximum: read them for "
                    "orientation only.")
    out.append(Table("Survival: Cox proportional hazards (hazard ratio per unit; early covariates per SD)",
                     ["covariate", "hazard ratio [95% CI]", "p"], crow, note))
    return out


def _coherence_rows(src: Source) -> list[tuple[tuple[str | int, ...], str]]:
    """Path and label of each (domain, estimator) coherence-before-collapse estimate (empty when not testable)."""
    if src.status("coherence_before_collapse") is not None:
        return []
    return [(("coherence_before_collapse", "by_estimator", i, "pre_collapse_excess_coherence"),
             f"{e['domain']}, {e['estimator']}")
            for i, e in enumerate(src.get("coherence_before_collapse", "by_estimator"))]


def _pca_testable(src: Source, group: str) -> bool:
    """The PCA entry of ``group`` has an all-runs estimate."""
    return src.status("pca", group) is None and src.status("pca", group, "all_runs") is None


def regularities_table(src: Source) -> Table:
    rows: list[list[list[Any]]] = []
    for i, d in enumerate(src.get("regularities", "dissociation")):
        p = ("regularities", "dissociation", i)
        what = f"1. decoupling: Spearman ρ(final performance, {d['measure']}), per {d['level']}"
        st = Status.of(d)
        if st is not None:
            rows.append([[what], [st.text], ["n=", src.num(*p, "n", digits=0)], [""]])
            continue
        verdict = "CI includes 0: consistent with decoupling" if d["decoupled"] else \
            "CI excludes 0: performance and stability are coupled here"
        rows.append([[what], ci(src, *p), ["n=", src.num(*p, "n", digits=0), ", p=",
                                            src.num(*p, "p_value", kind="g")], [verdict]])
    buf = src.get("regularities", "stochasticity_buffer")
    buf_status = Status.from_json(buf)
    if buf_status.ok:
        for i, lv in enumerate(buf["collapse_probability"]):
            p = ("regularities", "stochasticity_buffer", "collapse_probability", i)
            rows.append([[f"2. stochasticity buffer: P(collapse) of perturbed runs at level '{lv['level']}'"],
                         ci(src, *p), ["n=", src.num(*p, "n", digits=0)], [""]])
        cox_status = Status.from_json(buf["cox_status"])
        for i, h in enumerate(buf["cox_hazard_ratios"]):
            p = ("regularities", "stochasticity_buffer", "cox_hazard_ratios", i)
            rows.append([[f"2. stochasticity buffer: Cox HR of {h['covariate']}"], ci(src, *p, kind="g"),
                         ["p=", src.num(*p, "p_value", kind="g")],
                         [f"Cox fit: {cox_status.text}" if not cox_status.ok else ""]])
    else:
        rows.append([["2. stochasticity buffer"], [buf_status.text], [""], [""]])
    for i, pr in enumerate(src.get("regularities", "precedence")):
        p = ("regularities", "precedence", i)
        st = Status.of(pr)
        name = DETECTOR_LABELS.get(pr["detector"], pr["detector"])
        if st is not None:
            rows.append([[f"3. precedence: {name}"], [st.text], [""], [""]])
            continue
        rows.append([[f"3. precedence: {name}, share of collapses whose alarm came first"],
                     ci(src, *p, "share_alarm_first", kind="pct", digits=0),
                     ["n=", src.num(*p, "share_alarm_first", "n", digits=0)],
                     ["median lead ", src.num(*p, "median_lead_updates", "value", digits=0), " updates"]])
    coh = _coherence_rows(src)
    for p, label in coh:
        rows.append([[f"gradient coherence before collapse ({label}), run minus matched controls"],
                     ci(src, *p, digits=3), ["n=", src.num(*p, "n", digits=0), " runs"],
                     _direction(src, *p, neg="a drop (as the paper predicts)", pos="a rise, not a drop")])
    if not coh:
        rows.append([["gradient coherence before collapse"], [str(src.status("coherence_before_collapse"))],
                     [""], [""]])
    for g in src.get("pca"):
        if not _pca_testable(src, g):
            st = src.status("pca", g) or src.status("pca", g, "all_runs")
            rows.append([[f"low dimension: PCA {g}"], [str(st)], [""], [""]])
            continue
        p = ("pca", g, "all_runs")
        rows.append([[f"low dimension: PCA {g}, components for 90% variance (of ",
                      src.num("pca", g, "n_features", digits=0), " features)"],
                     [*ci(src, *p, "n_components_90", digits=0), " vs null ",
                      src.num(*p, "null_n_components_90", "value", digits=1)],
                     ["n=", src.num(*p, "n_components_90", "n", digits=0), " runs"],
                     ["participation ratio ", src.num(*p, "participation_ratio", "value"), " vs null ",
                      src.num(*p, "null_participation_ratio", "value"), "; p(n90 ≤ null) = ",
                      src.num(*p, "p_value_n90_le_null", kind="g")]])
    return Table("The paper's regularities, measured", ["quantity", "estimate [95% CI]", "n", "reading"], rows)


def _direction(src: Source, *path: str, neg: str, pos: str) -> list[Any]:
    lo, hi = src.get(*path, "ci_low"), src.get(*path, "ci_high")
    if finite(lo) and finite(hi):
        if hi < 0:
            return [f"CI below 0: {neg}"]
        if lo > 0:
            return [f"CI above 0: {pos}"]
        return ["CI includes 0: no clear change"]
    return ["no CI"]


# =========================================================================== captions
def _logrank_all(src: Source) -> list[Any]:
    """The caption sentence on the k-sample log-rank test across all groups."""
    lr = src.get("survival", "logrank")
    k = next((i for i, r in enumerate(lr) if r["comparison"] == "all groups"), None)
    if k is None:
        return ["Log-rank tests per (domain, algo) are in the log-rank table."]
    st = Status.from_json(lr[k])
    if not st.ok:
        return [f"Log-rank test across all groups: {st.text}."]
    p = ("survival", "logrank", k)
    return ["Log-rank test across all groups: χ² = ", src.num(*p, "chi2"), " (df ", src.num(*p, "df", digits=0),
            "), p = ", src.num(*p, "p_value", kind="g"), "; ", src.num(*p, "n_events", digits=0), " collapses in ",
            src.num(*p, "n", digits=0), " runs."]


def _not_evaluated(src: Source) -> list[Any]:
    return [f"Not evaluated: {src.summary.early_warning_status}."]


def captions(data: ReportData) -> dict[str, list[Any]]:
    """Caption fragments per figure id, numbers read from summary.json."""
    src = Source(data.summary)
    cap: dict[str, list[Any]] = {}
    cap["F1"] = ["Performance, gradient norm, gradient coherence and the Kalman monitor's MSD around the "
                 "perturbation onset (dotted line at 0), as a fraction of each run's updates; median across seeds "
                 "with the IQR band, for the strongest magnitude of each perturbation kind (one stochasticity "
                 "level: 'default' when present), one column per stability dimension; grey: unperturbed "
                 "controls. Telemetry read from the corpus ",
                 f"({data.corpus}); ", "the MSD comes from the held-out test folds of the early-warning evaluation."]
    fc = ("collapse", "rule_false_collapse_rate_unperturbed")
    cap["F2"] = ["Top: collapse probability per magnitude with 95% Clopper–Pearson intervals; bottom: final "
                 "performance, mean ± SD across seeds. Dotted: the unperturbed controls. "]
    if finite(src.get(*fc, "value")):
        cap["F2"] += ["The collapse rule flags ", *ci(src, *fc), " of unperturbed runs judged leave-one-out (n=",
                      src.num(*fc, "n", digits=0), ")."]
    else:
        cap["F2"] += ["The collapse rule's false-collapse rate is not measurable here: no matched group has a "
                      "second unperturbed run to judge one against (n=", src.num(*fc, "n", digits=0), ")."]
    cap["F3"] = ["Kaplan–Meier probability of no collapse yet against updates since onset, one panel per kind and "
                 "one curve per magnitude, with 95% exponential-Greenwood bands; dashed grey: unperturbed runs. ",
                 *_logrank_all(src)]
    cox = ("survival", "cox")
    cox_status = src.status(*cox)
    cap["F4"] = ["Cox proportional-hazards model of time to collapse (Efron ties), hazard ratios with 95% CIs; ",
                 "early_msd and early_coherence are per SD. Fit status: ", str(cox_status),
                 ". n = ", src.num(*cox, "n", digits=0), " runs, ", src.num(*cox, "n_events", digits=0), " collapses"]
    if src.has(*cox, "concordance"):
        cap["F4"] += [", concordance ", src.num(*cox, "concordance")]
    cap["F4"] += ["."]
    f5: list[Any] = ["Explained-variance ratio per principal component of the standardised telemetry (all runs, "
                     "and unperturbed runs only) against the mean of the time-shuffled null (dotted). "]
    for g in src.get("pca"):
        if _pca_testable(src, g):
            p = ("pca", g, "all_runs")
            f5 += [f"{g}: ", *ci(src, *p, "n_components_90", digits=0), " components reach 90% variance (null ",
                   src.num(*p, "null_n_components_90", "value", digits=1), "), participation ratio ",
                   *ci(src, *p, "participation_ratio"), " (null ", src.num(*p, "null_participation_ratio", "value"),
                   "). "]
    cap["F5"] = f5
    cap["F6"] = ["Block-mean telemetry of every run projected on the first two principal components (all-runs "
                 "PCA). Runs that collapse are coloured by the updates left until their collapse (yellow: long "
                 "before, dark purple: after it); a cross marks the collapse; grey: runs that never collapse."]
    kal, gru = src.summary.detector("kalman"), src.summary.detector("gru")
    if kal is not None:
        f7: list[Any] = _lead_sentence(src, kal, "The Kalman monitor")
        f7 += [" ", *_lead_sentence(src, gru, "The GRU monitor")] if gru is not None else []
        f7 += [" The paper reports deviations up to ~100 steps before collapse. Left: MSD of each collapsed test "
               "run aligned on its collapse, with the calibrated thresholds; right: the lead-time distribution."]
        cap["F7"] = f7
        f8: list[Any] = ["ROC of each detector's score maximum from onset to collapse on held-out seeds; AUROC "
                         "and 95% bootstrap CI in the legend. The Kalman monitor: AUROC ", *_status_or(src, *kal,
                                                                                                   "auroc")]
        if src.status(*kal, "auroc") is None:
            f8 += [" (", src.num(*kal, "auroc", "n_pos", digits=0), " collapsing vs ",
                   src.num(*kal, "auroc", "n_neg", digits=0), " held-out controls)"]
        f8 += ["; the 'alarm = perturbation active' reference is perfect here by construction (controls are never "
               "perturbed), so question (b) compares with the configuration instead. Its FPR on held-out unperturbed "
               "runs is ", *ci(src, *kal, "fpr_unperturbed"), " (target ", src.num(*kal, "fpr_unperturbed", "target"),
               ", n=", src.num(*kal, "fpr_unperturbed", "n", digits=0), ")."]
        cap["F8"] = f8
    else:
        cap["F7"] = cap["F8"] = _not_evaluated(src)
    f9: list[Any] = ["Final performance against stability, one point per run (filled: collapsed; hollow: censored), "
                     "coloured by configuration. "]
    for i, d in enumerate(src.get("regularities", "dissociation")):
        p = ("regularities", "dissociation", i)
        st = Status.of(d)
        if st is not None:
            f9 += [f"ρ with {d['measure']} per {d['level']}: {st}. "]
        else:
            f9 += [f"Spearman ρ with {d['measure']} per {d['level']}: ", *ci(src, *p), " (n=",
                   src.num(*p, "n", digits=0), ", p=", src.num(*p, "p_value", kind="g"), "). "]
    cap["F9"] = f9
    buf = ("regularities", "stochasticity_buffer")
    buf_status = src.status(*buf)
    if buf_status is not None and buf_status.ok:
        f10: list[Any] = ["Collapse probability of perturbed runs per stochasticity level (95% CI) and the "
                          "dose-response per level. "]
        for i, lv in enumerate(src.get(*buf, "collapse_probability")):
            p = (*buf, "collapse_probability", i)
            f10 += [f"{lv['level']}: ", *ci(src, *p), " (n=", src.num(*p, "n", digits=0), "). "]
        cap["F10"] = f10
    else:
        cap["F10"] = [f"Stochasticity buffer: {buf_status}."]
    coh = _coherence_rows(src)
    if coh:
        f11: list[Any] = ["Gradient coherence of collapsed runs around collapse (thin: single runs; thick: median with "
                          "IQR) against the mean of their matched unperturbed runs at the same training time. Mean "
                          "excess before collapse: "]
        for p, label in coh:
            f11 += [f"{label}: ", *ci(src, *p, digits=3), " (n=", src.num(*p, "n", digits=0), " runs); ",
                    *_direction(src, *p, neg="a drop, as the paper predicts",
                                pos="a rise, not the drop the paper predicts"), ". "]
        cap["F11"] = f11
    else:
        cap["F11"] = [f"Coherence before collapse: {src.status('coherence_before_collapse')}."]
    cap["F12"] = ["Final performance normalised by the median of the matched unperturbed runs (1 = control level; "
                  "analysis/aggregates.py). Left: interquartile mean per configuration with a 95% stratified-bootstrap "
                  "CI (runs resampled within each env, as rliable does); right: performance profiles, the fraction "
                  "of runs above each threshold, with 95% CI bands."]
    if src.has("intervention") and src.status("intervention") is None:
        cap["F13"] = ["Collapse rate of matched pairs without (grey) and with acting on the live monitor's alarm, per "
                      "perturbation and monitor (", src.num("intervention", "n_pairs", digits=0), " pairs; text: pairs "
                      "and the 95% CI of the paired difference). Table 'Intervention' has final performance."]
    else:
        cap["F13"] = ["Intervention: " + (src.status("intervention").text if src.has("intervention") else
                                          "not in this summary (analysed before the intervention stage existed)")
                      + "."]
    return cap


def _lead_sentence(src: Source, p: tuple[str | int, ...], name: str) -> list[Any]:
    """How far ahead the detector at ``p`` (its by_detector record) warned, and how often."""
    lead = src.num(*p, "median_lead_updates", "value", digits=0)
    out: list[Any] = []
    if finite(lead.value):
        out += [f"{name} warned a median of ", lead, " updates before collapse (IQR ",
                src.num(*p, "median_lead_updates", "iqr_low", digits=0), "–",
                src.num(*p, "median_lead_updates", "iqr_high", digits=0), ", n=",
                src.num(*p, "median_lead_updates", "n", digits=0), "); "]
    else:
        out += [f"{name} raised no alarm before any collapse; "]
    out += ["it preceded ", src.num(*p, "frac_collapses_preceded", "value", digits=0, kind="pct"), " of ",
            src.num(*p, "frac_collapses_preceded", "n", digits=0), " collapses."]
    return out


def claims_table(data: ReportData) -> Table:
    """The paper's claims (DESIGN.md) and what this corpus says, each with the numbers it rests on."""
    src = Source(data.summary)
    rows: list[list[list[Any]]] = []
    rows.append([["small structured perturbations induce collapse"], ["dose-response, F2/F3"],
                 ["see the collapse table. ", *_logrank_all(src)]])
    c2: list[Any] = []
    for g in src.get("pca"):
        if _pca_testable(src, g):
            p = ("pca", g, "all_runs")
            c2 += [f"{g}: ", src.num(*p, "n_components_90", "value", digits=0), " of ",
                   src.num("pca", g, "n_features", digits=0), " PCs for 90% (null ",
                   src.num(*p, "null_n_components_90", "value", digits=1), "); "]
    rows.append([["the dynamics are low-dimensional"], ["PCA vs time-shuffled null, F5"], c2 or ["not testable"]])
    c3: list[Any] = []
    for p, label in _coherence_rows(src):
        c3 += [f"{label}: ", *ci(src, *p, digits=3), "; ", *_direction(src, *p, neg="a drop", pos="a rise, not a drop"),
               ". "]
    rows.append([["gradient coherence drops before collapse"], ["coherence vs matched controls, F11"],
                 c3 or [str(src.status("coherence_before_collapse"))]])
    kal = src.summary.detector("kalman")
    if kal is not None:
        c4: list[Any] = ["Kalman monitor: median lead ", src.num(*kal, "median_lead_updates", "value", digits=0),
                         " updates; AUROC ", *_status_or(src, *kal, "auroc"), "; FPR ",
                         src.num(*kal, "fpr_unperturbed", "value"), " (target ",
                         src.num(*kal, "fpr_unperturbed", "target"), ")"]
    else:
        c4 = [str(src.summary.early_warning_status)]
    rows.append([["meta-state deviation precedes collapse (≤ ~100 steps)"], ["monitor vs baselines, F7/F8"], c4])
    c5: list[Any] = []
    for i, d in enumerate(src.get("regularities", "dissociation")):
        if d["level"] == "configuration":
            st = Status.of(d)
            if st is not None:
                c5 += [f"{d['measure']}: {st}; "]
            else:
                c5 += [f"ρ with {d['measure']} ", *ci(src, "regularities", "dissociation", i),
                       " (decoupled)" if d["decoupled"] else " (coupled)", "; "]
    rows.append([["final performance is decoupled from stability"], ["Spearman ρ across configurations, F9"],
                 c5 or ["not testable"]])
    buf = ("regularities", "stochasticity_buffer")
    buf_status = src.status(*buf)
    c6: list[Any] = [str(buf_status)]
    if buf_status is not None and buf_status.ok:
        c6 = []
        for i, lv in enumerate(src.get(*buf, "collapse_probability")):
            c6 += [f"P(collapse) at {lv['level']} ", src.num(*buf, "collapse_probability", i, "value"), "; "]
    rows.append([["stochasticity buffers the dynamics"], ["collapse probability / HR per level, F10"], c6])
    domains = sorted({g["domain"] for g in src.get("groups")})
    rows.append([["RL and LM share the same principles"], ["the same analysis per domain"],
                 ["domains in this corpus: " + ", ".join(str(d) for d in domains) +
                  ("" if len(domains) > 1 else " (not testable: one domain)")]])
    return Table("The paper's claims and what this corpus says", ["claim", "test", "measured here"], rows)


# =========================================================================== page
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:1.7em;margin:.2em 0}h2{margin-top:2em;border-bottom:2px solid #e5e5e5;padding-bottom:.2em}
h3{font-size:1.05em;margin:1.4em 0 .4em}
.meta{color:#555;font-size:.92em}
.caveats{background:#fff4e5;border-left:5px solid #e69f00;padding:10px 18px;margin:18px 0}
.caveats h2{margin:.2em 0;border:none;font-size:1.15em}
.caveats li{margin:.25em 0}
table{border-collapse:collapse;font-size:.86em;width:100%;margin:.3em 0}
th,td{border-bottom:1px solid #e3e3e3;padding:5px 7px;text-align:left;vertical-align:top}
th{background:#f3f5f8;font-weight:600}
tbody tr:nth-child(even){background:#fbfbfc}
.note{font-size:.82em;color:#555;margin:.3em 0 1em}
figure{margin:22px 0 34px}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#333;margin-top:6px;line-height:1.45}
.toolittle{background:#fff4e5;border:1px solid #e69f00;border-radius:6px;padding:8px 12px;margin:8px 0;
font-size:.9em}
.num{font-variant-numeric:tabular-nums;font-weight:600}
nav{font-size:.9em;columns:3;margin:10px 0}nav a{display:block;color:#0060a8;text-decoration:none}
code{background:#f3f3f3;padding:1px 4px;border-radius:3px}
"""


def _reason(r: str) -> str:
    """A "too little data" reason without the redundant prefixes."""
    for prefix in ("too little data: ", "not testable: "):
        r = r.removeprefix(prefix)
    return r.replace(": not testable: ", ": ")


def _write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def build_report(results: str | os.PathLike[str], out: str | os.PathLike[str] = "reports/out",
                 corpus: str | os.PathLike[str] | None = None,
                 progress: Callable[[str], None] | None = None, embed: bool = False) -> Path:
    """Draw F1-F12 from ``results`` and write ``out/index.html``, ``out/index.md`` and ``out/figures/``.

    ``embed=True`` inlines the PNGs into index.html (base64) so the page travels as one file;
    the SVG links still point to ``figures/``. Returns the path of index.html. Raises
    :class:`~stabilitybench.reports.errors.ResultsMissingError` when ``results`` has no summary.json and
    :class:`~stabilitybench.reports.errors.OutputPathError` when ``out`` cannot be a folder.
    """
    say = progress or (lambda _m: None)
    data = load(results, corpus)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"{out}: exists and is not a folder")
    try:
        (out / FIG_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"{out}: cannot create the report folder ({exc.strerror})") from None
    caps = captions(data)
    figs = []
    for spec in FIGURES:
        say(f"{spec.id} {spec.title}")
        fig, reasons = spec.build(data)
        save(fig, out / FIG_DIR, spec.stem)
        figs.append((spec, reasons))
    src = Source(data.summary)
    tables = [t for t in (monitor_table(src), prediction_table(src), collapse_table(src), *survival_tables(src),
                          regularities_table(src), intervention_table(src))
              if t is not None]
    claims = claims_table(data)
    caveats = data.summary.caveats
    notes = data.summary.data_notes
    excluded_line = f"{data.summary.n_excluded} run(s) excluded for missing or damaged files"
    ew_status = data.summary.early_warning_status

    # ------------------------------------------------------------------ HTML
    h = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         f"<title>StabilityBench report</title><style>{CSS}</style></head><body><main>",
         "<h1>StabilityBench report</h1>",
         f'<p class="meta">Results: <code>{html.escape(str(data.results.resolve()))}</code> · corpus: '
         f'<code>{html.escape(str(data.corpus))}</code> · {render_html([src.num("n_runs", digits=0)])} runs · '
         f"{excluded_line} · "
         "every number below is read from <code>summary.json</code> (hover a bold number for its source).</p>"]
    h.append('<section class="caveats"><h2>Read this first: caveats</h2><ul>')
    h += [f"<li>{html.escape(str(c))}</li>" for c in caveats] or ["<li>none raised by the analysis</li>"]
    if ew_status:
        h.append(f"<li>early warning: {html.escape(str(ew_status))}</li>")
    h += [f"<li>data: {html.escape(str(n))}</li>" for n in notes]
    h.append("</ul></section>")
    h.append("<nav>" + "".join(f'<a href="#{s.id}">{s.id} · {html.escape(s.title)}</a>' for s, _ in figs)
             + '<a href="#tables">Headline tables</a></nav>')
    h.append(f"<h2>Claims</h2>{claims.html()}")
    h.append('<h2 id="tables">Headline tables</h2>' + "".join(t.html() for t in tables))
    h.append("<h2>Figures</h2>")
    for spec, reasons in figs:
        png, svg = f"{FIG_DIR}/{spec.stem}.png", f"{FIG_DIR}/{spec.stem}.svg"
        src_png = ("data:image/png;base64," + base64.b64encode((out / png).read_bytes()).decode()) if embed else png
        box = "".join(f'<div class="toolittle">too little data: {html.escape(_reason(r))}</div>' for r in reasons)
        h.append(f'<figure id="{spec.id}"><h3>{spec.id} · {html.escape(spec.title)}</h3>{box}'
                 f'<a href="{svg}"><img src="{src_png}" alt="{spec.id}: {html.escape(spec.title)}" loading="lazy"></a>'
                 f"<figcaption><b>{spec.id}.</b> {render_html(caps[spec.id])} "
                 f'<a href="{svg}">SVG</a></figcaption></figure>')
    h.append("</main></body></html>")
    _write_atomic(out / "index.html", "\n".join(h) + "\n")

    # ------------------------------------------------------------------ Markdown
    m = ["# StabilityBench report", "",
         f"Results: `{data.results.resolve()}` · corpus: `{data.corpus}` · {render_md([src.num('n_runs', digits=0)])}"
         f" runs · {excluded_line}. Every number is read from `summary.json`.", "", "## Read this first: caveats", ""]
    m += [f"- {c}" for c in caveats] or ["- none raised by the analysis"]
    if ew_status:
        m.append(f"- early warning: {ew_status}")
    m += [f"- data: {n}" for n in notes]
    m += ["", "## Claims", "", claims.md(), "## Headline tables", ""] + [t.md() for t in tables] + ["## Figures", ""]
    for spec, reasons in figs:
        m += [f"### {spec.id} · {spec.title}", ""]
        m += [f"> **too little data:** {_reason(r)}" for r in reasons]
        if reasons:
            m.append("")
        m += [f"![{spec.id}]({FIG_DIR}/{spec.stem}.png)", "", f"**{spec.id}.** {render_md(caps[spec.id])} "
              f"([SVG]({FIG_DIR}/{spec.stem}.svg))", ""]
    _write_atomic(out / "index.md", "\n".join(m))
    return out / "index.html"


__all__ = ["Num", "build_report", "captions", "claims_table", "render_md"]
