"""``run_analysis``: the corpus in, ``results/`` out (Parquet tables + ``summary.json``).

Stages, each a function with a typed (dataclass) output:

1. :func:`load_corpus` -> :class:`LoadedCorpus`: finished runs and events;
2. :func:`analyse_groups` -> :class:`GroupResults`: per matched group (domain, algo, env,
   stochasticity) telemetry blocks, feature selection, collapse outcomes and early-warning folds;
3. :func:`stabilitybench.analysis.pca_summary.pca_summary` -> :class:`~stabilitybench.analysis.pca_summary.PCASummary`;
4. :func:`early_warning_questions` -> :class:`EarlyWarningResult`: questions (a) and (b);
5. :func:`survival_models` -> :class:`SurvivalResult`;
6. :func:`measure_regularities` -> :class:`RegularitiesResult`;
7. the tables (:func:`stabilitybench.analysis.results.write_result`, each under its declared schema) and
   ``summary.json`` (:func:`stabilitybench.analysis.summary.write_summary`, the one writer).

Every headline number in ``summary.json`` is an :class:`~stabilitybench.analysis.summary.Estimate`; an analysis the
data cannot support carries a :class:`~analysis.summary.Status` (``{"status": "not_testable", "reason": ...}``).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from stabilitybench.analysis import coherence as coherence_mod
from stabilitybench.analysis import questions
from stabilitybench.analysis.aggregates import iqm_table, performance_profiles
from stabilitybench.analysis.collapse import RULE as COLLAPSE_RULE
from stabilitybench.analysis.collapse import CollapseConfig, collapse_group, nonfinite_steps
from stabilitybench.analysis.data import (
    NONFINITE_COLUMNS,
    FeatureConfig,
    block_size,
    feature_columns,
    feature_frame,
    group_runs,
    intervention_arm,
    is_unperturbed,
    iter_run_steps,
    load_events,
    load_runs,
    redundant_columns,
    run_arrays,
    to_blocks,
)
from stabilitybench.analysis.early_warning import (
    ECHO_COLUMNS,
    EarlyWarningConfig,
    evaluate_group,
    landmark,
    leave_one_env_out_status,
    start_workers,
)
from stabilitybench.analysis.intervention import intervention_section
from stabilitybench.analysis.pca import PCAAccumulator
from stabilitybench.analysis.pca_summary import PCAInput, PCASummary, pca_summary
from stabilitybench.analysis.regularities import dissociation, precedence, stochasticity_buffer
from stabilitybench.analysis.results import flatten, write_result
from stabilitybench.analysis.stats import clopper_pearson
from stabilitybench.analysis.summary import DetectorKey, Status, StatusKind, not_testable, number, write_summary
from stabilitybench.analysis.survival import cox, km_table, logrank, with_config_label
from stabilitybench.data_schema import RUNS, RUNS_SCHEMA, write_table
from stabilitybench.data_schema.card import summary_lines, write_card


@dataclass(frozen=True)
class AnalysisConfig:
    """Every setting of the analysis, fixed before looking at test data."""

    collapse: CollapseConfig = field(default_factory=CollapseConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    early_warning: EarlyWarningConfig = field(default_factory=EarlyWarningConfig)
    n_null: int = 20
    pca_in_memory_rows: int = 5_000_000
    early_frac: float = 0.02
    n_boot: int = 1000
    seed: int = 0


def _early_coherence(steps: pl.DataFrame, onset: int | None, frac: float) -> float | None:
    """Mean grad_coherence over ``[onset, onset+E)`` minus over ``[onset-E, onset)``, E = frac x updates."""
    if onset is None or "grad_coherence" not in steps.columns:
        return None
    E = max(1, round(frac * steps.height))
    after = steps.filter((pl.col("step") >= onset) & (pl.col("step") < onset + E))["grad_coherence"].mean()
    before = steps.filter((pl.col("step") >= onset - E) & (pl.col("step") < onset))["grad_coherence"].mean()
    if after is None or before is None:
        return None
    return float(after) - float(before)  # type: ignore[arg-type]


def _kick_size(steps: np.ndarray, X: np.ndarray, names: list[str], onset: int | None, L: int) -> np.ndarray:
    """Peak excursion of update_norm, param_norm and the loss inside ``[onset, L]``, in pre-onset SDs; ``(3,)``."""
    out = np.full(3, np.nan)
    o = int(onset or 0)
    pre, win = steps < o, (steps >= o) & (steps <= L)
    for i, cols in enumerate((("update_norm",), ("param_norm",), ("train_loss", "loss"))):
        c = next((c for c in cols if c in names), None)
        if c is None or not win.any():
            continue
        x = X[:, names.index(c)]
        base = x[pre & np.isfinite(x)]
        w = x[win & np.isfinite(x)]
        if base.size >= 2 and w.size:
            sd = base.std() if base.std() > 0 else 1.0
            out[i] = float(np.max(np.abs(w - base.mean())) / sd)
    return out


@dataclass(frozen=True)
class LoadedCorpus:
    """Stage 1: the finished runs (with an ``unperturbed`` column), every event, and what was left out."""

    runs: pl.DataFrame
    events: pl.DataFrame
    data_notes: list[str]
    excluded: list[dict[str, str]]


@dataclass(frozen=True)
class GroupTelemetry:
    """One matched group's telemetry, read run by run.

    ``block``: block length in updates; ``performance``: run -> ``(steps (T,), performance (T,))``;
    ``first_nonfinite``: run -> first update with a non-finite feature; ``blocks``: run ->
    ``(block steps (n,), block features (n, F), non-finite flags (n,))`` over all read features.
    """

    block: int
    performance: dict[str, tuple[np.ndarray, np.ndarray]]
    first_nonfinite: dict[str, int]
    blocks: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class FeatureSet:
    """The features of one (domain, algo) after removing redundant columns (judged on the controls' blocks)."""

    read: list[str]  #: every column read (the candidates plus ``lr`` for the +echo monitors)
    kept: list[str]  #: non-redundant columns, monitors' input
    removed: list[dict[str, Any]]
    pca: list[str]  #: ``kept`` without ``lr``

    def summary(self) -> dict[str, Any]:
        return {"features": self.kept, "removed_redundant": self.removed,
                "echo_columns": [c for c in ECHO_COLUMNS if c in self.kept],
                "monitor_features_without_echo": [c for c in self.kept if c not in ECHO_COLUMNS],
                "pca_features": self.pca}


@dataclass(frozen=True)
class GroupResults:
    """Stage 2: per matched group (domain, algo, env, stochasticity), outcomes and early-warning folds.

    Tables: ``outcomes`` (one row per run), ``sensitivity`` (run x rule setting), ``ew_runs`` /
    ``ew_scores`` (test run x detector [x block]), ``loeo_runs`` (leave-one-env-out), ``coherence``
    (aligned on onset). Per run: ``early_coherence`` and ``kick`` (3 kick sizes).
    """

    outcomes: pl.DataFrame
    sensitivity: pl.DataFrame
    ew_runs: pl.DataFrame
    ew_scores: pl.DataFrame
    loeo_runs: pl.DataFrame
    coherence: pl.DataFrame
    fold_notes: list[dict[str, Any]]
    loeo_notes: list[dict[str, Any]]
    group_notes: list[dict[str, Any]]
    feature_sets: dict[str, dict[str, Any]]
    pca_inputs: dict[tuple[str, str], PCAInput]
    early_coherence: dict[str, float]
    kick: dict[str, np.ndarray]
    timings: dict[str, float]


@dataclass
class _Collector:
    """Stage 2's accumulators, filled group by group and frozen into :class:`GroupResults`."""

    outcomes: list[pl.DataFrame] = field(default_factory=list)
    sensitivity: list[pl.DataFrame] = field(default_factory=list)
    ew_runs: list[pl.DataFrame] = field(default_factory=list)
    ew_scores: list[pl.DataFrame] = field(default_factory=list)
    loeo_runs: list[pl.DataFrame] = field(default_factory=list)
    coherence: list[pl.DataFrame] = field(default_factory=list)
    fold_notes: list[dict[str, Any]] = field(default_factory=list)
    loeo_notes: list[dict[str, Any]] = field(default_factory=list)
    group_notes: list[dict[str, Any]] = field(default_factory=list)
    feature_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    pca_inputs: dict[tuple[str, str], PCAInput] = field(default_factory=dict)
    early_coherence: dict[str, float] = field(default_factory=dict)
    kick: dict[str, np.ndarray] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=lambda: {"load_s": 0.0, "collapse_s": 0.0,
                                                               "early_warning_s": 0.0})

    def frozen(self) -> GroupResults:
        def cat(parts: list[pl.DataFrame]) -> pl.DataFrame:
            return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()

        return GroupResults(cat(self.outcomes), cat(self.sensitivity), cat(self.ew_runs), cat(self.ew_scores),
                            cat(self.loeo_runs), cat(self.coherence), self.fold_notes, self.loeo_notes,
                            self.group_notes, self.feature_sets, self.pca_inputs, self.early_coherence, self.kick,
                            self.timings)


@dataclass(frozen=True)
class EarlyWarningResult:
    """Stage 4: questions (a) and (b) for every detector, and the leave-one-env-out evaluation."""

    summary: dict[str, Any]  #: detection, prediction, references and by_detector; or a not-testable status
    leave_one_env_out: dict[str, Any]


@dataclass(frozen=True)
class SurvivalResult:
    """Stage 5: Kaplan-Meier table, log-rank rows and the Cox model; ``runs`` carries the Cox covariates."""

    km: pl.DataFrame
    logrank: list[dict[str, Any]]
    cox: dict[str, Any]
    runs: pl.DataFrame


def _read_group(corpus: str | os.PathLike[str], g: pl.DataFrame, feats: list[str], cfg: AnalysisConfig,
                early_coh: dict[str, float]) -> GroupTelemetry:
    """Read one matched group run by run: performance, non-finite rows and block features (``feats``)."""
    n_upd = int(g["n_updates"].max() or g["planned_updates"].max() or 1)
    B = block_size(n_upd, cfg.features)
    perf: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    nf_rows: dict[str, int] = {}
    arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    cols = list(dict.fromkeys([*feats, *NONFINITE_COLUMNS, "performance", "grad_coherence"]))
    for row, steps in iter_run_steps(corpus, g, cols):
        rid = row["run_id"]
        fr = feature_frame(steps, feats)
        bad = fr.filter(pl.col("nonfinite"))["step"]
        if bad.len():
            nf_rows[rid] = int(bad.min())
        perf[rid] = (steps["step"].to_numpy(), steps["performance"].cast(pl.Float64).fill_null(np.nan).to_numpy())
        c = _early_coherence(steps, row["onset_step"], cfg.early_frac)
        if c is not None:
            early_coh[rid] = c
        arrays.update(run_arrays(to_blocks(fr, feats, B), feats))
    return GroupTelemetry(B, perf, nf_rows, arrays)


def _subset(arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], idx: list[int]
            ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return {r: (st, X[:, idx], nf) for r, (st, X, nf) in arrays.items()}


def _label(key: dict[str, str]) -> str:
    """``"rl/ppo/HalfCheetah-v5/default"``: a matched group's label."""
    return "/".join(key.values())


def _with_cluster(rows: pl.DataFrame, label: str) -> pl.DataFrame:
    """Early-warning rows tagged with their group and their bootstrap cluster (group and seed)."""
    return rows.with_columns(pl.lit(label).alias("group"),
                             pl.concat_str([pl.lit(label + "|seed="), pl.col("seed").cast(pl.String)]).alias("cluster"))


# =========================================================================== stages
def load_corpus(corpus: str | os.PathLike[str]) -> LoadedCorpus:
    """Stage 1: finished runs (excluding those whose files are damaged) and every event."""
    data_notes: list[str] = []
    excluded: list[dict[str, str]] = []
    runs = load_runs(corpus, data_notes, excluded)
    runs = runs.with_columns(is_unperturbed(runs).alias("unperturbed"), intervention_arm(runs).alias("arm"))
    return LoadedCorpus(runs, load_events(corpus, runs), data_notes, excluded)


def select_features(runs: pl.DataFrame, read: list[tuple[Any, pl.DataFrame, GroupTelemetry]], feats_all: list[str]
                    ) -> FeatureSet:
    """Drop collinear / algebraically redundant columns of ``feats_all`` (the columns read), judged on the
    unperturbed runs' blocks (label-free)."""
    ctrl_ids = set(runs.filter(pl.col("unperturbed"))["run_id"].to_list())
    stack = [X for _, _, r in read for rid, (_, X, _) in r.blocks.items() if rid in ctrl_ids] or \
        [X for _, _, r in read for _, X, _ in r.blocks.values()]
    kept, removed = redundant_columns(np.vstack(stack) if stack else np.zeros((0, len(feats_all))), feats_all,
                                      protect=("lr",)) if feats_all else ([], [])
    return FeatureSet(feats_all, kept, removed, [c for c in kept if c != "lr"])


def collapse_outcomes(g: pl.DataFrame, tel: GroupTelemetry, events: pl.DataFrame, cfg: AnalysisConfig
                      ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One group's outcomes under the rule, and the collapsed flag under each (drop, spread_k) of its margins."""
    nonfinite = nonfinite_steps(events, g, tel.first_nonfinite)
    unperturbed = g["unperturbed"].to_numpy()
    outcomes = collapse_group(g, tel.performance, nonfinite, unperturbed, cfg.collapse)
    sens = []
    for drop in (0.25, 0.5, 0.75, 1.0):  # sensitivity of the outcome to the rule's two margins
        for k in (1.0, 2.0, 3.0):
            alt = collapse_group(g, tel.performance, nonfinite, unperturbed,
                                 replace(cfg.collapse, drop=drop, spread_k=k))
            sens.append(g.select("run_id", "perturbation", "magnitude", "duration_steps")
                        .join(alt.select("run_id", "collapsed"), on="run_id")
                        .with_columns(pl.lit(drop).alias("drop"), pl.lit(k).alias("spread_k")))
    return outcomes, pl.concat(sens, how="diagonal_relaxed")


def _analyse_domain_algo(corpus: str | os.PathLike[str], key_da: dict[str, str], da_runs: pl.DataFrame,
                         events: pl.DataFrame, cfg: AnalysisConfig, out: Path, say: Callable[[str], None],
                         acc: _Collector) -> None:
    """Stage 2 for one (domain, algo): read, select features, then per matched group collapse and early warning."""
    ts = time.perf_counter()
    candidates = feature_columns(corpus, da_runs, cfg.features)
    feats_read = [*candidates, *(["lr"] if "lr" not in candidates else [])]  # lr only for the +echo monitors
    read = []
    for key, g in group_runs(da_runs):
        say(f"{_label(key)}: reading telemetry run by run ({g.height} runs)")
        read.append((key, g, _read_group(corpus, g, feats_read, cfg, acc.early_coherence)))
    acc.timings["load_s"] += time.perf_counter() - ts
    fs = select_features(da_runs, read, feats_read)
    acc.feature_sets[f"{key_da['domain']}/{key_da['algo']}"] = fs.summary()
    idx = [fs.read.index(c) for c in fs.kept]
    pidx = [fs.read.index(c) for c in fs.pca]
    ctrl_ids = set(da_runs.filter(pl.col("unperturbed"))["run_id"].to_list())
    # runs that acted on a live monitor's alarm get an outcome under the rule (the intervention table's
    # input) and nothing else: they are not natural training dynamics
    acted = set(da_runs.filter(pl.col("arm") != "none")["run_id"].to_list())
    pca_in = PCAInput(fs.pca, PCAAccumulator(len(fs.pca), cfg.n_null, cfg.seed, cfg.pca_in_memory_rows),
                      PCAAccumulator(len(fs.pca), cfg.n_null, cfg.seed + 1, cfg.pca_in_memory_rows))
    acc.pca_inputs[(key_da["domain"], key_da["algo"])] = pca_in
    evaluated: list[tuple[dict[str, str], pl.DataFrame, dict[str, Any], int]] = []
    for key, g, tel in read:
        label = _label(key)
        for rid, (st, X, nf) in tel.blocks.items():
            if rid in acted:
                continue
            Xp = X[:, pidx]
            Xp = Xp[np.isfinite(Xp).all(axis=1)]
            pca_in.all_runs.add_run(Xp)
            if rid in ctrl_ids:
                pca_in.unperturbed_runs.add_run(Xp)
            pca_in.blocks[rid] = (st, X[:, pidx], nf)
        arrays = _subset({r: b for r, b in tel.blocks.items() if r not in acted}, idx)

        ts = time.perf_counter()
        outcomes, sens = collapse_outcomes(g, tel, events, cfg)
        acc.outcomes.append(outcomes)
        acc.sensitivity.append(sens.filter(~pl.col("run_id").is_in(list(acted))))
        acc.timings["collapse_s"] += time.perf_counter() - ts
        notes_rule = [n for n in outcomes["note"].drop_nulls().unique().to_list() if n]
        acc.group_notes.append({**key, "n_runs": g.height, "n_unperturbed": int(g["unperturbed"].sum()),
                                "features": fs.kept, "block_updates": tel.block, "collapse_rule_note": notes_rule})

        ts = time.perf_counter()
        g_out = g.join(outcomes.select("run_id", "collapsed", "collapse_kind", "collapse_step"), on="run_id"
                       ).filter(pl.col("arm") == "none")
        for row in g_out.iter_rows(named=True):
            if row["run_id"] in tel.blocks:
                st, X, _ = tel.blocks[row["run_id"]]
                acc.kick[row["run_id"]] = _kick_size(st, X, fs.read, row["onset_step"],
                                                     landmark(row["onset_step"], row["duration_steps"],
                                                              bool(row["unperturbed"]), tel.block))
        safe = "_".join(v.replace("/", "-") for v in key.values())
        rows, traces, notes = evaluate_group(g_out, arrays, fs.kept, cfg.early_warning,
                                             progress=lambda m, label=label: say(f"{label}: {m}"),
                                             save_dir=out / "monitors" / safe, block=tel.block)
        acc.coherence.append(coherence_mod.aligned(tel.blocks, fs.read, g_out, domain=key["domain"]))
        evaluated.append((key, g_out, arrays, tel.block))
        acc.ew_runs.append(_with_cluster(rows, label))
        acc.ew_scores.append(traces)
        acc.fold_notes.append({"group": label, "folds": notes})
        acc.timings["early_warning_s"] += time.perf_counter() - ts
    ts = time.perf_counter()
    _leave_one_env_out(evaluated, fs.kept, cfg, say, acc)
    acc.timings["early_warning_s"] += time.perf_counter() - ts


def _leave_one_env_out(evaluated: list[tuple[dict[str, str], pl.DataFrame, dict[str, Any], int]], kept: list[str],
                       cfg: AnalysisConfig, say: Callable[[str], None], acc: _Collector) -> None:
    """Each group's test seeds scored by monitors trained on the other envs' controls (same stochasticity)."""
    for key, g_out, arrays, B in evaluated:
        others = [(k2, g2, a2) for k2, g2, a2, _ in evaluated
                  if k2["env"] != key["env"] and k2["stochasticity"] == key["stochasticity"]]
        if not others:
            continue
        train = [a2[rid][1] for _, g2, a2 in others
                 for rid in g2.filter(pl.col("unperturbed") & ~pl.col("collapsed"))["run_id"].to_list()
                 if rid in a2]
        label = _label(key)
        rows, _, notes = evaluate_group(g_out, arrays, kept, cfg.early_warning,
                                        progress=lambda m, label=label: say(f"{label} (leave-one-env-out): {m}"),
                                        external_train=train, block=B)
        acc.loeo_runs.append(_with_cluster(rows, label))
        acc.loeo_notes.append({"group": label, "trained_on_envs": sorted({k2["env"] for k2, _, _ in others}),
                               "folds": notes})


def analyse_groups(corpus: str | os.PathLike[str], loaded: LoadedCorpus, cfg: AnalysisConfig, out: Path,
                   say: Callable[[str], None], begin: Callable[[str], None] | None = None) -> GroupResults:
    """Stage 2: every (domain, algo), every matched group: features, outcomes, early-warning folds.

    ``begin(name)`` is called as each (domain, algo) starts (a stage of :func:`run_analysis`)."""
    acc = _Collector()
    for key_da, da_runs in group_runs(loaded.runs, ("domain", "algo")):
        if begin is not None:
            begin(f"{key_da['domain']}/{key_da['algo']}: collapse, features and early warning "
                  f"({da_runs.height} runs)")
        _analyse_domain_algo(corpus, key_da, da_runs, loaded.events, cfg, out, say, acc)
    return acc.frozen()


def early_warning_questions(groups: GroupResults, runs: pl.DataFrame, cfg: AnalysisConfig) -> EarlyWarningResult:
    """Stage 4: questions (a) detection and (b) prediction on the held-out folds, and leave-one-env-out."""
    if groups.ew_runs.height:
        ew_summary = _questions(groups.ew_runs, groups.kick, cfg)
    else:
        ew_summary = not_testable("no fold could be evaluated (need >= 3 seeds with unperturbed runs)")
    loeo = leave_one_env_out_status(runs)
    if groups.loeo_runs.height:
        loeo = {**Status(StatusKind.OK).to_json(), **_questions(groups.loeo_runs, groups.kick, cfg),
                "folds": groups.loeo_notes}
    elif Status.from_json(loeo).ok:
        loeo = not_testable("no held-out env had calibration and test runs", folds=groups.loeo_notes)
    return EarlyWarningResult(ew_summary, loeo)


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
    timings["questions_s"] = time.perf_counter() - ts
    begin("survival models")
    ts = time.perf_counter()
    surv = survival_models(full, groups)
    timings["survival_s"] = time.perf_counter() - ts
    begin("regularities")
    reg = measure_regularities(full, groups, surv, cfg)
    dose = _dose_response(full)
    sens = _sensitivity(groups.sensitivity) if groups.sensitivity.height else pl.DataFrame()

    begin("writing tables and summary.json")
    _write_tables(out, full, groups, sens, dose, pca, ew, surv, reg, cfg)
    timings["total_s"] = time.perf_counter() - t0
    summary = {
        "corpus": str(Path(corpus).resolve()),
        "n_runs": loaded.runs.height,
        "data_notes": loaded.data_notes,
        "excluded_runs": {"n": len({b["run_id"] for b in loaded.excluded}), "files": loaded.excluded,
                          "why": "manifest says ok, but a steps or events file is missing or damaged"},
        "groups": groups.group_notes,
        "features": groups.feature_sets,
        "config": {"collapse": cfg.collapse.to_dict(), "features": vars(cfg.features),
                   "early_warning": cfg.early_warning.to_dict(), "n_null": cfg.n_null, "early_frac": cfg.early_frac},
        "collapse": _collapse_summary(full, dose, sens),
        "pca": pca.summary,
        "coherence_before_collapse": reg.coherence_before_collapse,
        "early_warning": {**ew.summary, "folds": groups.fold_notes, "leave_one_env_out": ew.leave_one_env_out,
                          "feature_sets": groups.feature_sets,
                          "leave_one_perturbation_kind_out": "= the per-kind subsets: detectors are fitted and "
                          "calibrated on unperturbed runs only"},
        "survival": {"logrank": surv.logrank, "cox": surv.cox,
                     "km_groups": surv.km["group"].unique(maintain_order=True).to_list() if surv.km.height else []},
        "regularities": {"dissociation": reg.dissociation, "stochasticity_buffer": reg.stochasticity_buffer,
                         "precedence": reg.precedence},
        "intervention": intervention,
        "timings_s": timings,
        "environment": {"python": platform.python_version(), "polars": pl.__version__, "numpy": np.__version__},
    }
    summary["figures"] = figure_index(summary, full, groups.ew_runs, groups.coherence)
    summary["headline"] = _headline(summary)
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
    write_result(iqm_table(full, cfg.n_boot, cfg.seed), out, "final_performance_iqm")  # rliable-style
    write_result(performance_profiles(full, n_boot=cfg.n_boot, seed=cfg.seed), out, "performance_profiles")


def _collapse_summary(full: pl.DataFrame, dose: pl.DataFrame, sens: pl.DataFrame) -> dict[str, Any]:
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


def _questions(ew: pl.DataFrame, kick: dict[str, np.ndarray], cfg: AnalysisConfig) -> dict[str, Any]:
    """Questions (a) and (b) for every detector, the references, and the report's per-detector view."""
    ecfg = cfg.early_warning
    rows = ew.with_columns(pl.col("cluster").alias("seed")) if "cluster" in ew.columns else ew
    det: dict[str, Any] = {}
    pred: dict[str, Any] = {}
    refs_out: dict[str, Any] = {}
    cache: dict[tuple[str, ...], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}
    for name in rows["detector"].unique(maintain_order=True).to_list():
        d = rows.filter(pl.col("detector") == name).sort("run_id")
        det[name] = questions.detection(d, ecfg.fpr, ecfg.n_boot, ecfg.seed)
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
    return {"detection": det, "prediction": pred, "prediction_references": refs_out, "by_detector": by_detector,
            "questions": {"a": questions.QUESTION_A, "b": questions.QUESTION_B}}


#: The report's figures: which question each one answers (the report draws them; analysis states what they mean).
FIGURE_QUESTIONS = {
    "F1": ("f01_onset_telemetry", "descriptive: telemetry around perturbation onset (no test)"),
    "F2": ("f02_dose_response", "dose-response: collapse probability per magnitude and kind"),
    "F3": ("f03_kaplan_meier", "survival: time to collapse per configuration vs matched controls (log-rank)"),
    "F4": ("f04_cox_forest", "survival: Cox hazard ratios on perturbed runs (dose within kind)"),
    "F5": ("f05_pca_scree", "low dimension: PCA of block features vs circular-shift surrogates"),
    "F6": ("f06_pca_trajectories", "descriptive: block trajectories in PC1-PC2"),
    "F7": ("f07_msd_aligned", "(a) detection: MSD aligned on the offline collapse date and lead times"),
    "F8": ("f08_early_warning", "(a) detection: AUROC and FPR on held-out controls; (b) is in summary.json "
           "early_warning.prediction"),
    "F9": ("f09_dissociation", "regularity 1: final performance vs stability, per domain and algorithm"),
    "F10": ("f10_stochasticity", "regularity 2: collapse probability and hazard per stochasticity level"),
    "F11": ("f11_coherence", "coherence precedence: collapsed vs perturbed-not-collapsed runs of the same "
            "configuration, aligned on onset, per domain and estimator"),
}


def figure_index(summary: dict[str, Any], full: pl.DataFrame, ew: pl.DataFrame, coh: pl.DataFrame
                 ) -> dict[str, Any]:
    """For every report figure: its file stem, the question it answers and the number of runs behind it."""
    n_all = full.height
    n_test = ew["run_id"].n_unique() if ew.height else 0
    n_pert = int((~full["unperturbed"]).sum())
    n_pca = sum(e.get("all_runs", {}).get("n_runs", 0) for e in summary["pca"].values()
                if isinstance(e, dict) and isinstance(e.get("all_runs"), dict))
    n_runs = {"F1": n_all, "F2": n_all, "F3": n_all, "F4": summary["survival"]["cox"].get("n", 0), "F5": n_pca,
              "F6": n_pca, "F7": n_test, "F8": n_test, "F9": n_all, "F10": n_pert,
              "F11": coh["run_id"].n_unique() if coh.height else 0}
    return {k: {"file": f, "question": q, "n_runs": int(n_runs[k])} for k, (f, q) in FIGURE_QUESTIONS.items()}


def _card_section(corpus: str | os.PathLike[str], rows: list[dict[str, Any]], cfg: AnalysisConfig) -> None:
    """Complete the corpus dataset card with the collapse rule (:data:`analysis.collapse.RULE`) and the outcomes."""
    params = ", ".join(f"{k} = {v}" for k, v in cfg.collapse.to_dict().items())
    section = ["## Collapse rule (from `stabilitybench analyze`)", "", "Parameters are those of "
               "`stabilitybench.analysis.collapse.CollapseConfig`.", "", COLLAPSE_RULE.rstrip(), "",
               f"Parameters: {params}.", "",
               "### Outcomes", "", *summary_lines(rows)]
    write_card(corpus, analysis_section="\n".join(section))


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
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
            sub: {k: entry[sub][k] for k in ("n_components_90", "null_n_components_90", "participation_ratio",
                                              "null_participation_ratio")}
            for sub in ("all_runs", "unperturbed_runs") if "n_components_90" in entry.get(sub, {})}
        head["pca"][name]["n_features"] = entry["n_features"]
    det = summary["early_warning"].get("detection", {})
    pred = summary["early_warning"].get("prediction", {})
    head["detection"] = {k: {m: v.get(m) for m in ("n_collapsed", "n_controls", "auroc", "frac_collapses_preceded",
                                                  "median_lead_updates", "fpr_held_out_controls", "nonfinite")}
                         for k, v in det.items()}
    head["prediction"] = {k: {m: v.get(m) for m in ("n_pos", "n_neg", "n_collapsed_before_landmark", "auroc",
                                                   "auroc_stratified", "delta_auroc")} for k, v in pred.items()}
    head["prediction_references"] = summary["early_warning"].get("prediction_references", {})
    cox_res = summary["survival"]["cox"]
    head["cox"] = {**Status.from_json(cox_res).to_json(), "n": cox_res.get("n"), "n_events": cox_res.get("n_events"),
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
    if Status.from_json(cox_res).kind is StatusKind.SEPARATED:
        caveats.append("Cox PH: monotone likelihood (a covariate separates collapsing from non-collapsing runs); "
                       "only the ridge-penalised estimates (penalty stated) are given")
    head["caveats"] = caveats
    return head


def _sensitivity(frame: pl.DataFrame) -> pl.DataFrame:
    """Collapsed counts per configuration under each (drop, spread_k) of the rule."""
    return (with_config_label(frame).group_by(["config", "drop", "spread_k"])
            .agg(pl.len().alias("n_runs"), pl.col("collapsed").sum().alias("n_collapsed"))
            .sort(["drop", "spread_k", "config"]))


def _dose_response(full: pl.DataFrame) -> pl.DataFrame:
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
