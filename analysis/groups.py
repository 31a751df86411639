"""Stages 1 and 2 of :func:`stabilitybench.analysis.pipeline.run_analysis`: load the corpus, then per matched group.

1. :func:`load_corpus` -> :class:`LoadedCorpus`: finished runs (with ``unperturbed`` and ``arm`` columns) and events;
2. :func:`analyse_groups` -> :class:`GroupResults`: per (domain, algo) the telemetry is read run by run,
   redundant features are removed (judged on the controls), and per matched group
   (:data:`~stabilitybench.data_schema.keys.GROUP_KEYS`) the collapse outcomes and the early-warning folds are
   computed. Runs that acted on a live monitor's alarm get an outcome and nothing else.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from stabilitybench.analysis import coherence as coherence_mod
from stabilitybench.analysis.collapse import RunCurves, collapse_group, nonfinite_steps
from stabilitybench.analysis.config import AnalysisConfig
from stabilitybench.analysis.data import (
    COLLAPSE_COLUMNS,
    NONFINITE_COLUMNS,
    block_size,
    collapse_curves,
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
    evaluate_group,
    evaluate_transfer,
    landmark,
    named_feature_sets,
)
from stabilitybench.analysis.pca import PCAAccumulator
from stabilitybench.analysis.pca_summary import PCAInput
from stabilitybench.analysis.regularities import drawdown_depth
from stabilitybench.data_schema.keys import onset_step, resolve_onset


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
    o = resolve_onset(onset)
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

    ``block``: block length in updates; ``performance``: run -> its
    :class:`~stabilitybench.analysis.collapse.RunCurves` (steps, performance and, where recorded,
    episode_return / eval_return, each ``(T,)``): the collapse rule's input;
    ``first_nonfinite``: run -> first update with a non-finite feature; ``blocks``: run ->
    ``(block steps (n,), block features (n, F), non-finite flags (n,))`` over all read features.
    """

    block: int
    performance: dict[str, RunCurves]
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
    ``ew_scores`` (test run x detector [x block]), ``loeo_runs`` / ``loeo_scores`` (leave-one-env-out: per target
    run x detector x calibration, :func:`~stabilitybench.analysis.early_warning.evaluate_transfer`), ``coherence``
    (aligned on onset). Per run: ``early_coherence`` and ``kick`` (3 kick sizes). Question (d), leave-one-kind-out:
    ``loko_checks`` (per (domain, algo) and kind: does anything fitted change without the kind,
    :func:`leave_one_kind_out_check`) and ``loko_runs`` / ``loko_scores`` (the refitted folds of a kind whose
    feature set changes without it; empty when every kind's monitors are the main evaluation's).
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
    loeo_scores: pl.DataFrame = field(default_factory=pl.DataFrame)
    loko_checks: list[dict[str, Any]] = field(default_factory=list)
    loko_runs: pl.DataFrame = field(default_factory=pl.DataFrame)
    loko_scores: pl.DataFrame = field(default_factory=pl.DataFrame)


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
    loeo_scores: list[pl.DataFrame] = field(default_factory=list)
    loko_checks: list[dict[str, Any]] = field(default_factory=list)
    loko_runs: list[pl.DataFrame] = field(default_factory=list)
    loko_scores: list[pl.DataFrame] = field(default_factory=list)

    def frozen(self) -> GroupResults:
        def cat(parts: list[pl.DataFrame]) -> pl.DataFrame:
            return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()

        return GroupResults(cat(self.outcomes), cat(self.sensitivity), cat(self.ew_runs), cat(self.ew_scores),
                            cat(self.loeo_runs), cat(self.coherence), self.fold_notes, self.loeo_notes,
                            self.group_notes, self.feature_sets, self.pca_inputs, self.early_coherence, self.kick,
                            self.timings, loeo_scores=cat(self.loeo_scores), loko_checks=self.loko_checks,
                            loko_runs=cat(self.loko_runs), loko_scores=cat(self.loko_scores))


def _read_group(corpus: str | os.PathLike[str], g: pl.DataFrame, feats: list[str], cfg: AnalysisConfig,
                early_coh: dict[str, float]) -> GroupTelemetry:
    """Read one matched group run by run: performance, non-finite rows and block features (``feats``)."""
    B = block_size(_group_updates(g), cfg.features)
    perf: dict[str, RunCurves] = {}
    nf_rows: dict[str, int] = {}
    arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    cols = list(dict.fromkeys([*feats, *NONFINITE_COLUMNS, *COLLAPSE_COLUMNS, "grad_coherence"]))
    for row, steps in iter_run_steps(corpus, g, cols):
        rid = row["run_id"]
        fr = feature_frame(steps, feats)
        bad = fr.filter(pl.col("nonfinite"))["step"]
        if bad.len():
            nf_rows[rid] = int(bad.min())
        perf[rid] = collapse_curves(steps)  # performance decides; episode/eval returns date (collapse rule item 5)
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
    depth = [drawdown_depth(c.steps, c.performance, onset_step(row), cfg.collapse.smooth_frac)
             if (c := tel.performance.get(row["run_id"])) is not None else None for row in g.iter_rows(named=True)]
    outcomes = outcomes.join(pl.DataFrame({"run_id": g["run_id"].to_list(), "drawdown_depth": depth},
                                          schema={"run_id": pl.String, "drawdown_depth": pl.Float64}),
                             on="run_id", how="left")  # regularity 1's rule-free stability measure
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
    acc.feature_sets[f"{key_da['domain']}/{key_da['algo']}"] = {
        **fs.summary(), "named_sets": named_feature_sets(fs.kept, key_da["domain"])}
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
        # PCA on the group's runs after removing its control mean trajectory (shared training-time trends)
        pca_in.add_group({rid: (st, X[:, pidx], nf) for rid, (st, X, nf) in tel.blocks.items() if rid not in acted},
                         ctrl_ids)
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
        # the lag-free date, and the smoothed date and the date's source for old-vs-new leads (collapse rule item 5)
        g_out = g.join(outcomes.select("run_id", "collapsed", "collapse_kind", "collapse_step",
                                       "collapse_step_smoothed", "collapse_date_source"), on="run_id"
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
    _leave_one_kind_out(corpus, key_da, da_runs, read, fs, evaluated, cfg, say, acc)
    acc.timings["early_warning_s"] += time.perf_counter() - ts


def _leave_one_env_out(evaluated: list[tuple[dict[str, str], pl.DataFrame, dict[str, Any], int]], kept: list[str],
                       cfg: AnalysisConfig, say: Callable[[str], None], acc: _Collector) -> None:
    """Question (d), leave-one-env-out: each group's runs scored by monitors fitted on the controls of the other
    envs of its (domain, algo, stochasticity), calibrated on those envs' controls and, apart, on its own
    (:func:`~stabilitybench.analysis.early_warning.evaluate_transfer`)."""
    for key, g_out, arrays, B in evaluated:
        same = [(k2, g2, a2, b2) for k2, g2, a2, b2 in evaluated
                if k2["env"] != key["env"] and k2["stochasticity"] == key["stochasticity"]]
        others = [(k2["env"], g2, a2) for k2, g2, a2, _ in same]
        if not others:
            continue
        label = _label(key)
        rows, traces, notes = evaluate_transfer(
            g_out, arrays, others, kept, cfg.early_warning, block=B,
            progress=lambda m, label=label: say(f"{label} (leave-one-env-out): {m}"))
        acc.loeo_runs.append(_with_cluster(rows, label))
        acc.loeo_scores.append(traces)
        acc.loeo_notes.append({"group": label, "trained_on_envs": sorted(env for env, _, _ in others),
                               "block_updates": B, "source_block_updates": {k2["env"]: b2 for k2, _, _, b2 in same},
                               "folds": notes})


def _group_updates(g: pl.DataFrame) -> int:
    """The updates a matched group's block length is set from (as :func:`_read_group` sets it): its longest run."""
    return int(g["n_updates"].max() or g["planned_updates"].max() or 1)


def leave_one_kind_out_check(kind: str, read_without: list[str], fs: FeatureSet, runs: pl.DataFrame,
                             read: list[tuple[Any, pl.DataFrame, GroupTelemetry]], cfg: AnalysisConfig
                             ) -> dict[str, Any]:
    """Does anything the main evaluation fitted for one (domain, algo) change when kind ``kind``'s runs are left out?

    The detectors are fitted and calibrated on controls only, and the redundant columns are judged on the controls'
    blocks (:func:`select_features`), but two choices before them read every run: the candidate columns' coverage
    and non-constant screen (:func:`~stabilitybench.analysis.data.feature_columns`), whose result without the kind is
    ``read_without`` (the columns that would be read), and each group's block length (from its longest run). Returns
    ``kind``, ``features_same`` / ``blocks_same``, ``kept`` (the monitors' columns without the kind) and ``monitors``:
    ``reused`` (nothing changes: the main evaluation's fits are the held-out fits), ``refit`` (the kept columns
    change: the kind's folds are refitted on ``kept``) or ``not_testable`` (a block length changes, or a column
    would be read that was not: the telemetry would have to be read again), with ``reason``.
    """
    blocks = {}
    for key, g, tel in read:
        g_wo = g.filter(pl.col("perturbation") != kind)
        if g_wo.height:
            blocks[_label(key)] = (tel.block, block_size(_group_updates(g_wo), cfg.features))
    blocks_same = all(a == b for a, b in blocks.values())
    out: dict[str, Any] = {"kind": kind, "features_same": read_without == fs.read, "blocks_same": blocks_same,
                           "kept": fs.kept}
    if not blocks_same:
        changed = {g: {"with": a, "without": b} for g, (a, b) in blocks.items() if a != b}
        return {**out, "monitors": "not_testable", "reason": f"the block length changes without {kind}: {changed}"}
    if read_without == fs.read:
        return {**out, "monitors": "reused", "reason": "nothing fitted reads the kind's runs: the main evaluation's "
                "monitors and thresholds are the held-out ones"}
    missing = [c for c in read_without if c not in fs.read]
    if missing:
        return {**out, "monitors": "not_testable",
                "reason": f"without {kind} the column(s) {', '.join(missing)} pass the screen but were not read"}
    idx = [fs.read.index(c) for c in read_without]
    sub = [(key, g, replace(tel, blocks=_subset(tel.blocks, idx))) for key, g, tel in read]
    kept = select_features(runs, sub, read_without).kept
    if kept == fs.kept:
        return {**out, "monitors": "reused", "reason": f"the screened columns change without {kind} "
                f"({sorted(set(fs.read) ^ set(read_without))}) but the monitors' columns do not"}
    return {**out, "kept": kept, "monitors": "refit",
            "reason": f"the monitors' columns change without {kind}: {kept} instead of {fs.kept}"}


def _leave_one_kind_out(corpus: str | os.PathLike[str], key_da: dict[str, str], da_runs: pl.DataFrame,
                        read: list[tuple[Any, pl.DataFrame, GroupTelemetry]], fs: FeatureSet,
                        evaluated: list[tuple[dict[str, str], pl.DataFrame, dict[str, Any], int]],
                        cfg: AnalysisConfig, say: Callable[[str], None], acc: _Collector) -> None:
    """Question (d), leave-one-kind-out, for one (domain, algo): :func:`leave_one_kind_out_check` per perturbation
    kind (one feature screen of the corpus per kind), and a refit of that kind's folds (its runs and the controls)
    where the monitors' columns change without it."""
    kinds = sorted(k for k in da_runs.filter(~pl.col("unperturbed") & (pl.col("arm") == "none"))["perturbation"]
                   .unique().to_list() if k is not None)
    acted = set(da_runs.filter(pl.col("arm") != "none")["run_id"].to_list())
    for kind in kinds:
        runs_wo = da_runs.filter(pl.col("perturbation") != kind)
        cand = feature_columns(corpus, runs_wo, cfg.features)
        check = leave_one_kind_out_check(kind, [*cand, *(["lr"] if "lr" not in cand else [])], fs, da_runs, read,
                                         cfg)
        acc.loko_checks.append({**key_da, **check})
        if check["monitors"] != "refit":
            continue
        say(f"{key_da['domain']}/{key_da['algo']} without {kind}: refitting ({check['reason']})")
        idx = [fs.read.index(c) for c in check["kept"]]
        tels = {_label(key): tel for key, _, tel in read}
        for key, g_out, _, B in evaluated:
            tel = tels[_label(key)]
            g_k = g_out.filter(pl.col("unperturbed") | (pl.col("perturbation") == kind))
            if not g_k.filter(pl.col("perturbation") == kind).height:
                continue
            arrays = _subset({r: b for r, b in tel.blocks.items() if r not in acted}, idx)
            rows, traces, _ = evaluate_group(g_k, arrays, check["kept"], cfg.early_warning, block=B)
            acc.loko_runs.append(_with_cluster(rows, _label(key)).with_columns(pl.lit(kind).alias("held_out_kind")))
            acc.loko_scores.append(traces.with_columns(pl.lit(kind).alias("held_out_kind")))


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

