"""Stages 4-6 of :func:`stabilitybench.analysis.pipeline.run_analysis`, after the per-group work of
:mod:`stabilitybench.analysis.groups`, and the tables made from their results.

4. :func:`early_warning_questions` -> :class:`EarlyWarningResult`: questions (a) and (b) for every detector,
   question (a)'s ROC points, and question (d), held-out generalisation (:func:`held_out_questions`:
   leave-one-kind-out and leave-one-env-out);
5. :func:`survival_models` -> :class:`SurvivalResult`;
6. :func:`measure_regularities` -> :class:`RegularitiesResult`;

and the per-configuration tables :func:`dose_response` and :func:`sensitivity`, and :func:`dissociation_runs`,
the runs the decoupling statistic uses (what F9 draws).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from stabilitybench.analysis import coherence as coherence_mod
from stabilitybench.analysis import questions
from stabilitybench.analysis.config import AnalysisConfig
from stabilitybench.analysis.data import block_size
from stabilitybench.analysis.detectors import monitor_names
from stabilitybench.analysis.early_warning import FEATURE_SET_LABELS, FEATURE_SET_RULES, leave_one_env_out_status
from stabilitybench.analysis.groups import GroupResults
from stabilitybench.analysis.regularities import dissociation, precedence, stochasticity_buffer
from stabilitybench.analysis.results import SCHEMAS, flatten
from stabilitybench.analysis.stats import clopper_pearson
from stabilitybench.analysis.summary import QUESTIONS, DetectorKey, Status, StatusKind, not_testable, number
from stabilitybench.analysis.survival import LANDMARK_COLUMN, cox, km_table, logrank, with_config_label
from stabilitybench.data_schema.keys import GROUP_KEYS

#: The columns of :func:`dissociation_runs` (``results/dissociation_runs.parquet``).
DISSOCIATION_COLUMNS = ("run_id", "domain", "algo", "env", "stochasticity", "seed", "perturbation", "dimension",
                        "magnitude", "duration_steps", "unperturbed", "collapsed", "final_performance",
                        "survival_time", "collapse_time", "max_msd", "drawdown_depth")


@dataclass(frozen=True)
class EarlyWarningResult:
    """Stage 4: questions (a) and (b) for every detector, and question (d).

    ``roc``: question (a)'s ROC points per detector (:func:`stabilitybench.analysis.questions.roc_points`), the
    curve F8 draws beside the AUROC of ``summary``; empty when no fold was evaluated. ``leave_one_env_out``: its
    status and folds (summary.json ``early_warning.leave_one_env_out``); its numbers are in ``held_out``
    (:func:`held_out_questions`, summary.json ``early_warning.held_out``).
    """

    summary: dict[str, Any]  #: detection, prediction, references and by_detector; or a not-testable status
    leave_one_env_out: dict[str, Any]
    roc: pl.DataFrame = field(default_factory=pl.DataFrame)
    held_out: dict[str, Any] = field(default_factory=dict)


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
    """Stage 4: questions (a), (a') same-dose detection and (b) prediction on the held-out folds, and question
    (d), held-out generalisation (:func:`held_out_questions`)."""
    roc = pl.DataFrame()
    if groups.ew_runs.height:
        ew_summary, roc = _questions(groups.ew_runs, groups.kick, cfg, groups.ew_scores)
    else:
        ew_summary = not_testable("no fold could be evaluated (need >= 3 seeds with unperturbed runs)")
    held = held_out_questions(groups, ew_summary, runs, cfg)
    loeo = {k: v for k, v in held["leave_one_env_out"].items() if k in ("status", "reason")}
    loeo.update(folds=groups.loeo_notes, results="early_warning.held_out.leave_one_env_out (question (d))")
    return EarlyWarningResult(ew_summary, loeo, roc, held)


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
                              stochasticity_buffer(full, surv.cox_onset or surv.cox, cfg.n_boot, cfg.seed,
                                                   cfg.ratio_looks),
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


# ------------------------------------------------------------------------------- (d) held-out generalisation
HELD_OUT_WHAT_KIND = (
    "Leave-one-kind-out: for each perturbation kind k, every fitted quantity is fitted without k's runs. The "
    "detectors are fitted on unperturbed training controls and calibrated on unperturbed calibration controls, and "
    "the redundant columns are judged on the controls, so they never see a perturbed run; two earlier choices read "
    "every run (the candidate columns' coverage/non-constant screen and the block length, from the longest run) and "
    "are checked per kind (fit_checks: 'reused' = nothing changes without k, so the main evaluation's monitors are "
    "the held-out ones and the detectors' scores of k's runs are their main-evaluation scores; 'refit' = k's folds "
    "were refitted on the columns kept without k; 'not_testable' = left out). Question (b)'s kick_size reference is "
    "refitted leave-one-kind-out (a logistic model of the kick sizes fitted on the other kinds' runs) instead of "
    "leave-one-cell-out, which sees k's other cells; config_only stays the in-sample cell share of k's cells (an "
    "oracle no held-out monitor can know: conservative). Per kind: (a) k's collapses against the held-out controls "
    "of the groups where k was run, (a') k's cells, (b) k's runs standing at the landmark.")
HELD_OUT_WHAT_ENV = (
    "Leave-one-env-out: for each target env, every detector is fitted on the controls of the other envs of its "
    "(domain, algo, stochasticity) (fold i: the source's own fold-i training seeds) and calibrated twice: on the "
    "source envs' calibration controls ('transfer_source_calibrated': nothing of the target is used) and on the "
    "target's calibration controls ('transfer_target_calibrated'); both score every target run once. 'in_env' is "
    "the target's own main evaluation on the same runs. fpr_target_controls is the measured false-alarm rate on the "
    "target's held-out controls: under source calibration they are not exchangeable with the calibration runs, so "
    "no conformal bound is claimed. (b)'s kick_size reference is fitted leave-one-cell-out within the target "
    "(in_env) or on the source envs' runs (transfer); config_only is the target's in-sample cell share throughout. "
    "delta_vs_in_env: paired difference from in_env on the same runs, cluster bootstrap over seeds.")
#: The settings of each held-out evaluation, in the order a table shows them.
HELD_OUT_SETTINGS = {"leave_one_kind_out": ("in_sample", "held_out"),
                     "leave_one_env_out": ("in_env", "transfer_target_calibrated", "transfer_source_calibrated")}
_A_KEYS = ("n_collapsed", "n_controls", "auroc", "delta_vs_perturbation_on", "frac_collapses_preceded",
           "median_lead_updates", "fpr_held_out_controls", "alarm_numbers_from")
_SAME_KEYS = ("n_runs", "n_pos", "n_neg", "n_cells", "n_cells_contributing", "auroc_stratified")
_B_KEYS = ("n_runs", "n_pos", "n_neg", "n_collapsed_before_landmark", "auroc", "auroc_stratified", "delta_auroc")


def _compact(entry: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any]:
    """``entry`` (a question's full entry) reduced to ``keys`` (a status entry is kept whole)."""
    if not entry:
        return not_testable("not computed")
    out = {k: entry[k] for k in keys if k in entry}
    if "small_folds" in entry:
        sf = entry["small_folds"]
        out["small_folds"] = {k: sf[k] for k in ("n_folds", "n_folds_total", "fpr_held_out_controls",
                                                 "frac_collapses_preceded") if k in sf}
    if "status" in entry:
        out.update(Status.from_json(entry).to_json())
    return out


def measured_fpr(rows: pl.DataFrame, target: float, calibrated_on: str) -> dict[str, Any]:
    """The false-alarm rate measured on the held-out controls of ``rows`` (one detector's rows): share with an
    alarm after onset, Clopper-Pearson CI, ``n``. From the folds with >= 19 calibration controls
    (:func:`~stabilitybench.analysis.questions.split_small_folds`), else from the small folds (``from`` says which:
    their alarms sit at the permissive level 1/(n+1)). ``calibrated_on``: what the thresholds were calibrated on
    (``own controls`` or ``source env controls``: then no conformal bound applies to these controls)."""
    big, small = questions.split_small_folds(rows, target)
    _, ctrl = questions.detection_cases(big)
    src = "folds with >= 19 calibration controls"
    if not ctrl.height:
        _, ctrl = questions.detection_cases(small)
        src = "small folds only (< 19 calibration controls: alarms at the attainable level 1/(n+1), permissive)"
    fp = int(ctrl["first_alarm_step"].is_not_null().sum()) if ctrl.height else 0
    out = number(fp / ctrl.height if ctrl.height else None, ctrl.height, clopper_pearson(fp, ctrl.height),
                 target=target, calibrated_on=calibrated_on, **{"from": src},
                 alpha_used=float(ctrl["alpha_used"].max()) if ctrl.height else None,
                 n_calibration_per_fold=sorted({int(x) for x in ctrl["n_calibration"].to_list()}) if ctrl.height
                 else [])
    if not ctrl.height:
        out.update(Status(StatusKind.NOT_TESTABLE, "n too small: no held-out control").to_json())
    return out


def _paired_delta(a_rows: pl.DataFrame, b_rows: pl.DataFrame, question: str, cfg: AnalysisConfig
                  ) -> dict[str, Any]:
    """AUROC(a) - AUROC(b) on the runs both hold, paired (cluster bootstrap over seeds): question ``"a"``
    (detection_score, collapses vs controls) or ``"b"`` (prediction_excess among the runs standing at the landmark,
    stratified by cell)."""
    ecfg = cfg.early_warning
    if "cluster" in a_rows.columns:  # the bootstrap clusters: group and seed
        a_rows = a_rows.with_columns(pl.col("cluster").alias("seed"))
    if question == "a":
        pa_, ca_ = questions.detection_cases(a_rows)
        sel = pl.concat([pa_.with_columns(pl.lit(True).alias("_y")), ca_.with_columns(pl.lit(False).alias("_y"))])
        col = "detection_score"
    else:
        sel = questions.prediction_set(a_rows)[0].with_columns(pl.col("label").alias("_y"))
        col = "prediction_excess"
    both = sel.select("run_id", "seed", "_y", *questions.CELL_COLUMNS, *(["group"] if "group" in sel.columns else []),
                      pl.col(col).alias("_a")).join(b_rows.select("run_id", pl.col(col).alias("_b")), on="run_id")
    if not both.height:
        return not_testable("n too small: no run scored in both settings")
    y = np.array(both["_y"].to_list(), bool)
    if y.all() or not y.any():
        return not_testable("n too small: one outcome only")
    strata = _strata(both) if question == "b" else None
    seeds = np.array(both["seed"].to_list())
    return questions.paired_delta_auroc(np.array(both["_a"].to_list(), float), np.array(both["_b"].to_list(), float),
                                        y, seeds, ecfg.n_boot, ecfg.seed, strata)


Refs = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # (b)'s references: (pooled, within-cell) scores


def _settings_entry(rows: pl.DataFrame, traces: pl.DataFrame | None, refs_for: Callable[[pl.DataFrame], Refs],
                    cfg: AnalysisConfig, calibrated_on: str | None) -> dict[str, Any]:
    """(a), (a') and (b) of one detector's ``rows`` (sorted by run_id) in one setting, compacted, with the measured
    FPR on its controls (:func:`measured_fpr`; not with ``calibrated_on`` None). ``refs_for(prediction set)``:
    (b)'s references for those runs; ``traces``: the per-block scores (None: no (a'))."""
    ecfg = cfg.early_warning
    rows = rows.with_columns(pl.col("cluster").alias("seed")) if "cluster" in rows.columns else rows
    a = _compact(questions.detection(rows, ecfg.fpr, ecfg.n_boot, ecfg.seed), _A_KEYS)
    out: dict[str, Any] = {"a": a}
    if traces is not None:
        out["a_same_dose"] = _compact(questions.same_dose_detection(rows, traces, ecfg.horizon_frac, ecfg.fpr,
                                                                    ecfg.n_boot, ecfg.seed), _SAME_KEYS)
    pset, n_early = questions.prediction_set(rows)
    refs = refs_for(pset)
    pred = questions.prediction(pset, refs[0], ecfg.n_boot, ecfg.seed, refs[1])
    out["b"] = _compact({**pred, "n_collapsed_before_landmark": n_early}, _B_KEYS)
    if calibrated_on is not None:
        out["fpr_target_controls"] = measured_fpr(rows, ecfg.fpr, calibrated_on)
    return out


def _strata(frame: pl.DataFrame) -> np.ndarray:
    """Each row's cell (:func:`~stabilitybench.analysis.questions.cell_labels`) as an integer code, ``(n,)``."""
    labels = questions.cell_labels(frame)
    return np.unique(np.array(labels, str), return_inverse=True)[1].reshape(-1) if labels else np.zeros(0, int)


def _kicks(frame: pl.DataFrame, kick: dict[str, np.ndarray]) -> np.ndarray:
    """The kick sizes of ``frame``'s runs, ``(n, 3)`` (NaN where a run has none)."""
    return np.array([kick.get(r, np.full(3, np.nan)) for r in frame["run_id"].to_list()], float).reshape(-1, 3)


def held_out_references(pset: pl.DataFrame, kick: dict[str, np.ndarray], by: np.ndarray) -> Refs:
    """(b)'s references ``(pooled, within-cell)`` for the runs of ``pset`` (a prediction set, with ``label``), each
    ``(n,)``, with the kick_size model held out by ``by`` (``(n,)``: kind, or env): each row is scored by the
    logistic model of the kick sizes fitted on the rows of the *other* values of ``by`` only
    (:func:`~stabilitybench.analysis.questions.cv_scores` grouped by ``by``), where the main evaluation's is fitted
    on the other *cells*. ``config_only`` is the in-sample cell share, as there."""
    y = np.array(pset["label"].to_list(), bool)
    prev = questions.cell_prevalence(y, _strata(pset))
    K = _kicks(pset, kick)
    held = questions.cv_scores(K, y, by) if K.size else np.full(y.size, np.nan)
    ones = np.ones(y.size)
    return ({"config_only": prev, "kick_size": questions.lexicographic(prev, held), "perturbation_on": ones},
            {"config_only": prev, "kick_size": held, "perturbation_on": ones})


def _select_refs(refs: Refs, pset_all: pl.DataFrame, pset: pl.DataFrame) -> Refs:
    """``refs`` (of the runs of ``pset_all``) for the runs of ``pset``, in its order; the pooled references' cell
    share is recomputed on ``pset`` (its own in-sample share) and a run ``pset_all`` lacks gets NaN."""
    pos = {r: i for i, r in enumerate(pset_all["run_id"].to_list())}
    idx = np.array([pos.get(r, -1) for r in pset["run_id"].to_list()], int)
    kick = np.where(idx >= 0, refs[1]["kick_size"][np.maximum(idx, 0)] if idx.size else np.zeros(0), np.nan)
    y = np.array(pset["label"].to_list(), bool)
    prev = questions.cell_prevalence(y, _strata(pset))
    ones = np.ones(y.size)
    return ({"config_only": prev, "kick_size": questions.lexicographic(prev, kick), "perturbation_on": ones},
            {"config_only": prev, "kick_size": kick, "perturbation_on": ones})


def leave_one_kind_out_entry(ew: pl.DataFrame, traces: pl.DataFrame | None, kick: dict[str, np.ndarray],
                             checks: list[dict[str, Any]], cfg: AnalysisConfig, in_sample: dict[str, Any],
                             refit: pl.DataFrame | None = None, refit_traces: pl.DataFrame | None = None
                             ) -> dict[str, Any]:
    """summary.json ``early_warning.held_out.leave_one_kind_out`` (see :data:`HELD_OUT_WHAT_KIND`).

    ``ew``: the main evaluation's rows (``early_warning_runs``: ``group``, ``cluster``, ``perturbation``, ...);
    ``traces``: its per-block scores; ``checks``: :func:`~stabilitybench.analysis.groups.leave_one_kind_out_check`
    per (domain, algo, kind); ``in_sample``: the main evaluation's summary entry (detection, same_dose_detection,
    prediction), shown beside; ``refit`` / ``refit_traces``: the rows of refitted kinds (``held_out_kind``).
    """
    ecfg = cfg.early_warning
    kinds = sorted(k for k in ew.filter(~pl.col("unperturbed"))["perturbation"].unique().to_list() if k is not None)
    if not kinds:
        return not_testable("no perturbed test run")
    det_names = ew["detector"].unique(maintain_order=True).to_list()
    first = ew.filter(pl.col("detector") == det_names[0]).sort("run_id")
    pset_all, _ = questions.prediction_set(first)
    kind_of = np.array(pset_all["perturbation"].to_list(), str)
    loko = held_out_references(pset_all, kick, kind_of)
    y_all = np.array(pset_all["label"].to_list(), bool)
    loco = questions.references(pset_all, kick)  # the main evaluation's kick model: leave-one-cell-out
    trace_by = traces.partition_by("detector", as_dict=True) if traces is not None and traces.height else {}
    by_kind: dict[str, Any] = {}
    for kind in kinds:
        per = {(c["domain"], c["algo"]): c for c in checks if c["kind"] == kind}
        bad = [f"{d}/{a}" for (d, a), c in per.items() if c["monitors"] == "not_testable"]
        refit_da = [f"{d}/{a}" for (d, a), c in per.items() if c["monitors"] == "refit"]
        groups_k = set(ew.filter(pl.col("perturbation") == kind)["group"].unique().to_list())
        groups_k = {g for g in groups_k if not any(g.startswith(p + "/") for p in bad)}
        if not groups_k:
            by_kind[kind] = not_testable("; ".join(c["reason"] for c in per.values()) or "no group")
            continue
        keep = pl.col("group").is_in(list(groups_k)) & (pl.col("unperturbed") | (pl.col("perturbation") == kind))
        from_refit = pl.lit(False)
        for p in refit_da:
            from_refit = from_refit | pl.col("group").str.starts_with(p + "/")
        rows_k = ew.filter(keep & ~from_refit)
        main_ids = rows_k["run_id"].unique().to_list()
        if refit_da and refit is not None and refit.height:
            extra = refit.filter((pl.col("held_out_kind") == kind) & keep).drop("held_out_kind")
            rows_k = pl.concat([rows_k, extra], how="diagonal_relaxed")
        mask = (kind_of == kind) & np.array(pset_all["group"].is_in(list(groups_k)).to_list(), bool)
        entry: dict[str, Any] = {
            "n_groups": len(groups_k), "monitors": {f"{d}/{a}": c["monitors"] for (d, a), c in per.items()},
            "n_pos_b": int(y_all[mask].sum()), "detectors": {}}
        for name in det_names:
            d = rows_k.filter(pl.col("detector") == name).sort("run_id")
            if not d.height:
                continue
            tr = trace_by.get((name,), traces.head(0)) if traces is not None else None
            if tr is not None and refit_da and refit_traces is not None and refit_traces.height:
                # the refitted groups' runs are scored by the refit only
                mine = refit_traces.filter((pl.col("held_out_kind") == kind) & (pl.col("detector") == name))
                tr = pl.concat([tr.filter(pl.col("run_id").is_in(main_ids)), mine.drop("held_out_kind")],
                               how="diagonal_relaxed")
            pset_d = questions.prediction_set(d)[0]
            # no separate FPR: the controls' alarms do not depend on the kind ((a)'s FPR is theirs)
            e = _settings_entry(d, tr, lambda ps: _select_refs(loko, pset_all, ps), cfg, None)
            y = np.array(pset_d["label"].to_list(), bool)
            if pset_d.height:
                if y.any() and not y.all():
                    seeds = np.array(pset_d["cluster"].to_list() if "cluster" in pset_d.columns
                                     else pset_d["seed"].to_list())
                    score = questions.prediction_scores(pset_d)
                    e["b_kick_size_leave_one_cell_out"] = {
                        "stratified": questions.paired_delta_auroc(score, _select_refs(loco, pset_all, pset_d)[1]
                                                                   ["kick_size"], y, seeds,
                                                                   ecfg.n_boot, ecfg.seed, _strata(pset_d)),
                        "note": "delta AUROC against the main evaluation's kick_size model (leave-one-cell-out: it "
                                "sees this kind's other cells), on the same runs"}
            entry["detectors"][name] = e
        by_kind[kind] = entry
    ins = {name: {"a": _compact(in_sample.get("detection", {}).get(name), _A_KEYS),
                  "a_same_dose": _compact(in_sample.get("same_dose_detection", {}).get(name), _SAME_KEYS),
                  "b": _compact(in_sample.get("prediction", {}).get(name), _B_KEYS)} for name in det_names}
    return {**Status(StatusKind.OK).to_json(), "what": HELD_OUT_WHAT_KIND, "fit_checks": checks,
            "in_sample": ins, "by_kind": by_kind}


def _group_parts(label: str) -> tuple[str, str, str]:
    """``(domain/algo, env, stochasticity)`` of a matched group's label ``domain/algo/env/stochasticity``."""
    parts = label.split("/")
    return "/".join(parts[:2]), "/".join(parts[2:-1]), parts[-1]


def leave_one_env_out_entry(ew: pl.DataFrame, traces: pl.DataFrame | None, loeo: pl.DataFrame,
                            loeo_traces: pl.DataFrame | None, notes: list[dict[str, Any]],
                            kick: dict[str, np.ndarray], cfg: AnalysisConfig) -> dict[str, Any]:
    """summary.json ``early_warning.held_out.leave_one_env_out`` (see :data:`HELD_OUT_WHAT_ENV`).

    ``ew`` / ``traces``: the main evaluation's rows and per-block scores (the in-env numbers); ``loeo`` /
    ``loeo_traces``: :func:`~stabilitybench.analysis.early_warning.evaluate_transfer`'s, tagged with ``group``
    (the target) and ``cluster``; ``notes``: per target ``group`` and ``trained_on_envs``.
    """
    by_target: dict[str, Any] = {}
    for note in notes:
        target = note["group"]
        da, _, sto = _group_parts(target)
        sources = [f"{da}/{env}/{sto}" for env in note["trained_on_envs"]]
        rows_in = ew.filter(pl.col("group") == target)
        rows_tr = loeo.filter(pl.col("group") == target)
        if not rows_tr.height or not rows_in.height:
            by_target[target] = not_testable("no transfer fold could be evaluated", sources=note["trained_on_envs"])
            continue
        # (b)'s references: the target's own (in-env), or a kick model fitted on the source envs' runs (transfer)
        first = rows_in["detector"][0]
        pset_t = questions.prediction_set(rows_in.filter(pl.col("detector") == first).sort("run_id"))[0]
        pset_s = questions.prediction_set(ew.filter(pl.col("group").is_in(sources) & (pl.col("detector") == first))
                                          .sort("run_id"))[0]
        both = pl.concat([pset_t, pset_s], how="diagonal_relaxed")
        is_t = np.r_[np.ones(pset_t.height, bool), np.zeros(pset_s.height, bool)]
        transfer_refs = held_out_references(both, kick, np.where(is_t, "target", "source"))
        tr_in = traces.filter(pl.col("run_id").is_in(rows_in["run_id"].unique().to_list())) \
            if traces is not None and traces.height else None
        entry: dict[str, Any] = {"sources": note["trained_on_envs"], "block_updates": note.get("block_updates"),
                                 "source_block_updates": note.get("source_block_updates"), "detectors": {}}
        for name in rows_tr["detector"].unique(maintain_order=True).to_list():
            d_in = rows_in.filter(pl.col("detector") == name).sort("run_id")
            if not d_in.height:
                continue
            e: dict[str, Any] = {}
            e["in_env"] = _settings_entry(d_in, tr_in.filter(pl.col("detector") == name) if tr_in is not None
                                          else None, lambda ps: questions.references(ps, kick), cfg, "own controls")
            for cal, setting in (("target", "transfer_target_calibrated"), ("source", "transfer_source_calibrated")):
                d_tr = rows_tr.filter((pl.col("detector") == name) & (pl.col("calibrated_on") == cal)).sort("run_id")
                if not d_tr.height:
                    e[setting] = not_testable("no transfer fold could be evaluated")
                    continue
                tr = loeo_traces.filter((pl.col("detector") == name) & (pl.col("calibrated_on") == cal)) \
                    if loeo_traces is not None and loeo_traces.height else None
                e[setting] = _settings_entry(d_tr, tr, lambda ps, r=transfer_refs, b=both: _select_refs(r, b, ps), cfg,
                                             "target's controls" if cal == "target" else
                                             "source envs' controls (not exchangeable with the target's)")
                if cal == "source":
                    fpr = e[setting]["a"].get("fpr_held_out_controls")
                    if isinstance(fpr, dict):
                        fpr["claim"] = Status(StatusKind.REFUSED, "calibrated on the source envs' controls: the "
                                              "target's controls are not exchangeable with them, so no conformal "
                                              "bound holds; the value is the rate measured on the target").to_json()
                e[setting]["delta_vs_in_env"] = {"a": _paired_delta(d_tr, d_in, "a", cfg),
                                                 "b_stratified": _paired_delta(d_tr, d_in, "b", cfg)}
            entry["detectors"][name] = e
        by_target[target] = entry
    if not by_target:
        return not_testable("one env per (domain, algo, stochasticity)")
    return {**Status(StatusKind.OK).to_json(), "what": HELD_OUT_WHAT_ENV, "by_target": by_target}


def held_out_questions(groups: GroupResults, in_sample: dict[str, Any], runs: pl.DataFrame, cfg: AnalysisConfig
                       ) -> dict[str, Any]:
    """Question (d), summary.json ``early_warning.held_out``: ``leave_one_kind_out`` and ``leave_one_env_out``
    (:func:`leave_one_kind_out_entry`, :func:`leave_one_env_out_entry`); ``in_sample``: the main evaluation's
    summary entry."""
    out: dict[str, Any] = {"question": QUESTIONS["d"]}
    if not groups.ew_runs.height:
        out["leave_one_kind_out"] = not_testable("no fold could be evaluated")
    else:
        out["leave_one_kind_out"] = leave_one_kind_out_entry(
            groups.ew_runs, groups.ew_scores, groups.kick, groups.loko_checks, cfg, in_sample,
            groups.loko_runs if groups.loko_runs.height else None,
            groups.loko_scores if groups.loko_scores.height else None)
    status = leave_one_env_out_status(runs)
    if groups.loeo_runs.height and groups.ew_runs.height:
        out["leave_one_env_out"] = leave_one_env_out_entry(
            groups.ew_runs, groups.ew_scores, groups.loeo_runs, groups.loeo_scores, groups.loeo_notes, groups.kick, cfg)
    elif Status.from_json(status).ok:
        out["leave_one_env_out"] = not_testable("no held-out env had source and target runs to evaluate",
                                                folds=groups.loeo_notes)
    else:
        out["leave_one_env_out"] = status
    return out


def held_out_rows(held: dict[str, Any]) -> pl.DataFrame:
    """summary.json ``early_warning.held_out`` (:func:`held_out_questions`) as ``results/early_warning_held_out``:
    one row per (evaluation, held-out kind or target group, setting, detector), the declared columns of
    :data:`stabilitybench.analysis.results.SCHEMAS` only (a not-testable unit or setting: one row with its status)."""
    names = set(SCHEMAS["early_warning_held_out"].names)
    rows: list[dict[str, Any]] = []

    def add(evaluation: str, unit: str, setting: str, trained: str, monitors: Any, det: str | None,
            entry: dict[str, Any]) -> None:
        flat = flatten({"evaluation": evaluation, "held_out": unit, "setting": setting, "trained_on": trained,
                        "monitors": json.dumps(monitors) if monitors is not None else None, "detector": det,
                        **entry})
        rows.append({k: v for k, v in flat.items() if k in names})

    kind = held.get("leave_one_kind_out") or {}
    if Status.of(kind) is not None and not Status.from_json(kind).ok:
        add("leave_one_kind_out", "", "", "", None, None, Status.from_json(kind).to_json())
    else:
        for det, e in (kind.get("in_sample") or {}).items():
            add("leave_one_kind_out", "all kinds", "in_sample", "controls of every group", None, det, e)
        for k, ke in (kind.get("by_kind") or {}).items():
            if "detectors" not in ke:
                add("leave_one_kind_out", k, "held_out", "", None, None, ke)
                continue
            for det, e in ke["detectors"].items():
                add("leave_one_kind_out", k, "held_out", f"controls; kick_size reference on kinds other than {k}",
                    ke.get("monitors"), det, e)
    env = held.get("leave_one_env_out") or {}
    if Status.of(env) is not None and not Status.from_json(env).ok:
        add("leave_one_env_out", "", "", "", None, None, Status.from_json(env).to_json())
    else:
        for target, te in (env.get("by_target") or {}).items():
            sources = ", ".join(te.get("sources") or [])
            if "detectors" not in te:
                add("leave_one_env_out", target, "", sources, None, None, te)
                continue
            for det, e in te["detectors"].items():
                for setting in HELD_OUT_SETTINGS["leave_one_env_out"]:
                    add("leave_one_env_out", target, setting, "controls of the target" if setting == "in_env" else
                        f"controls of {sources}", None, det, e.get(setting) or not_testable("not computed"))
    return pl.DataFrame(rows, infer_schema_length=None)  # write_result casts it to the declared schema


def held_out_headline(held: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The closing note's (d) numbers and caveats from summary.json ``early_warning.held_out``.

    Numbers: per held-out kind and per target env, for the meta-state monitors on their own feature set (labels
    without '+echo' and '/no_kick'), (a) AUROC, (b) stratified AUROC and (leave-one-env-out) the measured FPR on the
    target's controls, per setting. Caveats: every monitor whose source-calibrated FPR on a target env's controls has
    a CI above the target FPR (the threshold does not transfer), and every held-out kind whose monitors could not be
    evaluated held out.
    """
    def pick(e: dict[str, Any]) -> dict[str, Any]:
        if Status.of(e) is not None:
            return Status.from_json(e).to_json()
        return {"a_auroc": (e.get("a") or {}).get("auroc"), "b_auroc_stratified": (e.get("b") or {}).get(
            "auroc_stratified"), **({"fpr_target_controls": e["fpr_target_controls"]}
                                    if "fpr_target_controls" in e else {})}

    head: dict[str, Any] = {}
    caveats: list[str] = []
    kind = held.get("leave_one_kind_out") or {}
    if Status.of(kind) is not None and Status.from_json(kind).ok:
        head["leave_one_kind_out"] = {}
        for k, ke in kind.get("by_kind", {}).items():
            if "detectors" not in ke:
                caveats.append(f"(d) kind {k}: {Status.from_json(ke).text}")
                continue
            head["leave_one_kind_out"][k] = {d: pick(e) for d, e in ke["detectors"].items() if d in monitor_names()}
    env = held.get("leave_one_env_out") or {}
    if Status.of(env) is not None and Status.from_json(env).ok:
        head["leave_one_env_out"] = {}
        for target, te in env.get("by_target", {}).items():
            if "detectors" not in te:
                continue
            head["leave_one_env_out"][target] = {d: {s: pick(v) for s, v in e.items()}
                                                 for d, e in te["detectors"].items() if d in monitor_names()}
            for d, e in te["detectors"].items():
                f = (e.get("transfer_source_calibrated") or {}).get("fpr_target_controls") or {}
                if d in monitor_names() and f.get("ci_low") is not None and f["ci_low"] > f.get("target", 0.05):
                    caveats.append(f"(d) {d} fitted and calibrated on {', '.join(te['sources'])}: false-alarm rate "
                                   f"{f['value']:.2f} [{f['ci_low']:.2f}, {f['ci_high']:.2f}] on {target}'s controls "
                                   f"(n={f['n']}), not the {f.get('target', 0.05):g} it was calibrated to")
    return head, caveats
