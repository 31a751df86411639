"""Framework-agnostic telemetry: row/event buffers and the optimizer-update probe.

:class:`UpdateProbe` attaches to any ``torch.optim.Optimizer`` through its public
step hooks (plus post-accumulate-grad hooks for the pre-clipping gradient), so SB3 and the LM
loop are instrumented without copying their training code. Per optimizer update it

* applies the perturbation's learning-rate factor on top of the algorithm's schedule,
* (main probe only) lets the perturbation act on parameters or optimizer state just
  before the update, and logs the window's on/off edges as events,
* measures the raw (pre-clipping) gradient norm, the applied gradient's rolling
  coherence, the update norm and the parameter norm,
* raises :class:`~generate.errors.NonFiniteTraining` on a NaN/Inf gradient or parameter
  (after the row for that update has been recorded).

One probe is the *main* one: its updates define ``step`` (PPO: the policy optimizer;
SAC/TD3: the critic). Followers (the SAC/TD3 actor, SAC's entropy coefficient) read
the shared clock and either merge their numbers into the current row or only apply
the learning-rate factor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa
import torch

from data_schema.schema import EVENTS_SCHEMA, STEPS_SCHEMA
from generate.coherence import RollingCoherence
from generate.errors import NonFiniteTraining
from generate.perturbations import Perturbation, TrainingClock, UpdateContext


class StepRecorder:
    """Buffers ``steps`` rows (dicts keyed by schema column) and builds the Arrow table."""

    def __init__(self, run_id: str, constants: dict[str, Any]) -> None:
        self.run_id = run_id
        self.constants = constants  # partition columns, repeated on every row
        self.rows: list[dict[str, Any]] = []

    def append(self, **values: Any) -> None:
        self.rows.append(values)

    def update_last(self, **values: Any) -> None:
        if self.rows:
            self.rows[-1].update(values)

    def __len__(self) -> int:
        return len(self.rows)

    def to_table(self) -> pa.Table:
        rows = [{"run_id": self.run_id, **self.constants, **r} for r in self.rows]
        return pa.Table.from_pylist(rows, schema=STEPS_SCHEMA)


class EventLog:
    """Buffers ``events`` rows."""

    def __init__(self, run_id: str, context: Callable[[], dict[str, Any]] | None = None) -> None:
        self.run_id = run_id
        self.rows: list[dict[str, Any]] = []
        #: Returns ``samples_seen`` and ``wall_time_s`` of "now" for rows that omit them.
        self.context = context or dict

    def add(self, step: int, event: str, *, detail: str | None = None, value: float | None = None) -> None:
        self.rows.append(
            {"run_id": self.run_id, "step": step, "event": event, "detail": detail, "value": value, **self.context()}
        )

    def kinds(self) -> list[str]:
        return [r["event"] for r in self.rows]

    def to_table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=EVENTS_SCHEMA)


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """The parameters an optimizer updates (exactly those, whatever the module layout)."""
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


class UpdateProbe:
    """Instruments one optimizer.

    Parameters
    ----------
    optimizer:
        The optimizer to instrument; its param groups define the parameters.
    perturbation, clock:
        The run's perturbation and the shared update counter.
    scheduled_lr:
        Returns the learning rate the algorithm wants now; the probe sets
        ``scheduled_lr() * perturbation.lr_factor(step)`` on every param group just
        before each step, so a spike acts per update.
    on_update:
        ``on_update(step, stats)`` after each update, with ``lr``, ``grad_norm``
        (before clipping), ``grad_coherence``, ``update_norm``, ``param_norm`` and
        ``perturbation_active``. None: the probe only applies the LR factor.
    main:
        The main probe advances the clock, lets the perturbation act just before the
        update (``before_update`` with ``update_context``) and logs the window's
        on/off edges. A follower's update belongs to the main update just made
        (``clock.step - 1``), unless ``leads=True`` (an optimizer stepped before the
        main one within a gradient step, e.g. SAC's entropy coefficient).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        perturbation: Perturbation,
        clock: TrainingClock,
        scheduled_lr: Callable[[], float],
        on_update: Callable[[int, dict[str, Any]], None] | None,
        events: EventLog,
        *,
        main: bool = True,
        leads: bool = False,
        coherence_window: int = 8,
        update_context: UpdateContext | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.params = optimizer_params(optimizer)
        self.perturbation = perturbation
        self.clock = clock
        self.scheduled_lr = scheduled_lr
        self.on_update = on_update
        self.events = events
        self.main, self.leads = main, leads
        self.update_context = update_context
        self.coherence = RollingCoherence(coherence_window)
        self._was_active = False
        self._raw_norm: float | None = None
        self._grad: torch.Tensor | None = None
        self._before: torch.Tensor | None = None
        self._pending: dict[str, Any] = {}
        self._handles = [optimizer.register_step_pre_hook(self._pre_step)]
        self._grad_handles: list[Any] = []
        self._order: list[int] = []
        if on_update is not None:
            self.flat = flatten_params_(self.params)  # a live view of every parameter: no copies per step
            self._handles.append(optimizer.register_step_post_hook(self._post_step))
            # Until the first backward shows which parameter's gradient is accumulated last,
            # every parameter has a hook; afterwards only that one keeps it (1 call per backward).
            self._grad_handles = [p.register_post_accumulate_grad_hook(self._learn_order) for p in self.params]

    def remove(self) -> None:
        for handle in self._handles + self._grad_handles:
            handle.remove()
        self._handles, self._grad_handles = [], []

    def current_step(self) -> int:
        if self.main or self.leads:
            return self.clock.step
        return max(self.clock.step - 1, 0)

    # -- hooks ----------------------------------------------------------------------
    def _learn_order(self, param: torch.Tensor) -> None:
        index = next(i for i, p in enumerate(self.params) if p is param)
        self._order.append(index)
        if len(self._order) == len(self.params):
            last = self.params[self._order[-1]]
            for handle in self._grad_handles:
                handle.remove()
            self._grad_handles = [last.register_post_accumulate_grad_hook(self._on_accumulated)]
            self._on_accumulated(last)

    def _on_accumulated(self, param: torch.Tensor) -> None:
        # After the last accumulation of a backward pass, p.grad holds the gradient before
        # clipping. Global-norm clipping (SB3's clip_grad_norm_) only rescales that vector,
        # so its direction, and hence the coherence, is that of the applied gradient; its
        # norm is the raw grad_norm. A missing grad (another order) falls back to pre-step.
        grads = [p.grad for p in self.params]
        if any(g is None for g in grads):
            return
        self._grad = torch.cat([g.reshape(-1) for g in grads])
        self._raw_norm = float(self._grad.norm())

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        step = self.current_step()
        active = self.perturbation.active(step)
        lr = float(self.scheduled_lr()) * self.perturbation.lr_factor(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if self.main:
            self._perturbation_edges(step, active)
        if self.on_update is None:
            return

        grad, norm = self._grad, self._raw_norm
        self._grad = self._raw_norm = None
        if grad is None:  # no backward seen (or a partial one): read the applied gradient
            grad = torch.cat([p.grad.reshape(-1) for p in self.params if p.grad is not None])
            norm = float(grad.norm())
        self._pending = {"lr": lr, "grad_norm": norm, "perturbation_active": active}
        if not _finite(norm):
            self._pending.update(grad_coherence=None, update_norm=None, param_norm=None)
            self._emit(step)
            raise NonFiniteTraining(step, "gradient")
        self._pending["grad_coherence"] = self.coherence.update(grad, norm)
        self._before = self.flat.clone()

    def _perturbation_edges(self, step: int, active: bool) -> None:
        if active != self._was_active:  # edges of the perturbation window become events
            kind = "perturbation_on" if active else "perturbation_off"
            self.events.add(step, kind, detail=self.perturbation.kind, value=self.perturbation.magnitude)
            self._was_active = active
        if self.update_context is not None:
            apply_perturbation(self.perturbation, step, self.update_context, self.events)

    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        update_norm = float(torch.dist(self.flat, self._before))
        param_norm = float(self.flat.norm())
        self._pending.update(update_norm=update_norm, param_norm=param_norm)
        step = self.current_step()
        self._emit(step)
        if not (_finite(param_norm) and _finite(update_norm)):
            raise NonFiniteTraining(step, "parameters")

    def _emit(self, step: int) -> None:
        self.on_update(step, self._pending)
        if self.main:
            self.clock.step += 1


def apply_perturbation(perturbation: Perturbation, step: int, ctx: UpdateContext, events: EventLog) -> None:
    """Let the perturbation act on parameters/optimizer state; log what it did as an event."""
    effect = perturbation.before_update(step, ctx)
    if effect:
        detail = ", ".join(f"{k}={v:.6g}" for k, v in effect.items())
        events.add(step, "perturbation_applied", detail=f"{perturbation.kind}: {detail}",
                   value=next(iter(effect.values())))


def flatten_params_(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Re-seat ``params`` as views into one contiguous buffer and return that buffer.

    Values, shapes and identities of the parameters are unchanged (optimizers keep
    their references), but the whole parameter vector can then be read without a
    ``torch.cat`` per update. Must run before anything caches ``p.data``.
    """
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat[offset : offset + n].view_as(p)
        offset += n
    return flat


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


def params_finite(params: Iterable[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)
