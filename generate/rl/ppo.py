"""PPO on a MuJoCo task with full telemetry, via an SB3 callback and optimizer hooks.

Read top to bottom: build the env and the SB3 model from a frozen config, attach
:class:`PPOTelemetry` (an ordinary ``BaseCallback``), call ``learn``, hand the
buffered rows back. SB3's training loop is not copied or patched.

Timing of the numbers:

* one ``steps`` row per optimizer update (minibatch gradient step), written by the
  :class:`~generate.telemetry.UpdateProbe` hooks on the policy optimizer;
* ``samples_seen`` is ``model.num_timesteps`` when the update ran (constant within a
  ``train()`` call, since PPO trains after each rollout);
* SB3 reports ``loss``, ``policy_loss``, ``value_loss``, ``entropy``, ``approx_kl``
  and ``clip_fraction`` once per ``train()`` call; they go on that call's last row;
* ``episode_return`` / ``performance`` come from the Monitor wrapper's episode ends
  seen during rollouts, carried forward to every update.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env

from generate.errors import NonFiniteTraining
from generate.perturbations import Perturbation, build
from generate.registry import GENERATORS, GeneratorResult
from generate.rl.envs import check_env_id
from generate.spec import RunSpec
from generate.telemetry import EventLog, StepRecorder, UpdateProbe, params_finite

#: SB3 logger key -> steps column, for the once-per-train() values.
PPO_TRAIN_STATS = {
    "train/loss": "loss",
    "train/policy_gradient_loss": "policy_loss",
    "train/value_loss": "value_loss",
    "train/approx_kl": "approx_kl",
    "train/clip_fraction": "clip_fraction",
}


class PPOTelemetry(BaseCallback):
    """Records one row per optimizer update of an SB3 on-policy model."""

    def __init__(self, spec: RunSpec, perturbation: Perturbation, recorder: StepRecorder, events: EventLog) -> None:
        super().__init__(verbose=0)
        self.spec = spec
        self.perturbation = perturbation
        self.recorder = recorder
        self.events = events
        self.returns: deque[float] = deque(maxlen=spec.perf_window)
        self.last_return: float | None = None
        self.t0 = time.perf_counter()
        self.probe: UpdateProbe | None = None
        self._harvested_n_updates: Any = None

    # -- SB3 callback API -------------------------------------------------------------
    def _on_training_start(self) -> None:
        model = self.model
        self.t0 = time.perf_counter()
        self.probe = UpdateProbe(
            optimizer=model.policy.optimizer,
            params=model.policy.parameters(),
            perturbation=self.perturbation,
            scheduled_lr=lambda: model.lr_schedule(model._current_progress_remaining),
            on_update=self._record_update,
            events=self.events,
            coherence_window=self.spec.coherence_window,
        )

    def _on_step(self) -> bool:
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
        self.close()

    # -- internals ---------------------------------------------------------------------
    def context(self) -> dict[str, Any]:
        return {"samples_seen": int(self.model.num_timesteps), "wall_time_s": time.perf_counter() - self.t0}

    def performance(self) -> float | None:
        return sum(self.returns) / len(self.returns) if self.returns else None

    def _record_update(self, step: int, stats: dict[str, Any]) -> None:
        self.recorder.append(
            step=step,
            **self.context(),
            **stats,
            performance=self.performance(),
            episode_return=self.last_return,
        )

    def _harvest_train_stats(self) -> None:
        values = self.model.logger.name_to_value
        n_updates = values.get("train/n_updates")
        if n_updates is None or n_updates == self._harvested_n_updates or not len(self.recorder):
            return
        self._harvested_n_updates = n_updates
        stats = {col: float(values[key]) for key, col in PPO_TRAIN_STATS.items() if key in values}
        if "train/entropy_loss" in values:
            stats["entropy"] = -float(values["train/entropy_loss"])
        self.recorder.update_last(**stats)

    def close(self) -> None:
        if self.probe is not None:
            self.probe.remove()
            self.probe = None


def run(spec: RunSpec, extra_callbacks: Sequence[BaseCallback] = ()) -> GeneratorResult:
    """Train SB3 PPO for ``spec.total_steps`` env steps and return its telemetry.

    ``extra_callbacks`` run after the telemetry callback (tests use them to observe the
    optimizer independently).
    """
    check_env_id(spec.env)
    cfg = GENERATORS[("rl", "ppo")].config(spec)
    planned = cfg.planned_updates(spec.total_steps)
    onset_step = round(spec.onset_frac * planned)
    perturbation = build(spec.perturbation, spec.magnitude, onset_step, spec.duration_steps)

    env = make_vec_env(spec.env, n_envs=cfg.n_envs, seed=spec.seed)
    model = PPO("MlpPolicy", env, seed=spec.seed, device="cpu", verbose=0, **cfg.sb3_kwargs())
    partition = {"domain": spec.domain, "algo": spec.algo, "env": spec.env, "perturbation": spec.perturbation}
    recorder = StepRecorder(spec.run_id, partition)
    events = EventLog(spec.run_id)
    callback = PPOTelemetry(spec, perturbation, recorder, events)
    events.context = callback.context

    stop_reason = "completed"
    try:
        model.learn(total_timesteps=spec.total_steps, callback=CallbackList([callback, *extra_callbacks]))
    except NonFiniteTraining as exc:
        stop_reason = "nonfinite"
        events.add(exc.step, "nonfinite", detail=exc.what)
    except ValueError as exc:
        # A policy whose outputs overflowed fails inside torch.distributions during the
        # rollout ("... found invalid values"). That is a collapse, not a crash.
        if "invalid values" not in str(exc) and params_finite(model.policy.parameters()):
            raise
        stop_reason = "nonfinite"
        events.add(max(len(recorder) - 1, 0), "nonfinite", detail="policy output")
    finally:
        callback.close()
        env.close()

    return GeneratorResult(
        steps=recorder.to_table(),
        events=events.to_table(),
        planned_updates=planned,
        onset_step=onset_step,
        stop_reason=stop_reason,
        knobs={"batch_size": cfg.batch_size, "n_envs": cfg.n_envs, "ent_coef": cfg.ent_coef},
        config={"algo": "ppo", "policy": "MlpPolicy", "torch": torch.__version__, **cfg.sb3_kwargs(),
                "n_envs": cfg.n_envs},
    )
