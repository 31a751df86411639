"""Stages 4-6 of :func:`stabilitybench.analysis.pipeline.run_analysis`, after the per-group work of
:mod:`stabilitybench.analysis.groups`, and the tables made from their results.

4. :func:`early_warning_questions` -> :class:`EarlyWarningResult`: questions (a) and (b) for every detector,
   question (a)'s ROC points, and the leave-one-env-out evaluation;
5. :func:`survival_models` -> :class:`SurvivalResult`;
6. :func:`measure_regularities` -> :class:`RegularitiesResult`;

and the per-configuration tables :func:`dose_response` and :func:`sensitivity`, and :func:`dissociation_runs`,
the runs the decoupling statistic uses (what F9 draws).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from stabilitybench.analysis import coherence as coherence_mod
from stabilitybench.analysis import questions
from stabilitybench.analysis.config import AnalysisConfig
from stabilitybench.analysis.data import block_size
from stabilitybench.analysis.early_warning import FEATURE_SET_LABELS, FEATURE_SET_RULES, leave_one_env_out_status
from stabilitybench.analysis.groups import GroupResults
from stabilitybench.analysis.regularities import dissociation, precedence, stochasticity_buffer
from stabilitybench.analysis.stats import clopper_pearson
from stabilitybench.analysis.summary import DetectorKey, Status, StatusKind, not_testable
from stabilitybench.analysis.survival import LANDMARK_COLUMN, cox, km_table, logrank, with_config_label
from stabilitybench.data_schema.keys import GROUP_KEYS

#: The columns of :func:`dissociation_runs` (``results/dissociation_runs.parquet``).
DISSOCIATION_COLUMNS = ("run_id", "domain", "algo", "env", "stochasticity", "seed", "perturbation", "dimension",
                        "magnitude", "duration_steps", "unperturbed", "collapsed", "final_performance",
                        "survival_time", "collapse_time", "max_msd", "drawdown_depth")


@dataclass(frozen=True)
class EarlyWarningResult:
    """Stage 4: questions (a) and (b) for every detector, and the leave-one-env-out evaluation.

    ``roc``: question (a)'s ROC points per detector (:func:`stabilitybench.analysis.questions.roc_points`), the
    curve F8 draws beside the AUROC of ``summary``; empty when no fold was evaluated.
    """

    summary: dict[str, Any]  #: detection, prediction, references and by_detector; or a not-testable status
    leave_one_env_out: dict[str, Any]
    roc: pl.DataFrame = field(default_factory=pl.DataFrame)


@dataclass(frozen=True)
class SurvivalResult:
    """Stage 5: Kaplan-Meier table, log-rank rows and the Cox models; ``runs`` carries the Cox covariates and each
    run's landmark (``landmark_updates``).

    ``cox``: the landmark model (early covariates; time from the landmark; runs with an event before it excluded
    and counted); ``cox_onset``: the model from onset on the covariates known at onset (kind, dose, stochasticity),
    which keeps every event.
    """

    km: pl.DataFrame
    logrank: list[dict[str, Any]]
    cox: dict[str, Any]
    runs: pl.DataFrame
    cox_onset: dict[str, Any] = field(default_factory=dict)


def early_warning_questions(groups: GroupResults, runs: pl.DataFrame, cfg: AnalysisConfig) -> EarlyWarningResult:
    """Stage 4: questions (a), (a') same-dose detection and (b) prediction on the held-out folds, and
    leave-one-env-out (which keeps no per-block traces: no same-dose detection there)."""
    roc = pl.DataFrame()
    if groups.ew_runs.height:
        ew_summary, roc = _questions(groups.ew_runs, groups.kick, cfg, groups.ew_scores)
    else:
        ew_summary = not_testable("no fold could be evaluated (need >= 3 seeds with unperturbed runs)")
    loeo = leave_one_env_out_status(runs)
    if groups.loeo_runs.height:
        loeo = {**Status(StatusKind.OK).to_json(), **_questions(groups.loeo_runs, groups.kick, cfg)[0],
                "folds": groups.loeo_notes}
    elif Status.from_json(loeo).ok:
        loeo = not_testable("no held-out env had calibration and test runs", folds=groups.loeo_notes)
    return EarlyWarningResult(ew_summary, loeo, roc)


def survival_models(full: pl.DataFrame, groups: GroupResults, cfg: AnalysisConfig | None = None) -> SurvivalResult:
    """Stage 5: Kaplan-Meier, log-rank, the landmark Cox model (with the early MSD and early coherence as
    covariates) and the Cox model from onset (covariates known at onset).

    The landmark of a run is onset + ``cfg.early_warning.early_blocks`` blocks of its matched group (the window of
    ``early_msd``), or onset + the early-coherence window (``cfg.early_frac`` of its updates) where that is longer,
    so both early covariates use only updates before it (:func:`landmark_updates`).
    """
    cfg = cfg or AnalysisConfig()
    surv_runs = full
    ew = groups.ew_runs
    if ew.height:
        k = ew.filter(pl.col("detector") == "kalman")
        surv_runs = surv_runs.join(
            k.select("run_id", pl.col("early_score").alias("early_msd"), pl.col("window_score").alias("max_msd")),
            on="run_id", how="left")
    early = groups.early_coherence
    coh = pl.DataFrame({"run_id": list(early), "early_coherence": list(early.values())},
                       schema={"run_id": pl.String, "early_coherence": pl.Float64})
    surv_runs = surv_runs.join(coh, on="run_id", how="left")
    surv_runs = surv_runs.with_columns(landmark_updates(surv_runs, groups.group_notes, cfg).alias(LANDMARK_COLUMN))
    return SurvivalResult(km_table(full), logrank(full), cox(surv_runs), surv_runs,
                          cox(surv_runs.drop(LANDMARK_COLUMN)))


def landmark_updates(runs: pl.DataFrame, group_notes: list[dict[str, Any]], cfg: AnalysisConfig) -> pl.Series:
    """Each run's landmark in updates after onset, shape ``(n,)`` (Int64; null where no block length is known).

    ``max(early_blocks x B, round(early_frac x n_updates))`` with ``B`` the block length of the run's matched group:
    ``block_updates`` of ``group_notes`` (stage 2), else :func:`~stabilitybench.analysis.data.block_size` of the
    group's largest ``n_updates`` (``planned_updates``), as stage 2 computes it.
    """
    keys = [k for k in GROUP_KEYS if k in runs.columns]
    lab = pl.concat_str([pl.col(k).cast(pl.String).fill_null("") for k in keys], separator="/") if keys \
        else pl.lit("all")
    known = {"/".join(str(n.get(k) or "") for k in keys): int(n["block_updates"]) for n in group_notes
             if n.get("block_updates") is not None}
    upd = [c for c in ("n_updates", "planned_updates") if c in runs.columns]
    n_upd = pl.coalesce([pl.col(c).cast(pl.Int64) for c in upd]) if upd else pl.lit(None, dtype=pl.Int64)
    frame = runs.select(lab.alias("_g"), n_upd.alias("_n"))
    group_max = {g: int(v) for g, v in frame.group_by("_g").agg(pl.col("_n").max()).iter_rows() if v is not None}
    eb = max(1, int(cfg.early_warning.early_blocks))
    out: list[int | None] = []
    for g, n in frame.iter_rows():
        B = known.get(g) or (block_size(group_max[g], cfg.features) if g in group_max else None)
        if B is None:
            out.append(None)
            continue
        coh = max(1, round(cfg.early_frac * n)) if n is not None else 0
        out.append(max(eb * B, coh))
    return pl.Series(LANDMARK_COLUMN, out, dtype=pl.Int64)


@dataclass(frozen=True)
class RegularitiesResult:
    """Stage 6: the paper's regularities and the coherence question, as summary entries.

    ``dissociation``: rows per (domain, algo, stability measure, level), each with its ``equivalence`` entry
    (decoupling by TOST); ``stochasticity_buffer``: the dose-response shift (``ed50_by_level``, ``ed50_ratio``,
    ``fixed_dose``, ``controls``, ``verdict``) beside the collapse probability and Cox HR per level
    (:mod:`stabilitybench.analysis.regularities`).
    """

    dissociation: list[dict[str, Any]]
    stochasticity_buffer: dict[str, Any]
    precedence: list[dict[str, Any]]
    coherence_before_collapse: dict[str, Any]


def measure_regularities(full: pl.DataFrame, groups: GroupResults, surv: SurvivalResult, cfg: AnalysisConfig
                         ) -> RegularitiesResult:
    """Stage 6: decoupling of performance from stability, the stochasticity buffer, precedence, coherence."""
    coherence = coherence_mod.summarise(groups.coherence, cfg.n_boot, cfg.seed) if groups.coherence.height else \
        not_testable("no configuration with both a collapsed and a non-collapsed perturbed run that has coherence "
                     "telemetry")
    return RegularitiesResult(dissociation(surv.runs, cfg.n_boot, cfg.seed),
                              stochasticity_buffer(full, surv.cox_onset or surv.cox, cfg.n_boot, cfg.seed),
                              precedence(groups.ew_runs if groups.ew_runs.height else None), coherence)


def _questions(ew: pl.DataFrame, kick: dict[str, np.ndarray], cfg: AnalysisConfig,
               traces: pl.DataFrame | None = None) -> tuple[dict[str, Any], pl.DataFrame]:
    """Questions (a), (a') and (b) for every detector, the references, (b)'s sensitivity to the landmark and the
    report's per-detector view; plus question (a)'s ROC points per detector (``detector, threshold, fpr, tpr,
    n_pos, n_neg``). ``traces``: the per-block scores (``early_warning_scores``) that same-dose detection
    windows; without them (leave-one-env-out) it is not computed."""
    ecfg = cfg.early_warning
    rows = ew.with_columns(pl.col("cluster").alias("seed")) if "cluster" in ew.columns else ew
    det: dict[str, Any] = {}
    same: dict[str, Any] = {}
    pred: dict[str, Any] = {}
    sens: dict[str, Any] = {}
    refs_out: dict[str, Any] = {}
    cache: dict[tuple[str, ...], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}
    roc: list[pl.DataFrame] = []
    by_det = traces.partition_by("detector", as_dict=True) if traces is not None and traces.height else {}
    for name in rows["detector"].unique(maintain_order=True).to_list():
        d = rows.filter(pl.col("detector") == name).sort("run_id")
        det[name] = questions.detection(d, ecfg.fpr, ecfg.n_boot, ecfg.seed)
        roc.append(questions.roc_points(d).with_columns(pl.lit(name).alias("detector")))
        if traces is not None:
            tr = by_det.get((name,), traces.head(0))
            same[name] = questions.same_dose_detection(d, tr, ecfg.horizon_frac, ecfg.fpr, ecfg.n_boot, ecfg.seed)
        pset, n_early = questions.prediction_set(d)
        ids = tuple(pset["run_id"].to_list())
        if ids not in cache:
            cache[ids] = questions.references(pset, kick)
        refs, within = cache[ids]
        pred[name] = {**questions.prediction(pset, refs, ecfg.n_boot, ecfg.seed, within),
                      "n_collapsed_before_landmark": n_early}
        sens[name] = questions.prediction_sensitivity(d, kick, ecfg.n_boot, ecfg.seed, at_l=pred[name])
        if not refs_out:
            refs_out = questions.reference_rows(pset, refs, ecfg.n_boot, ecfg.seed, within)
    first = rows.filter(pl.col("detector") == rows["detector"][0])
    det["perturbation_on"] = questions.perturbation_on_detection(first, ecfg.fpr, ecfg.n_boot, ecfg.seed)
    by_detector = [{**DetectorKey(k)._asdict(), **v, "fpr_unperturbed": v["fpr_held_out_controls"]}
                   for k, v in det.items() if k != "perturbation_on"]
    out: dict[str, Any] = {
        "detection": det, "prediction": pred, "prediction_references": refs_out,
        "prediction_sensitivity": sens, "by_detector": by_detector,
        "feature_set_labels": {k: f"<detector>{v}" for k, v in FEATURE_SET_LABELS.items()},
        "feature_set_rules": FEATURE_SET_RULES,
        "feature_set_scope": "every detector on no_echo; the monitors also on all (+echo); on no_kick the monitors "
                             "and the baselines whose input changes there (main evaluation only, not "
                             "leave-one-env-out)",
        "questions": dict(questions.QUESTION_TEXTS)}
    if traces is not None:
        out["same_dose_detection"] = same
    else:
        out["questions"].pop("a_same_dose")
    return out, pl.concat(roc, how="vertical_relaxed")


def sensitivity(frame: pl.DataFrame) -> pl.DataFrame:
    """Collapsed counts per configuration under each (drop, spread_k) of the rule."""
    return (with_config_label(frame).group_by(["config", "drop", "spread_k"])
            .agg(pl.len().alias("n_runs"), pl.col("collapsed").sum().alias("n_collapsed"))
            .sort(["drop", "spread_k", "config"]))


def dose_response(full: pl.DataFrame) -> pl.DataFrame:
    """Per configuration (matched group x kind x magnitude x duration): collapse probability with a
    Clopper-Pearson CI, median collapse time and final performance (the ``dose_response`` table)."""
    rows = []
    labelled = with_config_label(full)
    for (dom, algo, env, sto, conf), g in sorted(
        labelled.group_by(["domain", "algo", "env", "stochasticity", "config"]), key=lambda kv: str(kv[0])
    ):
        k = int(g["collapsed"].sum())
        lo, hi = clopper_pearson(k, g.height)
        ct = g.filter(pl.col("collapsed"))["collapse_time"]
        r0 = g.row(0, named=True)
        rows.append({
            "domain": dom, "algo": algo, "env": env, "stochasticity": sto, "config": conf,
            "perturbation": r0["perturbation"], "dimension": r0["dimension"], "magnitude": r0["magnitude"],
            "duration_steps": r0["duration_steps"], "n_runs": g.height, "n_collapsed": k,
            "collapse_probability": k / g.height, "ci_low": lo, "ci_high": hi,
            "median_collapse_time": float(ct.median()) if ct.len() else None,
            "final_performance_mean": g["final_performance"].mean(),
            "final_performance_sd": g["final_performance"].std() if g.height > 1 else None,
        })
    return pl.DataFrame(rows)


def dissociation_runs(surv: SurvivalResult) -> pl.DataFrame:
    """The runs behind regularity 1 (:func:`~stabilitybench.analysis.regularities.dissociation`), one row each.

    Exactly the runs the statistic ranks (natural runs: none acted on a live monitor's alarm), with their key
    columns, the configuration label ``config``, final performance and the stability measures
    (``survival_time``, ``collapse_time``, ``max_msd``: the Kalman monitor's window score, null without one).
    """
    runs = surv.runs
    cols = [c for c in DISSOCIATION_COLUMNS if c in runs.columns]
    return with_config_label(runs.select(cols))
