"""The summary document: what ``summary.json`` holds, assembled from the stages' results in one place.

:func:`summary_document` lays out the top-level entries (the one place their names are written;
:data:`stabilitybench.analysis.summary.REQUIRED_FIELDS` lists those a reader needs); :func:`collapse_summary`
and :func:`headline` build two of them. :func:`stabilitybench.analysis.summary.write_summary` writes it.

The ``questions`` entry is the analysis's side of the report's figure index. Analysis owns the *questions*
(:data:`stabilitybench.analysis.summary.QUESTIONS`: an id and what is measured; here, the number of runs
behind each); the report owns the *figures* (``stabilitybench.reports.figures.FIGURES``: each ``FigureSpec``
names the question id it draws) and writes the figure index, ``figures.json``, next to its pages.
Dependencies point one way (reports -> analysis), so analysis never names a figure.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from stabilitybench.analysis.config import AnalysisConfig
from stabilitybench.analysis.groups import GroupResults, LoadedCorpus
from stabilitybench.analysis.pca_summary import PCASummary
from stabilitybench.analysis.stages import EarlyWarningResult, RegularitiesResult, SurvivalResult, held_out_headline
from stabilitybench.analysis.stats import clopper_pearson
from stabilitybench.analysis.summary import QUESTIONS, Status, StatusKind, number
from stabilitybench.analysis.time_to_event_stage import TimeToEventResult, time_to_event_question


def question_index(summary: dict[str, Any], full: pl.DataFrame, ew: pl.DataFrame, coh: pl.DataFrame
                   ) -> dict[str, Any]:
    """For every question of :data:`QUESTIONS`: what it measures and the number of runs behind it."""
    n_all = full.height
    n_test = ew["run_id"].n_unique() if ew.height else 0
    n_pca = sum(e.get("all_runs", {}).get("n_runs", 0) for e in summary["pca"].values()
                if isinstance(e, dict) and isinstance(e.get("all_runs"), dict))
    inter = summary.get("intervention") or {}
    n_runs = {"onset_telemetry": n_all, "dose_response": n_all, "survival_km": n_all,
              "survival_cox": summary["survival"]["cox"].get("n", 0), "pca_dimension": n_pca,
              "pca_trajectories": n_pca, "detection_msd": n_test, "detection_roc": n_test, "dissociation": n_all,
              "stochasticity_buffer": int((~full["unperturbed"]).sum()),
              "coherence_before_collapse": coh["run_id"].n_unique() if coh.height else 0,
              "final_performance": n_all, "intervention": 2 * int(inter.get("n_pairs") or 0),
              "detection_same_dose": max((int(v.get("n_runs") or 0) for v in
                                          summary["early_warning"].get("same_dose_detection", {}).values()),
                                         default=0),
              "time_to_event": sum(int(d.get("n_runs") or 0) for d in
                                   (summary["early_warning"].get("time_to_event", {}).get("by_domain") or {}).values())}
    held = summary["early_warning"].get("held_out") or {}
    # (d) re-scores the main evaluation's test runs (leave-one-kind-out) and the target envs' runs, all among them
    n_runs["d"] = n_test if any(Status.of(v) is not None and Status.from_json(v).ok for v in held.values()) else 0
    return {q: {"question": text, "n_runs": int(n_runs[q])} for q, text in QUESTIONS.items()}


def summary_document(corpus: str | os.PathLike[str], loaded: LoadedCorpus, groups: GroupResults,
                     cfg: AnalysisConfig, full: pl.DataFrame, dose: pl.DataFrame, sens: pl.DataFrame,
                     pca: PCASummary, ew: EarlyWarningResult, surv: SurvivalResult, reg: RegularitiesResult,
                     intervention: dict[str, Any], timings: dict[str, float],
                     time_to_event: TimeToEventResult | None = None) -> dict[str, Any]:
    """The ``summary.json`` document (before :func:`~stabilitybench.analysis.summary.write_summary` stamps it).

    ``time_to_event``: question (c) (:func:`~stabilitybench.analysis.time_to_event_stage.time_to_event_question`), as
    the pipeline computed it; None computes it here from ``groups.ew_scores`` and ``full``.
    """
    if time_to_event is None:
        time_to_event = time_to_event_question(groups.ew_scores, full, cfg)
    summary: dict[str, Any] = {
        "corpus": str(Path(corpus).resolve()),
        "n_runs": loaded.runs.height,
        "data_notes": loaded.data_notes,
        "excluded_runs": {"n": len({b["run_id"] for b in loaded.excluded}), "files": loaded.excluded,
                          "why": "manifest says ok, but a steps or events file is missing or damaged"},
        "groups": groups.group_notes,
        "features": groups.feature_sets,
        "config": {"collapse": cfg.collapse.to_dict(), "features": vars(cfg.features),
                   "early_warning": cfg.early_warning.to_dict(), "n_null": cfg.n_null, "early_frac": cfg.early_frac,
                   "n_boot": cfg.n_boot, "seed": cfg.seed, "ratio_looks": cfg.ratio_looks},
        "collapse": collapse_summary(full, dose, sens),
        "pca": pca.summary,
        "coherence_before_collapse": reg.coherence_before_collapse,
        "early_warning": {**ew.summary, "folds": groups.fold_notes, "leave_one_env_out": ew.leave_one_env_out,
                          "feature_sets": groups.feature_sets,
                          "held_out": ew.held_out,
                          "leave_one_perturbation_kind_out": "early_warning.held_out.leave_one_kind_out (question "
                          "(d))", "time_to_event": time_to_event.summary},
        "survival": {"logrank": surv.logrank, "cox": surv.cox, "cox_onset": surv.cox_onset,
                     "km_groups": surv.km["group"].unique(maintain_order=True).to_list() if surv.km.height else []},
        "regularities": {"dissociation": reg.dissociation, "stochasticity_buffer": reg.stochasticity_buffer,
                         "precedence": reg.precedence},
        "intervention": intervention,
        "timings_s": timings,
        "environment": {"python": platform.python_version(), "polars": pl.__version__, "numpy": np.__version__},
    }
    summary["questions"] = question_index(summary, full, groups.ew_runs, groups.coherence)
    summary["headline"] = headline(summary)
    return summary


def collapse_summary(full: pl.DataFrame, dose: pl.DataFrame, sens: pl.DataFrame) -> dict[str, Any]:
    """summary.json ``collapse``: dose-response rows, the rule's sensitivity and its false-collapse rate."""
    held = full.filter(pl.col("unperturbed") & pl.col("rule_fold").is_not_null())
    kf = int(held["collapsed"].sum()) if held.height else 0
    kt = int(held["transient"].sum()) if held.height else 0
    return {
        "dose_response": dose.to_dicts(),
        "sensitivity": sens.to_dicts() if sens.height else [],
        "rule_false_collapse_rate_unperturbed": number(
            kf / held.height if held.height else None, held.height, clopper_pearson(kf, held.height),
            n_calibration=int(held["n_controls"].min()) if held.height else 0, n_test=held.height,
            note="held-out controls, each judged against the envelope of the other control seeds (cross-fitted)"),
        "transient_rate_unperturbed": number(kt / held.height if held.height else None, held.height,
                                             clopper_pearson(kt, held.height)),
        "n_transient_perturbed": int(full.filter(~pl.col("unperturbed"))["transient"].sum()),
        "collapse_kinds": {k: int(v) for k, v in full["collapse_kind"].value_counts().iter_rows() if k is not None},
    }


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers a closing note quotes, gathered in one place, plus data-driven caveats."""
    head: dict[str, Any] = {}
    head["collapse"] = {
        f"{r['algo']} {r['env']} {r['stochasticity']} {r['config']}": f"{r['n_collapsed']}/{r['n_runs']}"
        for r in summary["collapse"]["dose_response"]}
    head["pca"] = {}
    for name, entry in summary["pca"].items():
        if "all_runs" not in entry or "n_components_90" not in entry.get("all_runs", {}):
            continue
        head["pca"][name] = {
            sub: {k: entry[sub].get(k) for k in ("n_components_90", "null_n_components_90", "participation_ratio",
                                                  "null_participation_ratio", "p_value_n90_le_null",
                                                  "p_value_pr_le_null")}
            for sub in ("all_runs", "unperturbed_runs") if "n_components_90" in entry.get(sub, {})}
        head["pca"][name].update({k: entry.get(k) for k in ("n_features", "n_surrogates", "null_hypothesis")})
    det = summary["early_warning"].get("detection", {})
    pred = summary["early_warning"].get("prediction", {})
    head["detection"] = {k: {m: v.get(m) for m in ("n_collapsed", "n_collapsed_no_window", "n_controls", "auroc",
                                                  "delta_vs_perturbation_on", "frac_collapses_preceded",
                                                  "median_lead_updates", "median_lead_updates_smoothed",
                                                  "fpr_held_out_controls", "nonfinite", "small_folds")}
                         for k, v in det.items()}
    head["same_dose_detection"] = {
        k: {m: v.get(m) for m in ("n_pos", "n_neg", "n_cells_contributing", "n_cells_one_outcome", "auroc_stratified",
                                  "median_lead_updates", "median_lead_updates_smoothed")}
        for k, v in summary["early_warning"].get("same_dose_detection", {}).items()}
    head["prediction_sensitivity"] = summary["early_warning"].get("prediction_sensitivity", {})
    head["prediction"] = {k: {m: v.get(m) for m in ("n_pos", "n_neg", "n_collapsed_before_landmark", "auroc",
                                                   "auroc_stratified", "delta_auroc")} for k, v in pred.items()}
    head["prediction_references"] = summary["early_warning"].get("prediction_references", {})
    head["time_to_event"] = time_to_event_headline(summary["early_warning"].get("time_to_event", {}))
    cox_res = summary["survival"]["cox"]
    head["cox"] = {**Status.from_json(cox_res).to_json(), "n": cox_res.get("n"), "n_events": cox_res.get("n_events"),
                   **{k: cox_res.get(k) for k in ("time_origin", "n_excluded_before_landmark",
                                                  "n_censored_before_landmark", "n_excluded_nonfinite_early")},
                   "hazard_ratios": {c["covariate"]: {k: c[k] for k in ("value", "ci_low", "ci_high", "p_value")}
                                     for c in cox_res.get("coefficients", [])},
                   "concordance": cox_res.get("concordance")}
    head["regularities"] = summary["regularities"]
    head["coherence_before_collapse"] = summary["coherence_before_collapse"]
    caveats = []
    for k, v in det.items():
        claim = Status.from_json(v["fpr_held_out_controls"]["claim"])
        if claim.kind is StatusKind.REFUSED:
            caveats.append(f"{k}: FPR claim {claim}")
    for k, v in pred.items():
        st = Status.of(v["auroc_stratified"])
        if st is not None:
            caveats.append(f"{k}: prediction AUROC (stratified) {st}")
            continue
        for ref, kinds in v["delta_auroc"].items():
            for kind, d in kinds.items():
                lo = d.get("ci_low")
                if d.get("value") is not None and (lo is None or lo <= 0):
                    caveats.append(f"{k}: does not beat the {ref} reference, {kind} AUROC (delta "
                                   f"{d['value']:+.2f}, CI low {lo if lo is None else round(lo, 2)})")
    for dom, d in (summary["early_warning"].get("time_to_event", {}).get("by_domain") or {}).items():
        for k, v in (d.get("detectors") or {}).items():
            twin = v.get("null_twin") or {}
            if twin.get("passes") is False:
                caveats.append(f"(c) {dom} {k}: alarms more on its null twins than on the controls "
                               f"(p {twin.get('p_twins_alarm_more'):.3g})")
    if Status.from_json(cox_res).kind is StatusKind.SEPARATED:
        caveats.append("Cox PH: monotone likelihood (a covariate separates collapsing from non-collapsing runs); "
                       "only the ridge-penalised estimates (penalty stated) are given")
    head["held_out"], held_caveats = held_out_headline(summary["early_warning"].get("held_out") or {})
    caveats += held_caveats
    head["caveats"] = caveats
    return head


def time_to_event_headline(entry: dict[str, Any]) -> dict[str, Any]:
    """The closing note's (c) numbers: per domain and detector (and the reference), per horizon the AUROC, its
    difference from the no-kick reference, false alarms per 10k updates on held-out controls and the share of
    collapses warned (lead in ``[1, h]``) at the calibrated threshold; the n's; the null-twin verdict. A not testable
    (c) gives its status."""
    if Status.of(entry) is None or not Status.from_json(entry).ok:
        return Status.from_json(entry).to_json() if Status.of(entry) is not None else {}
    out: dict[str, Any] = {}

    def numbers(e: dict[str, Any]) -> dict[str, Any]:
        if Status.of(e) is not None:
            return Status.from_json(e).to_json()
        per = {h: {"auroc": v.get("auroc"), "auroc_minus_reference": v.get("auroc_minus_reference"),
                   "fa_per_10k_controls": v.get("false_alarms_per_10k", {}).get("controls"),
                   "warned": v.get("warned", {}).get("1")} for h, v in e.get("horizons", {}).items()}
        for h, v in e.get("horizons", {}).items():
            per[h]["fa_per_10k_before_collapse"] = v.get("false_alarms_per_10k", {}).get("pre_collapse")
        twin = e.get("null_twin") or {}
        within = e.get("within_regime") or {}
        w = Status.from_json(within).to_json() if Status.of(within) is not None else {
            h: {"auroc": v.get("auroc"), "auroc_minus_reference": v.get("auroc_minus_reference"),
                "fa_per_10k_survivors": v.get("false_alarms_per_10k", {}).get("survivors"),
                "warned": v.get("warned", {}).get("1")} for h, v in within.get("horizons", {}).items()}
        return {"horizons": per, "within_regime": w, "null_twin_passes": twin.get("passes")}

    for dom, d in (entry.get("by_domain") or {}).items():
        if Status.of(d) is not None:
            out[dom] = Status.from_json(d).to_json()
            continue
        out[dom] = {"n": {k: d.get(k) for k in ("n_runs", "n_regime_runs", "n_collapsed", "n_controls")},
                    "reference": numbers(d.get("reference", {})),
                    "detectors": {k: numbers(v) for k, v in d.get("detectors", {}).items()}}
    return out
