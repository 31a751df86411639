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
            [src.num(*p, "n_collapsed", digits=0), " / ", src.num(*p, "n_controls", digits=0),
             *([" (+", src.num(*p, "n_collapsed_no_window", digits=0), " at onset)"]
               if src.optional(*p, "n_collapsed_no_window") else [])],
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
            "Positives: performance collapses with at least one block between onset and the collapse date (those "
            "dated earlier leave nothing to score: 'at onset', counted, left out); negatives: held-out controls. "
            "ΔAUROC against 'alarm = perturbation "
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
        q, mark = alarm_path(src, p, "median_lead_updates")
        if src.has(*q, "median_lead_updates"):
            lead = [*ci(src, *q, "median_lead_updates", digits=0), ", n=",
                    src.num(*q, "median_lead_updates", "n", digits=0), mark]
        rows.append([[detector_label(d)],
                     [src.num(*p, "n_pos", digits=0), " / ", src.num(*p, "n_neg", digits=0),
                      *([" (", src.num(*p, "n_pairs", digits=0), " pairs)"] if src.has(*p, "n_pairs") else [])],
                     [src.num(*p, "n_cells_contributing", digits=0), " of ", src.num(*p, "n_cells", digits=0)],
                     status_or(src, *p, "auroc_stratified"), lead])
    note = ["(a') Same-dose detection: within one group × kind × magnitude × duration cell, each perturbed run that "
            "collapsed against each that did not, both scored by their highest calibrated excess over the same "
            "window [onset, onset + w), w = the collapsed run's break (updates from onset, capped at the detection "
            "horizon); AUROC = the share of pairs the collapsed run wins (ties half), CI: cluster bootstrap over "
            "seeds. Within a cell, so a score that only knows the dose scores 0.5: this is the question that can "
            "show foresight within a dose. Cells with one outcome contribute nothing; a collapse at onset has no "
            "window, and its pairs are dropped."]
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


def _tte_path(src: Source) -> tuple[str, ...] | None:
    """summary.json's question (c) path, or None when the summary has no (c) or it is not testable."""
    path = ("early_warning", "time_to_event")
    if not src.has(*path) or src.status(*path) is None or not src.status(*path).ok:  # type: ignore[union-attr]
        return None
    return path


def time_to_event_table(src: Source) -> Table | None:
    """Question (c), time to event on the regime runs: per domain, the no-kick reference and every detector (None
    when the summary has no (c) or it is not testable: the figure F14 and its caption say why)."""
    path = _tte_path(src)
    if path is None:
        return None
    rows = []
    for dom in src.get(*path, "by_domain"):
        base = (*path, "by_domain", dom)
        if src.status(*base) is not None:
            rows.append([[dom], [src.status(*base).text], [], [], [], [], []])  # type: ignore[union-attr]
            continue
        hs = [str(h) for h in src.get(*base, "horizons")]
        entries = [("reference", (*base, "reference")),
                   *((d, (*base, "detectors", d)) for d in src.get(*base, "detectors"))]
        for d, e in entries:
            label = f"{dom}: " + ("updates since the regime began (reference)" if d == "reference" else
                                  detector_label(d))
            if src.status(*e) is not None:
                rows.append([[label], [src.status(*e).text], [], [], [], [], []])  # type: ignore[union-attr]
                continue
            top = (*e, "horizons", hs[-1])
            aurocs: list[Any] = []
            for h in hs:
                aurocs += [*(["; "] if aurocs else []), f"h={h}: ", *status_or(src, *e, "horizons", h, "auroc")]
            delta = ["—"] if d == "reference" else status_or(src, *top, "auroc_minus_reference")
            fa = [*_rate(src, (*top, "false_alarms_per_10k", "controls")), "; regime runs: ",
                  *_rate(src, (*top, "false_alarms_per_10k", "survivors")), " survivors, ",
                  *_rate(src, (*top, "false_alarms_per_10k", "pre_collapse")), " before a collapse"]
            warned = status_or(src, *top, "warned", "1")
            if src.status(*top, "warned", "1") is None:
                warned += [" (n=", src.num(*top, "warned", "1", "n", digits=0), ")"]
            twin: list[Any] = ["—"]
            if src.has(*e, "null_twin"):
                st = src.status(*e, "null_twin")
                twin = [st.text] if st is not None else [
                    "passes" if src.get(*e, "null_twin", "passes") else "fails", ", twins/controls ",
                    src.num(*e, "null_twin", "value")]
            rows.append([[label], aurocs, delta, fa, warned, twin, [src.num(*base, "n_collapsed", digits=0), " / ",
                                                                   src.num(*base, "n_controls", digits=0)]])
    note = ["(c) Time to event: at every block of every regime run (trained throughout at one elevated setting, no "
            "kick) and control, the label is 'collapse within the next h updates'. AUROC with a run-clustered "
            "bootstrap CI; ΔAUROC against the no-kick reference (updates since the regime began) on the same blocks; "
            "false alarms per 10,000 control updates and the share of collapses warned with lead 1..h (largest h) "
            "at the threshold calibrated to 1 false alarm per 10,000 control updates (cross-fitted); the null twin: "
            "alarm rate on the controls' mean trajectory plus an AR(1) surrogate of each regime run's own early "
            "deviation from it, over the controls' (passes unless significantly higher)."]
    return Table("(c) Time to event: does the score foresee a collapse that no kick announced?",
                 ["detector", "AUROC [95% CI]", "ΔAUROC vs reference, largest h",
                  "false alarms / 10k: controls; regime runs", "share warned, largest h", "null twin",
                  "n collapsed / controls"], rows, note)


def _rate(src: Source, path: tuple[Any, ...]) -> list[Any]:
    """A false-alarm rate with its CI and n, or its status text."""
    if src.status(*path) is not None:
        return status_or(src, *path)
    return [*status_or(src, *path), " (n=", src.num(*path, "n", digits=0), ")"]


def time_to_event_within_table(src: Source) -> Table | None:
    """Question (c) among the regime runs only (summary.json ``within_regime`` of each (c) entry): the threshold
    calibrated on the survivors, so a score that only recognises the aggressive setting earns nothing."""
    path = _tte_path(src)
    if path is None:
        return None
    rows = []
    for dom in src.get(*path, "by_domain"):
        base = (*path, "by_domain", dom)
        if src.status(*base) is not None or not src.has(*base, "detectors"):
            continue
        hs = [str(h) for h in src.get(*base, "horizons")]
        for d in src.get(*base, "detectors"):
            e = (*base, "detectors", d, "within_regime")
            label = f"{dom}: {detector_label(d)}"
            if not src.has(*e):
                continue
            if src.status(*e) is not None:
                rows.append([[label], [src.status(*e).text], [], [], [], []])  # type: ignore[union-attr]
                continue
            top = (*e, "horizons", hs[-1])
            aurocs: list[Any] = []
            for h in hs:
                aurocs += [*(["; "] if aurocs else []), f"h={h}: ", *status_or(src, *e, "horizons", h, "auroc")]
            warned = status_or(src, *top, "warned", "1")
            if src.status(*top, "warned", "1") is None:
                warned += [" (n=", src.num(*top, "warned", "1", "n", digits=0), ")"]
            rows.append([[label], aurocs, status_or(src, *top, "auroc_minus_reference"),
                         [*_rate(src, (*top, "false_alarms_per_10k", "survivors")), "; ",
                          *_rate(src, (*top, "false_alarms_per_10k", "pre_collapse"))], warned,
                         [src.num(*e, "n", "collapsed_runs", digits=0), " / ",
                          src.num(*e, "n", "survivor_runs", digits=0)]])
    if not rows:
        return None
    note = ["(c) within the regime: only the regime runs' blocks (no control), the threshold calibrated to 1 false "
            "alarm per 10,000 updates on the surviving regime runs (each survivor at the threshold of the other "
            "half), so a score that only knows the aggressive setting, alarming on every regime run all the time, "
            "scores 0.5 here. This is the practitioner's question: at this setting, which run will collapse, and "
            "when? Same AUROC, reference and warned definitions as (c)."]
    return Table("(c) within the regime: at the aggressive setting, does the score say which run collapses, and when?",
                 ["detector", "AUROC within the regime [95% CI]", "ΔAUROC vs reference, largest h",
                  "false alarms / 10k: held-out survivors; before a collapse", "share warned, largest h",
                  "n collapsed / survivors"], rows, note)

def intervention_table(src: Source) -> Table | None:
    """The intervention experiment: each arm's matched pairs against its no-action twins, with exact tests."""
    if not src.ran("intervention"):
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
            _intervention_waste(src, p, r),
            _intervention_wall_time(src, p, r),
        ])
    note = ["Each arm against its no-action twins (same seed, same perturbation; log-only when no plain run exists: "
            "its training is identical), judged by the collapse rule against the natural controls only. Arms: "
            "monitor-driven, skip-step (the practitioners' rule: skip an update whose grad norm is above mean + 6 SD "
            "of the previous 128; no rollback), oracle (acts at onset + a delay drawn from the monitor's observed "
            "delays), random-time (the same action at a random update in the perturbation window; count-matched: as "
            "many times per run as the monitor arm acted), log-only (alarms timed, no action). "
            "Collapse: exact McNemar p and an exact CI conditional on the discordant pairs; final performance: sign "
            "test and a distribution-free CI of the median paired difference. Controls: every alarm is false and "
            "the paired difference is its cost. Compute wasted: updates discarded by rollbacks, skipped by the "
            "skip-step rule or not run after a stop. Wall time: the median paired ratio with / without (same "
            "machine and load only). Foresight: "]
    note += [" ".join(str(x) for x in src.get("intervention", "foresight"))] if src.has("intervention", "foresight") \
        else ["not tested"]
    return Table("Intervention: collapse and final performance per arm, against no action",
                 ["perturbation", "arm", "pairs", "collapse rate without → with", "Δ collapse [95% CI], p",
                  "Δ final performance [95% CI], p", "actions", "updates discarded / skipped / compute wasted",
                  "wall time ratio with / without [95% CI]"], rows, note)


def _intervention_waste(src: Source, p: tuple[str | int, ...], r: dict[str, Any]) -> list[Any]:
    """Updates discarded / skipped / compute wasted of an intervention row (no skipped: an older summary)."""
    skipped = [" / ", src.num(*p, "updates_skipped", digits=0)] if "updates_skipped" in r else []
    return [src.num(*p, "updates_discarded", digits=0), *skipped, " / ", src.num(*p, "compute_wasted", digits=0)]


def _intervention_wall_time(src: Source, p: tuple[str | int, ...], r: dict[str, Any]) -> list[Any]:
    """The median paired wall-time ratio with its CI (``n/a``: an older summary without wall times)."""
    if "wall_time_ratio" not in r:
        return ["n/a"]
    return [src.num(*p, "wall_time_ratio", digits=2), " [", src.num(*p, "wall_time_ratio_ci_low", digits=2), ", ",
            src.num(*p, "wall_time_ratio_ci_high", digits=2), "]"]


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



def _held_out_monitors(names: list[str]) -> list[str]:
    """The detector labels question (d)'s table shows: the meta-state monitors on their own feature set and on the
    no-kick set (not '+echo', which reads the kick itself)."""
    return [d for d in names if d.split("/")[0] in monitor_names()]


def _held_out_cells(src: Source, path: tuple[str | int, ...]) -> list[list[Any]]:
    """The number cells of one (d) setting entry at ``path``: (a), (a'), (b), Δ(b) vs kick_size, FPR, Δ vs in-env."""
    def opt(*p: str | int) -> list[Any]:
        if not src.has(*path, *p):
            return ["—"]
        st = src.status(*path, *p)  # a status in short: its kind and the first clause of its reason
        return [f"{st.kind.label}: {st.reason.split(' (')[0].split(': ')[0]}" if st.reason else st.kind.label] \
            if st is not None else ci(src, *path, *p)

    if src.has(*path, "fpr_target_controls", "value"):  # leave-one-env-out: the rate measured on the target
        f = (*path, "fpr_target_controls")
        small = "small" in str(src.get(*f, "from"))
        fpr = [*opt("fpr_target_controls"), " (n=", src.num(*f, "n", digits=0), ")", "†" if small else ""]
    elif src.has(*path, "a", "fpr_held_out_controls", "value") and src.get(*path, "a", "fpr_held_out_controls", "n"):
        f = (*path, "a", "fpr_held_out_controls")
        fpr = [*ci(src, *f), " (n=", src.num(*f, "n", digits=0), ")"]
    elif src.has(*path, "a", "small_folds", "fpr_held_out_controls"):
        f = (*path, "a", "small_folds", "fpr_held_out_controls")
        fpr = [*ci(src, *f), " (n=", src.num(*f, "n", digits=0), ")†"]
    else:
        fpr = ["—"]
    return [opt("a", "auroc"), opt("a_same_dose", "auroc_stratified"), opt("b", "auroc_stratified"),
            opt("b", "delta_auroc", "kick_size", "stratified"), fpr, opt("delta_vs_in_env", "a")]


def held_out_table(src: Source) -> Table | None:
    """Question (d), held-out generalisation: the monitors' (a), (a') and (b) with every fitted quantity fitted without
    the held-out kind or env, beside the in-sample / in-env numbers, and the false-alarm rate on the held-out env's
    controls (summary.json ``early_warning.held_out``)."""
    if not src.has("early_warning", "held_out"):
        return None
    base = ("early_warning", "held_out")
    rows: list[list[list[Any]]] = []

    def unit_status(label: str, setting: str, entry: Any) -> None:
        rows.append([[label], [setting], ["—"], [Status.from_json(entry).text], *[["—"] for _ in range(5)]])

    kind = src.get(*base, "leave_one_kind_out")
    if Status.of(kind) is not None and not Status.from_json(kind).ok:
        unit_status("leave one kind out", "—", kind)
    else:
        for d in _held_out_monitors(list(kind["in_sample"])):
            rows.append([["every kind, in-sample"], ["main evaluation"], [detector_label(d)],
                         *_held_out_cells(src, (*base, "leave_one_kind_out", "in_sample", d))])
        for k, ke in kind["by_kind"].items():
            if "detectors" not in ke:
                unit_status(f"kind {k}", "held out", ke)
                continue
            how = ", ".join(f"{da}: {m}" for da, m in ke["monitors"].items())
            for d in _held_out_monitors(list(ke["detectors"])):
                rows.append([[f"kind {k}"], [f"held out (monitors {how})"], [detector_label(d)],
                             *_held_out_cells(src, (*base, "leave_one_kind_out", "by_kind", k, "detectors", d))])
    env = src.get(*base, "leave_one_env_out")
    if Status.of(env) is not None and not Status.from_json(env).ok:
        unit_status("leave one env out", "—", env)
    else:
        words = {"in_env": "in-env", "transfer_target_calibrated": "from {s}, calibrated on the target",
                 "transfer_source_calibrated": "from {s}, calibrated on {s}"}
        for target, te in env["by_target"].items():
            if "detectors" not in te:
                unit_status(f"env {target}", "—", te)
                continue
            sources = ", ".join(te["sources"])
            for d in _held_out_monitors(list(te["detectors"])):
                for setting, text in words.items():
                    p = (*base, "leave_one_env_out", "by_target", target, "detectors", d, setting)
                    if Status.of(src.get(*p)) is not None:
                        unit_status(f"env {target}", text.format(s=sources), src.get(*p))
                        continue
                    rows.append([[f"env {target}"], [text.format(s=sources)], [detector_label(d)],
                                 *_held_out_cells(src, p)])
    note = ["(d) Held-out generalisation. Leave one kind out: every fitted quantity is fitted without the kind's runs "
            "(the monitors are fitted and calibrated on controls only; the feature screen and block length are "
            "checked per kind: 'reused' = unchanged, so the scores are the main evaluation's; the kick_size "
            "reference of (b) is refitted on the other kinds). Leave one env out: monitors fitted on the other "
            "envs' controls, calibrated on the target's controls or on the source envs' controls (nothing of the "
            "target used), scored on every target run; in-env = the target's own evaluation of the same runs. "
            "FPR: on the held-out controls (leave one env out: measured on the target's controls; with source "
            "calibration no conformal bound holds). Δ vs in-env: paired AUROC difference on the same runs, cluster "
            "bootstrap over seeds. † from folds with fewer than 19 calibration controls (permissive alarms). "
            "Monitors only; every detector is in results/early_warning_held_out.parquet."]
    return Table("(d) Held-out generalisation: monitors fitted without the kind or env they are scored on",
                 ["held out", "setting", "detector", "(a) AUROC [95% CI]", "(a') AUROC, stratified",
                  "(b) AUROC, stratified", "(b) ΔAUROC vs kick_size, stratified", "FPR, held-out controls",
                  "Δ(a) AUROC vs in-env"], rows, note)
