"""A monitor for deployment: one of ``analyze``'s fold monitors refitted on all of its group's controls.

``analyze`` fits each monitor once per seed fold (:func:`stabilitybench.analysis.early_warning.evaluate_group`), and a
fold calibrates on a fifth of the controls: with 30 controls that is 6 runs, a conformal level of 1/7
and no 5% claim. To *use* a monitor on new runs you want every control used, and enough of them in the
calibration set for the claim. :func:`refit_monitor` takes a fold monitor as the recipe (detector kind
and parameters, feature columns and transforms, block size, warm-up, group), splits the group's
unperturbed, non-collapsed runs by seed into a training set and a calibration set of
``n_calibration`` runs (default: the fewest that reach ``fpr``, 19 for 5%, when the group has enough),
fits a fresh detector, calibrates its threshold conformally and writes a new
:class:`~stabilitybench.analysis.monitor_file.MonitorFile` whose provenance names every run it used::

    stabilitybench fit-monitor results/monitors/rl_ppo_Swimmer-v5_default/kalman_fold0.monitor.npz \\
        --corpus corpus --results results -o monitors/kalman.monitor.npz
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from stabilitybench.analysis.conformal import min_calibration_runs
from stabilitybench.analysis.data import iter_run_steps
from stabilitybench.analysis.detectors import spec_for
from stabilitybench.analysis.errors import MonitorFileError
from stabilitybench.analysis.metastate.base import MonitorBase
from stabilitybench.analysis.monitor_file import MonitorFile, fit_monitor, provenance_of
from stabilitybench.data_schema.keys import GROUP_KEYS, control_mask

#: Fewest training runs a refit accepts (the Kalman EM and the GRU need several sequences).
MIN_TRAIN_RUNS = 2


@dataclass(frozen=True)
class Split:
    """Seeds of the training and calibration controls (disjoint)."""

    train: list[int]
    calibration: list[int]


def fresh_detector(template: MonitorFile) -> MonitorBase:
    """An unfitted detector of the template's kind with its constructor parameters."""
    return spec_for(template.kind).cls(**template.detector.get_params())


def control_runs(runs: pl.DataFrame, group: str) -> pl.DataFrame:
    """The group's control runs (:func:`stabilitybench.data_schema.keys.control_mask`: runs that acted on an alarm are
    not controls) that did not collapse, from ``analyze``'s runs table."""
    parts = group.split("/")
    if len(parts) != len(GROUP_KEYS):
        raise MonitorFileError(f"the template's group {group!r} is not domain/algo/env/stochasticity")
    need = {"run_id", "seed", "perturbation", "collapsed", *GROUP_KEYS}
    missing = need - set(runs.columns)
    if missing:
        raise MonitorFileError(f"the runs table lacks {', '.join(sorted(missing))}: is it analyze's runs.parquet?")
    cond = pl.lit(control_mask(runs)) & ~pl.col("collapsed").fill_null(True)
    for k, v in zip(GROUP_KEYS, parts, strict=True):
        cond &= pl.col(k).cast(pl.String) == v
    return runs.filter(cond).sort("seed")


def split_seeds(seeds: list[int], n_calibration: int | None, fpr: float) -> Split:
    """Calibrate on the *last* ``n_calibration`` seeds, train on the rest (refuses too few of either)."""
    seeds = sorted(set(int(s) for s in seeds))
    want = n_calibration if n_calibration is not None else min(min_calibration_runs(fpr),
                                                                len(seeds) - MIN_TRAIN_RUNS)
    if want < 1 or len(seeds) - want < MIN_TRAIN_RUNS:
        raise MonitorFileError(f"{len(seeds)} control seed(s): need >= {MIN_TRAIN_RUNS} to train and >= 1 to "
                               f"calibrate (asked for {want} calibration runs)")
    return Split(seeds[: len(seeds) - want], seeds[len(seeds) - want:])


def refit_monitor(template: MonitorFile, corpus: str | os.PathLike[str], runs: pl.DataFrame,
                  fpr: float | None = None, n_calibration: int | None = None) -> MonitorFile:
    """Refit ``template``'s recipe on every control of its group (module docstring); returns the new file."""
    group = template.provenance.get("group")
    if not group:
        raise MonitorFileError("the template monitor names no group in its provenance: use a file analyze wrote")
    fpr = fpr if fpr is not None else (template.target_fpr or 0.05)
    ctrl = control_runs(runs, group)
    split = split_seeds(ctrl["seed"].to_list(), n_calibration, fpr)
    cols = [*template.features, *template.nonfinite_columns]
    frames: dict[int, list[pl.DataFrame]] = {}
    for row, steps in iter_run_steps(corpus, ctrl, cols):
        frames.setdefault(int(row["seed"]), []).append(steps)
    train = [f for s in split.train for f in frames.get(s, [])]
    calib = [f for s in split.calibration for f in frames.get(s, [])]
    train_ids = [str(f["run_id"][0]) for f in train if f.height]
    calib_ids = [str(f["run_id"][0]) for f in calib if f.height]
    prov: dict[str, Any] = provenance_of(ctrl.iter_rows(named=True), train_ids, calib_ids)
    prov["refit_of"] = getattr(template, "path", None)
    return fit_monitor(train, calib, list(template.features), template.block_updates, detector=fresh_detector(template),
                       fpr=fpr, warmup_updates=template.warmup_updates, provenance=prov)


def refit_file(like: str | os.PathLike[str], corpus: str | os.PathLike[str], results: str | os.PathLike[str],
               out: str | os.PathLike[str], fpr: float | None = None, n_calibration: int | None = None
               ) -> MonitorFile:
    """:func:`refit_monitor` from files: the template monitor, the corpus and ``analyze``'s results folder."""
    template = MonitorFile.load(like)
    runs_path = Path(results) / "runs.parquet"
    if not runs_path.exists():
        raise MonitorFileError(f"{runs_path}: no runs table; run `stabilitybench analyze` first")
    mf = refit_monitor(template, corpus, pl.read_parquet(runs_path), fpr, n_calibration)
    mf.save(out)
    mf.path = str(out)
    return mf
