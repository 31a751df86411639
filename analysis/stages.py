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
from stabilitybench.analysis.early_warning import leave_one_env_out_status
from stabilitybench.analysis.groups import GroupResults
from stabilitybench.analysis.regularities import dissociation, precedence, stochasticity_buffer
from stabilitybench.analysis.stats import clopper_pearson
from stabilitybench.analysis.summary import DetectorKey, Status, StatusKind, not_testable
from stabilitybench.analysis.survival import cox, km_table, logrank, with_config_label

#: The columns of :func:`dissociation_runs` (``results/dissociation_runs.parquet``).
DISSOCIATION_COLUMNS = ("run_id", "domain", "algo", "env", "stochasticity", "seed", "perturbation", "dimension",
                        "magnitude", "duration_steps", "unperturbed", "collapsed", "final_performance",
                        "survival_time", "collapse_time", "max_msd")


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
    """Stage 5: Kaplan-Meier table, log-rank rows and the Cox model; ``runs`` carries the Cox covariates."""

    km: pl.DataFrame
    logrank: list[dict[str, Any]]
    cox: dict[str, Any]
    runs: pl.DataFrame


def early_warning_questions(groups: GroupResults, runs: pl.DataFrame, cfg: AnalysisConfig) -> EarlyWarningResult:
    """Stage 4: questions (a) detection and (b) prediction on the held-out folds, and leave-one-env-out."""
    roc = pl.DataFrame()
    if groups.ew_runs.height:
        ew_summary, roc = _questions(groups.ew_runs, groups.kick, cfg)
    else:
        ew_summary = not_testable("no fold could be evaluated (need >= 3 seeds with unperturbed runs)")
    loeo = leave_one_env_out_status(runs)
    if groups.loeo_runs.height:
        loeo = {**Status(StatusKind.OK).to_json(), **_questions(groups.loeo_runs, groups.kick, cfg)[0],
                "folds": groups.loeo_notes}
    elif Status.from_json(loeo).ok:
        loeo = not_testable("no held-out env had calibration and test runs", folds=groups.loeo_notes)
    return EarlyWarningResult(ew_summary, loeo, roc)


def survival_models(full: pl.DataFrame, groups: GroupResults) -> SurvivalResult:
    """Stage 5: Kaplan-Meier, log-rank and Cox (with the early MSD and early coherence as covariates)."""
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
    return SurvivalResult(km_table(full), logrank(full), cox(surv_runs), surv_runs)


@dataclass(frozen=True)
class RegularitiesResult:
    """Stage 6: the paper's regularities and the coherence question, as summary entries."""

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
    return RegularitiesResult(dissociation(surv.runs, cfg.n_boot, cfg.seed), stochasticity_buffer(full, surv.cox),
                              precedence(groups.ew_runs if groups.ew_runs.height else None), coherence)


def _questions(ew: pl.DataFrame, kick: dict[str, np.ndarray], cfg: AnalysisConfig
               ) -> tuple[dict[str, Any], pl.DataFrame]:
    """Questions (a) and (b) for every detector, the references, and the report's per-detector view; plus
    question (a)'s ROC points per detector (``detector, threshold, fpr, tpr, n_pos, n_neg``)."""
    ecfg = cfg.early_warning
    rows = ew.with_columns(pl.col("cluster").alias("seed")) if "cluster" in ew.columns else ew
    det: dict[str, Any] = {}
    pred: dict[str, Any] = {}
    refs_out: dict[str, Any] = {}
    cache: dict[tuple[str, ...], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}
    roc: list[pl.DataFrame] = []
    for name in rows["detector"].unique(maintain_order=True).to_list():
        d = rows.filter(pl.col("detector") == name).sort("run_id")
        det[name] = questions.detection(d, ecfg.fpr, ecfg.n_boot, ecfg.seed)
        roc.append(questions.roc_points(d).with_columns(pl.lit(name).alias("detector")))
        pset, n_early = questions.prediction_set(d)
        ids = tuple(pset["run_id"].to_list())
        if ids not in cache:
            refs = questions.reference_scores(pset, kick)
            cache[ids] = refs, questions.within_cell_scores(pset, kick, refs)
        refs, within = cache[ids]
        pred[name] = {**questions.prediction(pset, refs, ecfg.n_boot, ecfg.seed, within),
                      "n_collapsed_before_landmark": n_early}
        if not refs_out:
            refs_out = questions.reference_rows(pset, refs, ecfg.n_boot, ecfg.seed, within)
    first = rows.filter(pl.col("detector") == rows["detector"][0])
    det["perturbation_on"] = questions.perturbation_on_detection(first, ecfg.fpr)
    by_detector = [{**DetectorKey(k)._asdict(), **v, "fpr_unperturbed": v["fpr_held_out_controls"]}
                   for k, v in det.items() if k != "perturbation_on"]
    return ({"detection": det, "prediction": pred, "prediction_references": refs_out, "by_detector": by_detector,
             "questions": {"a": questions.QUESTION_A, "b": questions.QUESTION_B}},
            pl.concat(roc, how="vertical_relaxed"))


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
