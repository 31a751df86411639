"""Early-warning evaluation of the meta-state monitors against the baselines, on held-out seeds.

Splits (rotating three-way seed split)
--------------------------------------
Seeds are sorted and cut into ``k = min(n_seeds, max_folds)`` chunks. Fold ``i`` *tests* on
chunk ``i``, *calibrates* on chunk ``i+1 (mod k)`` and *trains* on the rest, so every run is
a test run exactly once and the pooled test set is the whole group. With the quick
corpus's 3 seeds that is train 1 / calibrate 1 / test 1, rotated three times
(``calibration_chunks = c`` calibrates on the next ``c`` chunks instead; by default, per group, the fewest that
give every fold >= 19 calibration controls, where the group has that many: fewer make no FPR claim and enter no
pooled alarm-based number). Every
detector is fitted on the **unperturbed** runs of the training seeds only, and its alarm
threshold is calibrated *conformally* on the **unperturbed** runs of the calibration seeds
only (:class:`~stabilitybench.analysis.conformal.ConformalCalibrator`: cross-fitted, since the seeds rotate);
an unperturbed run that itself collapsed is not "normal" telemetry and is left out of both.
Nothing is fitted or tuned on perturbed runs, so the per-perturbation-kind rows are also the
leave-one-perturbation-kind-out evaluation of question (d) once the choices made before any fit are checked
without the kind (:func:`stabilitybench.analysis.groups.leave_one_kind_out_check`). **Leave-one-env-out**
(question (d); several envs per domain, algo and stochasticity level, :func:`evaluate_transfer`): for each
held-out env the detectors are fitted on the unperturbed runs of the *other* envs (their own fold's training
seeds), calibrated on those envs' calibration controls and, apart, on the held-out env's, and score every run
of the held-out env. With one env it is reported as not testable.

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

Regime runs (question (c))
--------------------------
A run of a regime kind (:data:`~stabilitybench.data_schema.keys.SUSTAINED_KINDS`, e.g. ``lr_regime``: trained at an
elevated setting from update 0, onset 0, no kick) is scored like every test run, and its per-block scores leave in the
traces, but it gets no per-run row: questions (a), (a') and (b) read the rows and are about kicks (their windows start
at the onset and end at the kick's end, and for a regime the "window" is the whole run), so regime runs enter only
question (c), time to event (:mod:`stabilitybench.analysis.time_to_event_stage`), which reads the traces. For each
regime test run the fold also scores a **null twin** with the same fitted detector and conformal calibration
(:func:`null_twin`: the fold's training controls' mean trajectory plus, per column, an AR(1) surrogate of the
run's own deviation from it over its first :data:`TWIN_FRAC` of updates, before any collapse, simulated for the
run's whole length); its traces carry the run id plus :data:`TWIN_SUFFIX`
(:func:`split_twins` separates them; a consumer joining traces to runs on ``run_id`` never meets them). A seed that
holds regime runs only (the ``spontaneous`` profile has more regime seeds than control seeds) is not cut into the
seed chunks, where it would leave a fold without calibration controls: it is tested in fold ``seed mod k``
(:func:`regime_folds`; without such seeds the folds are :func:`seed_folds`' as before).

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
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from stabilitybench.analysis.collapse import n_updates
from stabilitybench.analysis.conformal import ConformalCalibrator, min_calibration_runs
from stabilitybench.analysis.detectors import DETECTORS, default_names, spec_for
from stabilitybench.analysis.errors import InsufficientDataError
from stabilitybench.analysis.metastate import MonitorBase
from stabilitybench.analysis.metastate.base import window_max
from stabilitybench.analysis.monitor_file import SUFFIX, MonitorFile, columns_reported_by, provenance_of
from stabilitybench.analysis.stats import ffill
from stabilitybench.analysis.summary import Status, StatusKind, not_testable
from stabilitybench.analysis.time_to_event import ar1_twin
from stabilitybench.data_schema.keys import SUSTAINED_KINDS, control_mask, onset_step, resolve_onset, sustained_mask


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
    calibration_chunks: int | None = None  # seed chunks each fold calibrates on (seed_folds); more chunks, more
    # calibration controls per fold (>= 19 make the FPR claim and the alarm-based pooled numbers possible), fewer
    # training ones. None: per group, the fewest chunks that give every fold enough (regime_folds), else 1
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


def seed_folds(seeds: list[int], max_folds: int = 5, calibration_chunks: int | None = 1
               ) -> list[dict[str, list[int]]]:
    """Rotating train/calibration/test seed split (see the module docstring). Needs >= 3 seeds.

    Fold ``i`` tests on chunk ``i``, calibrates on the next ``c`` chunks (``c = calibration_chunks``, None: 1; at
    most ``k - 2`` so that one chunk is left to train on) and trains on the rest.
    """
    s = sorted(set(int(x) for x in seeds))
    if len(s) < 3:
        return []
    k = min(len(s), max_folds)
    c = max(1, min(int(calibration_chunks or 1), k - 2))
    chunks = [list(map(int, ch)) for ch in np.array_split(np.array(s), k)]
    folds = []
    for i in range(k):
        cal = [(i + j) % k for j in range(1, c + 1)]
        calib = [x for j in cal for x in chunks[j]]
        train = [x for j, ch in enumerate(chunks) if j != i and j not in cal for x in ch]
        folds.append({"train": train, "calibration": calib, "test": chunks[i]})
    return folds


def regime_folds(runs: pl.DataFrame, max_folds: int = 5, calibration_chunks: int | None = 1,
                 min_calibration: int = 19) -> list[dict[str, list[int]]]:
    """:func:`seed_folds` of the seeds of ``runs`` (``seed``, ``perturbation``) that hold a run other than a regime run;
    a seed with regime runs only (no control to train or calibrate on) is tested in fold ``seed mod k``.

    Without such a seed this is :func:`seed_folds` of every seed. With one, cutting it into a chunk would leave a fold
    without calibration controls (skipped, its test runs unscored): the ``spontaneous`` profile has more regime seeds
    than control seeds. ``calibration_chunks = None`` (:func:`auto_calibration_chunks`): the fewest chunks with at
    least ``min_calibration`` controls (``perturbation = "none"``) in every fold's calibration set, else 1.
    """
    seeds = [int(x) for x in runs["seed"].to_list()]
    regime = sustained_mask(runs).to_list()
    base = sorted({s for s, r in zip(seeds, regime, strict=True) if not r})
    if calibration_chunks is None:
        calibration_chunks = auto_calibration_chunks(runs, base, max_folds, min_calibration)
    folds = seed_folds(base, max_folds, calibration_chunks)
    for s in sorted(set(seeds) - set(base)) if folds else []:
        folds[s % len(folds)]["test"].append(s)
    return folds


def auto_calibration_chunks(runs: pl.DataFrame, seeds: list[int], max_folds: int, need: int) -> int:
    """The fewest seed chunks (1 .. k - 2) whose controls (:func:`~stabilitybench.data_schema.keys.control_mask`)
    number at least ``need`` in every fold's calibration set of :func:`seed_folds`; 1 when no count of chunks gets
    there (the folds are then reported apart as small folds, and the training sets keep their size)."""
    controls = runs.filter(control_mask(runs)).group_by("seed").len()
    per_seed = dict(zip(controls["seed"].cast(pl.Int64).to_list(), controls["len"].to_list(), strict=True))
    k = min(len(set(seeds)), max_folds)
    for c in range(1, max(1, k - 2) + 1):
        folds = seed_folds(seeds, max_folds, c)
        if folds and min(sum(per_seed.get(s, 0) for s in f["calibration"]) for f in folds) >= need:
            return c
    return 1


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


#: The null twin of a regime run is fitted on its first ``TWIN_FRAC`` of updates (before any collapse).
TWIN_FRAC = 0.1
#: A null twin's traces carry its run's id plus this suffix (:func:`split_twins`).
TWIN_SUFFIX = "#null_twin"


def is_regime(row: dict[str, Any]) -> bool:
    """Whether a runs row is of a regime kind (:data:`~stabilitybench.data_schema.keys.SUSTAINED_KINDS`)."""
    return row.get("perturbation") in SUSTAINED_KINDS


def control_trajectory(runs: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(steps (U,), mean (U, p))``: the mean block telemetry of ``runs`` (each ``(steps (T,), X (T, p))``) at every
    block end step any of them has, over the runs with a finite value there (NaN where none has). None without runs."""
    runs = [(np.asarray(st), np.asarray(X, float)) for st, X in runs]
    if not runs:
        return None
    st = np.concatenate([r[0] for r in runs])
    X = np.vstack([r[1] for r in runs])
    steps, inv = np.unique(st, return_inverse=True)
    fin = np.isfinite(X)
    total = np.zeros((steps.size, X.shape[1]))
    count = np.zeros_like(total)
    np.add.at(total, inv, np.where(fin, X, 0.0))
    np.add.at(count, inv, fin)
    with np.errstate(invalid="ignore", divide="ignore"):
        return steps, np.where(count > 0, total / count, np.nan)


def _on_steps(trajectory: tuple[np.ndarray, np.ndarray], steps: np.ndarray) -> np.ndarray:
    """``trajectory``'s mean at ``steps`` ``(T, p)``: each column carried forward (then back) over steps it lacks;
    a column with no value at all is 0 (no trend to follow)."""
    ref_steps, mean = trajectory
    idx = np.clip(np.searchsorted(ref_steps, steps), 0, max(ref_steps.size - 1, 0))
    R = np.where((ref_steps[idx] == steps)[:, None], mean[idx], np.nan)
    R = np.column_stack([ffill(ffill(c)[::-1])[::-1] for c in R.T])  # forward, then back over the leading NaNs
    return np.where(np.isnan(R), 0.0, R)


def null_twin(steps: np.ndarray, X: np.ndarray, collapse_step: int | None, seed: int,
              trajectory: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray | None:
    """The null twin ``(T, p)`` of a regime run's block telemetry ``X`` ``(T, p)`` at block end ``steps`` ``(T,)``.

    Per column an AR(1) (:func:`~stabilitybench.analysis.time_to_event.ar1_twin`: mean, lag-1 autocorrelation and
    innovation SD) fitted on the blocks that end before ``TWIN_FRAC`` of the run's updates and before
    ``collapse_step`` (a regime has no pre-onset stretch: this is the run's own early, stable telemetry), started at
    the run's first value and simulated for all ``T`` blocks; seeded. None when fewer than 3 blocks are in that
    stretch (nothing to fit).

    ``trajectory`` (:func:`control_trajectory` of the fold's training controls): the AR(1) is fitted to the run's
    early *deviation* from the controls' mean trajectory and the twin is that trajectory plus the simulated
    deviation: a run that trains normally with its own early offset and noise. Without it the twin is stationary
    at the early stretch's mean, which in a run that is still learning (the LM's warm-up, the loss falling from
    10.8 nats) is a level no control holds later, so every detector would alarm on it.
    """
    steps = np.asarray(steps)
    stop = TWIN_FRAC * n_updates(steps)
    if collapse_step is not None:
        stop = min(stop, float(collapse_step))
    early = steps < stop
    if int(early.sum()) < 3:
        return None
    R = np.zeros(np.shape(X)) if trajectory is None else _on_steps(trajectory, steps)
    padded = np.full(np.shape(X), np.nan)
    padded[early] = X[early] - R[early]  # ar1_twin fits each column on its finite values and keeps the length
    return ar1_twin(padded, seed) + R


def twin_seed(run_id: str, seed: int) -> int:
    """The seed of ``run_id``'s null twin: the same in every fold, detector and process."""
    return (zlib.crc32(run_id.encode()) + int(seed)) % (2**32)


def split_twins(traces: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(traces of runs, traces of null twins)``; the twins' ``run_id`` without :data:`TWIN_SUFFIX`."""
    if traces.height == 0 or "run_id" not in traces.columns:
        return traces, traces.head(0)
    twin = pl.col("run_id").str.ends_with(TWIN_SUFFIX)
    return traces.filter(~twin), traces.filter(twin).with_columns(
        pl.col("run_id").str.strip_suffix(TWIN_SUFFIX))


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
    threshold, provenance). (Leave-one-env-out, which trains on other envs, is :func:`evaluate_transfer`.)
    The traces carry ``excess``
    (:func:`calibrated_excess` per block), what same-dose detection ranks.
    """
    for name in cfg.detectors:
        spec_for(name)  # an unknown detector is refused (one line) before anything is fitted
    folds = regime_folds(runs, cfg.max_folds, cfg.calibration_chunks, min_calibration_runs(cfg.fpr))
    if not folds:
        return _empty_rows(), _empty_traces(), [not_testable("fewer than 3 seeds")]
    info = {r["run_id"]: r for r in runs.iter_rows(named=True)}
    domains = runs["domain"].unique().to_list() if "domain" in runs.columns else []
    variants = detector_variants(features, cfg, domains[0] if len(domains) == 1 else None)
    n_jobs = _processes(cfg)
    if n_jobs > 1:  # (fold, detector) pairs are independent and seeded: the same results as one after the other
        from joblib import Parallel, delayed

        jobs = [(i, fold, info, arrays, features, [v], cfg, save_dir, block)
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
            done.append(_evaluate_fold(i, fold, info, arrays, features, variants, cfg, save_dir, block))
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
                   block: int) -> tuple[list[dict[str, Any]], list[pl.DataFrame], dict[str, Any]]:
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
    # regime runs: traces only (question (c)), plus a null twin each, scored by the same fitted detector
    twins: dict[str, np.ndarray] = {}
    trajectory = control_trajectory((arrays[r][0], arrays[r][1]) for r in train_ids)
    for rid in test_ids:
        if is_regime(info[rid]):
            st, X, _ = arrays[rid]
            tw = null_twin(st, X, info[rid]["collapse_step"] if info[rid]["collapsed"] else None,
                           twin_seed(rid, cfg.seed), trajectory)
            if tw is not None:
                twins[rid] = tw
    note = {"fold": i, **{k: v for k, v in fold.items()}, "n_train_runs": len(train_ids),
            "n_calibration_runs": len(calib_ids), "n_test_runs": len(test_ids)}
    if not train_ids or not calib_ids or not test_ids:
        note.update(Status(StatusKind.SKIPPED, "no unperturbed training or calibration run, or no test run"
                           ).to_json())
        return rows, traces, note
    for label, name, cols in variants:
        idx = [features.index(c) for c in cols]
        det = make_detector(name, cols, cfg)
        if not getattr(det, "available", True) or not idx:
            continue
        train = [arrays[r][1][:, idx] for r in train_ids]
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
                        provenance=provenance_of(info.values(), train_ids, calib_ids),
                        columns_by_update=columns_reported_by((arrays[r][0], arrays[r][1][:, idx]) for r in train_ids)
                        ).save(save_dir / f"{label.replace('/', '-')}_fold{i}{SUFFIX}")
        for rid in test_ids:
            steps, X, nonfinite = arrays[rid]
            score = det.score(X[:, idx])
            score[nonfinite] = np.inf
            pval = conf.p_value(score)
            if not is_regime(info[rid]):  # a regime run enters question (c) only (module docstring)
                rows.append(_run_row(rid, info[rid], i, label, conf, steps, pval, cfg, block, score))
            traces.append(_trace(rid, label, i, steps, score, conf))
            if rid in twins:
                traces.append(_trace(rid + TWIN_SUFFIX, label, i, steps, det.score(twins[rid][:, idx]), conf))
    return rows, traces, note


def _trace(rid: str, label: str, fold: int, steps: np.ndarray, score: np.ndarray, conf: ConformalCalibrator
           ) -> pl.DataFrame:
    """One test run's per-block trace (the ``early_warning_scores`` rows) from its scores ``(T,)``."""
    return pl.DataFrame({"run_id": rid, "detector": label, "fold": fold, "step": steps, "score": score,
                         "threshold": conf.threshold_, "p_value": conf.p_value(score),
                         "excess": calibrated_excess(score, conf)},
                        schema_overrides={"step": pl.Int64, "score": pl.Float64, "p_value": pl.Float64,
                                          "excess": pl.Float64})


_ROW_SCHEMA = {
    "run_id": pl.String, "seed": pl.Int64, "fold": pl.Int64, "detector": pl.String, "threshold": pl.Float64,
    "n_calibration": pl.Int64, "alpha_used": pl.Float64, "guaranteed_fpr_bound": pl.Float64,
    "perturbation": pl.String, "magnitude": pl.Float64, "duration_steps": pl.Int64, "unperturbed": pl.Boolean,
    "collapsed": pl.Boolean, "collapse_kind": pl.String, "collapse_step": pl.Int64, "onset_step": pl.Int64,
    "landmark_step": pl.Int64, "first_alarm_step": pl.Int64, "alarm_before_collapse": pl.Boolean,
    "lead_updates": pl.Int64, "detection_score": pl.Float64, "detection_window_blocks": pl.Int64,
    "prediction_score": pl.Float64, "prediction_excess": pl.Float64,
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
      ``detection_window_blocks``: the blocks in that window (0: a collapse dated before the first block after
      onset ends, which no detector can score before; question (a) leaves it out and counts it).
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
        "detection_score": _neglog_min_p(pval, det_mask), "detection_window_blocks": int(det_mask.sum()),
        "prediction_score": _neglog_min_p(pval, after & (steps <= L)),
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


# ------------------------------------------------------------------------------- held-out generalisation (d)
#: How a transferred monitor's threshold is calibrated (the ``calibrated_on`` column of the leave-one-env-out rows):
#: ``source`` on the source envs' controls (nothing of the target is used: what a practitioner deploying the monitor
#: on a new env gets), ``target`` on the target env's calibration controls (the fitted monitor is the source's).
TRANSFER_CALIBRATIONS = ("source", "target")


def _controls(runs: pl.DataFrame, arrays: dict[str, Any], seeds: list[int]) -> list[str]:
    """Run ids of ``runs``' unperturbed, non-collapsed runs whose seed is in ``seeds`` and that have telemetry."""
    keep = runs.filter(pl.col("unperturbed") & ~pl.col("collapsed").fill_null(False)
                       & pl.col("seed").is_in([int(s) for s in seeds]))
    return [r for r in keep["run_id"].to_list() if r in arrays]


def transfer_folds(target_seeds: list[int], sources: list[tuple[str, pl.DataFrame, dict[str, Any]]],
                   cfg: EarlyWarningConfig) -> list[dict[str, Any]]:
    """The folds of :func:`evaluate_transfer`: the target's rotating seed split (:func:`seed_folds`), each paired
    with fold ``i mod k_s`` of every source env's own split.

    ``sources``: ``(env, runs, arrays)`` per source env. Each fold: ``fold`` (i), the target's ``train`` /
    ``calibration`` / ``test`` seeds (its ``train`` seeds are not used), ``source_train`` and
    ``source_calibration`` (run ids of the source controls the monitor is fitted and calibrated on, pooled over the
    sources) and ``source_folds`` (env -> the source fold used). With one source env the fitted monitor is the
    one that env's own fold ``i`` fits in the main evaluation. A source env with fewer than 3 seeds has no
    split and is left out (``skipped_sources``). Empty when the target has fewer than 3 seeds.
    """
    folds = seed_folds(target_seeds, cfg.max_folds, cfg.calibration_chunks)
    split = {env: (runs, arrays, seed_folds(runs["seed"].to_list(), cfg.max_folds, cfg.calibration_chunks))
             for env, runs, arrays in sources}
    out = []
    for i, f in enumerate(folds):
        used = {env: i % len(sf) for env, (_, _, sf) in split.items() if sf}
        train = [r for env, j in used.items()
                 for r in _controls(split[env][0], split[env][1], split[env][2][j]["train"])]
        cal = [r for env, j in used.items()
               for r in _controls(split[env][0], split[env][1], split[env][2][j]["calibration"])]
        out.append({"fold": i, **f, "source_train": train, "source_calibration": cal, "source_folds": used,
                    "skipped_sources": sorted(env for env, (_, _, sf) in split.items() if not sf)})
    return out


def evaluate_transfer(
    target_runs: pl.DataFrame,
    target_arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    sources: list[tuple[str, pl.DataFrame, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]],
    features: list[str],
    cfg: EarlyWarningConfig,
    block: int = 1,
    progress: Callable[[str], None] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, list[dict[str, Any]]]:
    """Leave-one-env-out: monitors fitted on other envs' controls, scored on every run of the target env.

    ``target_runs`` / ``sources[k][1]``: runs frames as :func:`evaluate_group` takes them (``seed``,
    ``unperturbed``, ``collapsed``, ``onset_step``, ...); ``*_arrays[run_id] = (steps (T,), X (T, p), nonfinite
    (T,))`` with the columns ``features``; ``block``: the target's block length. Folds (:func:`transfer_folds`):
    fold ``i`` fits every detector on the source controls of source fold ``i``'s training seeds, then calibrates
    it twice (:data:`TRANSFER_CALIBRATIONS`): on the source controls of that fold's calibration seeds
    (``calibrated_on = "source"``; nothing of the target is used) and on the target's calibration seeds' controls
    (``"target"``), and scores the target's test seeds under both. Every target run is tested once per
    calibration, as in :func:`evaluate_group`, so the target's own main-evaluation rows are the in-env numbers
    on the same runs. One fit serves both calibrations; the no-kick feature set is not evaluated (as before).
    Regime runs (question (c)) are not scored. Returns (rows: :func:`_run_row` plus ``calibrated_on`` and
    ``source_envs``; traces: ``run_id, detector, fold, step, score, threshold, p_value, excess, calibrated_on``;
    one note per fold).
    """
    for name in cfg.detectors:
        spec_for(name)
    folds = transfer_folds(target_runs["seed"].to_list(), sources, cfg)
    if not folds:
        return _transfer_rows([]), _empty_traces().with_columns(pl.lit(None, pl.String).alias("calibrated_on")), \
            [not_testable("fewer than 3 target seeds")]
    info = {r["run_id"]: r for r in target_runs.iter_rows(named=True)}
    src_info = {r["run_id"]: (r, arrays) for _, runs, arrays in sources for r in runs.iter_rows(named=True)}
    domains = target_runs["domain"].unique().to_list() if "domain" in target_runs.columns else []
    variants = detector_variants(features, cfg, domains[0] if len(domains) == 1 else None, no_kick=False)
    envs = ",".join(sorted(env for env, _, _ in sources))
    jobs = []
    for f in folds:
        src = {r: (src_info[r][1][r], onset_step(src_info[r][0])) for r in f["source_train"] + f["source_calibration"]}
        jobs += [(f, info, target_arrays, src, features, [v], cfg, block, envs) for v in variants]
    n_jobs = min(_processes(cfg), len(jobs))
    if progress:
        progress(f"{len(folds)} transfer folds x {len(variants)} detectors from {envs}")
    if n_jobs > 1:
        from joblib import Parallel, delayed

        order = sorted(range(len(jobs)), key=lambda j: spec_for(jobs[j][5][0][1]).fit_order)
        ran = Parallel(n_jobs=n_jobs, backend="loky")(delayed(_transfer_fold_in_worker)(*jobs[j]) for j in order)
        done: list[Any] = [None] * len(jobs)
        for j, d in zip(order, ran, strict=True):
            done[j] = d
    else:
        done = [_transfer_fold(*job) for job in jobs]
    notes = []
    for f in folds:
        parts = [d for d, job in zip(done, jobs, strict=True) if job[0]["fold"] == f["fold"]]
        notes.append(_merge_fold(parts)[2] if parts else {"fold": f["fold"]})
    rows = [r for d in done for r in d[0]]
    traces = [t for d in done for t in d[1]]
    trace = pl.concat(traces, how="diagonal_relaxed") if traces else \
        _empty_traces().with_columns(pl.lit(None, pl.String).alias("calibrated_on"))
    return _transfer_rows(rows), trace, notes


def _transfer_rows(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """The leave-one-env-out rows: :data:`_ROW_SCHEMA` plus ``calibrated_on`` and ``source_envs``."""
    return pl.DataFrame(rows, schema={**_ROW_SCHEMA, "calibrated_on": pl.String, "source_envs": pl.String})


def _transfer_fold_in_worker(*job: Any) -> tuple[list[dict[str, Any]], list[pl.DataFrame], dict[str, Any]]:
    """:func:`_transfer_fold` in a worker process: one torch thread, as :func:`_evaluate_fold_in_worker`."""
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(1)
    return _transfer_fold(*job)


def _calibrated(det: MonitorBase, idx: list[int],
                runs: list[tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int]], fpr: float) -> ConformalCalibrator:
    """A conformal calibrator fitted on the window maxima from onset of ``det``'s scores of ``runs`` (each
    ``((steps (T,), X (T, p), nonfinite (T,)), onset update)``; columns ``idx`` of ``X``; non-finite rows +inf)."""
    maxima = []
    for (st, X, nf), onset in runs:
        sc = det.score(X[:, idx])
        sc[nf] = np.inf
        maxima.append(window_max(sc, st, onset, None))
    return ConformalCalibrator(fpr).fit(maxima)


def _transfer_fold(f: dict[str, Any], info: dict[str, dict[str, Any]],
                   arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                   src: dict[str, tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int]], features: list[str],
                   variants: list[tuple[str, str, list[str]]], cfg: EarlyWarningConfig, block: int, envs: str
                   ) -> tuple[list[dict[str, Any]], list[pl.DataFrame], dict[str, Any]]:
    """One fold of :func:`evaluate_transfer`: fit on the source controls ``f["source_train"]``, calibrate on
    ``f["source_calibration"]`` and on the target's calibration controls, score the target's test runs under both.
    ``src``: source run id -> (its arrays, its onset update)."""
    def target(seeds: list[int], controls_only: bool) -> list[str]:
        return [rid for rid, r in info.items() if r["seed"] in seeds and rid in arrays and not is_regime(r)
                and (not controls_only or (r["unperturbed"] and not r["collapsed"]))]

    cal_t, test = target(f["calibration"], True), target(f["test"], False)
    note: dict[str, Any] = {"fold": f["fold"], "calibration": f["calibration"], "test": f["test"],
                            "source_folds": f["source_folds"], "n_train_runs": len(f["source_train"]),
                            "n_calibration_runs_source": len(f["source_calibration"]),
                            "n_calibration_runs_target": len(cal_t), "n_test_runs": len(test),
                            "train": f"unperturbed runs of {envs} (their fold's training seeds)"}
    if f["skipped_sources"]:
        note["skipped_sources"] = f["skipped_sources"]
    if not f["source_train"] or not f["source_calibration"] or not cal_t or not test:
        note.update(Status(StatusKind.SKIPPED, "no source training or calibration control, no target calibration "
                                               "control, or no target test run").to_json())
        return [], [], note
    rows: list[dict[str, Any]] = []
    traces: list[pl.DataFrame] = []
    for label, name, cols in variants:
        idx = [features.index(c) for c in cols]
        det = make_detector(name, cols, cfg)
        if not getattr(det, "available", True) or not idx:
            continue
        try:
            det.fit([src[r][0][1][:, idx] for r in f["source_train"]])
        except InsufficientDataError as exc:
            note.setdefault("detector_errors", {})[label] = str(exc)
            continue
        confs = {"source": _calibrated(det, idx, [src[r] for r in f["source_calibration"]], cfg.fpr),
                 "target": _calibrated(det, idx, [(arrays[r], onset_step(info[r])) for r in cal_t], cfg.fpr)}
        note.setdefault("detectors", {})[label] = {
            **{f"threshold_{k}": c.threshold_ for k, c in confs.items()},
            **{f"n_calibration_{k}": c.n_ for k, c in confs.items()}, "features": cols, **det.fit_summary()}
        for rid in test:
            steps, X, nonfinite = arrays[rid]
            score = det.score(X[:, idx])
            score[nonfinite] = np.inf
            for cal in TRANSFER_CALIBRATIONS:
                conf = confs[cal]
                rows.append({**_run_row(rid, info[rid], f["fold"], label, conf, steps, conf.p_value(score), cfg,
                                        block, score), "calibrated_on": cal, "source_envs": envs})
                traces.append(_trace(rid, label, f["fold"], steps, score, conf).with_columns(
                    pl.lit(cal).alias("calibrated_on")))
    return rows, traces, note
