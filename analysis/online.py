"""Online (live) scoring with a saved monitor: one telemetry row in, at most one MSD out.

:class:`OnlineMonitor` reproduces, causally and in O(1) time and memory per update, exactly what
:meth:`stabilitybench.analysis.monitor_file.MonitorFile.score_run` computes offline on the finished run:

1. per row: a non-finite raw value in a ``nonfinite_columns`` column flags the row; each feature's
   value (``None`` or absent = not reported) is made missing if non-finite, transformed, and
   forward-filled from the last reported value of the run;
2. per block of B updates (``step // B``): running sums and counts of the filled features; when the
   block's last update arrives (``step % B == B - 1``), or a row of a later block does, the block mean
   goes to the model;
3. the detector's own :meth:`~stabilitybench.analysis.metastate.base.MonitorBase.stepper` scores the block
   mean: it advances the model one step (the Kalman monitor's steady-state predictor
   ``zhat <- F zhat + G (y - d)``, k x k work; the GRU's hidden state, one GRU cell step; a causal
   baseline such as ``loss_spike`` keeps its column's last ``window`` standardised block values) and
   returns the mean of the last ``smooth`` finite ``nll`` (``+inf`` if one of them is ``+inf``);
4. the MSD is that score, or ``+inf`` for a block holding a non-finite row; an alarm is
   ``MSD > threshold`` on a block ending at or after ``warmup_updates``.

``update(row)`` returns ``(msd, alarm)`` when it completes a block, else ``(None, False)``;
:meth:`OnlineMonitor.finish` scores a trailing partial block (the offline score includes it).
Scores equal the offline ones up to floating-point round-off: tested to 1e-8 relative for the Kalman
monitor (offline runs the predictor in its eigenbasis) and 1e-5 for the GRU (float32, one cell step
at a time instead of one sequence call).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np

from stabilitybench.analysis.errors import MonitorFileError
from stabilitybench.analysis.metastate.base import MonitorBase


class Recipe(Protocol):
    """What :class:`OnlineMonitor` reads of a monitor: the attributes of a
    :class:`~stabilitybench.analysis.monitor_file.MonitorFile` (this module does not import that one, which
    builds online monitors with :meth:`~stabilitybench.analysis.monitor_file.MonitorFile.online`)."""

    detector: MonitorBase
    features: list[str]
    block_updates: int
    warmup_updates: int
    threshold: float
    transforms: dict[str, str]
    nonfinite_columns: list[str]
    columns_by_update: int | None

    def check_columns(self, columns: Iterable[str]) -> None: ...


class OnlineMonitor:
    """Live MSD and alarms of one run from a :class:`~analysis.monitor_file.MonitorFile` (module docstring).

    ``monitor``: a loaded :class:`~stabilitybench.analysis.monitor_file.MonitorFile` (from a path:
    ``MonitorFile.load(path).online()``). ``check_columns``: at the first block that ends at or
    after ``check_at`` (the warm-up, or later the update by which the training runs had reported every feature
    column, ``MonitorFile.columns_by_update``), raise :class:`~analysis.errors.MonitorFileError` (one line) if a
    feature column has not been reported by any row yet (the run does not have the monitor's columns). After each
    completed block: ``last_step_``, ``last_msd_``, ``n_blocks_``; ``history_`` keeps ``(step, msd, alarm)`` per
    block (one tuple per B updates; ``keep_history=False`` for O(1) memory).
    """

    def __init__(self, monitor: Recipe, keep_history: bool = True, check_columns: bool = True) -> None:
        if isinstance(monitor, str | os.PathLike):
            raise MonitorFileError(f"OnlineMonitor takes a loaded monitor file, not the path {os.fspath(monitor)!r}: "
                                   f"use MonitorFile.load(path).online()")
        self.file = monitor
        f = self.file
        self.features = list(f.features)
        self.B = f.block_updates
        self.threshold = float(f.threshold)
        self.warmup_updates = int(f.warmup_updates)
        # the columns are checked once the training runs had reported them all (MonitorFile.columns_by_update)
        self.check_at = max(self.warmup_updates, int(f.columns_by_update or 0))
        self.keep_history = keep_history
        self._check_pending = check_columns
        self._score = f.detector.stepper()
        self._transforms = [f.transforms[c] for c in self.features]
        self._last = np.full(len(self.features), np.nan)  # forward-fill state
        self._seen = np.zeros(len(self.features), dtype=bool)
        self._reset_block(None)
        self.n_blocks_ = 0
        self.last_step_: int | None = None
        self.last_msd_: float | None = None
        self.history_: list[tuple[int, float, bool]] = []

    def _reset_block(self, block: int | None) -> None:
        self._block = block
        self._sum = np.zeros(len(self.features))
        self._count = np.zeros(len(self.features))
        self._nonfinite = False
        self._block_step = -1

    # ---- public ---------------------------------------------------------------------------------
    def update(self, row: Mapping[str, Any]) -> tuple[float | None, bool]:
        """Feed one update's telemetry row (``step`` plus steps columns); ``(msd, alarm)`` if a block completed."""
        step = int(row["step"])
        block = step // self.B
        out: tuple[float | None, bool] = (None, False)
        if self._block is not None and block != self._block:
            if block < self._block:
                raise MonitorFileError(f"rows must arrive in step order: step {step} after block {self._block}")
            out = self._emit()
        if self._block is None:
            self._reset_block(block)
        self._add(step, row)
        if step % self.B == self.B - 1:
            out = self._emit()
        return out

    def finish(self) -> tuple[float | None, bool]:
        """Score the trailing partial block, if any (as the offline score does at the end of a run)."""
        return self._emit() if self._block is not None else (None, False)

    def check_columns(self) -> None:
        """Raise :class:`MonitorFileError` if a feature column has not been reported by any row so far."""
        missing = [c for c, s in zip(self.features, self._seen, strict=True) if not s]
        if missing:
            self.file.check_columns([c for c, s in zip(self.features, self._seen, strict=True) if s])

    @property
    def alarm_steps(self) -> list[int]:
        return [s for s, _, a in self.history_ if a]

    # ---- internals ------------------------------------------------------------------------------
    def _add(self, step: int, row: Mapping[str, Any]) -> None:
        for c in self.file.nonfinite_columns:
            v = row.get(c)
            if v is not None and not math.isfinite(float(v)):
                self._nonfinite = True
        for j, c in enumerate(self.features):
            v = row.get(c)
            if v is not None:
                self._seen[j] = True
                x = _transform(self._transforms[j], float(v))
                if x is not None:
                    self._last[j] = x
        ok = ~np.isnan(self._last)
        self._sum[ok] += self._last[ok]
        self._count[ok] += 1
        self._block_step = max(self._block_step, step)

    def _emit(self) -> tuple[float, bool]:
        with np.errstate(invalid="ignore", divide="ignore"):
            y = np.where(self._count > 0, self._sum / np.maximum(self._count, 1), np.nan)
        msd = self._score(y)  # the features never hold +-inf here (the transforms make them missing)
        if self._nonfinite:
            msd = math.inf
        step = self._block_step
        if self._check_pending and step >= self.check_at:
            self._check_pending = False
            self.check_columns()  # by now every feature must have been reported
        alarm = bool(msd > self.threshold) and step >= self.warmup_updates
        self.n_blocks_ += 1
        self.last_step_, self.last_msd_ = step, msd
        if self.keep_history:
            self.history_.append((step, msd, alarm))
        self._reset_block(None)
        return msd, alarm


def _transform(name: str, v: float) -> float | None:
    """:func:`stabilitybench.analysis.monitor_file.apply_transform` on one value; None for missing."""
    if not math.isfinite(v):
        return None
    if name == "log1p":
        return math.copysign(math.log1p(abs(v)), v) if v != 0 else 0.0
    if name == "log10":
        return math.log10(v) if v > 0 else None
    return v
