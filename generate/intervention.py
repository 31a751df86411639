"""Actions on an alarm: log, checkpoint, LR back-off, rollback, stop; alarms from a live monitor or a schedule.

:class:`Intervention` watches the rows a :class:`~stabilitybench.generate.recorder.Recorder` receives and feeds each
to an *alarm source*, any object with ``update(row) -> (score | None, alarm)`` (and optionally ``finish()``):
:class:`stabilitybench.analysis.online.OnlineMonitor` is the project's live monitor. This module does not import
``analysis``; the monitor is handed in (``stabilitybench.load_monitor(path).online()`` builds one from a file).
:class:`ScheduledAlarms` is an alarm source that is not a monitor: it raises alarms at given updates, so the timing
controls of the intervention experiment (issue 25) run the very same action code as the monitor-driven arm.

Timing. A row is final once the next one exists (the losses SB3 logs once per ``train()`` call, or a
torch loop's ``rec.update_last(loss=...)``, arrive after the update's row), so after update ``t`` the
rows up to ``t - 1`` go to the alarm source, from an optimizer step post-hook registered after the probe's.
Every action therefore lands *between* two updates, one update after the row that triggered it.
"Update ``n``" below is the number of rows recorded so far: it keeps counting through a rollback.

Actions (``actions=``; each writes an events row through the recorder, ``value`` as listed):

* ``log``: only the event ``alarm``, which every alarmed block writes whatever the actions (value: the
  score; for :class:`ScheduledAlarms` the scheduled delay from onset; step: the block's last update);
  ``log`` alone never changes training (the log-only arm: bitwise the run without an intervention);
* ``checkpoint``: keep the last ``keep`` *healthy* checkpoints in memory (deep copies of the
  ``state_dict()`` of every object in ``state``: model and optimizer), one per ``checkpoint_every``
  updates, taken only while the alarm source's latest block did not alarm; event ``checkpoint`` (value: the
  number of updates the checkpoint holds). ``keep`` defaults to enough checkpoints to reach back
  ``rollback_lag`` updates (``rollback_lag // checkpoint_every + 2``, at least 3);
* ``lr_backoff``: multiply every probe's learning rates by ``lr_factor`` for ``lr_duration`` updates
  (through :attr:`Probe.lr_scale`, so schedulers and SB3's own LR setting stay right and the ``lr``
  column shows the LR actually used); events ``lr_backoff`` (value: factor) and ``lr_backoff_end``;
* ``rollback``: restore the newest checkpoint at least ``rollback_lag`` updates older than the alarm
  (taken after ``s <= alarm - rollback_lag`` updates), model *and* optimizer state; event ``rollback`` (value: the
  checkpoint's update count; value null: no checkpoint was old enough, nothing restored). The lag is a fixed
  number of updates stated in advance; it must not equal the perturbation's duration (:func:`check_hparams`):
  with lag = duration any alarm within about a duration of the onset restores a pre-onset state and discards
  every perturbed update, so acting at *any* time then "prevents" collapse. Implies ``checkpoint``. With
  ``defer_restore`` the checkpoint is chosen at the alarm but loaded at the next
  :meth:`Intervention.at_safe_point`: an off-policy SB3 ``train()`` step builds the actor's graph
  before the critic's optimizer steps, so restoring parameters in place from a step hook would break
  its backward pass (the SB3 callback sets it for SAC/TD3 and calls the safe point between env steps);
* ``stop``: set :attr:`Intervention.stopped` (the SB3 callback then ends ``learn``; a torch loop
  checks it); event ``stop``.

After an action, alarms are ignored for ``cooldown`` updates (default: ``lr_duration``), so one episode
of instability triggers one action, not one per block.

Arms of a generated run (:func:`from_hparams`; ``hparams.intervention_schedule``): ``monitor`` (default: the
monitor file's alarms), ``oracle`` (one alarm at onset + d, d drawn with the run's seed from a pinned list of the
monitor's first-alarm delays, :func:`parse_delays`) and ``random`` (one alarm at a uniformly random update in
[onset, onset + ``intervention_window``], drawn with the run's seed; with ``intervention_counts`` as many alarms as
a run of the monitor arm acted on, drawn from their pinned counts: the count-matched random arm of issue 26).
``intervention = "log"`` is the log-only arm; ``intervention = "skip_step"`` the skip-step arm, which is no alarm
source plus action but a gate on every update (:mod:`stabilitybench.generate.skip_step`).
"""

from __future__ import annotations

import copy
import importlib
import json
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

ACTIONS = ("log", "checkpoint", "lr_backoff", "rollback", "stop")
#: Where a generated run's alarms come from (``hparams.intervention_schedule``): the monitor file, or a schedule.
SCHEDULES = ("monitor", "oracle", "random")
#: Generator hparams (RL) that turn on an intervention in a generated run (:func:`from_hparams`), with types.
INTERVENTION_HPARAMS = (("intervention", "str"), ("monitor", "str"), ("monitor_loader", "str"),
                        ("intervention_factor", "float"), ("intervention_duration", "int"),
                        ("intervention_rollback_lag", "int"), ("intervention_checkpoint_every", "int"),
                        ("intervention_schedule", "str"), ("intervention_delays", "str"),
                        ("intervention_window", "int"), ("intervention_counts", "str"),
                        ("intervention_discards", "str"),
                        ("skip_step_window", "int"), ("skip_step_sigma", "float"))
#: ``hparams.intervention`` of the skip-step arm (:mod:`stabilitybench.generate.skip_step`): not an action on alarms
#: but a gate on every update, so it stands alone.
SKIP_STEP = "skip_step"
#: The default ``monitor_loader``: ``module:callable`` that turns a monitor file path into a live monitor.
#: Named, not imported, so ``generate`` does not depend on ``analysis``.
DEFAULT_LOADER = "stabilitybench.live:online_monitor"
#: Event kinds this module writes.
EVENTS = ("alarm", "checkpoint", "lr_backoff", "lr_backoff_end", "rollback", "stop")
#: Salts of the scheduled arms' random streams (``numpy.random.default_rng([seed, salt])``): independent of every
#: stream the run itself draws from the seed, so a schedule never changes training before its alarm.
ORACLE_SALT, RANDOM_SALT = 0x0_0AC1E, 0x0_DA7E


class LiveMonitor(Protocol):
    def update(self, row: Mapping[str, Any]) -> tuple[float | None, bool]: ...


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class ScheduledAlarms:
    """An alarm source that is not a monitor: an alarm at each update in ``at``, none elsewhere.

    ``update(row)`` returns ``(values[i], True)`` when ``row["step"] == at[i]`` and ``(0.0, False)`` otherwise, so
    an :class:`Intervention` driven by it acts exactly as on a monitor's alarm at that update (one update later,
    see the module docstring). ``values`` (default: the updates themselves) become the ``alarm`` events' value,
    e.g. the delay from onset; ``label`` goes into their detail (``"oracle"``, ``"random"``). ``lags``: a rollback
    lag per alarm (updates; the discard-matched random arm), which :meth:`Intervention.rollback_target` uses instead of
    its own ``rollback_lag`` (:meth:`lag_at`).
    """

    def __init__(self, at: Iterable[int], values: Iterable[float] | None = None, label: str = "scheduled",
                 lags: Iterable[int] | None = None) -> None:
        at = [int(a) for a in at]
        vals = [float(a) for a in at] if values is None else [float(v) for v in values]
        if len(vals) != len(at):
            raise ValueError(f"{len(at)} alarm updates but {len(vals)} values")
        self.schedule: dict[int, float] = dict(zip(at, vals, strict=True))
        self.label = label
        lag_list = None if lags is None else [int(g) for g in lags]
        if lag_list is not None and (len(lag_list) != len(at) or min(lag_list, default=0) < 0):
            raise ValueError(f"{len(at)} alarm updates need as many rollback lags >= 0, got {lag_list}")
        self.lags: dict[int, int] | None = None if lag_list is None else dict(zip(at, lag_list, strict=True))

    def lag_at(self, step: int) -> int | None:
        """The rollback lag of the alarm at ``step`` (None: the Intervention's own)."""
        return None if self.lags is None else self.lags.get(int(step))

    def update(self, row: Mapping[str, Any]) -> tuple[float, bool]:
        step = int(row["step"])
        if step in self.schedule:
            return self.schedule[step], True
        return 0.0, False

    def describe(self, step: int) -> str:
        """The ``alarm`` event's detail."""
        return f"scheduled alarm ({self.label}) at update {step}"


class Intervention:
    """Feed recorded rows to ``monitor`` (any alarm source) and act on its alarms (module docstring).

    Parameters: ``monitor``; ``recorder`` (rows come from it, events go to it); ``actions`` (subset of
    :data:`ACTIONS`); ``keep`` (default: enough to reach ``rollback_lag`` back), ``checkpoint_every`` (updates);
    ``lr_factor``, ``lr_duration`` (updates); ``rollback_lag`` (updates); ``cooldown`` (updates, default
    ``lr_duration``).

    After :meth:`attach`: ``alarms_`` (update of each alarmed block), ``actions_`` (``(update, event)``
    of each action taken), ``checkpoints_`` (the kept ``(update count, state)``), ``checkpoint_log_`` (the update
    count of every checkpoint taken), ``restores_`` (``(update count at the restore, checkpoint's update count)``
    of each rollback), :attr:`stopped`; :meth:`kept_updates` says which updates the current weights descend from.
    """

    def __init__(self, monitor: LiveMonitor, recorder: Any, *, actions: Iterable[str] = ("log",),
                 keep: int | None = None, checkpoint_every: int = 100, lr_factor: float = 0.1,
                 lr_duration: int = 200, rollback_lag: int = 0, cooldown: int | None = None,
                 defer_restore: bool = False) -> None:
        self.actions = tuple(dict.fromkeys(actions))
        unknown = [a for a in self.actions if a not in ACTIONS]
        if unknown:
            raise ValueError(f"unknown action(s) {unknown}; known: {', '.join(ACTIONS)}")
        if not 0 < lr_factor:
            raise ValueError(f"lr_factor must be positive, got {lr_factor}")
        if rollback_lag < 0:
            raise ValueError(f"rollback_lag must be >= 0 updates, got {rollback_lag}")
        self.monitor = monitor
        self.recorder = recorder
        self.checkpoint_every = max(1, int(checkpoint_every))
        self.rollback_lag = int(rollback_lag)
        self.keep = default_keep(self.rollback_lag, self.checkpoint_every) if keep is None else int(keep)
        self.lr_factor = float(lr_factor)
        self.lr_duration = int(lr_duration)
        self.cooldown = self.lr_duration if cooldown is None else int(cooldown)
        self.stopped = False
        self.alarms_: list[int] = []
        self.actions_: list[tuple[int, str]] = []
        self.checkpoints_: deque[tuple[int, dict[str, Any]]] = deque(maxlen=max(1, self.keep))
        self.checkpoint_log_: list[int] = []
        self.restores_: list[tuple[int, int]] = []
        self.probes: list[Any] = []
        self.state: dict[str, Stateful] = {}
        self._next_row = 0
        self._healthy = True
        self._last_ckpt = 0  # checkpoints after checkpoint_every, 2 checkpoint_every, ... updates
        self._backoff_until: int | None = None
        self._quiet_until = -1
        self._handle: Any = None
        self.defer_restore = defer_restore
        self._pending: tuple[int, dict[str, Any]] | None = None

    @property
    def checkpointing(self) -> bool:
        return "checkpoint" in self.actions or "rollback" in self.actions

    def attach(self, optimizer: torch.optim.Optimizer, probes: Any = (),
               state: Mapping[str, Stateful] | None = None) -> Intervention:
        """Watch ``optimizer``'s updates. ``probes``: the Probe(s) whose ``lr_scale`` a back-off sets;
        ``state``: what a checkpoint saves and a rollback restores (e.g. ``{"model": m, "optimizer": opt}``)."""
        self.probes = list(probes) if isinstance(probes, list | tuple) else [probes]
        self.state = dict(state or {})
        if "lr_backoff" in self.actions and not self.probes:
            raise ValueError("lr_backoff needs the Probe(s) of the optimizer (probes=...)")
        if self.checkpointing and not self.state:
            raise ValueError("checkpoint/rollback need the objects to save (state={'model': ..., 'optimizer': ...})")
        self._handle = optimizer.register_step_post_hook(lambda *_: self.poll())
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    # ---- the loop -------------------------------------------------------------------------------
    def poll(self, final: bool = False) -> None:
        """Feed the rows that are final (all but the newest; every row with ``final``) and act."""
        rows = self.recorder.rows
        n_updates = len(rows)
        upto = n_updates if final else n_updates - 1
        while self._next_row < upto:
            row = rows[self._next_row]
            self._next_row += 1
            score, alarm = self.monitor.update(row)
            if score is not None:
                self._on_block(int(row["step"]), score, alarm, n_updates)
        if final and hasattr(self.monitor, "finish"):
            score, alarm = self.monitor.finish()
            if score is not None:
                self._on_block(int(rows[-1]["step"]) if rows else 0, score, alarm, n_updates)
        self._tick(n_updates)

    def finish(self) -> None:
        """Score the remaining rows (at the end of training) and detach."""
        self.poll(final=True)
        self.detach()

    def _on_block(self, step: int, score: float, alarm: bool, n_updates: int) -> None:
        self._healthy = not alarm
        if not alarm:
            return
        self.alarms_.append(step)
        describe = getattr(self.monitor, "describe", None)
        detail = describe(step) if callable(describe) else "monitor score above its calibrated threshold"
        self._event(step, "alarm", detail, score)
        if n_updates <= self._quiet_until:
            return
        acted = False
        if "rollback" in self.actions:
            acted |= self._rollback(step, n_updates)
        if "lr_backoff" in self.actions:
            for p in self.probes:
                p.lr_scale = self.lr_factor
            self._backoff_until = n_updates + self.lr_duration
            self._event(n_updates, "lr_backoff", f"for {self.lr_duration} updates", self.lr_factor)
            acted = True
        if "stop" in self.actions:
            self.stopped = True
            self._event(n_updates, "stop", f"alarm at update {step}", score)
            acted = True
        if acted:
            self._quiet_until = n_updates + self.cooldown

    def _tick(self, n_updates: int) -> None:
        if self._backoff_until is not None and n_updates >= self._backoff_until:
            for p in self.probes:
                p.lr_scale = 1.0
            self._backoff_until = None
            self._event(n_updates, "lr_backoff_end", None, None)
        if (self.checkpointing and self._healthy and n_updates > 0
                and n_updates - self._last_ckpt >= self.checkpoint_every and n_updates > self._quiet_until):
            self.checkpoints_.append((n_updates, {k: copy.deepcopy(v.state_dict()) for k, v in self.state.items()}))
            self.checkpoint_log_.append(n_updates)
            self._last_ckpt = n_updates
            self._event(n_updates, "checkpoint", f"kept {len(self.checkpoints_)}/{self.keep}", float(n_updates))

    def lag_for(self, alarm_step: int) -> int:
        """The rollback lag of an alarm at ``alarm_step``: the alarm source's own (``lag_at``, the discard-matched
        random arm) where it has one, else ``rollback_lag``."""
        own = getattr(self.monitor, "lag_at", None)
        lag = own(alarm_step) if callable(own) else None
        return self.rollback_lag if lag is None else int(lag)

    def rollback_target(self, alarm_step: int) -> int | None:
        """The update count of the checkpoint a rollback on an alarm at ``alarm_step`` restores: the newest kept
        checkpoint taken after at most ``alarm_step - lag`` updates (:meth:`lag_for`; None: none is old enough)."""
        ok = [s for s, _ in self.checkpoints_ if s <= alarm_step - self.lag_for(alarm_step)]
        return ok[-1] if ok else None

    def _rollback(self, alarm_step: int, n_updates: int) -> bool:
        target = self.rollback_target(alarm_step)
        if target is None:
            self._event(n_updates, "rollback", f"no checkpoint {self.lag_for(alarm_step)} updates older than the "
                        "alarm kept: not rolled back", None)
            return False
        st = next(state for s, state in self.checkpoints_ if s == target)
        self.checkpoints_ = deque([c for c in self.checkpoints_ if c[0] <= target], maxlen=self.checkpoints_.maxlen)
        self._pending = (target, st)
        if not self.defer_restore:
            self.at_safe_point()
        return True

    def at_safe_point(self) -> None:
        """Load a rollback's chosen checkpoint now (no-op without one): between two training steps."""
        if self._pending is None:
            return
        s, st = self._pending
        self._pending = None
        for k, obj in self.state.items():
            obj.load_state_dict(copy.deepcopy(st[k]))
        now = len(self.recorder.rows) if self.recorder is not None else s
        self.restores_.append((now, s))
        self._event(now, "rollback", f"restored the state after {s} updates", float(s))

    def kept_updates(self, n_updates: int | None = None) -> np.ndarray:
        """Bool array, shape ``(n_updates,)`` (default: the rows recorded): whether update (row) ``t`` is in the
        lineage of the current weights, i.e. was not discarded by a rollback."""
        n = len(self.recorder.rows) if n_updates is None else int(n_updates)
        return kept_updates(n, self.checkpoint_log_, self.restores_)

    def _event(self, step: int, kind: str, detail: str | None, value: float | None) -> None:
        if kind != "alarm" and kind != "checkpoint":
            self.actions_.append((step, kind))
        if self.recorder is not None:
            self.recorder.event(step, kind, detail=detail,
                                value=None if value is None else float(value))


def default_keep(rollback_lag: int, checkpoint_every: int) -> int:
    """Checkpoints to keep so that one taken at least ``rollback_lag`` updates before an alarm is still held."""
    return max(3, int(rollback_lag) // max(1, int(checkpoint_every)) + 2)


def kept_updates(n_updates: int, checkpoints: Sequence[int], restores: Sequence[tuple[int, int]]) -> np.ndarray:
    """Which of ``n_updates`` updates the final weights descend from: bool array of shape ``(n_updates,)``.

    ``checkpoints``: update count of each checkpoint taken (it holds the weights' lineage at that moment);
    ``restores``: ``(update count at the restore, checkpoint's update count)`` of each rollback, in order. A restore
    at ``r`` to checkpoint ``s`` discards the updates made since ``s`` (those of the lineage after it).
    """
    wanted = {s for _, s in restores}
    snapshots: dict[int, list[tuple[int, int]]] = {}
    by_time: dict[int, list[int]] = {}
    for r, s in restores:
        by_time.setdefault(int(r), []).append(int(s))
    taken = sorted({int(c) for c in checkpoints if int(c) in wanted})
    lineage: list[list[int]] = []  # half-open intervals [a, b) of update indices
    ci = 0
    for t in range(n_updates + 1):  # t: updates made so far
        for s in by_time.get(t, []):
            if s not in snapshots:
                raise ValueError(f"restore at {t} to checkpoint {s}, which was not taken before it")
            lineage = [list(iv) for iv in snapshots[s]]
        while ci < len(taken) and taken[ci] == t:
            snapshots[t] = [(a, b) for a, b in lineage]
            ci += 1
        if t < n_updates:
            if lineage and lineage[-1][1] == t:
                lineage[-1][1] = t + 1
            else:
                lineage.append([t, t + 1])
    mask = np.zeros(n_updates, dtype=bool)
    for a, b in lineage:
        mask[a:b] = True
    return mask


# ---- generated runs: the arms of the intervention experiment ------------------------------------------------
def parse_actions(value: Any) -> list[str]:
    """The actions of ``hparams.intervention`` (comma-separated); ``[]`` for none/absent."""
    actions = [a.strip() for a in str(value or "none").split(",") if a.strip()]
    return [] if actions in ([], ["none"]) else actions


def _pinned(text: str, hparam: str, key: str, base: str | Path | None, command: str) -> list[Any]:
    """A pinned list: comma-separated tokens (returned as strings), or the JSON file ``{key: [...]}`` (or a bare
    list) at ``text``, relative to ``base`` (default: the working directory)."""
    text = str(text).strip()
    if not text.endswith(".json"):
        return [tok.strip() for tok in text.split(",")]
    path = Path(base or ".", text)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{hparam}: no file {path} (write it with `python -m "
                         f"stabilitybench.analysis.intervention {command}`, from the monitor arm's runs)") from None
    raw = data.get(key) if isinstance(data, dict) else data
    if not isinstance(raw, list):
        raise ValueError(f"{hparam}: {path} has no '{key}' list")
    return raw


def parse_delays(text: str, base: str | Path | None = None) -> list[int | None]:
    """The oracle arm's pinned delays (updates from onset; None: the monitor never acted on that run).

    ``text``: comma-separated integers (``none`` or ``-`` for "never"), or the path of a JSON file
    ``{"delays": [int | null, ...], ...}`` (``stabilitybench.analysis.intervention.oracle_delays`` writes one from
    a pilot), relative to ``base`` (default: the working directory) like the monitor file.
    """
    raw = _pinned(text, "intervention_delays", "delays", base, "oracle-delays")
    out = [None if d is None or str(d).strip().lower() in ("none", "-", "") else int(d) for d in raw]
    if not out:
        raise ValueError("intervention_delays: empty list")
    return out


def parse_discards(text: str, base: str | Path | None = None) -> list[int]:
    """The discard-matched random arm's pinned discards: the updates each of the monitor arm's rollbacks threw away
    (each >= 0). ``text``: comma-separated integers, or the path of a JSON file ``{"discards": [int, ...]}``
    (``python -m stabilitybench.analysis.intervention action-counts`` writes it beside the counts)."""
    return _pinned_counts(text, "intervention_discards", "discards", "discard", base)


def parse_counts(text: str, base: str | Path | None = None) -> list[int]:
    """The count-matched random arm's pinned action counts (one per monitor-arm run, each >= 0).

    ``text``: comma-separated integers, or the path of a JSON file ``{"counts": [int, ...]}`` or a bare JSON list
    (``python -m stabilitybench.analysis.intervention action-counts`` writes one from the monitor arm's runs).
    """
    return _pinned_counts(text, "intervention_counts", "counts", "count", base)


def _pinned_counts(text: str, hparam: str, key: str, noun: str, base: str | Path | None) -> list[int]:
    """A pinned list of integers >= 0 (:func:`_pinned` under ``key``, written by ``action-counts``); ValueError
    naming ``hparam`` when it is not one or is empty."""
    raw = _pinned(text, hparam, key, base, "action-counts")
    try:
        out = [int(c) for c in raw]
    except (TypeError, ValueError):
        raise ValueError(f"{hparam}: not a list of integers: {raw!r}") from None
    if not out or min(out) < 0:
        raise ValueError(f"{hparam}: need at least one {noun}, each >= 0, got {out}")
    return out


def spaced_uniform(rng: np.random.Generator, n: int, window: int, gap: int) -> list[int]:
    """``n`` sorted offsets in ``0..window``, uniform among the sets whose neighbours are at least ``gap`` apart
    (order statistics of ``n`` uniform draws on ``0..window - (n - 1) gap``, the i-th shifted by ``i * gap``).
    ``n`` is capped at the most that fit (``window // gap + 1``)."""
    gap = max(0, int(gap))
    n = min(int(n), window // gap + 1 if gap else int(n))
    if n <= 0:
        return []
    base = np.sort(rng.integers(0, window - (n - 1) * gap + 1, size=n))
    return [int(b) + i * gap for i, b in enumerate(base)]


def check_hparams(hparams: Mapping[str, Any], *, perturbation: str | None = None,
                  duration_steps: int | None = None) -> None:
    """Raise ValueError when a run's intervention hparams are inconsistent or tuned to its perturbation.

    Refused: unknown actions or schedule; a monitor-driven or log-only arm without ``monitor``; an oracle without
    ``intervention_delays``; a random-time arm without a positive ``intervention_window``; a rollback whose
    ``intervention_rollback_lag`` equals the perturbation's ``duration_steps`` (module docstring, issue 25).
    """
    actions = parse_actions(hparams.get("intervention"))
    if not actions:
        return
    if SKIP_STEP in actions:
        if actions != [SKIP_STEP] or hparams.get("intervention_schedule") or hparams.get("monitor"):
            raise ValueError(f"intervention = {SKIP_STEP!r} stands alone (a gate on every update by its own rule): "
                             "no other action, no intervention_schedule, no monitor")
        if int(hparams.get("skip_step_window", 128)) < 2 or not float(hparams.get("skip_step_sigma", 6.0)) > 0:
            raise ValueError("skip_step_window must be >= 2 and skip_step_sigma > 0")
        return
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown:
        raise ValueError(f"intervention: unknown action(s) {unknown}; known: {', '.join(ACTIONS)}")
    schedule = str(hparams.get("intervention_schedule") or "monitor")
    if schedule not in SCHEDULES:
        raise ValueError(f"intervention_schedule: {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if schedule == "monitor" and not hparams.get("monitor"):
        raise ValueError("hparams.intervention needs hparams.monitor (a monitor file written by analyze)")
    if schedule == "oracle" and not hparams.get("intervention_delays"):
        raise ValueError("intervention_schedule = 'oracle' needs intervention_delays (updates from onset)")
    if schedule == "random" and int(hparams.get("intervention_window") or 0) <= 0:
        raise ValueError("intervention_schedule = 'random' needs intervention_window > 0 (updates after onset)")
    if hparams.get("intervention_discards") and (schedule != "random" or not hparams.get("intervention_counts")
                                                 or "rollback" not in actions):
        raise ValueError("intervention_discards (the discard-matched random arm) needs intervention_schedule = "
                         "'random', intervention_counts and a rollback action")
    lag = int(hparams.get("intervention_rollback_lag", 0))
    if lag < 0 or int(hparams.get("intervention_checkpoint_every", 100)) < 1:
        raise ValueError("intervention_rollback_lag must be >= 0 and intervention_checkpoint_every >= 1")
    if ("rollback" in actions and perturbation not in (None, "none") and duration_steps is not None
            and lag == int(duration_steps)):
        raise ValueError(f"intervention_rollback_lag = {lag} equals the perturbation's duration_steps: a lag tuned "
                         "to the perturbation discards exactly its updates whenever the alarm comes; state a lag "
                         "that is not any perturbation's duration")


def schedule_for(hparams: Mapping[str, Any], onset_step: int, seed: int) -> ScheduledAlarms:
    """The :class:`ScheduledAlarms` of an oracle or random-time arm (``hparams.intervention_schedule``).

    oracle: one alarm at ``onset_step + d``, ``d`` drawn uniformly from :func:`parse_delays` of
    ``intervention_delays`` with ``default_rng([seed, ORACLE_SALT])`` (a drawn None: no alarm, as the monitor that
    never acted); random: one alarm at ``onset_step + u``, ``u`` uniform on ``0..intervention_window`` with
    ``default_rng([seed, RANDOM_SALT])``; with ``intervention_counts`` (the count-matched random arm, issue 26): ``n``
    drawn from :func:`parse_counts` with that generator, then ``n`` alarms at :func:`spaced_uniform` offsets in
    ``0..intervention_window``, more than ``intervention_duration`` (the Intervention's cooldown) apart, so each is
    acted on, as each of the monitor arm's counted actions was; with ``intervention_discards`` as well (the
    discard-matched arm) each alarm then draws, from the same generator, a discard ``d`` of the monitor arm's
    rollbacks (:func:`parse_discards`) and rolls back with lag ``max(0, d - checkpoint_every // 2)``, so that with a
    checkpoint every ``checkpoint_every`` updates it discards ``d`` on average. Its alarm times and counts are those of
    the count-matched arm on the same seed. The alarm's event value is the delay from onset.
    """
    schedule = str(hparams.get("intervention_schedule") or "monitor")
    if schedule == "oracle":
        delays = parse_delays(str(hparams["intervention_delays"]))
        d = delays[int(np.random.default_rng([int(seed), ORACLE_SALT]).integers(len(delays)))]
        if d is None:
            return ScheduledAlarms([], label="oracle: drew 'never acted'")
        return ScheduledAlarms([onset_step + d], [d], label=f"oracle: onset {onset_step} + {d}")
    if schedule == "random":
        window = int(hparams["intervention_window"])
        rng = np.random.default_rng([int(seed), RANDOM_SALT])
        if not hparams.get("intervention_counts"):
            u = int(rng.integers(0, window + 1))
            return ScheduledAlarms([onset_step + u], [u], label=f"random in [onset, onset + {window}]: onset "
                                   f"{onset_step} + {u}")
        counts = parse_counts(str(hparams["intervention_counts"]))
        n = counts[int(rng.integers(len(counts)))]
        # more than the Intervention's cooldown apart, so that every alarm is acted on: an alarm on row t is acted
        # on with t + 2 updates made and quiets alarms until t + 2 + cooldown: the next must come after t + cooldown
        gap = int(hparams.get("intervention_duration", 200)) + 1
        offsets = spaced_uniform(rng, n, window, gap)
        at = [onset_step + u for u in offsets]
        if not hparams.get("intervention_discards"):
            return ScheduledAlarms(at, offsets, label=f"random, count-matched ({len(offsets)} of a drawn {n}, >= "
                                   f"{gap} apart) in [onset, onset + {window}]")
        discards = parse_discards(str(hparams["intervention_discards"]))
        half = int(hparams.get("intervention_checkpoint_every", 100)) // 2
        lags = [max(0, discards[int(i)] - half) for i in rng.integers(len(discards), size=len(offsets))]
        return ScheduledAlarms(at, offsets, lags=lags, label=f"random, count- and discard-matched ({len(offsets)} of "
                               f"a drawn {n}, >= {gap} apart, rollback lags {lags}) in [onset, onset + {window}]")
    raise ValueError(f"intervention_schedule {schedule!r} has no schedule (known: oracle, random)")


def split_hparams(hparams: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(algorithm hparams, intervention hparams)`` of a run spec's hparams."""
    names = {k for k, _ in INTERVENTION_HPARAMS}
    return ({k: v for k, v in hparams.items() if k not in names}, {k: v for k, v in hparams.items() if k in names})


def from_hparams(hparams: Mapping[str, Any], recorder: Any, *, onset_step: int | None = None, seed: int = 0,
                 perturbation: str | None = None, duration_steps: int | None = None) -> Any:
    """The :class:`Intervention` a generated run's hparams ask for, or None.

    ``intervention``: comma-separated actions (``"none"``/absent: none, the matched "without" arm; ``"log"``: the
    log-only arm); ``intervention_schedule``: ``monitor`` (default), ``oracle`` or ``random``
    (:func:`schedule_for`; needs the run's ``onset_step`` and ``seed``); ``monitor``: the monitor file;
    ``monitor_loader``: ``module:callable`` (default :data:`DEFAULT_LOADER`) building the live monitor from the path;
    ``intervention_factor``/``_duration``: the LR back-off; ``intervention_rollback_lag``,
    ``intervention_checkpoint_every``: in updates. ``perturbation``/``duration_steps``: the run's, for
    :func:`check_hparams`. ``intervention = "skip_step"``: the skip-step arm, a
    :class:`~stabilitybench.generate.skip_step.SkipStep` (``skip_step_window``, ``skip_step_sigma``) instead.
    ``intervention_counts`` (with ``schedule = "random"``): the count-matched random arm (:func:`schedule_for`).
    """
    actions = parse_actions(hparams.get("intervention"))
    if not actions:
        return None
    check_hparams(hparams, perturbation=perturbation, duration_steps=duration_steps)
    if actions == [SKIP_STEP]:
        from stabilitybench.generate.skip_step import SkipStep

        return SkipStep(recorder, window=int(hparams.get("skip_step_window", 128)),
                        sigma=float(hparams.get("skip_step_sigma", 6.0)))
    schedule = str(hparams.get("intervention_schedule") or "monitor")
    if schedule == "monitor":
        module, func = str(hparams.get("monitor_loader") or DEFAULT_LOADER).split(":")
        monitor: Any = getattr(importlib.import_module(module), func)(hparams["monitor"])
    else:
        if onset_step is None:
            raise ValueError(f"intervention_schedule = {schedule!r} needs the run's onset update")
        monitor = schedule_for(hparams, int(onset_step), seed)
    lag = int(hparams.get("intervention_rollback_lag", 0))
    every = int(hparams.get("intervention_checkpoint_every", 100))
    own = getattr(monitor, "lags", None) or {}
    return Intervention(monitor, recorder, actions=("log", *actions),
                        lr_factor=float(hparams.get("intervention_factor", 0.1)),
                        lr_duration=int(hparams.get("intervention_duration", 200)), rollback_lag=lag,
                        checkpoint_every=every, keep=default_keep(max([lag, *own.values()]), every))
