"""Skip an optimizer update that a rule flags: the practitioners' defence, as an arm of the intervention experiment.

OLMo-core's ``SkipStepAdamW`` skips an update when the loss or the gradient norm exceeds the mean of its previous
128 values by more than 6 standard deviations; the update is then not applied at all (parameters, Adam's moments
and its step count stay as they were) and training goes on, with no rollback. :class:`SkipStep` does that to any
``torch.optim.Optimizer`` that a :class:`~stabilitybench.generate.probe.Probe` watches:

* **the decision** is made in the probe's pre-step hook, on the gradient norm *before clipping* (the probe's own,
  as OLMo-core's grad clipper reports it) and on the loss when the loop hands it over first (``skip.loss = x``
  before ``optimizer.step()``, as OLMo-core's trainer sets ``latest_loss``). An SB3 PPO ``train()`` computes its loss
  inside the minibatch loop, out of a callback's reach, so there the rule reads the gradient norm alone;
* **the skip**: a flagged update's parameters and optimizer state are copied before the step and put back after it,
  before the probe measures the update, so its telemetry row says what happened (``update_norm`` 0; the gradient
  columns are the gradient that was refused). Copies are taken only for skipped updates;
* **the record**: an ``events`` row ``skip_step`` per skipped update (value: the rule's statistic, a z-score).

The rule itself is :class:`stabilitybench.analysis.baselines.OlmoSkipDecision` (the same code that scores the
OLMo-core rule offline as a detector), reached by name through ``rule_loader`` so that ``generate`` does not
import ``analysis``. A skip-step arm of a generated run is ``hparams.intervention = "skip_step"``
(:func:`stabilitybench.generate.intervention.from_hparams`), with ``skip_step_window`` and ``skip_step_sigma``.

It duck-types the part of :class:`~stabilitybench.generate.intervention.Intervention` the adapters call
(``attach``, ``at_safe_point``, ``stopped``, ``defer_restore``, ``finish``), so an SB3 callback takes either.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch

#: The default ``rule_loader``: ``module:callable(window, sigma)`` returning an object with
#: ``step(grad_norm, loss=None) -> (statistic, skip)``.
DEFAULT_RULE_LOADER = "stabilitybench.live:skip_step_decision"
#: Event kind written per skipped update.
EVENT = "skip_step"


class SkipStep:
    """Skip the updates a rule flags (module docstring). After :meth:`attach`: ``skipped_`` (update index of each
    skipped update), ``statistics_`` (the rule's statistic at each)."""

    def __init__(self, recorder: Any, *, window: int = 128, sigma: float = 6.0,
                 rule_loader: str = DEFAULT_RULE_LOADER) -> None:
        if int(window) < 2 or not float(sigma) > 0:
            raise ValueError(f"skip_step: window must be >= 2 and sigma > 0, got {window}, {sigma}")
        module, func = rule_loader.split(":")
        self.rule = getattr(importlib.import_module(module), func)(int(window), float(sigma))
        self.recorder = recorder
        self.window, self.sigma = int(window), float(sigma)
        #: The loss of the coming update, when the loop has it before ``step()``; consumed by the decision.
        self.loss: float | None = None
        self.stopped = False  # never: skip-step does not end training (the adapters' Intervention interface)
        self.defer_restore = False
        self.skipped_: list[int] = []
        self.statistics_: list[float] = []
        self._probe: Any = None
        self._saved: tuple[list[torch.Tensor], dict[Any, dict[str, Any]]] | None = None

    # ---- the adapters' interface -------------------------------------------------------------------------------
    def attach(self, optimizer: torch.optim.Optimizer, probes: Any = (),
               state: Mapping[str, Any] | None = None) -> SkipStep:
        """Gate ``optimizer``'s updates through the probe that watches it (``probes``: that probe, or a list that
        holds it). ``state`` is accepted for the Intervention interface and not used (nothing is checkpointed)."""
        candidates = list(probes) if isinstance(probes, list | tuple) else [probes]
        probe = next((p for p in candidates if getattr(p, "optimizer", None) is optimizer), None)
        if probe is None:
            raise ValueError("skip_step needs the Probe that records this optimizer (probes=...)")
        if getattr(probe, "gate", None) is not None:
            raise ValueError("this optimizer's probe already has a gate")
        probe.gate = self
        self._probe = probe
        return self

    def at_safe_point(self) -> None:
        """Nothing to do between steps (a skip is undone inside the step)."""

    def poll(self, final: bool = False) -> None:
        """Nothing to poll: the decision is made before each update."""

    def finish(self) -> None:
        """Detach from the probe (end of training)."""
        if self._probe is not None and self._probe.gate is self:
            self._probe.gate = None
        self._probe = None

    # ---- called by the probe ----------------------------------------------------------------------------------
    def before_step(self, step: int, grad_norm: float, optimizer: torch.optim.Optimizer,
                    params: list[torch.Tensor]) -> bool:
        """Decide on update ``step`` (the probe's pre-step hook); on a skip, copy what the step will change."""
        loss, self.loss = self.loss, None
        statistic, skip = self.rule.step(grad_norm, loss)
        if not skip:
            return False
        with torch.no_grad():
            saved_params = [p.detach().clone() for p in params]
        saved_state = {p: {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in st.items()}
                       for p, st in optimizer.state.items()}
        self._saved = (saved_params, saved_state)
        self.skipped_.append(int(step))
        self.statistics_.append(float(statistic))
        if self.recorder is not None:
            what = "grad norm" if loss is None else "loss or grad norm"
            self.recorder.event(int(step), EVENT, detail=f"{what} above mean + {self.sigma:g} SD of the previous "
                                f"{self.window}: update not applied", value=float(statistic))
        return True

    def after_step(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
        """Undo the step just taken (the probe's post-step hook, before it measures the update)."""
        if self._saved is None:
            return
        saved_params, saved_state = self._saved
        self._saved = None
        with torch.no_grad():
            torch._foreach_copy_(params, saved_params)
        for p in list(optimizer.state):
            if p not in saved_state:
                del optimizer.state[p]  # the first update created it: as if it never ran
        for p, st in saved_state.items():
            live = optimizer.state[p]
            for k in [k for k in live if k not in st]:
                del live[k]
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and isinstance(live.get(k), torch.Tensor) and live[k].shape == v.shape:
                    live[k].copy_(v)
                else:
                    live[k] = v
