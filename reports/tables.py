"""The report's tables: the headline numbers of summary.json, one :class:`~stabilitybench.reports.text.Table` each.

Layout only: every number is a :class:`~stabilitybench.reports.text.Num` read from summary.json; detector
labels come from the registry (:func:`stabilitybench.analysis.detectors.detector_label`), configuration labels
from :class:`stabilitybench.data_schema.keys.ConfigKey`.
"""

from __future__ import annotations

from typing import Any

from stabilitybench.analysis.detectors import detector_label, monitor_names
from stabilitybench.analysis.questions import REFERENCES
from stabilitybench.analysis.summary import Status, StatusKind
from stabilitybench.data_schema.keys import ConfigKey
from stabilitybench.reports.data import ReportData, finite
from stabilitybench.reports.phrases import (
    alarm_path,
    coherence_rows,
    collapse_rule,
    direction,
    logrank_all,
    pca_testable,
    rule_false_collapse,
    status_or,
)
from stabilitybench.reports.text import Source, Table, ci


def _is_control(row: dict[str, Any]) -> bool:
    """An intervention row of unperturbed pairs: its ``controls`` flag (older summaries: its configuration)."""
    return bool(row["controls"]) if "controls" in row else ConfigKey(row["perturbation"]).is_control


def monitor_table(src: Source) -> Table | None:
    """Question (a), detection: one row per detector (monitors, baselines, the perturbation-on reference)."""
    if src.summary.early_warning_status is not None:
        return None
    rows = []
    for d in src.get("early_warning", "detection"):
        p = ("early_warning", "detection", d)
        a, mark = alarm_path(src, p)
        nonfinite: list[Any] = ["—"]  # the perturbation-on reference has no non-finite line
        if src.has(*a, "nonfinite") and not src.get(*a, "nonfinite", "n"):
            nonfinite = ["no non-finite collapse"]
        elif src.has(*a, "nonfinite"):
            nonfinite = [src.num(*a, "nonfinite", "value", digits=0, kind="pct"), " of ",
                         src.num(*a, "nonfinite", "n", digits=0), mark]
        lead: list[Any] = [*ci(src, *a, "median_lead_updates", digits=0), ", n=",
                           src.num(*a, "median_lead_updates", "n", digits=0), mark]
        if src.has(*a, "median_lead_updates_smoothed"):
            lead += ["; old date ", src.num(*a, "median_lead_updates_smoothed", "value", digits=0)]
        f = (*a, "fpr_held_out_controls")
        delta = status_or(src, *p, "delta_vs_perturbation_on") if src.has(*p, "delta_vs_perturbation_on") else ["—"]
        rows.append([
            [detector_label(d) + (" ★" if d.split("+")[0].split("/")[0] in monitor_names() else "")],
            [src.num(*p, "n_collapsed", digits=0), " / ", src.num(*p, "n_controls", digits=0)],
            status_or(src, *p, "auroc"), delta,
            [src.num(*a, "frac_collapses_preceded", "value", digits=0, kind="pct"), " of ",
             src.num(*a, "frac_collapses_preceded", "n", digits=0), mark],
            lead,
            [*ci(src, *f), " (n_cal=", src.num(*f, "n_calibration", digits=0), ", n_test=",
             src.num(*f, "n_test", digits=0), "; bound ", src.num(*f, "guaranteed_fpr_bound"), ")", mark],
            nonfinite,
        ])
    note = ["(a) Detection on held-out seeds. ★ meta-state monitors; '+echo' = with the intervention-echo columns "
            "(lr, update_norm, param_norm); '/no_kick' = without every column that responds to the perturbation "
            "itself (lr, update/param norms, approx_kl, clip_fraction, the grad-norm family, rolling coherence). "
            "Positives: performance collapses; negatives: held-out controls. ΔAUROC against 'alarm = perturbation "
            "active', which scores 1 here by construction: (a) can tell a kicked run from a control, it cannot show "
            "foresight (see same-dose detection). An alarm counts only strictly before the lag-free collapse date; "
            "lead in optimizer updates from that date, and from the old smoothed date beside it (CI: bootstrap over "
            "seeds). FPR on held-out controls with its Clopper–Pearson CI and the conformal bound at the level used. "
            "† every fold had fewer than 19 calibration controls: these alarm-based numbers are reported apart and "
            "no FPR claim is made. Non-finite collapses on their own: the share with an alarm strictly before the "
            "non-finite step."]
    return Table("(a) Detection: alarms before collapse vs false alarms on held-out controls",
                 ["detector", "n collapsed / controls", "AUROC [95% CI]", "ΔAUROC vs perturbation_on",
                  "collapses preceded", "median lead, updates", "FPR, held-out controls", "non-finite preceded"],
                 rows, note)


def same_dose_table(src: Source) -> Table | None:
    """Question (a'), same-dose detection: collapsed vs surviving perturbed runs within one cell."""
    if src.summary.early_warning_status is not None or not src.has("early_warning", "same_dose_detection"):
        return None
    rows = []
    for d in src.get("early_warning", "same_dose_detection"):
        p = ("early_warning", "same_dose_detection", d)
        lead: list[Any] = ["—"]
        if src.has(*p, "median_lead_updates"):
            lead = [*ci(src, *p, "median_lead_updates", digits=0), ", n=",
                    src.num(*p, "median_lead_updates", "n", digits=0)]
        rows.append([[detector_label(d)],
                     [src.num(*p, "n_pos", digits=0), " / ", src.num(*p, "n_neg", digits=0)],
                     [src.num(*p, "n_cells_contributing", digits=0), " of ", src.num(*p, "n_cells", digits=0)],
                     status_or(src, *p, "auroc_stratified"), lead])
    note = ["(a') Same-dose detection: within one group × kind × magnitude × duration cell, perturbed runs that "
            "collapsed against perturbed runs that did not, each scored by its highest calibrated excess over the "
            "same window [onset, onset + w), w ending before the cell's first collapse. Stratified by cell, so a "
            "score that only knows the dose scores 0.5: this is the question that can show foresight within a dose. "
            "Cells with one outcome contribute nothing."]
    return Table("(a') Same-dose detection: which of the runs given the same kick will collapse?",
                 ["detector", "n collapsed / survived", "cells used", "AUROC, stratified [95% CI]",
                  "median lead, updates"], rows, note)


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
                deltas += [f"{ref}: pooled ", *status_or(src, *p, "delta_auroc", ref, "pooled"), ", stratified ",
                           *status_or(src, *p, "delta_auroc", ref, "stratified"), "; "]
        rows.append([
            [detector_label(d) + ("" if d in pred else " (reference)")],
            [src.num(*p, "n_pos", digits=0), " / ", src.num(*p, "n_neg", digits=0)],
            status_or(src, *p, "auroc"), status_or(src, *p, "auroc_stratified"), deltas or ["—"]])
    note = ["(b) Prediction among perturbed runs still standing at the landmark L (end of the perturbation window + "
            "1 block): scores over [onset, L] (as -log10 conformal p) against collapse after L. Stratified: only "
            "pairs within one kind × magnitude × duration, so recognising the dose earns nothing. ΔAUROC (pooled and "
            "stratified) against the cross-validated configuration-only model (within a cell: its cell mean, 0.5 by "
            "definition), the kick-size model and 'alarm = perturbation active', with a cluster bootstrap over seeds."]
    return Table("(b) Prediction at the landmark: does the monitor beat the configuration?",
                 ["detector", "n collapse after L / survive", "AUROC [95% CI]", "AUROC, stratified",
                  "ΔAUROC vs references [95% CI]"], rows, note)


def intervention_table(src: Source) -> Table | None:
    """The intervention experiment: each arm's matched pairs against its no-action twins, with exact tests."""
    if not src.has("intervention") or src.status("intervention") is not None:
        return None
    rows = []
    for i, r in enumerate(src.get("intervention", "rows")):
        p = ("intervention", "rows", i)
        rows.append([
            ["control" if _is_control(r) else ConfigKey(r["perturbation"], r["magnitude"]).label()],
            [str(r["arm"])], [src.num(*p, "n_pairs", digits=0), *([" (", r["note"], ")"] if r.get("note") else [])],
            [src.num(*p, "collapse_rate_without", digits=0, kind="pct"), " → ",
             src.num(*p, "collapse_rate_with", digits=0, kind="pct")],
            [src.num(*p, "collapse_diff"), " [", src.num(*p, "collapse_diff_ci_low"), ", ",
             src.num(*p, "collapse_diff_ci_high"), "], p=", src.num(*p, "collapse_p_mcnemar", kind="g")],
            [src.num(*p, "perf_diff", digits=1), " [", src.num(*p, "perf_diff_ci_low", digits=1), ", ",
             src.num(*p, "perf_diff_ci_high", digits=1), "], p=", src.num(*p, "perf_p_sign", kind="g")],
            [src.num(*p, "runs_acted", digits=0), " runs, ", src.num(*p, "n_actions", digits=0), " actions; first ",
             src.num(*p, "first_action_from_onset_median", digits=0), " after onset"],
            [src.num(*p, "updates_discarded", digits=0), " / ", src.num(*p, "compute_wasted", digits=0)],
        ])
    note = ["Each arm against its no-action twins (same seed, same perturbation; log-only when no plain run exists: "
            "its training is identical), judged by the collapse rule against the natural controls only. Arms: "
            "monitor-driven, oracle (acts at onset + a delay drawn from the monitor's observed delays), random-time "
            "(the same action at a random update in the perturbation window), log-only (alarms timed, no action). "
            "Collapse: exact McNemar p and an exact CI conditional on the discordant pairs; final performance: sign "
            "test and a distribution-free CI of the median paired difference. Controls: every alarm is false and "
            "the paired difference is its cost. Foresight: "]
    note += [" ".join(str(x) for x in src.get("intervention", "foresight"))] if src.has("intervention", "foresight") \
        else ["not tested"]
    return Table("Intervention: collapse and final performance per arm, against no action",
                 ["perturbation", "arm", "pairs", "collapse rate without → with", "Δ collapse [95% CI], p",
                  "Δ final performance [95% CI], p", "actions", "updates discarded / compute wasted"], rows, note)


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
    note: list[Any] = [*collapse_rule(src), " "]
    note += rule_false_collapse(src) if finite(src.get(*fc, "value")) else [
        "The rule's false-collapse rate is not measurable here (n=", src.num(*fc, "n", digits=0), ")."]
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
        note.append(" With monotone likelihood (separation) the hazard ratios shown are ridge-penalised "
                    "(alpha 0.1), without CIs or p-values.")
    if cox.get("time_origin"):
        note += [f" Time origin: {cox['time_origin']}; collapses before the landmark excluded: ",
                 src.num("survival", "cox", "n_excluded_before_landmark", digits=0), "."]
    out.append(Table("Survival: Cox proportional hazards (hazard ratio per unit; early covariates per SD)",
                     ["covariate", "hazard ratio [95% CI]", "p"], crow, note))
    return out



def regularities_table(src: Source) -> Table:
    rows: list[list[list[Any]]] = []
    for i, d in enumerate(src.get("regularities", "dissociation")):
        p = ("regularities", "dissociation", i)
        what = f"1. decoupling: Spearman ρ(final performance, {d['measure']}), per {d['level']}"
        st = Status.of(d)
        if st is not None:
            rows.append([[what], [st.text], ["n=", src.num(*p, "n", digits=0)], [""]])
            continue
        rows.append([[what], ci(src, *p), ["n=", src.num(*p, "n", digits=0), ", p=",
                                            src.num(*p, "p_value", kind="g")], equivalence_reading(src, *p)])
    buf = src.get("regularities", "stochasticity_buffer")
    buf_status = Status.from_json(buf)
    if "verdict" in buf:
        rows.append([["2. stochasticity buffer: verdict (ED50(high)/ED50(low), CI excluding 1)"],
                     [buf["verdict"]], [""], [buf.get("verdict_reason") or ""]])
        for i, r in enumerate(buf.get("ed50_ratio", [])):
            p = ("regularities", "stochasticity_buffer", "ed50_ratio", i)
            st = Status.of(r)
            rows.append([[f"2. ED50({r.get('numerator')})/ED50({r.get('denominator')}), {r.get('perturbation', '')}"],
                         [st.text] if st is not None and not st.ok else ci(src, *p, kind="g"),
                         ["seeds ", src.num(*p, "n_seeds_numerator", digits=0), " / ",
                          src.num(*p, "n_seeds_denominator", digits=0)], [str(r.get("verdict", ""))]])
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
        name = detector_label(pr["detector"])
        if st is not None:
            rows.append([[f"3. precedence: {name}"], [st.text], [""], [""]])
            continue
        rows.append([[f"3. precedence: {name}, share of collapses whose alarm came first"],
                     ci(src, *p, "share_alarm_first", kind="pct", digits=0),
                     ["n=", src.num(*p, "share_alarm_first", "n", digits=0)],
                     ["median lead ", src.num(*p, "median_lead_updates", "value", digits=0), " updates"]])
    coh = coherence_rows(src)
    for p, label in coh:
        rows.append([[f"gradient coherence before collapse ({label}), run minus matched controls"],
                     ci(src, *p, digits=3), ["n=", src.num(*p, "n", digits=0), " runs"],
                     direction(src, *p, neg="a drop (as the paper predicts)", pos="a rise, not a drop")])
    if not coh:
        rows.append([["gradient coherence before collapse"], [str(src.status("coherence_before_collapse"))],
                     [""], [""]])
    for g in src.get("pca"):
        if not pca_testable(src, g):
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



def equivalence_reading(src: Source, *path: str | int) -> list[Any]:
    """Regularity 1's verdict on one dissociation row: the TOST verdict with rho, its 90% CI and the margin."""
    eq = src.get(*path).get("equivalence") or {}
    st = Status.from_json(eq) if eq else None
    if st is None or not st.ok:
        return [f"no equivalence verdict ({st.text if st is not None else 'not computed'})"]
    q = (*path, "equivalence")
    return [f"{eq['verdict']}: ρ ", src.num(*q, "rho"), " (90% CI ", src.num(*q, "ci90_low"), ", ",
            src.num(*q, "ci90_high"), "; margin ±", src.num(*q, "margin", digits=2), "; ",
            src.num(*q, "n_runs", digits=0), " runs, ", src.num(*q, "n_seeds", digits=0), " seeds)"]


def claims_table(data: ReportData) -> Table:
    """The paper's claims (DESIGN.md) and what this corpus says, each with the numbers it rests on."""
    src = Source(data.summary)
    rows: list[list[list[Any]]] = []
    rows.append([["small structured perturbations induce collapse"], ["dose-response, F2/F3"],
                 ["see the collapse table. ", *logrank_all(src)]])
    c2: list[Any] = []
    for g in src.get("pca"):
        if pca_testable(src, g):
            p = ("pca", g, "all_runs")
            c2 += [f"{g}: ", src.num(*p, "n_components_90", "value", digits=0), " of ",
                   src.num("pca", g, "n_features", digits=0), " PCs for 90% (null ",
                   src.num(*p, "null_n_components_90", "value", digits=1), "); "]
    rows.append([["the dynamics are low-dimensional"],
                 ["PCA after removing each group's control mean trajectory vs circular-shift surrogates, F5"],
                 c2 or ["not testable"]])
    c3: list[Any] = []
    for p, label in coherence_rows(src):
        c3 += [f"{label}: ", *ci(src, *p, digits=3), "; ", *direction(src, *p, neg="a drop", pos="a rise, not a drop"),
               ". "]
    rows.append([["gradient coherence drops before collapse"], ["coherence vs matched controls, F11"],
                 c3 or [str(src.status("coherence_before_collapse"))]])
    kal = src.summary.detector("kalman")
    if kal is not None:
        c4: list[Any] = ["Kalman monitor: median lead ", src.num(*kal, "median_lead_updates", "value", digits=0),
                         " updates; AUROC ", *status_or(src, *kal, "auroc"), "; FPR ",
                         src.num(*kal, "fpr_unperturbed", "value"), " (target ",
                         src.num(*kal, "fpr_unperturbed", "target"), ")"]
    else:
        c4 = [str(src.summary.early_warning_status)]
    rows.append([["meta-state deviation precedes collapse (≤ ~100 steps)"], ["monitor vs baselines, F7/F8"], c4])
    c5: list[Any] = []
    for i, d in enumerate(src.get("regularities", "dissociation")):
        eq = d.get("equivalence") or {}
        if d["level"] == "run" and Status.from_json(eq).ok:
            c5 += [f"{d['domain']}/{d['algo']} {d['measure']}: ",
                   *equivalence_reading(src, "regularities", "dissociation", i), "; "]
    rows.append([["final performance is decoupled from stability"],
                 ["equivalence (TOST) on Spearman ρ within matched groups, margin ±0.2, F9"],
                 c5 or ["undetermined: no run-level stability measure could be tested"]])
    buf = ("regularities", "stochasticity_buffer")
    buf_status = src.status(*buf)
    c6: list[Any] = [str(buf_status)]
    buf_entry = src.get(*buf) or {}
    if "verdict" in buf_entry:
        c6 = [f"{buf_entry['verdict']}: {buf_entry.get('verdict_reason') or buf_entry.get('reason') or ''}"]
    elif buf_status is not None and buf_status.ok:
        c6 = []
        for i, lv in enumerate(src.get(*buf, "collapse_probability")):
            c6 += [f"P(collapse) at {lv['level']} ", src.num(*buf, "collapse_probability", i, "value"), "; "]
    rows.append([["stochasticity buffers the dynamics"], ["collapse probability / HR per level, F10"], c6])
    domains = sorted({g["domain"] for g in src.get("groups")})
    rows.append([["RL and LM share the same principles"], ["the same analysis per domain"],
                 ["domains in this corpus: " + ", ".join(str(d) for d in domains) +
                  ("" if len(domains) > 1 else " (not testable: one domain)")]])
    return Table("The paper's claims and what this corpus says", ["claim", "test", "measured here"], rows)

