"""Early-warning evaluation of the meta-state monitors against the baselines, on held-out seeds.

Splits (rotating three-way seed split)
--------------------------------------
Seeds are sorted and cut into ``k = min(n_seeds, max_folds)`` chunks. Fold ``i`` *tests* on
chunk ``i``, *calibrates* on chunk ``i+1 (mod k)`` and *trains* on the rest, so every run is
a test run exactly once and the pooled test set is the whole group. With the quick
corpus's 3 seeds that is train 1 / calibrate 1 / test 1, rotated three times
(``calibration_chunks = c`` calibrates on the next ``c`` chunks instead, for folds with >= 19
calibration controls: fewer make no FPR claim and enter no pooled alarm-based number). Every
detector is fitted on the **unperturbed** runs of the training seeds only, and its alarm
threshold is calibrated *conformally* on the **unperturbed** runs of the calibration seeds
only (:class:`~stabilitybench.analysis.conformal.ConformalCalibrator`: cross-fitted, since the seeds rotate);
an unperturbed run that itself collapsed is not "normal" telemetry and is left out of both.
Nothing is fitted or tuned on perturbed runs, so the per-perturbation-kind rows are also the
leave-one-perturbation-kind-out evaluation. **Leave-one-env-out** (several envs per domain,
algo and stochasticity level): for each held-out env the detectors are trained on the
unperturbed runs of all *other* envs, then calibrated and tested on the held-out env's
calibration and test seeds exactly as above. With one env it is reported as not testable.

Scores leave each fold as conformal p-values
--------------------------------------------
Every per-block score becomes an exceedance p-value against the calibration runs' window
maxima, and an alarm is ``p <= alpha`` (the target FPR, or ``1/(n+1)`` when fewer than 19
calibration runs make 5% unreachable; then no FPR claim is made). Run-level scores are
``-log10(min p)`` over a window (:func:`_run_row`), so runs scored by separately fitted models
(folds, groups) are pooled on one calibrated scale. The two questions asked of these rows
(detection, prediction at a landmark) are computed in :mod:`stabilitybench.analysis.questions`.

Scores are per block; an alarm is dated at its block's last update, so lead times are
in optimizer updates. Non-finite telemetry scores ``+inf`` (p = 1/(n+1)).

Feature sets
------------
Each detector reads a named feature set (:func:`named_feature_sets`): ``no_echo`` under its own name,
``all`` as ``<monitor>+echo`` and ``no_kick`` (without every column that responds to the perturbation
itself: the LR, update and parameter norms, PPO's approx_kl and clip_fraction, the grad-norm family and
the rolling coherence) as ``<name>/no_kick``; :func:`detector_variants` says which run on which.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from stabilitybench.analysis.collapse import n_updates
from stabilitybench.analysis.conformal import ConformalCalibrator
from stabilitybench.analysis.detectors import DETECTORS, default_names, spec_for
from stabilitybench.analysis.errors import InsufficientDataError
from stabilitybench.analysis.metastate import MonitorBase
from stabilitybench.analysis.metastate.base import window_max
from stabilitybench.analysis.monitor_file import SUFFIX, MonitorFile, provenance_of
from stabilitybench.analysis.summary import Status, StatusKind, not_testable
from stabilitybench.data_schema.keys import onset_step, resolve_onset


@dataclass(frozen=True)
class EarlyWarningConfig:
    """Settings of the evaluation (fixed in advance; nothing is tuned on test data)."""

    fpr: float = 0.05
    smooth: int = 5
    baseline_window: int = 20
    max_folds: int = 5
    n_boot: int = 1000
    gru_hidden: int = 32
    gru_epochs: int = 150
    kalman_iter: int = 50
    early_blocks: int = 10
    horizon_frac: float = 0.1
    detectors: tuple[str, ...] = field(default_factory=lambda: default_detectors())
    with_echo: bool = True
    with_no_kick: bool | None = None  # also evaluate the no-kick feature set (detector_variants: its scope); None:
    # as with_echo (with_echo=False asks for the detectors on their own feature set only)
    calibration_chunks: int = 1  # seed chunks each fold calibrates on (seed_folds); more chunks, more calibration
    # controls per fold (>= 19 make the FPR claim and the alarm-based pooled numbers possible), fewer training ones
    seed: int = 0
    n_jobs: int = 0  # (fold, detector) fits in parallel processes (0: every core; 1: in this process); the GRU
    # trains on one torch thread per process there, so its float32 scores may differ from a one-process run in the
    # last bits

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_detectors() -> tuple[str, ...]:
    """Every monitor and baseline of the registry (:mod:`stabilitybench.analysis.detectors`), in its order; the
    GRU monitor only where torch is installed (not in the core install)."""
    return default_names(importlib.util.find_spec("torch") is not None)


def seed_folds(seeds: list[int], max_folds: int = 5, calibration_chunks: int = 1) -> list[dict[str, list[int]]]:
    """Rotating train/calibration/test seed split (see the module docstring). Needs >= 3 seeds.

    Fold ``i`` tests on chunk ``i``, calibrates on the next ``c`` chunks (``c = calibration_chunks``, at most
    ``k - 2`` so that one chunk is left to train on) and trains on the rest.
    """
    s = sorted(set(int(x) for x in seeds))
    if len(s) < 3:
        return []
    k = min(len(s), max_folds)
    c = max(1, min(int(calibration_chunks), k - 2))
    chunks = [list(map(int, ch)) for ch in np.array_split(np.array(s), k)]
    folds = []
    for i in range(k):
        cal = [(i + j) % k for j in range(1, c + 1)]
        calib = [x for j in cal for x in chunks[j]]
        train = [x for j, ch in enumerate(chunks) if j != i and j not in cal for x in ch]
        folds.append({"train": train, "calibration": calib, "test": chunks[i]})
    return folds


def make_detector(name: str, features: list[str], cfg: EarlyWarningConfig) -> MonitorBase:
    """A fresh, unfitted detector by name (its registry spec's ``build``); one line for an unknown name."""
    spec = DETECTORS.get(name)
    if spec is None or spec.build is None:
        spec = spec_for(name)  # raises for an unknown name
        raise InsufficientDataError(f"{name!r} is a {spec.family}: it is not built as a detector")
    return spec.build(list(features), cfg)


def _onset_index(steps: np.ndarray, onset: int | None) -> int:
    if onset is None:
        return 0
    return int(np.searchsorted(steps, onset, side="left"))


ECHO_COLUMNS = ("lr", "update_norm", "param_norm")
#: Columns that respond to a perturbation of the optimisation itself (the LR, the step taken, PPO's trust-region
#: statistics, the gradient norms), beside :data:`ECHO_COLUMNS`; with the rolling coherence estimator
#: (:func:`kick_columns`) they make up what the no-kick feature set leaves out.
KICK_COLUMNS = (*ECHO_COLUMNS, "actor_update_norm", "approx_kl", "clip_fraction")
#: Feature-set name -> suffix of the detector label evaluated on it (``kalman+echo``, ``kalman``, ``kalman/no_kick``).
FEATURE_SET_LABELS = {"all": "+echo", "no_echo": "", "no_kick": "/no_kick"}
#: What each named feature set leaves out, in words (summary.json ``early_warning.feature_set_rules``).
FEATURE_SET_RULES = {
    "all": "every kept feature column, lr included (the monitors' '+echo' variant)",
    "no_echo": f"without the intervention-echo columns {', '.join(ECHO_COLUMNS)} (the detectors' own name)",
    "no_kick": "without every column that responds to the perturbation itself: "
               f"{', '.join(KICK_COLUMNS)}, the grad-norm family (any column whose name contains 'grad_norm') and "
               "the rolling gradient coherence (grad_coherence in RL, actor_grad_coherence; LM's grad_coherence and "
               "grad_coherence_fixed are fixed-point and stay) ('<name>/no_kick')",
}


def kick_columns(features: list[str], domain: str | None = None) -> list[str]:
    """The columns of ``features`` that the no-kick feature set leaves out (see :data:`FEATURE_SET_RULES`).

    ``grad_coherence`` is the rolling estimator (across updates, so it moves with the step size) except in the
    LM domain, where it is fixed-point (:data:`stabilitybench.analysis.coherence.ESTIMATORS`); an unknown
    ``domain`` is treated as rolling (left out).
    """
    rolling = {"actor_grad_coherence"} | ({"grad_coherence"} if domain != "lm" else set())
    return [c for c in features if c in KICK_COLUMNS or "grad_norm" in c or c in rolling]


def named_feature_sets(features: list[str], domain: str | None = None) -> dict[str, list[str]]:
    """The named feature sets over ``features`` (a group's kept columns): ``all``, ``no_echo`` and ``no_kick``."""
    kick = set(kick_columns(features, domain))
    return {"all": list(features), "no_echo": [c for c in features if c not in ECHO_COLUMNS],
            "no_kick": [c for c in features if c not in kick]}


def _reads(det: MonitorBase) -> tuple[str, ...]:
    """The columns a built detector actually reads: its one column (single-column baselines) or all it was given."""
    col = getattr(det, "column", None)
    return (col,) if isinstance(col, str) else tuple(getattr(det, "features", ()))


def detector_variants(features: list[str], cfg: EarlyWarningConfig, domain: str | None = None,
                      no_kick: bool = True) -> list[tuple[str, str, list[str]]]:
    """``(detector label, detector name, feature columns)`` of every detector to evaluate.

    Feature sets (:func:`named_feature_sets`): every detector runs on ``no_echo`` under its own name (without
    the intervention-echo columns :data:`ECHO_COLUMNS`: they move with the perturbation itself, so a monitor
    that reads them "detects" the kick); the monitors (the specs with ``echo``) also on ``all`` as
    ``<name>+echo``. With ``cfg.with_no_kick`` (None: as ``cfg.with_echo``) and ``no_kick``, ``<name>/no_kick``
    runs on the no-kick set:
    every monitor, and each baseline whose input changes there (a single-column baseline whose column stays
    would repeat its own row; one whose column goes is not available). This bounds the extra fold work to the
    monitors' fits plus the cheap baselines. An unknown name in ``cfg.detectors`` is refused with one line.
    """
    sets = named_feature_sets(features, domain)
    base, nokick = sets["no_echo"], sets["no_kick"]
    echo = list(features) if any(c in ECHO_COLUMNS for c in features) else None
    out = []
    for name in cfg.detectors:
        spec = spec_for(name)
        out.append((name, name, base))
        if spec.echo and echo is not None and cfg.with_echo:
            out.append((f"{name}+echo", name, echo))
        wanted = cfg.with_echo if cfg.with_no_kick is None else cfg.with_no_kick
        if not (wanted and no_kick) or nokick == base or not nokick:
            continue
        if spec.echo:
            out.append((f"{name}{FEATURE_SET_LABELS['no_kick']}", name, nokick))
            continue
        det_nk = make_detector(name, nokick, cfg)
        if getattr(det_nk, "available", True) and _reads(det_nk) != _reads(make_detector(name, base, cfg)):
            out.append((f"{name}{FEATURE_SET_LABELS['no_kick']}", name, nokick))
    return out


def evaluate_group(
    runs: pl.DataFrame,
    arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    features: list[str],
    cfg: EarlyWarningConfig,
    progress: Callable[[str], None] | None = None,
    save_dir: Path | None = None,
    external_train: list[np.ndarray] | None = None,
    block: int = 1,
) -> tuple[pl.DataFrame, pl.DataFrame, list[dict[str, Any]]]:
    """Fit, conformally calibrate and score every detector on every fold of one matched group.

    ``runs`` holds the group's runs with ``seed, onset_step, duration_steps, unperturbed, collapsed,
    collapse_kind, collapse_step`` (optionally ``collapse_step_smoothed``, ``collapse_date_source`` and
    ``domain``: the old smoothed date is carried for side-by-side leads; the domain decides whether
    ``grad_coherence`` is the rolling estimator, left out of the no-kick set);
    ``arrays[run_id] = (steps (T,), X (T, p), nonfinite (T,))`` with the columns ``features``; ``block`` is
    the block length in updates (the landmark is one block after the perturbation window). Returns (per test
    run x detector table, score traces, fold notes). Each fold fits on the training seeds' controls,
    calibrates a :class:`~analysis.conformal.ConformalCalibrator` on the calibration seeds' controls (window
    maxima from onset) and scores the test seeds; every score leaves as a conformal p-value. With
    ``save_dir`` the fitted monitors are saved there as self-contained
    :class:`~stabilitybench.analysis.monitor_file.MonitorFile` s (``<label>_fold<i>.monitor.npz``, a ``/`` in
    the label as ``-``: features, transforms, block size, warm-up = the calibration window's start, conformal
    threshold, provenance). With ``external_train`` (sequences from *other* envs: leave-one-env-out) every
    fold trains on those instead of its own training seeds (and the no-kick feature set is not evaluated: it
    would add the monitors' fits a third time to the transfer folds). The traces carry ``excess``
    (:func:`calibrated_excess` per block), what same-dose detection ranks.
    """
    for name in cfg.detectors:
        spec_for(name)  # an unknown detector is refused (one line) before anything is fitted
    folds = seed_folds(runs["seed"].to_list(), cfg.max_folds, cfg.calibration_chunks)
    if not folds:
        return _empty_rows(), _empty_traces(), [not_testable("fewer than 3 seeds")]
    info = {r["run_id"]: r for r in runs.iter_rows(named=True)}
    domains = runs["domain"].unique().to_list() if "domain" in runs.columns else []
    # the no-kick set only in the main evaluation: leave-one-env-out (external_train) keeps its cost
    variants = detector_variants(features, cfg, domains[0] if len(domains) == 1 else None,
                                 no_kick=external_train is None)
    n_jobs = _processes(cfg)
    if n_jobs > 1:  # (fold, detector) pairs are independent and seeded: the same results as one after the other
        from joblib import Parallel, delayed

        jobs = [(i, fold, info, arrays, features, [v], cfg, save_dir, external_train, block)
                for i, fold in enumerate(folds) for v in variants]
        if progress:
            progress(f"{len(folds)} folds x {len(variants)} detectors on {min(n_jobs, len(jobs))} processes")
        # dispatched longest first (GRU fits, then Kalman fits, then the baselines), so that no process is left
        # fitting a GRU alone at the end; the results go back to job order before they are merged
        order = sorted(range(len(jobs)), key=lambda j: spec_for(jobs[j][5][0][1]).fit_order)
        ran = Parallel(n_jobs=min(n_jobs, len(jobs)), backend="loky")(
            delayed(_evaluate_fold_in_worker)(*jobs[j]) for j in order)
        done = [None] * len(jobs)
        for j, d in zip(order, ran, strict=True):
            done[j] = d
        done = [_merge_fold([d for d, job in zip(done, jobs, strict=True) if job[0] == i]) for i in range(len(folds))]
    else:
        done = []
        for i, fold in enumerate(folds):
            if progress:
                progress(f"fold {i + 1}/{len(folds)}")
            done.append(_evaluate_fold(i, fold, info, arrays, features, variants, cfg, save_dir, external_train,
                                       block))
    rows = [r for d in done for r in d[0]]
    traces = [t for d in done for t in d[1]]
    notes = [d[2] for d in done]
    table = pl.DataFrame(rows, schema=_ROW_SCHEMA) if rows else _empty_rows()
    trace = pl.concat(traces, how="diagonal_relaxed") if traces else _empty_traces()
    return table, trace, notes


def _processes(cfg: EarlyWarningConfig) -> int:
    """How many processes the (fold, detector) jobs run on: ``cfg.n_jobs``, or every core when it is 0."""
    return cfg.n_jobs if cfg.n_jobs > 0 else (os.cpu_count() or 1)


def _merge_fold(parts: list[tuple[list[dict[str, Any]], list[pl.DataFrame], dict[str, Any]]]
                ) -> tuple[list[dict[str, Any]], list[pl.DataFrame], dict[str, Any]]:
    """One fold's result from its per-detector parts (in detector order): rows, traces, one note."""
    note = dict(parts[0][2])
    for key in ("detectors", "detector_errors"):
        merged = {k: v for p in parts for k, v in p[2].get(key, {}).items()}
        if merged:
            note[key] = merged
    return [r for p in parts for r in p[0]], [t for p in parts for t in p[1]], note


def start_workers(cfg: EarlyWarningConfig) -> Callable[[], None]:
    """Start the worker processes of :func:`evaluate_group` now, in the background; returns a ``wait()``.

    Each worker's first job would otherwise import torch and the analysis package (seconds) while the
    corpus is still being read; started first, that import overlaps the reading. The same loky executor
    serves the later ``Parallel`` calls (same backend and process count). A no-op with one process.
    """
    n_jobs = _processes(cfg)
    if n_jobs <= 1:
        return lambda: None
    from joblib import Parallel, delayed

    pending = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator_unordered")(
        delayed(_warm_worker)() for _ in range(n_jobs))

    def wait() -> None:
        for _ in pending:
            pass

    return wait


def _warm_worker() -> None:
    """Import what a fold's fit needs (torch for the GRU when installed)."""
    import stabilitybench.analysis.metastate

    if importlib.util.find_spec("torch") is not None:
        import stabilitybench.analysis.metastate.gru  # noqa: F401


def _evaluate_fold_in_worker(*job: Any) -> tuple[list[dict[str, Any]], list[pl.DataFrame], dict[str, Any]]:
    """:func:`_evaluate_fold` in a worker process: one torch thread (the processes already share the cores)."""
    if importlib.util.find_spec("torch") is not None:  # the GRU; not in the core install
        import torch

        torch.set_num_threads(1)
    return _evaluate_fold(*job)


def _evaluate_fold(i: int, fold: dict[str, list[int]], info: dict[str, dict[str, Any]],
                   arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], features: list[str],
                   variants: list[tuple[str, str, list[str]]], cfg: EarlyWarningConfig, save_dir: Path | None,
                   external_train: list[np.ndarray] | None, block: int
                   ) -> tuple[list[dict[str, Any]], list[pl.DataFrame], dict[str, Any]]:
    """One fold of :func:`evaluate_group`: fit, calibrate and score every detector; (rows, traces, note)."""
    def pick(seeds: list[int], controls_only: bool) -> list[str]:
        # training/calibration use unperturbed runs that did not themselves collapse (not "normal")
        return [rid for rid, r in info.items() if r["seed"] in seeds and rid in arrays
                and (not controls_only or (r["unperturbed"] and not r["collapsed"]))]

    rows: list[dict[str, Any]] = []
    traces: list[pl.DataFrame] = []
    train_ids = pick(fold["train"], True)
    calib_ids = pick(fold["calibration"], True)
    test_ids = pick(fold["test"], False)
    note = {"fold": i, **{k: v for k, v in fold.items()}, "n_train_runs": len(train_ids) if external_train is None
            else len(external_train), "n_calibration_runs": len(calib_ids), "n_test_runs": len(test_ids)}
    if external_train is not None:
        note["train"] = "unperturbed runs of the other envs"
    if not (train_ids or external_train) or not calib_ids or not test_ids:
        note.update(Status(StatusKind.SKIPPED, "no unperturbed training or calibration run, or no test run"
                           ).to_json())
        return rows, traces, note
    for label, name, cols in variants:
        idx = [features.index(c) for c in cols]
        det = make_detector(name, cols, cfg)
        if not getattr(det, "available", True) or not idx:
            continue
        train = [arrays[r][1][:, idx] for r in train_ids] if external_train is None else \
            [x[:, idx] for x in external_train]
        try:
            det.fit(train)
        except InsufficientDataError as exc:
            note.setdefault("detector_errors", {})[label] = str(exc)
            continue
        cal_max = []
        for r in calib_ids:
            st, X, nf = arrays[r]
            sc = det.score(X[:, idx])
            sc[nf] = np.inf
            cal_max.append(window_max(sc, st, onset_step(info[r]), None))
        conf = ConformalCalibrator(cfg.fpr).fit(cal_max)
        det.threshold_ = conf.threshold_
        info_fit: dict[str, Any] = {"threshold": conf.threshold_, **conf.summary(), "features": cols,
                                    **det.fit_summary()}
        note.setdefault("detectors", {})[label] = info_fit
        if save_dir is not None and spec_for(name).saveable:
            warmup = min((onset_step(info[r]) for r in calib_ids), default=0)
            MonitorFile(det, cols, block, warmup, conf.threshold_, conf.alpha, conf.alpha_used_, conf.n_,
                        provenance=provenance_of(info.values(), train_ids if external_train is None else [],
                                                 calib_ids)
                        ).save(save_dir / f"{label.replace('/', '-')}_fold{i}{SUFFIX}")
        for rid in test_ids:
            steps, X, nonfinite = arrays[rid]
            score = det.score(X[:, idx])
            score[nonfinite] = np.inf
            pval = conf.p_value(score)
            rows.append(_run_row(rid, info[rid], i, label, conf, steps, pval, cfg, block, score))
            traces.append(pl.DataFrame({"run_id": rid, "detector": label, "fold": i, "step": steps,
                                        "score": score, "threshold": conf.threshold_, "p_value": pval,
                                        "excess": calibrated_excess(score, conf)},
                                       schema_overrides={"step": pl.Int64, "score": pl.Float64,
                                                         "p_value": pl.Float64, "excess": pl.Float64}))
    return rows, traces, note


_ROW_SCHEMA = {
    "run_id": pl.String, "seed": pl.Int64, "fold": pl.Int64, "detector": pl.String, "threshold": pl.Float64,
    "n_calibration": pl.Int64, "alpha_used": pl.Float64, "guaranteed_fpr_bound": pl.Float64,
    "perturbation": pl.String, "magnitude": pl.Float64, "duration_steps": pl.Int64, "unperturbed": pl.Boolean,
    "collapsed": pl.Boolean, "collapse_kind": pl.String, "collapse_step": pl.Int64, "onset_step": pl.Int64,
    "landmark_step": pl.Int64, "first_alarm_step": pl.Int64, "alarm_before_collapse": pl.Boolean,
    "lead_updates": pl.Int64, "detection_score": pl.Float64, "prediction_score": pl.Float64,
    "prediction_excess": pl.Float64,
    "window_score": pl.Float64, "early_score": pl.Float64,
    "collapse_step_smoothed": pl.Int64, "collapse_date_source": pl.String, "lead_updates_smoothed": pl.Int64,
    "block_updates": pl.Int64, "prediction_excess_lm1": pl.Float64, "prediction_excess_lp1": pl.Float64,
}


def _empty_rows() -> pl.DataFrame:
    return pl.DataFrame(schema=_ROW_SCHEMA)


def _empty_traces() -> pl.DataFrame:
    return pl.DataFrame(schema={"run_id": pl.String, "detector": pl.String, "fold": pl.Int64, "step": pl.Int64,
                                "score": pl.Float64, "threshold": pl.Float64, "p_value": pl.Float64,
                                "excess": pl.Float64})


def landmark(onset: int | None, duration: int | None, unperturbed: bool, block: int) -> int:
    """The prediction landmark L: the end of the perturbation window plus one block (controls: onset + 1 block).

    ``onset``: a run's ``onset_step`` (null: :func:`stabilitybench.data_schema.keys.resolve_onset`).
    """
    o = resolve_onset(onset)
    d = 0 if unperturbed or duration is None else int(duration)
    return o + d + max(1, int(block))


def _neglog_min_p(pval: np.ndarray, mask: np.ndarray) -> float:
    v = pval[mask]
    v = v[~np.isnan(v)]
    return float(-np.log10(v.min())) if v.size else float("nan")


def calibrated_excess(score: np.ndarray, conf: ConformalCalibrator) -> np.ndarray:
    """``(score - threshold) / SD of the calibration window maxima``, shape of ``score`` (NaN without a threshold).

    A continuous calibrated score: the conformal p-value has only ``n + 1`` levels, so every score above
    all ``n`` calibration maxima gets the same ``p = 1/(n+1)`` and ranks tied with the others (with 6
    calibration runs, nearly every perturbed run). This keeps their order and is in the fold's own
    calibration units, so it pools across folds and groups as the p-value does.
    """
    cal = np.asarray(getattr(conf, "scores_", []), float)
    cal = cal[np.isfinite(cal)]
    thr = float(conf.threshold_)
    if not np.isfinite(thr):
        return np.full(np.shape(score), np.nan)
    spread = float(cal.std()) if cal.size > 1 else 0.0
    spread = spread if spread > 1e-12 else max(abs(thr), 1.0)
    with np.errstate(invalid="ignore"):
        return (np.asarray(score, float) - thr) / spread


def _max_over(x: np.ndarray, mask: np.ndarray) -> float:
    v = x[mask]
    v = v[~np.isnan(v)]
    return float(v.max()) if v.size else float("nan")


def _run_row(rid: str, r: dict[str, Any], fold: int, name: str, conf: ConformalCalibrator, steps: np.ndarray,
             pval: np.ndarray, cfg: EarlyWarningConfig, block: int = 1, score: np.ndarray | None = None
             ) -> dict[str, Any]:
    """One (test run, detector) row: alarms at ``p <= alpha_used``, run-level scores as ``-log10(min p)``.

    * ``detection_score``: over ``[onset, collapse)`` (strictly before the offline date), capped at
      ``onset + horizon_frac`` of the run, for collapsed runs; over ``[onset, onset + horizon]`` otherwise.
    * ``prediction_score``: over ``[onset, L]`` with L = :func:`landmark`; ``prediction_excess``: the
      max :func:`calibrated_excess` over the same window (what question (b) ranks: no ties at the top);
      ``prediction_excess_lm1`` / ``_lp1``: the same over ``[onset, L - 1 block]`` / ``[onset, L + 1 block]``
      (question (b)'s sensitivity to L); ``block_updates``: the block length.
    * ``window_score``: over ``[onset, collapse)`` or ``[onset, last update]``.
    * a non-finite collapse is never "preceded" by the alarm at its own step (lead 0 is no warning).
    * ``collapse_step`` is the (lag-free) offline date; ``collapse_step_smoothed`` (where the outcome has it:
      the date on the smoothed performance, older versions' date) gives ``lead_updates_smoothed``, the lead of
      an alarm strictly before that date, for old and new leads side by side.
    """
    onset = onset_step(r)
    cstep = r["collapse_step"] if r["collapsed"] else None
    old = r.get("collapse_step_smoothed") if r["collapsed"] else None
    after = steps >= onset
    H = cfg.horizon_frac * n_updates(steps)
    before = steps < cstep if cstep is not None else np.ones(steps.size, dtype=bool)
    det_mask = after & before & (steps <= onset + H)
    B = max(1, int(block))
    L = landmark(onset, r.get("duration_steps"), bool(r["unperturbed"]), block)
    alarm = after & (pval <= conf.alpha_used_ + 1e-12)
    first = int(steps[np.argmax(alarm)]) if alarm.any() else None
    preceded = cstep is not None and first is not None and first < cstep
    idx = np.flatnonzero(after)[: max(1, cfg.early_blocks)]
    early = pval[idx]
    early = early[np.isfinite(early)]
    excess = calibrated_excess(score, conf) if score is not None else None

    def excess_to(stop: int) -> float | None:
        return _max_over(excess, after & (steps <= stop)) if excess is not None else None

    return {
        "run_id": rid, "seed": r["seed"], "fold": fold, "detector": name, "threshold": conf.threshold_,
        "n_calibration": conf.n_, "alpha_used": conf.alpha_used_, "guaranteed_fpr_bound": conf.guaranteed_fpr_,
        "perturbation": r["perturbation"], "magnitude": r["magnitude"], "duration_steps": r.get("duration_steps"),
        "unperturbed": r["unperturbed"], "collapsed": bool(r["collapsed"]),
        "collapse_kind": r.get("collapse_kind") or ("performance" if r["collapsed"] else "none"),
        "collapse_step": cstep, "onset_step": r["onset_step"], "landmark_step": L, "first_alarm_step": first,
        "alarm_before_collapse": bool(preceded), "lead_updates": (cstep - first) if preceded else None,
        "detection_score": _neglog_min_p(pval, det_mask), "prediction_score": _neglog_min_p(pval, after & (steps <= L)),
        "window_score": _neglog_min_p(pval, after & before),
        "prediction_excess": excess_to(L),
        "early_score": float(-np.log10(early).mean()) if early.size else None,
        "collapse_step_smoothed": old, "collapse_date_source": r.get("collapse_date_source"),
        "lead_updates_smoothed": (old - first) if old is not None and first is not None and first < old else None,
        "block_updates": B, "prediction_excess_lm1": excess_to(L - B), "prediction_excess_lp1": excess_to(L + B),
    }


def leave_one_env_out_status(runs: pl.DataFrame) -> dict[str, Any]:
    """Leave-one-env-out needs >= 2 envs within a (domain, algo, stochasticity); otherwise not testable."""
    envs = runs.group_by(["domain", "algo", "stochasticity"]).agg(pl.col("env").n_unique().alias("n"))
    if envs.height and int(envs["n"].max()) >= 2:
        return Status(StatusKind.OK).to_json()
    return not_testable("one env per (domain, algo, stochasticity)")
