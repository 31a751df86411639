"""Framework-agnostic telemetry: row/event buffers and the optimizer-update probe.

:class:`UpdateProbe` attaches to any ``torch.optim.Optimizer`` through its public
step hooks (plus one multi-grad hook for the pre-clipping norm), so SB3 and the LM
loop are instrumented without copying their training code. Per optimizer update it

* applies the perturbation's learning-rate factor on top of the algorithm's schedule,
* measures the raw (pre-clipping) gradient norm, the applied gradient's rolling
  coherence, the update norm and the parameter norm,
* raises :class:`~generate.errors.NonFiniteTraining` on a NaN/Inf gradient or parameter
  (after the row for that update has been recorded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa
import torch
from torch.autograd.graph import register_multi_grad_hook

from data_schema.schema import EVENTS_SCHEMA, STEPS_SCHEMA
from generate.coherence import RollingCoherence
from generate.errors import NonFiniteTraining
from generate.perturbations import Perturbation


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


class UpdateProbe:
    """Instruments one optimizer; calls ``on_update(step, stats)`` after every update.

    ``stats`` holds ``lr``, ``grad_norm`` (pre-clipping), ``grad_coherence``,
    ``update_norm``, ``param_norm`` and ``perturbation_active``. ``scheduled_lr()``
    returns the learning rate the algorithm wants now; the probe sets
    ``scheduled_lr() * perturbation.lr_factor(step)`` on every param group just
    before the step, so a spike acts per update.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Iterable[torch.nn.Parameter],
        perturbation: Perturbation,
        scheduled_lr: Callable[[], float],
        on_update: Callable[[int, dict[str, Any]], None],
        events: EventLog,
        coherence_window: int = 8,
    ) -> None:
        self.optimizer = optimizer
        self.params = [p for p in params if p.requires_grad]
        self.perturbation = perturbation
        self.scheduled_lr = scheduled_lr
        self.on_update = on_update
        self.events = events
        self.coherence = RollingCoherence(coherence_window)
        self.step = 0  # index of the next optimizer update
        self._was_active = False
        self._raw_norm: float | None = None
        self._before: torch.Tensor | None = None
        self._pending: dict[str, Any] = {}
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
            register_multi_grad_hook(self.params, self._on_grads, mode="all"),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -- hooks ----------------------------------------------------------------------
    def _on_grads(self, grads: tuple[torch.Tensor | None, ...]) -> None:
        norms = torch._foreach_norm([g for g in grads if g is not None])
        self._raw_norm = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else None

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        step = self.step
        active = self.perturbation.active(step)
        lr = float(self.scheduled_lr()) * self.perturbation.lr_factor(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if active != self._was_active:  # edges of the perturbation window become events
            kind = "perturbation_on" if active else "perturbation_off"
            self.events.add(step, kind, detail=self.perturbation.kind, value=self.perturbation.magnitude)
            self._was_active = active

        grads = [p.grad.reshape(-1) for p in self.params if p.grad is not None]
        flat = torch.cat(grads)
        applied_norm = float(torch.linalg.vector_norm(flat))
        raw_norm = self._raw_norm if self._raw_norm is not None else applied_norm
        self._raw_norm = None
        self._pending = {"lr": lr, "grad_norm": raw_norm, "perturbation_active": active}
        if not (_finite(applied_norm) and _finite(raw_norm)):
            self._pending.update(grad_coherence=None, update_norm=None, param_norm=None)
            self._emit()
            raise NonFiniteTraining(step, "gradient")
        self._pending["grad_coherence"] = self.coherence.update(flat)
        self._before = torch.cat([p.detach().reshape(-1) for p in self.params])

    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        after = torch.cat([p.detach().reshape(-1) for p in self.params])
        update_norm = float(torch.linalg.vector_norm(after - self._before))
        param_norm = float(torch.linalg.vector_norm(after))
        self._pending.update(update_norm=update_norm, param_norm=param_norm)
        step = self._emit()
        if not (_finite(param_norm) and _finite(update_norm)):
            raise NonFiniteTraining(step, "parameters")

    def _emit(self) -> int:
        step = self.step
        self.on_update(step, self._pending)
        self.step += 1
        return step


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


def params_finite(params: Iterable[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)
