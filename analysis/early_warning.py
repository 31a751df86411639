"""Early-warning evaluation of the meta-state monitors against the baselines, on held-out seeds.

Splits (rotating three-way seed split)
--------------------------------------
Seeds are sorted and cut into ``k = min(n_seeds, max_folds)`` chunks. Fold ``i`` *tests* on
chunk ``i``, *calibrates* on chunk ``i+1 (mod k)`` and *trains* on the rest, so every run is
a test run exactly once and the pooled test set is the whole group. With the quick
corpus's 3 seeds that is train 1 / calibrate 1 / test 1, rotated three times. Every
detector is fitted on the **unperturbed** runs of the training seeds only, and its alarm
threshold is calibrated on the **unperturbed** runs of the calibration seeds only, to the
same target FPR (:meth:`~analysis.metastate.base.MonitorBase.calibrate`); an unperturbed run
that itself collapsed is not "normal" telemetry and is left out of both. Nothing is fitted
or tuned on perturbed runs, so the per-perturbation-kind rows are also the
leave-one-perturbation-kind-out evaluation. **Leave-one-env-out** (several envs per domain,
algo and stochasticity level): for each held-out env the detectors are trained on the
unperturbed runs of all *other* envs, then calibrated and tested on the held-out env's
calibration and test seeds exactly as above; it measures whether the model of normal
telemetry transfers across tasks. With one env it is reported as not testable.

Metrics (test runs only, pooled over folds)
-------------------------------------------
* **AUROC** (run level): the max smoothed score between onset and collapse (collapsed runs)
  or between onset and the last update (censored runs) separates collapsed (positive) from
  non-collapsed (negative) runs; CI by a bootstrap over runs stratified by class. That
  window is much longer for censored runs, which favours them for any noisy score, so
  ``auroc_horizon`` also caps every window at ``onset + horizon_frac`` (10%) of the run, fixed
  in advance. ``auroc_of_magnitude_reference`` is the AUROC of the perturbation magnitude
  itself (known to the experimenter, not a detector): a monitor that only matches it has
  learnt how big the kick was, not that a collapse is coming.
* **Lead time** = collapse step - first alarm at or after onset (alarms after the collapse
  do not count); median and IQR over collapsed runs with an alarm, bootstrap CI of the median.
* **Fraction of collapses preceded by an alarm** (Clopper-Pearson CI).
* **FPR**: share of unperturbed test runs with any alarm after onset (Clopper-Pearson CI).
  Also the alarm rate on perturbed runs that did not collapse (not a false positive as
  such: the perturbation did act).

Scores are per block; an alarm is dated at its block's last update, so lead times are
in optimizer updates. Non-finite telemetry scores ``+inf``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from analysis.baselines import BASELINES
from analysis.errors import InsufficientDataError
from analysis.metastate import KalmanMonitor, MonitorBase
from analysis.stats import auroc, bootstrap_ci, clopper_pearson, iqr, not_testable, number

MONITORS = ("kalman", "gru")


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
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_detectors() -> tuple[str, ...]:
    """Every monitor and baseline; the GRU monitor only where torch is installed (not in the core install)."""
    has_torch = importlib.util.find_spec("torch") is not None
    return tuple(d for d in (*MONITORS, *BASELINES) if d != "gru" or has_torch)


def seed_folds(seeds: list[int], max_folds: int = 5) -> list[dict[str, list[int]]]:
    """Rotating train/calibration/test seed split (see the module docstring). Needs >= 3 seeds."""
    s = sorted(set(int(x) for x in seeds))
    if len(s) < 3:
        return []
    k = min(len(s), max_folds)
    chunks = [list(map(int, c)) for c in np.array_split(np.array(s), k)]
    folds = []
    for i in range(k):
        test, calib = chunks[i], chunks[(i + 1) % k]
        train = [x for j, c in enumerate(chunks) if j not in (i, (i + 1) % k) for x in c]
        folds.append({"train": train, "calibration": calib, "test": test})
    return folds


def make_detector(name: str, features: list[str], cfg: EarlyWarningConfig) -> MonitorBase:
    """A fresh, unfitted detector by name."""
    if name == "kalman":
        return KalmanMonitor(n_latent="pca90", n_iter=cfg.kalman_iter, smooth=cfg.smooth, seed=cfg.seed)
    if name == "gru":
        from analysis.metastate.gru import GRUMonitor

        return GRUMonitor(hidden=cfg.gru_hidden, epochs=cfg.gru_epochs, smooth=cfg.smooth, seed=cfg.seed)
    cls = BASELINES[name]
    if name == "pca_recon":
        return cls(features, smooth=cfg.smooth)
    return cls(features, window=cfg.baseline_window, smooth=cfg.smooth)


def _onset_index(steps: np.ndarray, onset: int | None) -> int:
    if onset is None:
        return 0
    return int(np.searchsorted(steps, onset, side="left"))


def evaluate_group(
    runs: pl.DataFrame,
    arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    features: list[str],
    cfg: EarlyWarningConfig,
    progress: Callable[[str], None] | None = None,
    save_dir: Path | None = None,
    external_train: list[np.ndarray] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, list[dict[str, Any]]]:
    """Fit, calibrate and score every detector on every fold of one matched group.

    ``runs`` holds the group's runs with ``seed, onset_step, unperturbed, collapsed,
    collapse_step``; ``arrays[run_id] = (steps (T,), X (T, p), nonfinite (T,))``.
    Returns (per test run x detector table, score traces, fold notes). With ``save_dir``
    the fitted, calibrated monitors are saved there (``<monitor>_fold<i>.npz|.pt``). With
    ``external_train`` (sequences from *other* envs: leave-one-env-out) every fold trains on
    those instead of its own training seeds; calibration and test stay within this group.
    """
    folds = seed_folds(runs["seed"].to_list(), cfg.max_folds)
    notes: list[dict[str, Any]] = []
    if not folds:
        return _empty_rows(), _empty_traces(), [{"status": "not testable: fewer than 3 seeds"}]
    info = {r["run_id"]: r for r in runs.iter_rows(named=True)}
    rows, traces = [], []
    for i, fold in enumerate(folds):
        def pick(seeds: list[int], controls_only: bool) -> list[str]:
            # training/calibration use unperturbed runs that did not themselves collapse (not "normal")
            return [rid for rid, r in info.items() if r["seed"] in seeds and rid in arrays
                    and (not controls_only or (r["unperturbed"] and not r["collapsed"]))]

        train_ids = pick(fold["train"], True)
        calib_ids = pick(fold["calibration"], True)
        test_ids = pick(fold["test"], False)
        train = [arrays[r][1] for r in train_ids] if external_train is None else list(external_train)
        note = {"fold": i, **{k: v for k, v in fold.items()}, "n_train_runs": len(train),
                "n_calibration_runs": len(calib_ids), "n_test_runs": len(test_ids)}
        if external_train is not None:
            note["train"] = "unperturbed runs of the other envs"
        if not train or not calib_ids or not test_ids:
            note["status"] = "skipped: no unperturbed training or calibration run, or no test run"
            notes.append(note)
            continue
        notes.append(note)
        calib = [arrays[r][1] for r in calib_ids]
        calib_starts = [_onset_index(arrays[r][0], info[r]["onset_step"]) for r in calib_ids]
        for name in cfg.detectors:
            det = make_detector(name, features, cfg)
            if not getattr(det, "available", True):
                continue
            if progress:
                progress(f"fold {i + 1}/{len(folds)}: {name}")
            try:
                det.fit(train)
            except InsufficientDataError as exc:
                note.setdefault("detector_errors", {})[name] = str(exc)
                continue
            det.calibrate(calib, cfg.fpr, calib_starts)
            info_fit: dict[str, Any] = {"threshold": det.threshold_, "calibration_runs": len(calib)}
            if name == "kalman":
                info_fit.update(n_latent=det.n_latent_, em_iterations=len(det.loglik_))
            if name == "gru":
                info_fit.update(final_train_nll=det.train_loss_[-1])
            note.setdefault("detectors", {})[name] = info_fit
            if save_dir is not None and name in MONITORS:
                save_dir.mkdir(parents=True, exist_ok=True)
                det.save(save_dir / f"{name}_fold{i}.{'npz' if name == 'kalman' else 'pt'}")
            for rid in test_ids:
                steps, X, nonfinite = arrays[rid]
                score = det.score(X)
                score[nonfinite] = np.inf
                r = info[rid]
                rows.append(_run_row(rid, r, i, name, det.threshold_, steps, score, cfg.horizon_frac,
                                     cfg.early_blocks))
                traces.append(pl.DataFrame({"run_id": rid, "detector": name, "fold": i, "step": steps,
                                            "score": score, "threshold": det.threshold_},
                                           schema_overrides={"step": pl.Int64, "score": pl.Float64}))
    table = pl.DataFrame(rows, schema=_ROW_SCHEMA) if rows else _empty_rows()
    trace = pl.concat(traces, how="diagonal_relaxed") if traces else _empty_traces()
    return table, trace, notes


_ROW_SCHEMA = {
    "run_id": pl.String, "fold": pl.Int64, "detector": pl.String, "threshold": pl.Float64,
    "perturbation": pl.String, "magnitude": pl.Float64, "unperturbed": pl.Boolean, "collapsed": pl.Boolean,
    "collapse_step": pl.Int64, "onset_step": pl.Int64, "window_max": pl.Float64, "first_alarm_step": pl.Int64,
    "alarm_before_collapse": pl.Boolean, "lead_updates": pl.Int64, "early_score": pl.Float64,
    "horizon_max": pl.Float64,
}


def _empty_rows() -> pl.DataFrame:
    return pl.DataFrame(schema=_ROW_SCHEMA)


def _empty_traces() -> pl.DataFrame:
    return pl.DataFrame(schema={"run_id": pl.String, "detector": pl.String, "fold": pl.Int64, "step": pl.Int64,
                                "score": pl.Float64, "threshold": pl.Float64})


def _run_row(rid: str, r: dict[str, Any], fold: int, name: str, thr: float, steps: np.ndarray,
             score: np.ndarray, horizon_frac: float = 0.1, early_blocks: int = 10) -> dict[str, Any]:
    onset = r["onset_step"] if r["onset_step"] is not None else 0
    cstep = r["collapse_step"] if r["collapsed"] else None
    after = steps >= onset
    stop = cstep if cstep is not None else (int(steps.max()) if steps.size else None)
    m = after & (steps <= stop) if stop is not None else after
    vals = score[m]
    vals = vals[~np.isnan(vals)]
    wmax = float(vals.max()) if vals.size else float("nan")
    # horizon-matched window: [onset, min(collapse, onset + H)], H fixed in advance
    H = horizon_frac * (int(steps.max()) + 1 if steps.size else 0)
    hstop = min(cstep, onset + H) if cstep is not None else onset + H
    hv = score[after & (steps <= hstop)]
    hv = hv[~np.isnan(hv)]
    hmax = float(hv.max()) if hv.size else float("nan")
    with np.errstate(invalid="ignore"):
        alarm = after & (score > thr)
    first = int(steps[np.argmax(alarm)]) if alarm.any() else None
    before = cstep is not None and first is not None and first <= cstep
    lead = (cstep - first) if before else None
    # early score: mean over the first ``early_blocks`` blocks after onset (covariate for the Cox model)
    idx = np.flatnonzero(after)[: max(1, early_blocks)]
    early = score[idx]
    early = early[np.isfinite(early)]
    return {
        "run_id": rid, "fold": fold, "detector": name, "threshold": thr, "perturbation": r["perturbation"],
        "magnitude": r["magnitude"], "unperturbed": r["unperturbed"], "collapsed": bool(r["collapsed"]),
        "collapse_step": cstep, "onset_step": r["onset_step"], "window_max": wmax, "first_alarm_step": first,
        "alarm_before_collapse": bool(before), "lead_updates": lead,
        "early_score": float(early.mean()) if early.size else None, "horizon_max": hmax,
    }


def metrics(rows: pl.DataFrame, cfg: EarlyWarningConfig) -> list[dict[str, Any]]:
    """Summary metrics per detector (and per perturbation kind) from :func:`evaluate_group` rows."""
    out = []
    if rows.height == 0:
        return out
    kinds = sorted(set(rows.filter(~pl.col("unperturbed"))["perturbation"].to_list()))
    for det in rows["detector"].unique(maintain_order=True).to_list():
        d = rows.filter(pl.col("detector") == det)
        for subset in ["all", *kinds]:
            s = d if subset == "all" else d.filter(pl.col("unperturbed") | (pl.col("perturbation") == subset))
            out.append({"detector": det, "subset": subset, **_metrics_of(s, cfg)})
    return out


def _metrics_of(d: pl.DataFrame, cfg: EarlyWarningConfig) -> dict[str, Any]:
    pos = d.filter(pl.col("collapsed"))
    neg = d.filter(~pl.col("collapsed"))
    scores = np.array(d["window_max"].to_list(), dtype=float)
    labels = np.array(d["collapsed"].to_list(), dtype=bool)
    res: dict[str, Any] = {"n_test_runs": d.height, "n_collapsed": pos.height, "n_not_collapsed": neg.height}
    a = auroc(scores[labels], scores[~labels])
    ci = bootstrap_ci(lambda idx: auroc(scores[idx][labels[idx]], scores[idx][~labels[idx]]), d.height,
                      cfg.n_boot, seed=cfg.seed, strata=labels.astype(int)) if a is not None else (None, None)
    res["auroc"] = number(a, d.height, ci, n_pos=pos.height, n_neg=neg.height,
                          window="[onset, collapse] or [onset, last update]")
    hs = np.array(d["horizon_max"].to_list(), dtype=float)
    a = auroc(hs[labels], hs[~labels])
    ci = bootstrap_ci(lambda idx: auroc(hs[idx][labels[idx]], hs[idx][~labels[idx]]), d.height,
                      cfg.n_boot, seed=cfg.seed, strata=labels.astype(int)) if a is not None else (None, None)
    res["auroc_horizon"] = number(a, d.height, ci, n_pos=pos.height, n_neg=neg.height,
                                  window="[onset, min(collapse, onset + 10% of the run)]")
    # reference, not a detector: how well the perturbation's own magnitude (known to the experimenter)
    # separates the same runs; a monitor that only matches this has learnt "how big was the kick"
    mag = np.array(d["magnitude"].fill_null(1.0).to_list(), dtype=float)
    mag = np.where(np.array(d["unperturbed"].to_list(), dtype=bool), 0.0, mag)
    res["auroc_of_magnitude_reference"] = number(auroc(mag[labels], mag[~labels]), d.height, None)
    leads = np.array([x for x in pos["lead_updates"].to_list() if x is not None], dtype=float)
    if leads.size:
        ci = bootstrap_ci(lambda idx: float(np.median(leads[idx])), leads.size, cfg.n_boot, seed=cfg.seed)
        q1, q3 = iqr(leads)
        res["median_lead_updates"] = number(float(np.median(leads)), int(leads.size), ci, iqr_low=q1, iqr_high=q3)
    else:
        res["median_lead_updates"] = number(None, 0, None)
    delays = np.array([a - o for a, o, b in zip(pos["first_alarm_step"].to_list(), pos["onset_step"].to_list(),
                                                 pos["alarm_before_collapse"].to_list(), strict=True)
                       if b and a is not None and o is not None], dtype=float)
    # how long after the perturbation began the (pre-collapse) alarm came: near 0 means the alarm is the kick itself
    res["median_alarm_delay_from_onset"] = number(float(np.median(delays)) if delays.size else None, int(delays.size),
                                                  iqr(delays) if delays.size else None, interval="IQR")
    k = int(pos["alarm_before_collapse"].sum()) if pos.height else 0
    res["frac_collapses_preceded"] = number(k / pos.height if pos.height else None, pos.height,
                                            clopper_pearson(k, pos.height))
    un = d.filter(pl.col("unperturbed"))
    fp = int(un["first_alarm_step"].is_not_null().sum())
    res["fpr_unperturbed"] = number(fp / un.height if un.height else None, un.height,
                                    clopper_pearson(fp, un.height), target=cfg.fpr)
    nc = d.filter(~pl.col("unperturbed") & ~pl.col("collapsed"))
    na = int(nc["first_alarm_step"].is_not_null().sum())
    res["alarm_rate_perturbed_not_collapsed"] = number(na / nc.height if nc.height else None, nc.height,
                                                       clopper_pearson(na, nc.height))
    return res


def leave_one_env_out_status(runs: pl.DataFrame) -> dict[str, Any]:
    """Leave-one-env-out needs >= 2 envs within a (domain, algo, stochasticity); otherwise not testable."""
    envs = runs.group_by(["domain", "algo", "stochasticity"]).agg(pl.col("env").n_unique().alias("n"))
    if envs.height and int(envs["n"].max()) >= 2:
        return {"status": "ok"}
    return not_testable("one env per (domain, algo, stochasticity)")
