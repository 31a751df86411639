"""A self-contained monitor file: a fitted meta-state monitor plus everything needed to apply it.

A bare :class:`~stabilitybench.analysis.metastate.KalmanMonitor` knows its parameters but not which telemetry columns
it reads, how they were transformed, how many optimizer updates make one block, from which update on
its threshold is calibrated, nor what it was fitted on. A :class:`MonitorFile` carries all of that::

    mf = MonitorFile.load("results/monitors/rl_ppo_HalfCheetah-v5_default/kalman_fold0.monitor.npz")
    trace = mf.score_run(steps)            # offline: one row per block (step, msd, alarm)
    online = mf.online()                   # live: online.update(row) -> (msd | None, alarm)

File format: one ``.npz`` (no pickle) with a JSON ``meta`` entry and the model's arrays (the GRU's
weights as ``net.<name>`` float32 arrays), so a file written here loads in a fresh process with numpy
alone (torch only for a GRU). ``meta`` holds:

* ``kind`` (a saveable detector of the registry, :func:`stabilitybench.analysis.detectors.saveable_names`:
  ``kalman``, ``gru`` or a causal baseline such as ``loss_spike``) and the detector's constructor ``params``;
* ``features`` (steps column names, in model order) and ``transforms`` (``identity`` | ``log1p``:
  ``sign(x) log1p(|x|)`` | ``log10``: ``log10(x)`` for ``x > 0``), applied as in
  :func:`stabilitybench.analysis.data.feature_frame`: a non-finite value becomes missing, then the transform, then a
  forward fill within the run; ``nonfinite_columns``: a non-finite raw value in any of them scores the
  block ``+inf``;
* ``block_updates`` B: blocks are ``step // B`` and a block's features are their means
  (:func:`stabilitybench.analysis.data.to_blocks`), its score known at its last update;
* ``warmup_updates``: no alarm on a block that ends before this update (the conformal threshold was
  calibrated on window maxima from there on, so earlier scores are not covered by it);
* ``threshold``, ``target_fpr``, ``alpha_used``, ``n_calibration`` (:class:`~analysis.conformal.ConformalCalibrator`);
* ``provenance``: the group, training and calibration run ids, their code and schema versions, a digest
  of their steps files, and the code version of the analysis that fitted the monitor.

:meth:`MonitorFile.check_columns` (and :meth:`score_run`) refuse a run that lacks a feature column
with one line (:class:`~stabilitybench.analysis.errors.MonitorFileError`).
"""

from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from stabilitybench.analysis.detectors import DETECTORS, saveable_names, spec_of
from stabilitybench.analysis.errors import MonitorFileError, UnknownDetectorError
from stabilitybench.analysis.metastate.base import MonitorBase
from stabilitybench.analysis.online import OnlineMonitor
from stabilitybench.analysis.stats import ffill
from stabilitybench.analysis.summary import plain
from stabilitybench.data_schema.keys import GROUP_KEYS
from stabilitybench.data_schema.version import code_version

FORMAT = "stabilitybench-monitor"
FORMAT_VERSION = 1
SUFFIX = ".monitor.npz"
TRANSFORMS = ("identity", "log1p", "log10")


def transform_for(column: str) -> str:
    """The transform :func:`stabilitybench.analysis.data.feature_frame` applies to ``column`` today."""
    from stabilitybench.analysis.data import LOG_COLUMNS

    return "log1p" if column in LOG_COLUMNS else "log10" if column == "lr" else "identity"


def apply_transform(name: str, x: np.ndarray) -> np.ndarray:
    """Apply transform ``name`` to finite values of ``x`` (any shape); non-finite and invalid -> NaN."""
    x = np.where(np.isfinite(x), x, np.nan)
    if name == "identity":
        return x
    if name == "log1p":
        return np.sign(x) * np.log1p(np.abs(x))
    if name == "log10":
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(x > 0, np.log10(np.where(x > 0, x, 1.0)), np.nan)
    raise MonitorFileError(f"unknown feature transform {name!r} (known: {', '.join(TRANSFORMS)})")


@functools.lru_cache(maxsize=1)
def analysis_code_version() -> str:
    """``git:<sha>[+dirty]`` of the checkout holding this package, else ``pkg:<version>`` (cached once)."""
    return code_version()


def _saveable_kind(det: MonitorBase) -> str:
    """The registry name of ``det``'s detector, if a monitor file can hold it (one line otherwise)."""
    try:
        spec = spec_of(det)
    except UnknownDetectorError:
        spec = None
    if spec is None or not spec.saveable:
        raise MonitorFileError(f"{type(det).__name__}: only the saveable detectors ({', '.join(saveable_names())}) "
                               f"can be saved")
    return spec.name


def _saveable_class(kind: str, where: str) -> type[MonitorBase]:
    """The detector class a monitor file of ``kind`` holds (a saveable detector of the registry)."""
    spec = DETECTORS.get(kind)
    if spec is None or not spec.saveable:
        raise MonitorFileError(f"{where}: unknown monitor kind {kind!r} (known: {', '.join(saveable_names())})")
    return spec.cls


@dataclass
class MonitorFile:
    """A fitted, calibrated monitor and how to apply it (module docstring).

    ``detector``: a fitted KalmanMonitor or GRUMonitor; ``features``: steps columns in model order;
    ``block_updates``: B; ``warmup_updates``: first update at which alarms may fire; ``threshold``:
    alarm when the MSD exceeds it (``+inf``: never).
    """

    detector: MonitorBase
    features: list[str]
    block_updates: int
    warmup_updates: int = 0
    threshold: float = float("inf")
    target_fpr: float | None = None
    alpha_used: float | None = None
    n_calibration: int | None = None
    transforms: dict[str, str] = field(default_factory=dict)
    nonfinite_columns: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    columns_by_update: int | None = None

    def __post_init__(self) -> None:
        self.kind = _saveable_kind(self.detector)
        self.transforms = {c: self.transforms.get(c) or transform_for(c) for c in self.features}
        if not self.nonfinite_columns:
            from stabilitybench.analysis.data import NONFINITE_COLUMNS

            self.nonfinite_columns = list(NONFINITE_COLUMNS)
        self.block_updates = max(1, int(self.block_updates))
        if getattr(self.detector, "n_features_", len(self.features)) != len(self.features):
            raise MonitorFileError(f"the detector reads {self.detector.n_features_} features, "
                                   f"but {len(self.features)} are named")

    @property
    def smooth(self) -> int:
        return int(self.detector.smooth)

    # ---- persistence --------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """Everything but the arrays, as JSON-ready values."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind,
                "params": self.detector.get_params(), "features": list(self.features),
                "transforms": dict(self.transforms), "nonfinite_columns": list(self.nonfinite_columns),
                "block_updates": self.block_updates, "warmup_updates": int(self.warmup_updates),
                "smooth": self.smooth, "threshold": plain(self.threshold), "target_fpr": self.target_fpr,
                "alpha_used": self.alpha_used, "n_calibration": self.n_calibration,
                "columns_by_update": self.columns_by_update,
                "provenance": {"fitted_with_code": analysis_code_version(), **self.provenance}}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the file atomically (a dot-file in the same folder, then ``os.replace``); returns its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = self.detector.to_arrays()
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(self.meta(), sort_keys=True)), **arrays)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], columns: Iterable[str] | None = None) -> MonitorFile:
        """Read a file written by :meth:`save`; with ``columns``, refuse a run lacking a feature column."""
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                arrays = {k: f[k] for k in f.files if k != "meta"}
        except (OSError, ValueError, KeyError) as exc:
            raise MonitorFileError(f"{path}: not a readable monitor file ({type(exc).__name__}: {exc})") from None
        if meta.get("format") != FORMAT or int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise MonitorFileError(f"{path}: not a {FORMAT} file of version <= {FORMAT_VERSION}")
        det: MonitorBase = _saveable_class(meta["kind"], str(path)).from_arrays(meta["params"], arrays)
        # null: no finite threshold (never alarms); files written before it was null hold the string "inf"
        threshold = float("inf") if meta["threshold"] is None else float(meta["threshold"])
        det.threshold_ = threshold
        mf = cls(det, list(meta["features"]), int(meta["block_updates"]), int(meta["warmup_updates"]), threshold,
                 meta.get("target_fpr"), meta.get("alpha_used"), meta.get("n_calibration"), dict(meta["transforms"]),
                 list(meta["nonfinite_columns"]), dict(meta.get("provenance") or {}), meta.get("columns_by_update"))
        mf.path = str(path)
        if columns is not None:
            mf.check_columns(columns)
        return mf

    # ---- applying it ----------------------------------------------------------------------------
    def check_columns(self, columns: Iterable[str]) -> None:
        """Raise :class:`MonitorFileError` (one line) if a feature column is not among ``columns``."""
        have = set(columns)
        missing = [c for c in self.features if c not in have]
        if missing:
            where = getattr(self, "path", f"{self.kind} monitor")
            raise MonitorFileError(f"{where}: the run has no column(s) {', '.join(missing)} that this monitor reads "
                                   f"(it needs {', '.join(self.features)}; fitted on "
                                   f"{self.provenance.get('group', 'an unknown group')})")

    def block_features(self, steps: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One run's steps (one row per update) -> ``(block last step (T,), X (T, p), nonfinite (T,))``.

        The same as :func:`analysis.data.feature_frame` + :func:`analysis.data.to_blocks` with the
        file's own transforms (tested against them).
        """
        self.check_columns(steps.columns)
        steps = steps.sort("step")
        st = steps["step"].to_numpy().astype(np.int64)
        nf_cols = [c for c in self.nonfinite_columns if c in steps.columns]
        nf = np.zeros(steps.height, dtype=bool)
        for c in nf_cols:
            col = steps[c].cast(pl.Float64)
            nf |= (col.is_not_null() & ~col.is_finite()).fill_null(False).to_numpy()
        cols = []
        for c in self.features:
            x = apply_transform(self.transforms[c], steps[c].cast(pl.Float64).fill_null(np.nan).to_numpy())
            cols.append(ffill(x))
        F = np.column_stack(cols) if cols else np.zeros((steps.height, 0))
        b = st // self.block_updates
        starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        ends = np.r_[starts[1:], b.size]
        valid = ~np.isnan(F)
        sums = np.add.reduceat(np.where(valid, F, 0.0), starts, axis=0) if b.size else np.zeros((0, F.shape[1]))
        counts = np.add.reduceat(valid, starts, axis=0) if b.size else np.zeros((0, F.shape[1]))
        with np.errstate(invalid="ignore", divide="ignore"):
            X = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        return st[ends - 1], X, np.logical_or.reduceat(nf, starts) if b.size else np.zeros(0, dtype=bool)

    def score_blocks(self, X: np.ndarray, nonfinite: np.ndarray | None = None) -> np.ndarray:
        """MSD per block, shape ``(T,)``, of block features ``X (T, p)``; ``+inf`` at non-finite blocks."""
        score = self.detector.score(np.asarray(X, dtype=float))
        if nonfinite is not None:
            score[np.asarray(nonfinite, dtype=bool)] = np.inf
        return score

    def alarms(self, block_steps: np.ndarray, score: np.ndarray) -> np.ndarray:
        """Alarm per block: MSD above the threshold, never on a block that ends before ``warmup_updates``."""
        with np.errstate(invalid="ignore"):
            return (score > self.threshold) & (np.asarray(block_steps) >= self.warmup_updates)

    def score_run(self, steps: pl.DataFrame) -> pl.DataFrame:
        """Offline score of one run's steps frame: ``step`` (block's last update), ``msd``, ``alarm``."""
        st, X, nf = self.block_features(steps)
        score = self.score_blocks(X, nf)
        return pl.DataFrame({"step": st, "msd": score, "alarm": self.alarms(st, score)},
                            schema={"step": pl.Int64, "msd": pl.Float64, "alarm": pl.Boolean})

    def online(self, keep_history: bool = True, check_columns: bool = True) -> OnlineMonitor:
        """A fresh :class:`~stabilitybench.analysis.online.OnlineMonitor` for one run (its arguments as there)."""
        return OnlineMonitor(self, keep_history=keep_history, check_columns=check_columns)

    def summary(self) -> dict[str, Any]:
        return self.meta()


def fit_monitor(train: Sequence[pl.DataFrame], calibration: Sequence[pl.DataFrame], features: list[str],
                block_updates: int, *, detector: MonitorBase | None = None, fpr: float = 0.05,
                warmup_updates: int = 0, provenance: dict[str, Any] | None = None) -> MonitorFile:
    """Fit and conformally calibrate a monitor file on your own unperturbed runs (one steps frame each).

    The same recipe as ``analyze`` (:func:`stabilitybench.analysis.early_warning.evaluate_group`): ``detector`` (default
    :class:`~stabilitybench.analysis.metastate.KalmanMonitor`) is fitted on the ``train`` runs' block features, its
    threshold is the conformal one at ``fpr`` over the ``calibration`` runs' window maxima from
    ``warmup_updates`` on (>= 19 calibration runs for a 5% claim; with fewer the level is ``1/(n+1)``).
    """
    from stabilitybench.analysis.conformal import ConformalCalibrator
    from stabilitybench.analysis.metastate import KalmanMonitor
    from stabilitybench.analysis.metastate.base import window_max

    det = detector if detector is not None else KalmanMonitor()
    proto = MonitorFile(det, features, block_updates)
    blocks = [proto.block_features(f)[:2] for f in train]
    det.fit([X for _, X in blocks])
    maxima = []
    for frame in calibration:
        st, X, nf = proto.block_features(frame)
        maxima.append(window_max(proto.score_blocks(X, nf), st, warmup_updates, None))
    conf = ConformalCalibrator(fpr).fit(maxima)
    prov = {"train_run_ids": [str(f["run_id"][0]) for f in train if "run_id" in f.columns and f.height],
            "calibration_run_ids": [str(f["run_id"][0]) for f in calibration if "run_id" in f.columns and f.height],
            **(provenance or {})}
    return MonitorFile(det, list(features), block_updates, warmup_updates, conf.threshold_, fpr, conf.alpha_used_,
                       conf.n_, provenance=prov, columns_by_update=columns_reported_by(blocks))


def columns_reported_by(blocks: Iterable[tuple[np.ndarray, np.ndarray]]) -> int | None:
    """The update by which the training runs had reported every feature column: over runs and columns, the latest
    end step of the first block in which the column is finite. ``blocks``: per run ``(block end steps (T,), X (T,
    p))``. Columns a run never reports do not count (a live run lacking one is refused at this update). A live
    monitor checks its columns at ``max(warmup_updates, this)``: SB3 PPO, for one, reports its losses once per
    rollout (update 319 of Swimmer's first 320), which a monitor with no warm-up must wait for. ``None`` without
    runs."""
    latest = None
    for st, X in blocks:
        X = np.asarray(X, float)
        for j in range(X.shape[1] if X.ndim == 2 else 0):
            fin = np.flatnonzero(np.isfinite(X[:, j]))
            if fin.size:
                first = int(np.asarray(st)[fin[0]])
                latest = first if latest is None else max(latest, first)
    return latest


def provenance_of(runs: Iterable[Mapping[str, Any]], train_ids: list[str], calib_ids: list[str]) -> dict[str, Any]:
    """What a monitor was fitted on: group, run ids, their code/schema versions and a digest of their files."""
    import hashlib

    info = {r["run_id"]: r for r in runs}
    used = [info[r] for r in [*train_ids, *calib_ids] if r in info]
    h = hashlib.blake2b(digest_size=16)
    for r in sorted(used, key=lambda r: r["run_id"]):
        h.update(f"{r['run_id']}:{r.get('steps_blake2b') or ''};".encode())
    first = used[0] if used else {}
    return {"group": "/".join(str(first.get(k)) for k in GROUP_KEYS) if used else None,
            "train_run_ids": list(train_ids), "calibration_run_ids": list(calib_ids),
            "corpus_code_versions": sorted({str(r.get("code_version")) for r in used}),
            "schema_versions": sorted({str(r.get("schema_version")) for r in used}),
            "fit_data_digest": h.hexdigest()}
