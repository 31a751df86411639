"""``SB3Callback``: StabilityBench telemetry for any stable-baselines3 algorithm.

Attach it to ``learn`` and every optimizer update becomes a ``steps`` row::

    with Recorder("corpus", "ppo-cartpole", algo="ppo", env="CartPole-v1", seed=0) as rec:
        model.learn(10_000, callback=SB3Callback(rec))

It finds the model's torch optimizers (``policy.optimizer`` for PPO/A2C/DQN; the critic's,
the actor's and SAC's entropy-coefficient optimizer for SAC/TD3) and puts a
:class:`~stabilitybench.generate.probe.Probe` on each. The *main* optimizer's updates define ``step``
(PPO/A2C/DQN: the policy's; SAC/TD3: the critic's, with the actor's numbers in the
``actor_*`` columns of the same row). It also records ``episode_return`` and ``performance``
(mean of the last ``perf_window`` episode returns, from SB3's ``Monitor`` infos),
``samples_seen`` (``model.num_timesteps``) and the losses SB3 logs once per ``train()`` call
(on that call's last row; A2C logs no total ``train/loss``, so its ``loss`` is recombined from the
parts it logs, see :func:`a2c_loss`). No ``RunSpec``, resolved config or planned update count is needed.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import torch
from stable_baselines3 import A2C
from stable_baselines3.common.callbacks import BaseCallback

from stabilitybench.generate.perturbations import Perturbation, TrainingClock, UpdateContext
from stabilitybench.generate.probe import Probe, ProbeInternals, _WiredProbe
from stabilitybench.generate.telemetry import warn_deprecated

#: SB3 logger key -> steps column, for the values logged once per train() call.
TRAIN_STATS = {
    "train/loss": "loss", "train/policy_gradient_loss": "policy_loss", "train/policy_loss": "policy_loss",
    "train/actor_loss": "policy_loss", "train/value_loss": "value_loss", "train/critic_loss": "value_loss",
    "train/approx_kl": "approx_kl", "train/clip_fraction": "clip_fraction", "train/ent_coef": "alpha",
}


def sb3_optimizers(model: Any) -> list[tuple[torch.optim.Optimizer, str]]:
    """(optimizer, role) of an SB3 model in the order SB3 steps them within one gradient step.

    Roles: ``main`` (defines ``step``), ``actor`` (its numbers join the main row), ``lead``
    (SAC's entropy coefficient: steps first, only takes the perturbation's LR factor).
    """
    critic = getattr(model, "critic", None)
    if critic is not None and getattr(critic, "optimizer", None) is not None:
        lead = getattr(model, "ent_coef_optimizer", None)
        return [*([(lead, "lead")] if lead is not None else []), (critic.optimizer, "main"),
                (model.actor.optimizer, "actor")]
    return [(model.policy.optimizer, "main")]


class SB3Callback(BaseCallback):
    """Records one row per main optimizer update of any SB3 model into ``recorder`` (module doc).

    ``perturbation``: optional (``stabilitybench.perturbation(...)``); ``coherence_window``: K.
    ``close_recorder``: close (write) the recorder when training ends. ``intervention``: an
    :class:`~stabilitybench.generate.intervention.Intervention` to attach to the main optimizer (its rollback restores
    the policy and every optimizer; its ``stop`` ends ``learn`` at the next environment step).
    """

    def __init__(self, recorder: Any, *, perturbation: Perturbation | None = None, coherence_window: int = 8,
                 perf_window: int = 5, close_recorder: bool = False, intervention: Any = None) -> None:
        super().__init__(verbose=0)
        self.recorder = recorder
        self.perturbation = perturbation
        self.coherence_window = coherence_window
        self.clock = TrainingClock()
        self.returns: deque[float] = deque(maxlen=perf_window)
        self.last_return: float | None = None
        self.probes: list[Probe] = []
        self.close_recorder = close_recorder
        self._harvested: Any = None
        self.intervention = intervention
        if perturbation is not None:
            recorder.set_perturbation(perturbation)

    # -- what subclasses may extend ---------------------------------------------------------
    def update_context(self, role: str) -> UpdateContext | None:
        """The context in which the main probe lets the perturbation act on parameters (None: never)."""
        return None

    def extra_row(self, step: int) -> dict[str, Any]:
        """More columns for the main row of update ``step``."""
        return {}

    def on_actor_row(self, stats: dict[str, Any]) -> None:
        """Called after the actor's numbers were merged into the current row."""

    # -- SB3 callback API ---------------------------------------------------------------------
    def _on_training_start(self) -> None:
        if not len(self.recorder):
            self.recorder.t0 = time.perf_counter()
        off_policy = getattr(self.model, "critic", None) is not None
        for opt, role in sb3_optimizers(self.model):
            on_row = {"main": self._record_update, "actor": self._record_actor, "lead": None}[role]
            internals = ProbeInternals(main=role == "main", leads=role == "lead", clock=self.clock,
                                       update_context=self.update_context(role), record=on_row is not None,
                                       skip_stepped_grads=off_policy and role == "main")
            self.probes.append(_WiredProbe(opt, self.recorder, internals, perturbation=self.perturbation,
                                           on_row=on_row, coherence_window=self.coherence_window))
        if self.intervention is not None:
            opts = sb3_optimizers(self.model)
            main = next(opt for opt, role in opts if role == "main")
            state: dict[str, Any] = {"policy": self.model.policy, **{f"optimizer_{role}": opt for opt, role in opts}}
            log_ent_coef = getattr(self.model, "log_ent_coef", None)  # SAC's learned entropy temperature
            if isinstance(log_ent_coef, torch.Tensor):
                state["log_ent_coef"] = TensorState(log_ent_coef)
            self.intervention.defer_restore = off_policy  # restore between env steps, not inside train()
            self.intervention.attach(main, self.probes, state)

    def _on_step(self) -> bool:
        if self.intervention is not None:
            self.intervention.at_safe_point()
            if self.intervention.stopped:
                return False
        self.recorder.samples_seen = self.num_timesteps
        for info in self.locals.get("infos", ()):
            episode = info.get("episode")
            if episode is not None:
                self.last_return = float(episode["r"])
                self.returns.append(self.last_return)
        return True

    def _on_rollout_start(self) -> None:
        self._harvest_train_stats()

    def _on_training_end(self) -> None:
        self._harvest_train_stats()
        if self.intervention is not None:
            self.intervention.finish()
        self.detach()
        if self.close_recorder:
            self.recorder.close()

    # -- rows -----------------------------------------------------------------------------------
    def performance(self) -> float | None:
        return sum(self.returns) / len(self.returns) if self.returns else None

    def _record_update(self, step: int, stats: dict[str, Any]) -> None:
        self.recorder.samples_seen = self.model.num_timesteps
        self.recorder.append(step=step, **stats, performance=self.performance(), episode_return=self.last_return,
                             **self.extra_row(step))

    def _record_actor(self, step: int, stats: dict[str, Any]) -> None:
        self.recorder.update_last(actor_grad_norm=stats["grad_norm"], actor_grad_coherence=stats["grad_coherence"],
                                  actor_update_norm=stats["update_norm"])
        self.on_actor_row(stats)

    def _harvest_train_stats(self) -> None:
        values = self.model.logger.name_to_value
        n_updates = values.get("train/n_updates")
        if n_updates is None or n_updates == self._harvested or not len(self.recorder):
            return
        self._harvested = n_updates
        stats = {col: float(values[key]) for key, col in TRAIN_STATS.items() if key in values}
        if "train/entropy_loss" in values:
            stats["entropy"] = -float(values["train/entropy_loss"])
        if "loss" not in stats:
            loss = a2c_loss(self.model, values)
            if loss is not None:
                stats["loss"] = loss
        self.recorder.update_last(**stats)

    def detach(self) -> None:
        """Detach every probe (idempotent); the optimizers are left as they were."""
        for probe in self.probes:
            probe.detach()
        self.probes = []

    def remove(self) -> None:
        """Deprecated alias of :meth:`detach` (removed in 0.2)."""
        warn_deprecated("SB3Callback.remove()", "SB3Callback.detach()")
        self.detach()


class StabilityCallback(SB3Callback):
    """Deprecated name of :class:`SB3Callback` (removed in 0.2); warns when constructed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warn_deprecated("StabilityCallback", "SB3Callback")
        super().__init__(*args, **kwargs)


def a2c_loss(model: Any, values: dict[str, Any]) -> float | None:
    """A2C's total loss from the parts it logs, or None when ``model`` is not A2C or a part is missing.

    SB3's A2C logs ``train/policy_loss``, ``train/value_loss`` and ``train/entropy_loss`` but not
    ``train/loss``; it minimises ``policy_loss + ent_coef * entropy_loss + vf_coef * value_loss``
    (``stable_baselines3/a2c/a2c.py``) with one gradient step per ``train()`` call, so the logged parts
    are that step's and this is the loss it backpropagated (to float32 rounding of the parts).
    """
    keys = ("train/policy_loss", "train/value_loss", "train/entropy_loss")
    if not isinstance(model, A2C) or any(key not in values for key in keys):
        return None
    policy, value, entropy = (float(values[key]) for key in keys)
    return policy + float(model.ent_coef) * entropy + float(model.vf_coef) * value


class TensorState:
    """A bare tensor (not a module) as a checkpointable object: SAC's ``log_ent_coef`` is one, and a
    rollback that restored its optimizer's state but not its value would leave the temperature wrong."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"value": self.tensor.detach().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.tensor.copy_(state["value"])
