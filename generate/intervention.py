"""Actions on a live monitor's alarm: log, checkpoint, LR back-off, rollback, stop.

:class:`Intervention` watches the rows a :class:`~stabilitybench.generate.recorder.Recorder` receives and feeds each
to a *monitor*, any object with ``update(row) -> (score | None, alarm)`` (and optionally ``finish()``):
:class:`stabilitybench.analysis.online.OnlineMonitor` is the project's. This module does not import ``analysis``;
the monitor is handed in (``stabilitybench.load_monitor(path).online()`` builds one from a file).

Timing. A row is final once the next one exists (the losses SB3 logs once per ``train()`` call, or a
torch loop's ``rec.update_last(loss=...)``, arrive after the update's row), so after update ``t`` the
rows up to ``t - 1`` go to the monitor, from an optimizer step post-hook registered after the probe's.
Every action therefore lands *between* two updates, one update after the row that triggered it.

Actions (``actions=``; each writes an events row through the recorder, ``value`` as listed):

* ``log``: only the event ``alarm``, which every alarmed block writes whatever the actions (value: the
  score; step: the block's last update);
* ``checkpoint``: keep the last ``keep`` *healthy* checkpoints in memory (deep copies of the
  ``state_dict()`` of every object in ``state``: model and optimizer), one per ``checkpoint_every``
  updates, taken only while the monitor's latest block did not alarm; event ``checkpoint`` (value: the
  number of updates the checkpoint holds);
* ``lr_backoff``: multiply every probe's learning rates by ``lr_factor`` for ``lr_duration`` updates
  (through :attr:`Probe.lr_scale`, so schedulers and SB3's own LR setting stay right and the ``lr``
  column shows the LR actually used); events ``lr_backoff`` (value: factor) and ``lr_backoff_end``;
* ``rollback``: restore the newest checkpoint at least ``rollback_lag`` updates older than the alarm,
  model *and* optimizer state; event ``rollback`` (value: the checkpoint's update count). Implies
  ``checkpoint``. With ``defer_restore`` the checkpoint is chosen at the alarm but loaded at the next
  :meth:`Intervention.at_safe_point`: an off-policy SB3 ``train()`` step builds the actor's graph
  before the critic's optimizer steps, so restoring parameters in place from a step hook would break
  its backward pass (the SB3 callback sets it for SAC/TD3 and calls the safe point between env steps);
* ``stop``: set :attr:`Intervention.stopped` (the SB3 callback then ends ``learn``; a torch loop
  checks it); event ``stop``.

After an action, alarms are ignored for ``cooldown`` updates (default: ``lr_duration``), so one episode
of instability triggers one action, not one per block.
"""

from __future__ import annotations

import copy
import importlib
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

ACTIONS = ("log", "checkpoint", "lr_backoff", "rollback", "stop")
#: Generator hparams (RL) that turn on an intervention in a generated run (:func:`from_hparams`), with types.
INTERVENTION_HPARAMS = (("intervention", "str"), ("monitor", "str"), ("monitor_loader", "str"),
                        ("intervention_factor", "float"), ("intervention_duration", "int"),
                        ("intervention_rollback_lag", "int"), ("intervention_checkpoint_every", "int"))
#: The default ``monitor_loader``: ``module:callable`` that turns a monitor file path into a live monitor.
#: Named, not imported, so ``generate`` does not depend on ``analysis``.
DEFAULT_LOADER = "stabilitybench.live:online_monitor"
#: Event kinds this module writes.
EVENTS = ("alarm", "checkpoint", "lr_backoff", "lr_backoff_end", "rollback", "stop")


class LiveMonitor(Protocol):
    def update(self, row: Mapping[str, Any]) -> tuple[float | None, bool]: ...


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class Intervention:
    """Feed recorded rows to ``monitor`` and act on its alarms (module docstring).

    Parameters: ``monitor``; ``recorder`` (rows come from it, events go to it); ``actions`` (subset of
    :data:`ACTIONS`); ``keep``, ``checkpoint_every`` (updates); ``lr_factor``, ``lr_duration`` (updates);
    ``rollback_lag`` (updates); ``cooldown`` (updates, default ``lr_duration``).

    After :meth:`attach`: ``alarms_`` (update of each alarmed block), ``actions_`` (``(update, event)``
    of each action taken), ``checkpoints_`` (the kept ``(update count, state)``), :attr:`stopped`.
    """

    def __init__(self, monitor: LiveMonitor, recorder: Any, *, actions: Iterable[str] = ("log",), keep: int = 3,
                 checkpoint_every: int = 100, lr_factor: float = 0.1, lr_duration: int = 200, rollback_lag: int = 0,
                 cooldown: int | None = None, defer_restore: bool = False) -> None:
        self.actions = tuple(actions)
        unknown = [a for a in self.actions if a not in ACTIONS]
        if unknown:
            raise ValueError(f"unknown action(s) {unknown}; known: {', '.join(ACTIONS)}")
        if not 0 < lr_factor:
            raise ValueError(f"lr_factor must be positive, got {lr_factor}")
        self.monitor = monitor
        self.recorder = recorder
        self.keep = int(keep)
        self.checkpoint_every = max(1, int(checkpoint_every))
        self.lr_factor = float(lr_factor)
        self.lr_duration = int(lr_duration)
        self.rollback_lag = int(rollback_lag)
        self.cooldown = self.lr_duration if cooldown is None else int(cooldown)
        self.stopped = False
        self.alarms_: list[int] = []
        self.actions_: list[tuple[int, str]] = []
        self.checkpoints_: deque[tuple[int, dict[str, Any]]] = deque(maxlen=max(1, self.keep))
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
        self._event(step, "alarm", "monitor score above its calibrated threshold", score)
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
            self._last_ckpt = n_updates
            self._event(n_updates, "checkpoint", f"kept {len(self.checkpoints_)}/{self.keep}", float(n_updates))

    def _rollback(self, alarm_step: int, n_updates: int) -> bool:
        ok = [(s, st) for s, st in self.checkpoints_ if s <= alarm_step - self.rollback_lag]
        if not ok:
            self._event(n_updates, "rollback", "no checkpoint old enough: not rolled back", None)
            return False
        s, st = ok[-1]
        self.checkpoints_ = deque([c for c in self.checkpoints_ if c[0] <= s], maxlen=self.checkpoints_.maxlen)
        self._pending = (s, st)
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
        self._event(len(self.recorder.rows) if self.recorder is not None else s, "rollback",
                    f"restored the state after {s} updates", float(s))

    def _event(self, step: int, kind: str, detail: str | None, value: float | None) -> None:
        if kind != "alarm" and kind != "checkpoint":
            self.actions_.append((step, kind))
        if self.recorder is not None:
            self.recorder.event(step, kind, detail=detail,
                                value=None if value is None else float(value))


def split_hparams(hparams: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(algorithm hparams, intervention hparams)`` of a run spec's hparams."""
    names = {k for k, _ in INTERVENTION_HPARAMS}
    return ({k: v for k, v in hparams.items() if k not in names}, {k: v for k, v in hparams.items() if k in names})


def from_hparams(hparams: Mapping[str, Any], recorder: Any) -> Intervention | None:
    """The :class:`Intervention` a generated run's hparams ask for, or None.

    ``intervention``: comma-separated actions (``"none"``/absent: none, the matched "without" arm);
    ``monitor``: the monitor file; ``monitor_loader``: ``module:callable`` (default :data:`DEFAULT_LOADER`)
    building the live monitor from the path; ``intervention_factor``/``_duration``: the LR back-off;
    ``intervention_rollback_lag``, ``intervention_checkpoint_every``: in updates.
    """
    actions = [a.strip() for a in str(hparams.get("intervention") or "none").split(",") if a.strip()]
    if actions in ([], ["none"]):
        return None
    if not hparams.get("monitor"):
        raise ValueError("hparams.intervention needs hparams.monitor (a monitor file written by analyze)")
    module, func = str(hparams.get("monitor_loader") or DEFAULT_LOADER).split(":")
    monitor = getattr(importlib.import_module(module), func)(hparams["monitor"])
    duration = int(hparams.get("intervention_duration", 200))
    return Intervention(monitor, recorder, actions=("log", *actions), lr_factor=float(hparams.get("intervention_factor",
                        0.1)), lr_duration=duration, rollback_lag=int(hparams.get("intervention_rollback_lag", 0)),
                        checkpoint_every=int(hparams.get("intervention_checkpoint_every", 100)))
