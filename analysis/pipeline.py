"""``run_analysis``: the corpus in, ``results/`` out (Parquet tables + ``summary.json``).

Stages, each a function with a typed (dataclass) output:

1. :func:`~stabilitybench.analysis.groups.load_corpus` -> :class:`~stabilitybench.analysis.groups.LoadedCorpus`:
   finished runs and events;
2. :func:`~stabilitybench.analysis.groups.analyse_groups` -> :class:`~stabilitybench.analysis.groups.GroupResults`:
   per matched group (domain, algo, env, stochasticity) telemetry blocks, feature selection, collapse outcomes
   and early-warning folds;
3. :func:`stabilitybench.analysis.pca_summary.pca_summary` -> :class:`~stabilitybench.analysis.pca_summary.PCASummary`;
4. :func:`~stabilitybench.analysis.stages.early_warning_questions` ->
   :class:`~stabilitybench.analysis.stages.EarlyWarningResult`: questions (a) and (b);
5. :func:`~stabilitybench.analysis.stages.survival_models` -> :class:`~stabilitybench.analysis.stages.SurvivalResult`;
6. :func:`~stabilitybench.analysis.stages.measure_regularities` ->
   :class:`~stabilitybench.analysis.stages.RegularitiesResult`;
7. the tables (:func:`stabilitybench.analysis.results.write_result`, each under its declared schema), including
   what the report's figures draw (``onset_telemetry``, ``early_warning_roc``, ``dissociation_runs``), and
   ``summary.json`` (:func:`stabilitybench.analysis.summary_doc.summary_document`, written by
   :func:`stabilitybench.analysis.summary.write_summary`, the one writer).

Every headline number in ``summary.json`` is an :class:`~stabilitybench.analysis.summary.Estimate`; an analysis the
data cannot support carries a :class:`~stabilitybench.analysis.summary.Status`
(``{"status": "not_testable", "reason": ...}``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from stabilitybench.analysis.aggregates import iqm_table, performance_profiles
from stabilitybench.analysis.collapse import RULE as COLLAPSE_RULE
from stabilitybench.analysis.config import AnalysisConfig
from stabilitybench.analysis.data import group_runs
from stabilitybench.analysis.early_warning import start_workers
from stabilitybench.analysis.groups import GroupResults, analyse_groups, load_corpus
from stabilitybench.analysis.intervention import intervention_section
from stabilitybench.analysis.onset import onset_telemetry
from stabilitybench.analysis.pca_summary import PCASummary, pca_summary
from stabilitybench.analysis.results import flatten, write_result
from stabilitybench.analysis.stages import (
    EarlyWarningResult,
    RegularitiesResult,
    SurvivalResult,
    dissociation_runs,
    dose_response,
    early_warning_questions,
    held_out_rows,
    measure_regularities,
    sensitivity,
    survival_models,
)
from stabilitybench.analysis.summary import write_summary
from stabilitybench.analysis.summary_doc import summary_document
from stabilitybench.analysis.time_to_event_stage import time_to_event_question
from stabilitybench.data_schema import RUNS, RUNS_SCHEMA, write_table
from stabilitybench.data_schema.card import summary_lines, write_card

__all__ = ["AnalysisConfig", "run_analysis"]


def run_analysis(
    corpus: str | os.PathLike[str],
    out: str | os.PathLike[str],
    cfg: AnalysisConfig | None = None,
    update_corpus: bool = True,
    progress: Callable[[str], None] | None = None,
    stage: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Analyse ``corpus`` and write ``out/`` (tables + ``summary.json``); returns the summary as written.

    ``progress`` receives what is happening now (free text). ``stage(done, total, name)`` is called as
    each top-level stage begins, once the runs are loaded: ``done`` of ``total`` stages are finished
    (loading, one per domain/algo, PCA, questions, survival, regularities, writing; the last is done
    when this returns). Without ``stage`` the stage names go to ``progress``.
    """
    cfg = cfg or AnalysisConfig()
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    workers_ready = start_workers(cfg.early_warning)  # their imports overlap the reading below
    say("loading runs")
    loaded = load_corpus(corpus)
    workers_ready()
    counter = {"done": 0, "total": len(group_runs(loaded.runs, ("domain", "algo"))) + 6}

    def begin(name: str) -> None:
        counter["done"] += 1
        if stage is not None:
            stage(counter["done"], counter["total"], name)
        else:
            say(name)

    groups = analyse_groups(corpus, loaded, cfg, out, say, begin)
    timings = dict(groups.timings)
    everything = loaded.runs.join(groups.outcomes, on="run_id", how="left")
    _write_runs(everything, out, corpus if update_corpus else None, cfg)
    full = everything.filter(pl.col("arm") == "none")  # the science: natural runs only
    intervention_rows, intervention = intervention_section(everything, loaded.events, cfg.n_boot, cfg.seed)
    if intervention_rows.height:
        write_result(intervention_rows, out, "intervention")

    begin("PCA and circular-shift null")
    ts = time.perf_counter()
    pca = pca_summary(groups.pca_inputs, cfg.n_null, cfg.n_boot, cfg.seed)
    timings["pca_s"] = time.perf_counter() - ts
    begin("detection and prediction questions")
    ts = time.perf_counter()
    ew = early_warning_questions(groups, loaded.runs, cfg)
    tte = time_to_event_question(groups.ew_scores, full, cfg)  # question (c): regime runs and their controls
    if tte.curves.height:
        write_result(tte.curves, out, "time_to_event_curves")
    timings["questions_s"] = time.perf_counter() - ts
    begin("survival models")
    ts = time.perf_counter()
    surv = survival_models(full, groups, cfg)
    timings["survival_s"] = time.perf_counter() - ts
    begin("regularities")
    reg = measure_regularities(full, groups, surv, cfg)
    dose = dose_response(full)
    sens = sensitivity(groups.sensitivity) if groups.sensitivity.height else pl.DataFrame()

    begin("writing tables and summary.json")
    _write_tables(out, full, groups, sens, dose, pca, ew, surv, reg, cfg)
    write_result(onset_telemetry(corpus, full, groups.ew_scores if groups.ew_scores.height else None), out,
                 "onset_telemetry")
    timings["total_s"] = time.perf_counter() - t0
    summary = summary_document(corpus, loaded, groups, cfg, full, dose, sens, pca, ew, surv, reg, intervention,
                               timings, time_to_event=tte)
    return write_summary(summary, out)


def _write_runs(full: pl.DataFrame, out: Path, corpus: str | os.PathLike[str] | None, cfg: AnalysisConfig) -> None:
    """``runs.parquet`` (manifest + outcomes) into ``out`` and, unless ``corpus`` is None, into the corpus with
    the dataset card's collapse section."""
    runs_table = pa.Table.from_pylist(full.select([f.name for f in RUNS_SCHEMA]).to_dicts(), schema=RUNS_SCHEMA)
    write_table(runs_table, out / RUNS, RUNS_SCHEMA)
    if corpus is not None:
        write_table(runs_table, Path(corpus) / RUNS, RUNS_SCHEMA)
        _card_section(corpus, full.to_dicts(), cfg)


def _write_tables(out: Path, full: pl.DataFrame, groups: GroupResults, sens: pl.DataFrame, dose: pl.DataFrame,
                  pca: PCASummary, ew: EarlyWarningResult, surv: SurvivalResult, reg: RegularitiesResult,
                  cfg: AnalysisConfig) -> None:
    """Every results table (:data:`analysis.results.SCHEMAS`) a stage produced; an empty optional one is skipped."""
    write_result(groups.outcomes, out, "collapse_details")
    optional = {"collapse_sensitivity": sens, "early_warning_runs": groups.ew_runs,
                "early_warning_scores": groups.ew_scores, "early_warning_loeo_runs": groups.loeo_runs,
                "km": surv.km, "coherence_aligned": groups.coherence}
    for name, frame in optional.items():
        if frame.height:
            write_result(frame, out, name)
    held = held_out_rows(ew.held_out)  # question (d)
    if held.height:
        write_result(held, out, "early_warning_held_out")
    if groups.ew_runs.height:
        write_result(pl.DataFrame([flatten({"detector": k, **v}) for k, v in ew.summary["detection"].items()]),
                     out, "early_warning_metrics")
    if surv.cox.get("coefficients"):
        write_result(pl.DataFrame([flatten(c) for c in surv.cox["coefficients"]]), out, "cox")
    write_result(pca.explained, out, "pca_explained")
    write_result(pca.trajectories, out, "pca_trajectories")
    write_result(pl.DataFrame(surv.logrank), out, "logrank")
    write_result(pl.DataFrame([flatten(x) for x in reg.dissociation]), out, "dissociation")
    write_result(dose, out, "dose_response")
    write_result(dissociation_runs(surv), out, "dissociation_runs")
    if ew.roc.height:
        write_result(ew.roc, out, "early_warning_roc")
    write_result(iqm_table(full, cfg.n_boot, cfg.seed), out, "final_performance_iqm")  # rliable-style
    write_result(performance_profiles(full, n_boot=cfg.n_boot, seed=cfg.seed), out, "performance_profiles")


def _card_section(corpus: str | os.PathLike[str], rows: list[dict[str, Any]], cfg: AnalysisConfig) -> None:
    """Complete the corpus dataset card with the collapse rule (:data:`analysis.collapse.RULE`) and the outcomes."""
    params = ", ".join(f"{k} = {v}" for k, v in cfg.collapse.to_dict().items())
    section = ["## Collapse rule (from `stabilitybench analyze`)", "", "Parameters are those of "
               "`stabilitybench.analysis.collapse.CollapseConfig`.", "", COLLAPSE_RULE.rstrip(), "",
               f"Parameters: {params}.", "",
               "### Outcomes", "", *summary_lines(rows)]
    write_card(corpus, analysis_section="\n".join(section))

