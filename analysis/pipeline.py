"""``run_analysis``: the corpus in, ``results/`` out (Parquet tables + ``summary.json``).

Stages, in order: load runs and events -> per matched group (domain, algo, env,
stochasticity): telemetry features, collapse outcomes, block features, early-warning
folds -> PCA per (domain, algo) and pooled -> survival -> regularities -> write.

Every headline number in ``summary.json`` is ``{"value", "n", "ci_low", "ci_high", ...}``;
an analysis the data cannot support is ``{"status": "not testable: <why>"}``.
"""

from __future__ import annotations

import json
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

from analysis import coherence as coherence_mod
from analysis import pca as pca_mod
from analysis import questions
from analysis.aggregates import iqm_table, performance_profiles
from analysis.collapse import CollapseConfig, collapse_group, nonfinite_steps
from analysis.data import (
    NONFINITE_COLUMNS,
    FeatureConfig,
    block_size,
    feature_columns,
    feature_frame,
    group_runs,
    is_unperturbed,
    iter_run_steps,
    load_events,
    load_runs,
    redundant_columns,
    run_arrays,
    to_blocks,
)
from analysis.early_warning import (
    ECHO_COLUMNS,
    EarlyWarningConfig,
    evaluate_group,
    landmark,
    leave_one_env_out_status,
)
from analysis.pca import PCAAccumulator
from analysis.regularities import dissociation, precedence, stochasticity_buffer
from analysis.stats import clopper_pearson, not_testable, number
from analysis.survival import cox, group_label, km_table, logrank
from data_schema import RUNS, RUNS_SCHEMA, write_table
from data_schema.card import summary_lines, write_card
from data_schema.io import atomic_path

SUMMARY = "summary.json"


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


def _write(frame: pl.DataFrame, path: Path) -> None:
    """Atomic zstd Parquet write of a results table (dot-prefixed temp file, then ``os.replace``)."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, compression="zstd")


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


def _read_group(corpus: str | os.PathLike[str], g: pl.DataFrame, feats: list[str], cfg: AnalysisConfig,
                early_coh: dict[str, float]) -> dict[str, Any]:
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
    return {"B": B, "perf": perf, "nf_rows": nf_rows, "arrays": arrays}


def _subset(arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], idx: list[int]
            ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return {r: (st, X[:, idx], nf) for r, (st, X, nf) in arrays.items()}


def run_analysis(
    corpus: str | os.PathLike[str],
    out: str | os.PathLike[str],
    cfg: AnalysisConfig | None = None,
    update_corpus: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Analyse ``corpus`` and write ``out/`` (tables + ``summary.json``); returns the summary dict."""
    cfg = cfg or AnalysisConfig()
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    say("loading runs")
    data_notes: list[str] = []
    excluded: list[dict[str, str]] = []
    runs = load_runs(corpus, data_notes, excluded)
    runs = runs.with_columns(is_unperturbed(runs).alias("unperturbed"))
    events = load_events(corpus)

    outcome_parts, ew_rows, ew_traces, fold_notes, group_notes, coh_parts = [], [], [], [], [], []
    sens_parts: list[pl.DataFrame] = []
    loeo_rows: list[pl.DataFrame] = []
    loeo_notes: list[dict[str, Any]] = []
    pca_acc: dict[tuple[str, str], dict[str, Any]] = {}
    feature_sets: dict[str, Any] = {}
    early_coh: dict[str, float] = {}
    kick: dict[str, np.ndarray] = {}
    t_load = t_collapse = t_ew = 0.0
    for key_da, da_runs in group_runs(runs, ("domain", "algo")):
        da_label = f"{key_da['domain']}/{key_da['algo']}"
        ts = time.perf_counter()
        features = feature_columns(corpus, da_runs, cfg.features)
        feats_all = [*features, *(["lr"] if "lr" not in features else [])]  # lr only for the +echo monitors
        read = []
        for key, g in group_runs(da_runs):
            say(f"{'/'.join(key.values())}: reading telemetry run by run ({g.height} runs)")
            read.append((key, g, _read_group(corpus, g, feats_all, cfg, early_coh)))
        t_load += time.perf_counter() - ts
        # collinear / algebraically redundant columns, judged on the unperturbed runs' blocks (label-free)
        ctrl_ids = set(da_runs.filter(pl.col("unperturbed"))["run_id"].to_list())
        stack = [X for _, _, r in read for rid, (_, X, _) in r["arrays"].items() if rid in ctrl_ids] or \
            [X for _, _, r in read for _, X, _ in r["arrays"].values()]
        kept, removed = redundant_columns(np.vstack(stack) if stack else np.zeros((0, len(feats_all))), feats_all,
                                          protect=("lr",)) if feats_all else ([], [])
        pca_feats = [c for c in kept if c != "lr"]
        feature_sets[da_label] = {"features": kept, "removed_redundant": removed,
                                  "echo_columns": [c for c in ECHO_COLUMNS if c in kept],
                                  "monitor_features_without_echo": [c for c in kept if c not in ECHO_COLUMNS],
                                  "pca_features": pca_feats}
        idx = [feats_all.index(c) for c in kept]
        pidx = [feats_all.index(c) for c in pca_feats]
        acc = {"features": pca_feats, "blocks": {},
               "all_runs": PCAAccumulator(len(pca_feats), cfg.n_null, cfg.seed, cfg.pca_in_memory_rows),
               "unperturbed_runs": PCAAccumulator(len(pca_feats), cfg.n_null, cfg.seed + 1, cfg.pca_in_memory_rows)}
        pca_acc[(key_da["domain"], key_da["algo"])] = acc
        for key, g, r in read:
            label = "/".join(key.values())
            B, perf, arrays_all = r["B"], r["perf"], r["arrays"]
            for rid, (st, X, _) in arrays_all.items():
                Xp = X[:, pidx]
                Xp = Xp[np.isfinite(Xp).all(axis=1)]
                acc["all_runs"].add_run(Xp)
                if rid in ctrl_ids:
                    acc["unperturbed_runs"].add_run(Xp)
                acc["blocks"][rid] = (st, X[:, pidx], arrays_all[rid][2])
            arrays = _subset(arrays_all, idx)

            ts = time.perf_counter()
            nonfinite = nonfinite_steps(events, g, r["nf_rows"])
            outcomes = collapse_group(g, perf, nonfinite, g["unperturbed"].to_numpy(), cfg.collapse)
            outcome_parts.append(outcomes)
            for drop in (0.25, 0.5, 0.75, 1.0):  # sensitivity of the outcome to the rule's two margins
                for k in (1.0, 2.0, 3.0):
                    alt = collapse_group(g, perf, nonfinite, g["unperturbed"].to_numpy(),
                                         replace(cfg.collapse, drop=drop, spread_k=k))
                    sens_parts.append(g.select("run_id", "perturbation", "magnitude", "duration_steps")
                                      .join(alt.select("run_id", "collapsed"), on="run_id")
                                      .with_columns(pl.lit(drop).alias("drop"), pl.lit(k).alias("spread_k")))
            t_collapse += time.perf_counter() - ts
            notes_rule = [n for n in outcomes["note"].drop_nulls().unique().to_list() if n]
            group_notes.append({**key, "n_runs": g.height, "n_unperturbed": int(g["unperturbed"].sum()),
                                "features": kept, "block_updates": B, "collapse_rule_note": notes_rule})

            ts = time.perf_counter()
            g_out = g.join(outcomes.select("run_id", "collapsed", "collapse_kind", "collapse_step"), on="run_id")
            for row in g_out.iter_rows(named=True):
                if row["run_id"] in arrays_all:
                    st, X, _ = arrays_all[row["run_id"]]
                    kick[row["run_id"]] = _kick_size(st, X, feats_all, row["onset_step"],
                                                     landmark(row["onset_step"], row["duration_steps"],
                                                              bool(row["unperturbed"]), B))
            safe = "_".join(v.replace("/", "-") for v in key.values())
            rows, traces, notes = evaluate_group(g_out, arrays, kept, cfg.early_warning,
                                                 progress=lambda m, label=label: say(f"{label}: {m}"),
                                                 save_dir=out / "monitors" / safe, block=B)
            coh_parts.append(coherence_mod.aligned(arrays_all, feats_all, g_out, domain=key["domain"]))
            acc.setdefault("groups", []).append((key, g_out, arrays, B))
            ew_rows.append(rows.with_columns(pl.lit(label).alias("group"),
                                             pl.concat_str([pl.lit(label + "|seed="), pl.col("seed").cast(pl.String)])
                                             .alias("cluster")))
            ew_traces.append(traces)
            fold_notes.append({"group": label, "folds": notes})
            t_ew += time.perf_counter() - ts
        # leave-one-env-out: train on the other envs' controls (same domain, algo, stochasticity)
        ts = time.perf_counter()
        for key, g_out, arrays, B in acc.get("groups", []):
            others = [(k2, g2, a2) for k2, g2, a2, _ in acc["groups"]
                      if k2["env"] != key["env"] and k2["stochasticity"] == key["stochasticity"]]
            if not others:
                continue
            train = [a2[rid][1] for _, g2, a2 in others
                     for rid in g2.filter(pl.col("unperturbed") & ~pl.col("collapsed"))["run_id"].to_list()
                     if rid in a2]
            label = "/".join(key.values())
            rows, _, notes = evaluate_group(g_out, arrays, kept, cfg.early_warning,
                                            progress=lambda m, label=label: say(f"{label} (leave-one-env-out): {m}"),
                                            external_train=train, block=B)
            loeo_rows.append(rows.with_columns(pl.lit(label).alias("group"),
                                               pl.concat_str([pl.lit(label + "|seed="), pl.col("seed").cast(pl.String)])
                                               .alias("cluster")))
            loeo_notes.append({"group": label, "trained_on_envs": sorted({k2["env"] for k2, _, _ in others}),
                               "folds": notes})
        t_ew += time.perf_counter() - ts
    timings.update(load_s=t_load, collapse_s=t_collapse, early_warning_s=t_ew)

    outcomes = pl.concat(outcome_parts, how="diagonal_relaxed")
    ew = pl.concat(ew_rows, how="diagonal_relaxed") if ew_rows else pl.DataFrame()
    traces = pl.concat(ew_traces, how="diagonal_relaxed") if ew_traces else pl.DataFrame()

    # ---------------------------------------------------------------- runs table
    full = runs.join(outcomes, on="run_id", how="left")
    runs_table = pa.Table.from_pylist(
        full.select([f.name for f in RUNS_SCHEMA]).to_dicts(), schema=RUNS_SCHEMA
    )
    write_table(runs_table, out / RUNS, RUNS_SCHEMA)
    if update_corpus:
        write_table(runs_table, Path(corpus) / RUNS, RUNS_SCHEMA)
        _card_section(corpus, full.to_dicts(), cfg)
    _write(outcomes, out / "collapse_details.parquet")
    sens = _sensitivity(pl.concat(sens_parts, how="diagonal_relaxed")) if sens_parts else pl.DataFrame()
    if sens.height:
        _write(sens, out / "collapse_sensitivity.parquet")

    # ---------------------------------------------------------------- PCA
    say("PCA and circular-shift null")
    ts = time.perf_counter()
    pca_summary, pca_evr, pca_traj = _pca_all(pca_acc, cfg)
    timings["pca_s"] = time.perf_counter() - ts
    _write(pca_evr, out / "pca_explained.parquet")
    _write(pca_traj, out / "pca_trajectories.parquet")

    # ---------------------------------------------------------------- early warning: the two questions
    say("detection and prediction questions")
    ts = time.perf_counter()
    ew_summary: dict[str, Any] = {}
    if ew.height:
        ew_summary = _questions(ew, kick, cfg)
        _write(ew, out / "early_warning_runs.parquet")
        _write(traces, out / "early_warning_scores.parquet")
        _write(pl.DataFrame([_flat({"detector": k, **v}) for k, v in ew_summary["detection"].items()]),
               out / "early_warning_metrics.parquet")
    else:
        ew_summary = not_testable("no fold could be evaluated (need >= 3 seeds with unperturbed runs)")
    timings["questions_s"] = time.perf_counter() - ts
    loeo = pl.concat(loeo_rows, how="diagonal_relaxed") if loeo_rows else pl.DataFrame()
    loeo_summary = leave_one_env_out_status(runs)
    if loeo.height:
        loeo_summary = {"status": "ok", **_questions(loeo, kick, cfg), "folds": loeo_notes}
        _write(loeo, out / "early_warning_loeo_runs.parquet")
    elif loeo_summary.get("status") == "ok":
        loeo_summary = not_testable("no held-out env had calibration and test runs", folds=loeo_notes)

    # ---------------------------------------------------------------- survival
    say("survival models")
    ts = time.perf_counter()
    surv_runs = full
    if ew.height:
        k = ew.filter(pl.col("detector") == "kalman")
        surv_runs = surv_runs.join(
            k.select("run_id", pl.col("early_score").alias("early_msd"), pl.col("window_score").alias("max_msd")),
            on="run_id", how="left")
    coh = pl.DataFrame({"run_id": list(early_coh), "early_coherence": list(early_coh.values())},
                       schema={"run_id": pl.String, "early_coherence": pl.Float64})
    surv_runs = surv_runs.join(coh, on="run_id", how="left")
    km = km_table(full)
    lr = logrank(full)
    cox_res = cox(surv_runs)
    timings["survival_s"] = time.perf_counter() - ts
    if km.height:
        _write(km, out / "km.parquet")
    _write(pl.DataFrame(lr), out / "logrank.parquet")
    if cox_res.get("coefficients"):
        _write(pl.DataFrame([_flat(c) for c in cox_res["coefficients"]]), out / "cox.parquet")

    # ---------------------------------------------------------------- regularities
    say("regularities")
    diss = dissociation(surv_runs, cfg.n_boot, cfg.seed)
    buf = stochasticity_buffer(full, cox_res)
    prec = precedence(ew) if ew.height else [not_testable("no early-warning evaluation")]
    _write(pl.DataFrame([_flat(x) for x in diss]), out / "dissociation.parquet")

    coh_table = pl.concat(coh_parts, how="diagonal_relaxed") if coh_parts else pl.DataFrame()
    if coh_table.height:
        _write(coh_table, out / "coherence_aligned.parquet")
    coh_summary = coherence_mod.summarise(coh_table, cfg.n_boot, cfg.seed) if coh_table.height else not_testable(
        "no configuration with both a collapsed and a non-collapsed perturbed run that has coherence telemetry")

    # ---------------------------------------------------------------- dose-response
    dose = _dose_response(full)
    _write(dose, out / "dose_response.parquet")
    _write(iqm_table(full, cfg.n_boot, cfg.seed), out / "final_performance_iqm.parquet")  # rliable-style
    _write(performance_profiles(full, n_boot=cfg.n_boot, seed=cfg.seed), out / "performance_profiles.parquet")

    held = full.filter(pl.col("unperturbed") & pl.col("rule_fold").is_not_null())
    kf = int(held["collapsed"].sum()) if held.height else 0
    kt = int(held["transient"].sum()) if held.height else 0
    timings["total_s"] = time.perf_counter() - t0
    summary = {
        "corpus": str(Path(corpus).resolve()),
        "n_runs": runs.height,
        "data_notes": data_notes,
        "excluded_runs": {"n": len({b["run_id"] for b in excluded}), "files": excluded,
                          "why": "manifest says ok, but a steps or events file is missing or damaged"},
        "groups": group_notes,
        "features": feature_sets,
        "config": {"collapse": cfg.collapse.to_dict(), "features": vars(cfg.features),
                   "early_warning": cfg.early_warning.to_dict(), "n_null": cfg.n_null, "early_frac": cfg.early_frac},
        "collapse": {
            "dose_response": dose.to_dicts(),
            "sensitivity": sens.to_dicts() if sens.height else [],
            "rule_false_collapse_rate_unperturbed": number(
                kf / held.height if held.height else None, held.height, clopper_pearson(kf, held.height),
                n_calibration=int(held["n_controls"].min()) if held.height else 0, n_test=held.height,
                note="held-out controls, each judged against the envelope of the other control seeds (cross-fitted)"),
            "transient_rate_unperturbed": number(kt / held.height if held.height else None, held.height,
                                                 clopper_pearson(kt, held.height)),
            "n_transient_perturbed": int(full.filter(~pl.col("unperturbed"))["transient"].sum()),
            "collapse_kinds": {k: int(v) for k, v in full["collapse_kind"].value_counts().iter_rows()
                               if k is not None},
        },
        "pca": pca_summary,
        "coherence_before_collapse": coh_summary,
        "early_warning": {**ew_summary, "folds": fold_notes, "leave_one_env_out": loeo_summary,
                          "feature_sets": feature_sets,
                          "leave_one_perturbation_kind_out": "= the per-kind subsets: detectors are fitted and "
                          "calibrated on unperturbed runs only"},
        "survival": {"logrank": lr, "cox": cox_res,
                     "km_groups": km["group"].unique(maintain_order=True).to_list() if km.height else []},
        "regularities": {"dissociation": diss, "stochasticity_buffer": buf, "precedence": prec},
        "timings_s": timings,
        "environment": {"python": platform.python_version(), "polars": pl.__version__, "numpy": np.__version__},
    }
    summary["figures"] = figure_index(summary, full, ew, coh_table)
    summary["headline"] = _headline(summary, cfg)
    summary = _clean(summary)
    with atomic_path(out / SUMMARY) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=_json_default, allow_nan=False))
    return summary


def _questions(ew: pl.DataFrame, kick: dict[str, np.ndarray], cfg: AnalysisConfig) -> dict[str, Any]:
    """Questions (a) and (b) for every detector, the references, and the report's per-detector view."""
    ecfg = cfg.early_warning
    rows = ew.with_columns(pl.col("cluster").alias("seed")) if "cluster" in ew.columns else ew
    det: dict[str, Any] = {}
    pred: dict[str, Any] = {}
    refs_out: dict[str, Any] = {}
    cache: dict[tuple[str, ...], dict[str, np.ndarray]] = {}
    for name in rows["detector"].unique(maintain_order=True).to_list():
        d = rows.filter(pl.col("detector") == name).sort("run_id")
        det[name] = questions.detection(d, ecfg.fpr, ecfg.n_boot, ecfg.seed)
        pset, n_early = questions.prediction_set(d)
        ids = tuple(pset["run_id"].to_list())
        if ids not in cache:
            cache[ids] = questions.reference_scores(pset, kick)
        refs = cache[ids]
        pred[name] = {**questions.prediction(pset, refs, ecfg.n_boot, ecfg.seed),
                      "n_collapsed_before_landmark": n_early}
        if not refs_out:
            refs_out = questions.reference_rows(pset, refs, ecfg.n_boot, ecfg.seed)
    first = rows.filter(pl.col("detector") == rows["detector"][0])
    det["perturbation_on"] = questions.perturbation_on_detection(first, ecfg.fpr)
    by_detector = {f"{k}|all": {**v, "fpr_unperturbed": v["fpr_held_out_controls"]} for k, v in det.items()
                   if k != "perturbation_on"}
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
    """Complete the corpus dataset card with the collapse rule and the outcome counts."""
    from analysis import collapse as collapse_module

    rule = (collapse_module.__doc__ or "").split("The rule", 1)[-1].split("Outputs per run", 1)[0]
    params = ", ".join(f"{k} = {v}" for k, v in cfg.collapse.to_dict().items())
    section = ["## Collapse rule (from `stabilitybench analyze`)", "", f"The rule{rule.rstrip()}", "",
               f"Parameters: {params}.", "", "### Outcomes", "", *summary_lines(rows)]
    write_card(corpus, analysis_section="\n".join(section))


def _headline(summary: dict[str, Any], cfg: AnalysisConfig) -> dict[str, Any]:
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
    head["cox"] = {"status": cox_res.get("status"), "n": cox_res.get("n"), "n_events": cox_res.get("n_events"),
                   "hazard_ratios": {c["covariate"]: {k: c[k] for k in ("value", "ci_low", "ci_high", "p_value")}
                                     for c in cox_res.get("coefficients", [])},
                   "concordance": cox_res.get("concordance")}
    head["regularities"] = summary["regularities"]
    head["coherence_before_collapse"] = summary["coherence_before_collapse"]
    caveats = []
    for k, v in det.items():
        claim = (v.get("fpr_held_out_controls") or {}).get("claim", "")
        if claim.startswith("refused"):
            caveats.append(f"{k}: FPR claim {claim}")
    for k, v in pred.items():
        st = (v.get("auroc_stratified") or {}).get("status", "")
        if st:
            caveats.append(f"{k}: prediction AUROC (stratified) {st}")
            continue
        for ref, d in (v.get("delta_auroc") or {}).items():
            lo = d.get("ci_low")
            if d.get("value") is not None and (lo is None or lo <= 0):
                caveats.append(f"{k}: does not beat the {ref.replace('|', ' reference, ')} AUROC (delta "
                               f"{d['value']:+.2f}, CI low {lo if lo is None else round(lo, 2)})")
    if str(cox_res.get("status", "")).startswith("monotone"):
        caveats.append("Cox PH: monotone likelihood (a covariate separates collapsing from non-collapsing runs); "
                       "only the ridge-penalised estimates (penalty stated) are given")
    head["caveats"] = caveats
    return head


def _clean(o: Any) -> Any:
    """Recursively make ``o`` JSON-safe: non-finite floats become None, numpy scalars Python."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts (``a.b``) for a one-row-per-item Parquet table; lists become JSON."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, f"{name}."))
        elif isinstance(v, list):
            out[name] = json.dumps(v, default=_json_default)
        elif isinstance(v, float) and not np.isfinite(v):
            out[name] = None
        else:
            out[name] = v
    return out


def _sensitivity(frame: pl.DataFrame) -> pl.DataFrame:
    """Collapsed counts per configuration under each (drop, spread_k) of the rule."""
    labelled = frame.with_columns(
        pl.struct(["perturbation", "magnitude", "duration_steps"]).map_elements(
            lambda s: group_label(s["perturbation"], s["magnitude"], s["duration_steps"]), return_dtype=pl.String
        ).alias("config")
    )
    return (labelled.group_by(["config", "drop", "spread_k"])
            .agg(pl.len().alias("n_runs"), pl.col("collapsed").sum().alias("n_collapsed"))
            .sort(["drop", "spread_k", "config"]))


def _dose_response(full: pl.DataFrame) -> pl.DataFrame:
    rows = []
    labelled = full.with_columns(
        pl.struct(["perturbation", "magnitude", "duration_steps"]).map_elements(
            lambda s: group_label(s["perturbation"], s["magnitude"], s["duration_steps"]), return_dtype=pl.String
        ).alias("config")
    )
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


def _pca_all(acc: dict[tuple[str, str], dict[str, Any]], cfg: AnalysisConfig
             ) -> tuple[dict[str, Any], pl.DataFrame, pl.DataFrame]:
    """PCA summaries per (domain, algo) and pooled, explained-variance rows and block trajectories."""
    summary: dict[str, Any] = {}
    evr_rows: list[dict[str, Any]] = []
    traj_parts = []
    for (dom, algo), a in sorted(acc.items()):
        name = f"{dom}/{algo}"
        feats = a["features"]
        if len(feats) < 2 or a["all_runs"].n < 3:
            summary[name] = not_testable("fewer than 2 features or 3 complete rows", features=feats)
            continue
        entry: dict[str, Any] = {"features": feats, "n_features": len(feats)}
        for subset in ("all_runs", "unperturbed_runs"):
            entry[subset] = _pca_entry(a[subset], subset, name, cfg, evr_rows)
        summary[name] = entry
        # projected trajectories: block means standardised with the all-runs moments, onto the first 3 PCs
        _, vec, _, _ = a["all_runs"].result()
        mu, sd = a["all_runs"].standardiser()
        for rid, (steps, X, _) in a["blocks"].items():
            Z = ((X - mu) / sd) @ vec[:, : min(3, vec.shape[1])]
            keep = np.isfinite(Z).all(axis=1)
            traj_parts.append(pl.DataFrame({"group": name, "run_id": rid, "step": steps[keep],
                                            **{f"pc{j + 1}": Z[keep, j] for j in range(Z.shape[1])}}))
    keys = [k for k in sorted(acc) if len(acc[k]["features"]) >= 2 and acc[k]["all_runs"].n >= 3]
    if len(keys) == 1:
        summary["pooled"] = {"status": f"same as {keys[0][0]}/{keys[0][1]}: the corpus has one (domain, algo) group"}
    elif len(keys) >= 2:
        common = sorted(set.intersection(*[set(acc[k]["features"]) for k in keys]))
        if len(common) < 2:
            summary["pooled"] = not_testable("fewer than 2 features shared by every (domain, algo) group")
        else:
            summary["pooled"] = _pooled_entry([acc[k] for k in keys], common, cfg, evr_rows)
    else:
        summary["pooled"] = not_testable("no (domain, algo) group with enough data")
    evr = pl.DataFrame(evr_rows) if evr_rows else pl.DataFrame()
    traj = pl.concat(traj_parts, how="diagonal_relaxed") if traj_parts else pl.DataFrame()
    return summary, evr, traj


def _pca_block(real: pca_mod.PCAResult, null: list[pca_mod.PCAResult], n_runs: int, n_rows: int, method: str,
               cfg: AnalysisConfig, evr_rows: list[dict[str, Any]], name: str, subset: str,
               boot: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    n90_null = np.array([r.n90 for r in null], float)
    pr_null = np.array([r.pr for r in null], float)
    for j, v in enumerate(real.evr):
        evr_rows.append({"group": name, "subset": subset, "component": j + 1, "explained_variance_ratio": float(v),
                         "null_explained_variance_ratio": float(np.mean([r.evr[j] for r in null]))})
    return {
        "n_rows": n_rows, "n_runs": n_runs, "method": method,
        "n_components_90": number(real.n90, n_runs, _q(boot[0]) if boot is not None else None,
                                  interval="bootstrap over runs" if boot is not None else None),
        "participation_ratio": number(real.pr, n_runs, _q(boot[1]) if boot is not None else None,
                                      interval="bootstrap over runs" if boot is not None else None),
        "null_n_components_90": number(float(n90_null.mean()), cfg.n_null,
                                       (float(np.quantile(n90_null, 0.025)), float(np.quantile(n90_null, 0.975)))),
        "null_participation_ratio": number(float(pr_null.mean()), cfg.n_null,
                                           (float(np.quantile(pr_null, 0.025)), float(np.quantile(pr_null, 0.975)))),
        "explained_variance_ratio": real.evr.tolist(),
        "p_value_n90_le_null": float((1 + (n90_null <= real.n90).sum()) / (1 + n90_null.size)),
    }


def _pca_entry(a: pca_mod.PCAAccumulator, subset: str, name: str, cfg: AnalysisConfig,
               evr_rows: list[dict[str, Any]]) -> dict[str, Any]:
    if a.n < 3 or a.runs == 0:
        return not_testable("fewer than 3 complete rows")
    real, _, null, method = a.result()
    boot = a.bootstrap(cfg.n_boot, cfg.seed) if a.runs >= 2 else None
    return _pca_block(real, null, a.runs, a.n, method, cfg, evr_rows, name, subset, boot)


def _q(x: np.ndarray) -> tuple[float, float]:
    return float(np.quantile(x, 0.025)), float(np.quantile(x, 0.975))


def _pooled_entry(accs: list[dict[str, Any]], common: list[str], cfg: AnalysisConfig,
                  evr_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled PCA: each group standardised on its own and weighted *equally*: the pooled covariance is the
    plain mean of the groups' correlation matrices on the shared features (and likewise per null replicate),
    so the group with the most rows (PPO) does not dominate."""
    entry: dict[str, Any] = {"features": common, "n_features": len(common), "n_groups": len(accs)}
    for subset in ("all_runs", "unperturbed_runs"):
        parts = [a[subset] for a in accs if a[subset].n >= 3]
        if not parts:
            entry[subset] = not_testable("fewer than 3 complete rows")
            continue
        idx = [[a["features"].index(c) for c in common] for a in accs if a[subset].n >= 3]
        w = np.ones(len(parts))  # every (domain, algo) group weighs the same

        def pooled(mats: list[np.ndarray], idx: list[list[int]] = idx, w: np.ndarray = w) -> np.ndarray:
            return sum(wi * m[np.ix_(ix, ix)] for wi, m, ix in zip(w, mats, idx, strict=True)) / w.sum()

        real = pca_mod.summarise(np.linalg.eigvalsh(pooled([p.correlation() for p in parts])))
        null = [pca_mod.summarise(np.linalg.eigvalsh(pooled([p.correlation(p.null[r]) for p in parts])))
                for r in range(cfg.n_null)]
        entry[subset] = _pca_block(real, null, sum(p.runs for p in parts), sum(p.n for p in parts),
                                   "mean of the groups' correlation matrices, equal weights", cfg, evr_rows,
                                   "pooled", subset)
    return entry
