"""``results/`` declared like the corpus: one Arrow schema, with units and descriptions, per table.

:data:`SCHEMAS` declares every table that :func:`stabilitybench.analysis.pipeline.run_analysis` may write (a
table whose analysis was not testable on a corpus is absent; ``summary.json`` says why).
:func:`write_result` is how analysis writes one: the frame is cast to its declared schema (a
declared column the frame lacks is written as nulls, an undeclared one is an error), so the
Parquet files carry their units and descriptions like the corpus does. :func:`load_table` reads
one back for ``reports``; ``summary.json`` has its own module, :mod:`stabilitybench.analysis.summary`.

Tables that flatten a summary entry (``early_warning_metrics``, ``cox``, ``dissociation``) name a
nested field ``a.b`` (:func:`flatten`); a list-valued field is a JSON string.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from stabilitybench.analysis.errors import AnalysisError
from stabilitybench.analysis.intervention import TABLE_COLUMNS
from stabilitybench.analysis.summary import ResultsCorruptError, ResultsNotFoundError, to_json
from stabilitybench.data_schema.io import atomic_path
from stabilitybench.data_schema.schema import MANIFEST_COLUMNS, OUTCOME_COLUMNS, RUNS_SCHEMA, STEP, Column

__all__ = ["SCHEMAS", "TABLES", "ResultsCorruptError", "ResultsNotFoundError", "flatten", "load_table",
           "write_result"]

STR, I64, F64, BOOL = pa.string(), pa.int64(), pa.float64(), pa.bool_()
#: Version of the results tables' layout (in each file's schema metadata).
RESULTS_VERSION = "2"

# ------------------------------------------------------------------ columns shared by several tables
_CORPUS = {c.name: c for c in (*MANIFEST_COLUMNS, *OUTCOME_COLUMNS, STEP)}
_SHARED = {c.name: c for c in (
    Column("config", STR, "-", "Configuration label: kind xmagnitude (duration upd), or none "
           "(stabilitybench.data_schema.keys.ConfigKey.label)"),
    Column("group", STR, "-", "Matched group domain/algo/env/stochasticity (PCA: domain/algo, or pooled)"),
    Column("n_runs", I64, "runs", "Runs behind the row"),
    Column("n", I64, "runs", "Units behind the estimate"),
    Column("value", F64, "-", "Point estimate"),
    Column("ci_low", F64, "-", "Lower end of the two-sided 95% CI (null without one)"),
    Column("ci_high", F64, "-", "Upper end of the two-sided 95% CI (null without one)"),
    Column("p_value", F64, "-", "Two-sided p-value"),
    Column("interval", STR, "-", "How the CI was computed"),
    Column("status", STR, "-", "ok, or why the row has no estimate (stabilitybench.analysis.summary.StatusKind)"),
    Column("reason", STR, "-", "Why the row has that status, in words (null when ok)"),
    Column("detector", STR, "-", "Monitor (kalman, gru; +echo with the intervention-echo columns), baseline or "
           "reference (perturbation_on)"),
    Column("fold", I64, "-", "Seed-rotation fold of the early-warning evaluation"),
    Column("stratum", STR, "-", "Survival stratum domain/algo/env"),
    Column("estimator", STR, "-", "Gradient-coherence estimator: fixed_point (LM, RL probe) or rolling"),
)}


def _col(name: str, type_: pa.DataType | None = None, unit: str | None = None, description: str | None = None
         ) -> Column:
    """A column: its own declaration, or the shared / corpus one of that name (fields given here win)."""
    base = _SHARED.get(name) or _CORPUS.get(name)
    if base is None and (type_ is None or unit is None or description is None):
        raise ValueError(f"results column {name!r} needs a type, unit and description")
    return Column(name, type_ or base.type, unit if unit is not None else base.unit,  # type: ignore[union-attr]
                  description or base.description)  # type: ignore[union-attr]


def _table(name: str, what: str, columns: list[Column]) -> pa.Schema:
    names = [c.name for c in columns]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate columns in results/{name}")
    return pa.schema([c.field() for c in columns], metadata={
        b"stabilitybench.table": f"results/{name}".encode(),
        b"stabilitybench.results_version": RESULTS_VERSION.encode(), b"description": what.encode()})


def _estimate(prefix: str, what: str, unit: str = "-", extra: tuple[Column, ...] = ()) -> list[Column]:
    """The flattened columns of one summary estimate ``prefix.value|n|ci_low|ci_high`` (+ ``extra``)."""
    return [Column(f"{prefix}.value", F64, unit, what), Column(f"{prefix}.n", I64, "runs", f"n of {prefix}"),
            Column(f"{prefix}.ci_low", F64, unit, f"95% CI low of {prefix}"),
            Column(f"{prefix}.ci_high", F64, unit, f"95% CI high of {prefix}"),
            *[Column(f"{prefix}.{c.name}", c.type, c.unit, c.description) for c in extra]]


_DOSE_KEYS = [_col(c) for c in ("domain", "algo", "stochasticity", "perturbation", "magnitude", "duration_steps",
                                 "config")]
_NOTE = Column("note", STR, "-", "What the estimate means")
_STATUS = (Column("status", STR, "-", "Status of the entry (stabilitybench.analysis.summary.StatusKind)"),
           Column("reason", STR, "-", "Why, in words"))

# early-warning columns added by evaluation v3 (issue 25)
_LEAD_EXTRA = (Column("iqr_low", F64, "update", "25th percentile of the leads"),
               Column("iqr_high", F64, "update", "75th percentile of the leads"),
               Column("interval", STR, "-", "How the CI was computed"),
               Column("measured_from", STR, "-", "What the lead is measured from"),
               Column("note", STR, "-", "Why there is no lead (e.g. not in the rows)"))
_FPR_EXTRA = (Column("target", F64, "-", "Target FPR"),
              Column("n_calibration", I64, "runs", "Fewest calibration controls in a fold"),
              Column("n_calibration_per_fold", STR, "runs", "Calibration controls per fold (JSON list)"),
              Column("n_test", I64, "runs", "Held-out controls tested"),
              Column("guaranteed_fpr_bound", F64, "-", "Conformal FPR bound"),
              Column("alpha_used", F64, "-", "Attainable conformal level"),
              Column("claim.status", STR, "-", "ok | refused | not_applicable: whether an FPR claim is made"),
              Column("claim.reason", STR, "-", "Why"),
              Column("runs_needed.calibration_controls_per_fold", I64, "runs", "Calibration controls needed per fold "
                     "for a claim (when refused)"))
#: early_warning_metrics' evaluation-v3 columns: Delta vs perturbation_on, the old-date lead, the small folds
_EW_METRICS_NEW = [
    *_estimate("median_lead_updates_smoothed", "Median lead from the old date (collapse_step_smoothed)", "update",
               extra=_LEAD_EXTRA[:4]),
    *_estimate("delta_vs_perturbation_on", "AUROC minus perturbation_on's AUROC (1 by construction) on the same "
               "runs, paired cluster bootstrap over seeds", extra=(
                   Column("interval", STR, "-", "How the CI was computed"), _NOTE, *_STATUS)),
    Column("alarm_numbers_from", STR, "-", "Which folds the alarm-based numbers pool (>= 19 calibration controls)"),
    Column("small_folds.n_folds", I64, "folds", "Folds with fewer than 19 calibration controls"),
    Column("small_folds.n_folds_total", I64, "folds", "Folds evaluated"),
    Column("small_folds.n_calibration_per_fold", STR, "runs", "Calibration controls of the small folds (JSON list)"),
    Column("small_folds.note", STR, "-", "Why the small folds are reported apart"),
    Column("small_folds.n_collapsed", I64, "runs", "Performance collapses tested in the small folds"),
    Column("small_folds.n_controls", I64, "runs", "Held-out controls tested in the small folds"),
    *_estimate("small_folds.frac_collapses_preceded", "Small folds: share of collapses with an alarm strictly before"),
    *_estimate("small_folds.median_lead_updates", "Small folds: median lead (new date)", "update",
               extra=_LEAD_EXTRA[:4]),
    *_estimate("small_folds.median_lead_updates_smoothed", "Small folds: median lead (old date)", "update",
               extra=_LEAD_EXTRA[:4]),
    *_estimate("small_folds.fpr_held_out_controls", "Small folds: false-positive rate on held-out controls",
               extra=_FPR_EXTRA),
    *_estimate("small_folds.nonfinite", "Small folds: share of non-finite collapses with an alarm strictly before "
               "the non-finite step", extra=(Column("what", STR, "-", "What the share means"),)),
]
#: early_warning_runs' (and early_warning_loeo_runs') evaluation-v3 columns
_EW_RUNS_NEW = [
    Column("collapse_step_smoothed", I64, "update", "Collapse date on the smoothed performance (the old date; null "
           "unless collapsed)"),
    Column("collapse_date_source", STR, "-", "What collapse_step was dated on (analysis.collapse)"),
    Column("lead_updates_smoothed", I64, "update", "collapse_step_smoothed minus first alarm (null unless the alarm "
           "came strictly before it)"),
    Column("block_updates", I64, "update", "Block length of the run's group"),
    Column("prediction_excess_lm1", F64, "calibration SD", "prediction_excess over [onset, L - 1 block]"),
    Column("prediction_excess_lp1", F64, "calibration SD", "prediction_excess over [onset, L + 1 block]"),
]
#: early_warning_scores' evaluation-v3 column
_EW_SCORES_NEW = [Column("excess", F64, "calibration SD", "(score - threshold) / SD of the fold's calibration window "
                        "maxima (what same-dose detection ranks)")]


#: dissociation rows' ``equivalence`` entry (regularities.SpearmanTOST.summary), flattened
_EQUIVALENCE = [
    Column("equivalence.status", STR, "-", "ok | not_testable | not_applicable (survival_time: the collapse rule's "
           "own clock; configuration rows: the test is run on runs)"),
    Column("equivalence.reason", STR, "-", "Why the equivalence test did not run (null when ok)"),
    Column("equivalence.margin", F64, "-", "Equivalence margin on |rho|"),
    Column("equivalence.rho", F64, "-", "Spearman rho on ranks within matched groups"),
    Column("equivalence.ci90_low", F64, "-", "90% CI low of rho (TOST at alpha 0.05; BCa over seeds)"),
    Column("equivalence.ci90_high", F64, "-", "90% CI high of rho"),
    Column("equivalence.ci95_low", F64, "-", "95% CI low of rho (\"coupled\" when it excludes 0)"),
    Column("equivalence.ci95_high", F64, "-", "95% CI high of rho"),
    Column("equivalence.n_runs", I64, "runs", "Runs with finite final performance and measure"),
    Column("equivalence.n_seeds", I64, "seeds", "Seeds (bootstrap clusters)"),
    Column("equivalence.n_strata", I64, "-", "Matched groups the ranks were taken within"),
    Column("equivalence.interval", STR, "-", "How the CIs were computed"),
    Column("equivalence.verdict", STR, "-", "decoupled | coupled | undetermined"),
    Column("equivalence.measure_definition", STR, "-", "What the stability measure is"),
]
_DRAWDOWN = Column("drawdown_depth", F64, "task", "Largest fall of the causally smoothed performance from its running "
                   "max after onset (regularities.drawdown_depth); the decoupling test's rule-free stability measure")

#: file stem -> (what one row is, the declared schema)
_DECLARED: dict[str, tuple[str, list[Column] | pa.Schema]] = {
    "runs": ("one run: the manifest plus collapsed, collapse_kind, collapse_step (offline date), "
             "collapse_confirmed_step, collapse_time (null when censored), survival_time, censored, transient, "
             "final_performance", RUNS_SCHEMA),
    "collapse_details": ("one run: the outcome plus the rule's control fold and notes", [
        _col("run_id"), *[_col(c.name) for c in OUTCOME_COLUMNS],
        Column("note", STR, "-", "Why the rule could not assess the run fully (null when it could)"),
        Column("n_controls", I64, "runs", "Control runs in the envelope the run was judged against"),
        Column("control_gain", F64, "task", "Learning gain G of those controls (last minus first edge_frac)"),
        Column("rule_fold", I64, "-", "Cross-fitting fold of the run (null when the group could not be cross-fitted)"),
        _DRAWDOWN,
    ]),
    "collapse_sensitivity": ("configuration x (drop, spread_k): collapsed counts under other rule settings", [
        _col("config"), Column("drop", F64, "-", "Gain margin of the rule: fraction of the controls' learning gain"),
        Column("spread_k", F64, "seed SD", "Spread margin of the rule, in control seed SDs"), _col("n_runs"),
        Column("n_collapsed", I64, "runs", "Runs collapsed under this setting"),
    ]),
    "intervention": ("(perturbation, magnitude, duration, arm): matched pairs with vs without the arm's action, "
                     "exact paired tests (stabilitybench.analysis.intervention)", TABLE_COLUMNS),
    "dose_response": ("configuration: collapse probability with a Clopper-Pearson CI, final performance", [
        _col("domain"), _col("algo"), _col("env"), _col("stochasticity"), _col("config"), _col("perturbation"),
        _col("dimension"), _col("magnitude"), _col("duration_steps"), _col("n_runs"),
        Column("n_collapsed", I64, "runs", "Runs that collapsed"),
        Column("collapse_probability", F64, "-", "n_collapsed / n_runs"),
        _col("ci_low", None, "-", "Clopper-Pearson 95% CI low of the collapse probability"),
        _col("ci_high", None, "-", "Clopper-Pearson 95% CI high of the collapse probability"),
        Column("median_collapse_time", F64, "update", "Median collapse_time of the collapsed runs"),
        Column("final_performance_mean", F64, "task", "Mean final performance over the runs"),
        Column("final_performance_sd", F64, "task", "SD of the final performance (null for one run)"),
    ]),
    "final_performance_iqm": ("configuration: IQM of the control-normalised final performance over runs and envs, "
                              "stratified-bootstrap 95% CI (rliable-style; stabilitybench.analysis.aggregates)", [
        *_DOSE_KEYS, _col("n_runs"), Column("n_envs", I64, "envs", "Envs pooled (bootstrap strata)"),
        Column("iqm", F64, "control median", "Interquartile mean of the normalised final performance (1 = the "
               "median of the matched controls)"),
        _col("ci_low", None, "control median", "Stratified-bootstrap 95% CI low of the IQM"),
        _col("ci_high", None, "control median", "Stratified-bootstrap 95% CI high of the IQM"),
        Column("median", F64, "control median", "Median normalised final performance"),
        Column("mean", F64, "control median", "Mean normalised final performance"),
    ]),
    "performance_profiles": ("(configuration, tau): fraction of runs with control-normalised final performance "
                             "> tau, stratified-bootstrap 95% CI", [
        *_DOSE_KEYS, Column("tau", F64, "control median", "Threshold on the normalised final performance"),
        Column("fraction", F64, "-", "Share of runs above tau"),
        _col("ci_low", None, "-", "Stratified-bootstrap 95% CI low of the share"),
        _col("ci_high", None, "-", "Stratified-bootstrap 95% CI high of the share"), _col("n_runs"),
    ]),
    "pca_explained": ("(group, subset, component): explained-variance ratio, real and circular-shift null", [
        _col("group"), Column("subset", STR, "-", "all_runs | unperturbed_runs"),
        Column("component", I64, "-", "Principal component, 1-based"),
        Column("explained_variance_ratio", F64, "-", "Share of the standardised variance on this component"),
        Column("null_explained_variance_ratio", F64, "-", "The same, mean over circular-shift surrogates"),
    ]),
    "pca_trajectories": ("(group, run, block): the block's telemetry projected on PCs 1-3", [
        _col("group"), _col("run_id"), _col("step", None, "update", "Last update of the block"),
        *[Column(f"pc{j}", F64, "SD", f"Projection on principal component {j} (standardised units)")
          for j in (1, 2, 3)],
    ]),
    "early_warning_runs": ("(test run, detector): conformal threshold, scores as -log10 p, first alarm, lead", [
        _col("run_id"), _col("seed"), _col("fold"), _col("detector"),
        Column("threshold", F64, "score", "Conformal alarm threshold on the detector's score"),
        Column("n_calibration", I64, "runs", "Calibration controls of the fold"),
        Column("alpha_used", F64, "-", "Attainable conformal level used"),
        Column("guaranteed_fpr_bound", F64, "-", "Conformal FPR bound for exchangeable controls"),
        _col("perturbation"), _col("magnitude"), _col("duration_steps"),
        Column("unperturbed", BOOL, "-", "The run is an unperturbed control "
               "(stabilitybench.data_schema.keys.control_mask)"),
        _col("collapsed"), _col("collapse_kind"), _col("collapse_step"), _col("onset_step"),
        Column("landmark_step", I64, "update", "Landmark L: end of the perturbation window plus one block"),
        Column("first_alarm_step", I64, "update", "First alarm from onset on (null: none)"),
        Column("alarm_before_collapse", BOOL, "-", "An alarm came strictly before the offline collapse date"),
        Column("lead_updates", I64, "update", "Collapse date minus first alarm (null unless alarm_before_collapse)"),
        Column("detection_score", F64, "-log10 p", "Max score from onset to collapse (or run end)"),
        Column("detection_window_blocks", I64, "-", "Blocks in detection_score's window (0: collapsed before the "
               "first block after onset ended; left out of question (a), counted as n_collapsed_no_window)"),
        Column("prediction_score", F64, "-log10 p", "Max score over [onset, L]"),
        Column("prediction_excess", F64, "calibration SD", "Max (score - threshold) / SD of the fold's calibration "
               "window maxima over [onset, L]: what question (b) ranks (the p-value ties above every calibration run)"),
        Column("window_score", F64, "-log10 p", "Max score after onset (before collapse)"),
        Column("early_score", F64, "-log10 p", "Mean score over the early window after onset"),
        _col("group"), Column("cluster", STR, "-", "Bootstrap cluster: group and seed"), *_EW_RUNS_NEW,
    ]),
    "early_warning_scores": ("(test run, detector, block): smoothed score, threshold, conformal p-value", [
        _col("run_id"), _col("detector"), _col("fold"), _col("step", None, "update", "Last update of the block"),
        Column("score", F64, "score", "Smoothed detector score (MSD in nats per feature for the monitors)"),
        Column("threshold", F64, "score", "Conformal alarm threshold"),
        Column("p_value", F64, "-", "Conformal p-value of the score"), *_EW_SCORES_NEW,
    ]),
    "early_warning_metrics": ("detector: question (a) detection metrics with CIs (flattened)", [
        _col("detector"), Column("question", STR, "-", "The question the row answers"),
        Column("n_runs", I64, "runs", "Test runs: performance collapses plus held-out controls"),
        Column("n_collapsed", I64, "runs", "Perturbed test runs with a performance collapse and a block to score "
               "between onset and the collapse"),
        Column("n_collapsed_no_window", I64, "runs", "Performance collapses dated before the first block after onset "
               "ended: nothing to score, left out of (a)"),
        Column("n_controls", I64, "runs", "Held-out unperturbed controls that did not collapse"),
        *_estimate("auroc", "AUROC of the detection score, collapses vs controls", extra=(
            Column("n_pos", I64, "runs", "Collapses"), Column("n_neg", I64, "runs", "Controls"),
            Column("interval", STR, "-", "How the CI was computed"), _NOTE, *_STATUS)),
        *_estimate("frac_collapses_preceded", "Share of collapses with an alarm strictly before"),
        *_estimate("median_lead_updates", "Median lead of the alarm before collapse", "update",
                   extra=_LEAD_EXTRA[:4]),
        *_estimate("fpr_held_out_controls", "False-positive rate on held-out controls", extra=_FPR_EXTRA),
        *_estimate("nonfinite", "Share of non-finite collapses with an alarm strictly before the non-finite step",
                   extra=(Column("what", STR, "-", "What the share means"),)),
        *_EW_METRICS_NEW,
    ]),
    "early_warning_loeo_runs": ("(target run, detector, calibration) of the leave-one-env-out evaluation, question "
                                "(d) (several envs only; stabilitybench.analysis.early_warning.evaluate_transfer)", []),
    "coherence_aligned": ("(collapsed run, offset from onset): coherence vs the same configuration's non-collapsed "
                          "runs", [
        _col("domain"), _col("estimator"), _col("config"), _col("run_id"), _col("seed"),
        Column("offset_blocks", I64, "block", "Blocks since the onset block"),
        Column("offset_updates", I64, "update", "Updates since onset"),
        Column("coherence", F64, "cosine", "Gradient coherence of the collapsed run (block mean)"),
        Column("control_coherence", F64, "cosine", "Mean of the configuration's perturbed, non-collapsed runs at "
               "that offset"),
        Column("excess", F64, "cosine", "coherence - control_coherence"),
        Column("n_reference_runs", I64, "runs", "Runs behind control_coherence"),
    ]),
    "early_warning_roc": ("(detector, score threshold): question (a)'s empirical ROC point (what F8 draws; its "
                          "trapezoidal area is the detector's AUROC in summary.json)", [
        _col("detector"), Column("threshold", F64, "-log10 p", "Alarm when detection_score >= threshold (null: the "
                                 "leading (0, 0) point); NaN scores count as -inf"),
        Column("fpr", F64, "-", "Share of held-out controls (question (a)'s negatives) at or above the threshold"),
        Column("tpr", F64, "-", "Share of performance collapses (question (a)'s positives) at or above the threshold"),
        Column("n_pos", I64, "runs", "Performance collapses"), Column("n_neg", I64, "runs", "Held-out controls"),
    ]),
    "time_to_event_curves": ("(domain, detector, horizon, point): question (c)'s warned fraction against false alarms "
                             "per 10k stable updates (stabilitybench.analysis.time_to_event_stage; what the "
                             "time-to-event figure draws)", [
        _col("domain"), _col("detector", None, "-", "Detector label as in early_warning_scores, or time_since_start "
                                                    "(the no-kick reference: updates since the regime began)"),
        Column("horizon", I64, "update", "h: a block is positive when the collapse comes within the next h updates"),
        Column("min_lead", I64, "update", "A collapse counts as warned by an alarm with lead in [min_lead, h]"),
        Column("point", STR, "-", "curve (a threshold of the grid) | calibrated (the threshold at 1 false alarm per "
               "10k stable updates of the controls, cross-fitted on the controls)"),
        Column("threshold", F64, "-", "Alarm when the block's score is above it: calibrated excess (calibration SDs) "
               "for a detector, updates for time_since_start (curve: a quantile of the stable blocks' scores; -inf: "
               "every scored block alarms)"),
        Column("fa_per_10k", F64, "per 10k updates", "Alarming stable blocks per 10,000 stable updates (controls, "
               "survivors and blocks more than h before a collapse)"),
        Column("fa_ci_low", F64, "per 10k updates", "calibrated: 95% CI low (envelope of the exact Poisson and the "
               "run-clustered bootstrap intervals); null on the curve"),
        Column("fa_ci_high", F64, "per 10k updates", "calibrated: 95% CI high; null on the curve"),
        Column("warned_fraction", F64, "-", "Share of collapsed regime runs with an alarm at lead in [min_lead, h]"),
        Column("warned_ci_low", F64, "-", "calibrated: Clopper-Pearson 95% CI low; null on the curve"),
        Column("warned_ci_high", F64, "-", "calibrated: Clopper-Pearson 95% CI high; null on the curve"),
        Column("n_collapsed", I64, "runs", "Collapsed regime runs with a scored block before the collapse"),
        Column("n_runs", I64, "runs", "Runs behind the row (regime runs and controls)"),
    ]),
    "onset_telemetry": ("(run, signal, thinned update): telemetry around the perturbation onset for the runs F1 "
                        "shows (stabilitybench.analysis.onset): every control and the strongest magnitude of each "
                        "kind, at one stochasticity level; natural runs only", [
        _col("run_id"), _col("domain"), _col("algo"), _col("dimension"), _col("perturbation"), _col("magnitude"),
        _col("duration_steps"), Column("unperturbed", BOOL, "-", "The run is an unperturbed control "
                                       "(stabilitybench.data_schema.keys.control_mask)"),
        Column("signal", STR, "-", "performance | grad_norm | grad_coherence (corpus) | msd (Kalman monitor score, "
               "held-out folds)"),
        Column("x", F64, "run fraction", "Updates since onset as a fraction of the run's updates"),
        Column("value", F64, "signal", "Mean of the signal over the thinned updates (msd: the block score)"),
    ]),
    "dissociation_runs": ("run: what regularity 1 (decoupling) ranks, the runs F9 draws (natural runs only)", [
        _col("run_id"), _col("domain"), _col("algo"), _col("env"), _col("stochasticity"), _col("seed"),
        _col("perturbation"), _col("dimension"), _col("magnitude"), _col("duration_steps"),
        Column("unperturbed", BOOL, "-", "The run is an unperturbed control "
               "(stabilitybench.data_schema.keys.control_mask)"), _col("collapsed"), _col("final_performance"),
        _col("survival_time"), _col("collapse_time"),
        Column("max_msd", F64, "-log10 p", "Kalman monitor's max score after onset (window_score; null without "
               "an early-warning evaluation)"), _DRAWDOWN, _col("config"),
    ]),
    "km": ("(stratum: configuration, event time): Kaplan-Meier survival with a 95% CI", [
        Column("group", STR, "-", "stratum: configuration"), _col("n_runs"),
        Column("time", F64, "update", "Event time, updates since onset"),
        Column("survival", F64, "-", "Kaplan-Meier probability of no collapse yet"),
        _col("ci_low", None, "-", "95% CI low (exponential Greenwood)"),
        _col("ci_high", None, "-", "95% CI high (exponential Greenwood)"),
        Column("n_risk", F64, "runs", "Runs at risk"), Column("n_events", F64, "runs", "Collapses at this time"),
        _col("stratum"), _col("config"), _col("perturbation"), _col("magnitude"), _col("duration_steps"),
    ]),
    "logrank": ("comparison (configuration vs matched controls): log-rank chi2 and p-value", [
        Column("comparison", STR, "-", "What is compared"), _col("n"),
        Column("n_events", I64, "runs", "Collapses"), Column("strata", pa.list_(STR), "-", "Strata of the test"),
        Column("n_groups", I64, "-", "Groups compared"), Column("chi2", F64, "-", "Log-rank chi-squared"),
        Column("df", I64, "-", "Degrees of freedom"), _col("p_value"), _col("status"), _col("reason"),
    ]),
    "cox": ("covariate: Cox PH coefficient, hazard ratio with CI, p-value", [
        Column("covariate", STR, "-", "Covariate (dose within kind; early covariates per SD)"),
        Column("coef", F64, "log HR", "Coefficient (ridge-penalised when estimable is false)"),
        Column("se", F64, "log HR", "Standard error"),
        _col("value", None, "HR", "Hazard ratio"), _col("n"), _col("ci_low", None, "HR", "95% CI low of the HR"),
        _col("ci_high", None, "HR", "95% CI high of the HR"), _col("p_value"),
        Column("estimable", BOOL, "-", "False under monotone likelihood (separation)"),
        Column("ridge_coef", F64, "log HR", "Ridge-penalised coefficient (separation only; no CI)"),
    ]),
    "dissociation": ("(stability measure, level): Spearman rho of final performance vs stability, CI, p", [
        _col("domain"), _col("algo"),
        Column("measure", STR, "-", "Stability measure: survival_time, max_msd or drawdown_depth"),
        Column("level", STR, "-", "configuration | run"), _col("value", None, "-", "Spearman rho"), _col("n"),
        _col("ci_low"), _col("ci_high"), _col("p_value"), _col("interval"),
        Column("decoupled", BOOL, "-", "The 95% CI includes 0 (absence of evidence; the verdict is "
               "equivalence.verdict)"), *_EQUIVALENCE, _col("status"), _col("reason"),
    ]),
}
_DECLARED["early_warning_loeo_runs"] = (_DECLARED["early_warning_loeo_runs"][0], [
    *_DECLARED["early_warning_runs"][1],  # type: ignore[misc]
    Column("calibrated_on", STR, "-", "source: threshold calibrated on the source envs' controls (nothing of the "
           "target used); target: on the target env's calibration controls (the monitor is fitted on the source)"),
    Column("source_envs", STR, "-", "The envs whose controls the monitor was fitted on (comma-separated)")])


def _held_out_estimate(prefix: str, what: str, unit: str = "-", n: bool = True) -> list[Column]:
    """``prefix.value|[n]|ci_low|ci_high`` of one (d) estimate."""
    return [Column(f"{prefix}.value", F64, unit, what), *([Column(f"{prefix}.n", I64, "runs", f"n of {prefix}")]
                                                          if n else []),
            Column(f"{prefix}.ci_low", F64, unit, f"95% CI low of {prefix}"),
            Column(f"{prefix}.ci_high", F64, unit, f"95% CI high of {prefix}")]


#: results/early_warning_held_out: question (d) flattened (stabilitybench.analysis.stages.held_out_rows)
_DECLARED["early_warning_held_out"] = (
    "(evaluation, held-out unit, setting, detector): question (d), held-out generalisation: (a), (a') and (b) on the "
    "held-out kind's or env's runs, side by side with the in-sample / in-env numbers (summary.json "
    "early_warning.held_out)", [
        Column("evaluation", STR, "-", "leave_one_kind_out | leave_one_env_out"),
        Column("held_out", STR, "-", "The held-out perturbation kind, or the target matched group (domain/algo/env/"
               "stochasticity); 'all kinds' for the in-sample rows"),
        Column("setting", STR, "-", "leave_one_kind_out: in_sample (the main evaluation, every kind pooled) | "
               "held_out; leave_one_env_out: in_env | transfer_target_calibrated | transfer_source_calibrated"),
        Column("trained_on", STR, "-", "What the monitors were fitted on"),
        Column("monitors", STR, "-", "leave_one_kind_out: reused (nothing fitted changes without the kind) | refit, "
               "per domain/algo (JSON)"),
        _col("detector"),
        Column("a.n_collapsed", I64, "runs", "(a) performance collapses scored"),
        Column("a.n_controls", I64, "runs", "(a) held-out controls scored"),
        *_held_out_estimate("a.auroc", "(a) AUROC, collapses vs held-out controls"),
        *_held_out_estimate("a.delta_vs_perturbation_on", "(a) AUROC minus perturbation_on's (1 by construction)",
                            n=False),
        *_held_out_estimate("a.frac_collapses_preceded", "(a) share of collapses with an alarm strictly before "
                            "(folds with >= 19 calibration controls)"),
        *_held_out_estimate("a.median_lead_updates", "(a) median lead of the alarm before collapse", "update"),
        *_held_out_estimate("a.fpr_held_out_controls", "(a) false-positive rate on the held-out controls (folds with "
                            ">= 19 calibration controls)"),
        Column("a.fpr_held_out_controls.claim.status", STR, "-", "ok (conformal bound holds) | refused (too few "
               "calibration controls, or calibrated on another env's controls)"),
        *_held_out_estimate("fpr_target_controls", "leave_one_env_out: false-alarm rate measured on the target env's "
                            "held-out controls (Clopper-Pearson CI)"),
        Column("fpr_target_controls.from", STR, "-", "Which folds the measured rate pools"),
        Column("fpr_target_controls.calibrated_on", STR, "-", "What the thresholds were calibrated on"),
        Column("fpr_target_controls.alpha_used", F64, "-", "Conformal level the alarms used"),
        Column("a_same_dose.n_pos", I64, "runs", "(a') collapsed runs in contributing cells"),
        Column("a_same_dose.n_neg", I64, "runs", "(a') surviving runs in contributing cells"),
        Column("a_same_dose.n_cells_contributing", I64, "cells", "(a') cells holding both outcomes"),
        *_held_out_estimate("a_same_dose.auroc_stratified", "(a') same-dose AUROC, stratified by cell"),
        Column("a_same_dose.auroc_stratified.status", STR, "-", "Status of the (a') AUROC (null when computed)"),
        Column("b.n_pos", I64, "runs", "(b) runs collapsing after the landmark"),
        Column("b.n_neg", I64, "runs", "(b) perturbed runs surviving"),
        *_held_out_estimate("b.auroc_stratified", "(b) prediction AUROC at the landmark, stratified by cell"),
        Column("b.auroc_stratified.status", STR, "-", "Status of the (b) AUROC (null when computed)"),
        *_held_out_estimate("b.delta_auroc.kick_size.stratified", "(b) stratified AUROC minus the kick_size "
                            "reference's (leave_one_kind_out held_out: fitted on the other kinds; leave_one_env_out "
                            "transfer: fitted on the source envs)"),
        *_held_out_estimate("b.delta_auroc.config_only.pooled", "(b) pooled AUROC minus the in-sample cell share's "
                            "(optimism-corrected)"),
        *_held_out_estimate("b_kick_size_leave_one_cell_out.stratified", "leave_one_kind_out held_out: (b) stratified "
                            "AUROC minus the main evaluation's leave-one-cell-out kick_size model's"),
        *_held_out_estimate("delta_vs_in_env.a", "leave_one_env_out transfer: (a) AUROC minus in_env's on the same "
                            "runs (paired, cluster bootstrap)"),
        *_held_out_estimate("delta_vs_in_env.b_stratified", "leave_one_env_out transfer: (b) stratified AUROC minus "
                            "in_env's on the same runs"),
        _col("status"), _col("reason"),
    ])

#: file stem -> its Arrow schema (units and descriptions in each field's metadata)
SCHEMAS: dict[str, pa.Schema] = {
    name: cols if isinstance(cols, pa.Schema) else _table(name, what, cols) for name, (what, cols) in _DECLARED.items()
}
#: file stem -> what one row is
TABLES: dict[str, str] = {name: what for name, (what, _) in _DECLARED.items()}


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A summary entry as one table row: nested fields ``a.b``, lists as JSON, values JSON-safe."""
    out: dict[str, Any] = {}
    for k, v in to_json(d).items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{name}."))
        elif isinstance(v, list):
            out[name] = json.dumps(v)
        else:
            out[name] = v
    return out


def conform(frame: pl.DataFrame, name: str) -> pa.Table:
    """``frame`` as an Arrow table of ``results/<name>``'s declared schema (absent columns are null)."""
    schema = SCHEMAS[name]
    unknown = [c for c in frame.columns if c not in schema.names]
    if unknown:
        raise AnalysisError(f"results/{name}: column(s) {', '.join(unknown)} are not declared in "
                            "stabilitybench.analysis.results.SCHEMAS; declare them (unit, description)")
    table = frame.to_arrow()
    arrays = []
    for f in schema:
        if f.name in table.column_names:
            arrays.append(table.column(f.name).cast(f.type))
        else:
            arrays.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def write_result(frame: pl.DataFrame, out: str | os.PathLike[str], name: str) -> Path:
    """Write ``frame`` as ``out/<name>.parquet`` under its declared schema (zstd, atomic); returns the path."""
    path = Path(out, f"{name}.parquet")
    table = conform(frame, name)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def load_table(results: str | os.PathLike[str], name: str) -> pl.DataFrame | None:
    """One results table as a polars DataFrame, or None when that analysis wrote none."""
    if name not in TABLES:
        raise AnalysisError(f"unknown results table {name!r} (known: {', '.join(TABLES)})")
    path = Path(results, f"{name}.parquet")
    if not path.exists():
        return None
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResultsCorruptError(f"{path}: not a readable Parquet file ({first}); rerun `stabilitybench analyze`"
                                  ) from None
