"""PPO, SAC and TD3 on MuJoCo with full telemetry, via an SB3 callback and optimizer hooks.

Read top to bottom: resolve the frozen config, build the envs and the SB3 model,
attach :class:`RLTelemetry` (an ordinary ``BaseCallback``), call ``learn``, hand the
buffered rows back. SB3's training loops are not copied or patched.

Timing of the numbers (one ``steps`` row per *main* optimizer update):

* PPO: the main optimizer is the policy's (actor and critic share it); one row per
  minibatch gradient step. SB3 reports ``loss``, ``policy_loss``, ``value_loss``,
  ``entropy``, ``approx_kl`` and ``clip_fraction`` once per ``train()`` call; they
  go on that call's last row.
* SAC/TD3: the main optimizer is the critic's; ``grad_norm``, ``grad_coherence``,
  ``update_norm`` and ``param_norm`` describe the critic, ``actor_*`` columns the
  actor update of the same gradient step (TD3: every ``policy_delay``-th step,
  null otherwise). ``q_mean`` is the mean current Q estimate (over critics) on the
  replay minibatch; losses come from SB3's logger, once per ``train()`` call.
* ``samples_seen`` is ``model.num_timesteps`` when the update ran.
* ``episode_return`` / ``performance`` come from the Monitor wrapper's episode ends
  (the *true* task reward, even under reward perturbations), carried forward.
* ``eval_return``: every ``eval_every`` env steps the deterministic policy runs
  ``eval_episodes`` episodes on a clean env; the value sits on the latest row.
* ``dormant_fraction`` / ``effective_rank``: every ``probe_every`` updates, on the
  policy's (actor's) hidden layers over a fixed batch of observations.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import gymnasium
import numpy as np
import torch
from stable_baselines3 import PPO, SAC, TD3
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.noise import NormalActionNoise

from generate.errors import NonFiniteTraining
from generate.perturbations import Perturbation, TrainingClock, UpdateContext, build
from generate.registry import GeneratorResult
from generate.representation import HiddenFeatures, dormant_fraction, effective_rank
from generate.rl.config import resolve
from generate.rl.envs import evaluate, make_train_env, probe_observations
from generate.spec import RunSpec
from generate.telemetry import EventLog, StepRecorder, UpdateProbe, apply_perturbation, params_finite

#: SB3 logger key -> steps column, for the once-per-train() values.
TRAIN_STATS = {
    "ppo": {"train/loss": "loss", "train/policy_gradient_loss": "policy_loss", "train/value_loss": "value_loss",
            "train/approx_kl": "approx_kl", "train/clip_fraction": "clip_fraction"},
    "sac": {"train/critic_loss": "value_loss", "train/actor_loss": "policy_loss", "train/ent_coef": "alpha"},
    "td3": {"train/critic_loss": "value_loss", "train/actor_loss": "policy_loss"},
}


class RLTelemetry(BaseCallback):
    """Records one row per main optimizer update of an SB3 model (PPO, SAC or TD3)."""

    def __init__(self, spec: RunSpec, cfg: Any, perturbation: Perturbation, clock: TrainingClock,
                 recorder: StepRecorder, events: EventLog, probe_obs: np.ndarray, planned_updates: int) -> None:
        super().__init__(verbose=0)
        self.spec, self.cfg = spec, cfg
        self.perturbation, self.clock = perturbation, clock
        self.recorder, self.events = recorder, events
        self.probe_obs = torch.as_tensor(probe_obs)
        self.returns: deque[float] = deque(maxlen=spec.perf_window)
        self.last_return: float | None = None
        self.t0 = time.perf_counter()
        self.probes: list[UpdateProbe] = []
        self.features: HiddenFeatures | None = None
        self.eval_every = cfg.eval_interval(spec.total_steps)
        self.probe_every = cfg.probe_interval(planned_updates)
        self.next_eval = self.eval_every
        self.ctx: UpdateContext | None = None
        self.eval_env = gymnasium.make(spec.env) if cfg.eval_episodes > 0 else None
        self._harvested: Any = None
        self._q_pending: float | None = None
        self._q_hook: Any = None
        self.probe_seconds = 0.0  # cost of the periodic representation probes, reported separately

    # -- SB3 callback API -------------------------------------------------------------
    def _on_training_start(self) -> None:
        self.t0 = time.perf_counter()
        model, algo = self.model, self.spec.algo
        modules = {"policy": model.policy} if algo == "ppo" else {"actor": model.actor, "critic": model.critic}
        self.ctx = ctx = UpdateContext(
            optimizers=[o for o, _ in _optimizers(model, algo)],
            modules=modules,
            initial_state={k: copy.deepcopy(m.state_dict()) for k, m in modules.items()},
            generator=torch.Generator().manual_seed(self.spec.seed + 1_000_003),
            target_layer=_target_layer(algo),
        )

        def scheduled() -> float:
            return model.lr_schedule(model._current_progress_remaining)

        for opt, role in _optimizers(model, algo):
            on_update = {"main": self._record_update, "actor": self._record_actor, "lead": None}[role]
            self.probes.append(UpdateProbe(
                opt, self.perturbation, self.clock, scheduled, on_update, self.events,
                main=role == "main", leads=role == "lead", coherence_window=self.spec.coherence_window,
                # PPO: perturb parameters between backward and step (safe: one optimizer). SAC/TD3
                # build the actor's graph before the critic step, so they perturb between
                # gradient steps, from _on_step.
                update_context=ctx if role == "main" and algo == "ppo" else None,
            ))
        self.features = HiddenFeatures(_hidden_activations(model, algo))
        if algo != "ppo":
            self._q_hook = model.critic.register_forward_hook(self._capture_q)

    def _on_step(self) -> bool:
        if self.spec.algo != "ppo" and self.ctx is not None and self.clock.step > 0:
            apply_perturbation(self.perturbation, self.clock.step, self.ctx, self.events)
        for info in self.locals.get("infos", ()):
            episode = info.get("episode")
            if episode is not None:
                self.last_return = float(episode["r"])
                self.returns.append(self.last_return)
        if self.eval_env is not None and self.model.num_timesteps >= self.next_eval:
            self.next_eval = (self.model.num_timesteps // self.eval_every + 1) * self.eval_every
            value = evaluate(self.model, self.eval_env, self.cfg.eval_episodes, seed=self.spec.seed + 10_000)
            self.recorder.update_last(eval_return=value)
            self.events.add(max(len(self.recorder) - 1, 0), "eval", value=value)
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

    def _capture_q(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if self._q_pending is None:  # the first critic forward of a gradient step: Q(s, a) on the replay batch
            self._q_pending = float(torch.stack([q.detach().mean() for q in output]).mean())

    def _record_update(self, step: int, stats: dict[str, Any]) -> None:
        row = {"step": step, **self.context(), **stats, "performance": self.performance(),
               "episode_return": self.last_return, "q_mean": self._q_pending}
        self._q_pending = None
        if step % self.probe_every == 0:
            row.update(self._representation())
        self.recorder.append(**row)

    def _record_actor(self, step: int, stats: dict[str, Any]) -> None:
        self.recorder.update_last(actor_grad_norm=stats["grad_norm"], actor_grad_coherence=stats["grad_coherence"],
                                  actor_update_norm=stats["update_norm"])
        self._q_pending = None  # the actor's critic forward is not Q(s, a_replay)

    def _representation(self) -> dict[str, float]:
        t0 = time.perf_counter()
        obs = self.probe_obs
        vec_norm = self.model.get_vec_normalize_env()
        if vec_norm is not None:
            obs = torch.as_tensor(vec_norm.normalize_obs(self.probe_obs.numpy()), dtype=torch.float32)
        hidden = self.features.capture(lambda: _hidden_forward(self.model, self.spec.algo, obs))
        out = {"dormant_fraction": dormant_fraction(hidden, self.cfg.dormant_tau),
               "effective_rank": effective_rank(hidden[-1])}
        self.probe_seconds += time.perf_counter() - t0
        return out

    def _harvest_train_stats(self) -> None:
        values = self.model.logger.name_to_value
        n_updates = values.get("train/n_updates")
        if n_updates is None or n_updates == self._harvested or not len(self.recorder):
            return
        self._harvested = n_updates
        stats = {col: float(values[key]) for key, col in TRAIN_STATS[self.spec.algo].items() if key in values}
        if "train/entropy_loss" in values:
            stats["entropy"] = -float(values["train/entropy_loss"])
        self.recorder.update_last(**stats)

    def close(self) -> None:
        for probe in self.probes:
            probe.remove()
        self.probes = []
        if self.features is not None:
            self.features.remove()
            self.features = None
        if self._q_hook is not None:
            self._q_hook.remove()
            self._q_hook = None
        if self.eval_env is not None:
            self.eval_env.close()
            self.eval_env = None


# ----------------------------------------------------------------- per-algorithm facts
def _optimizers(model: Any, algo: str) -> list[tuple[torch.optim.Optimizer, str]]:
    """(optimizer, role) in the order SB3 steps them within one gradient step."""
    if algo == "ppo":
        return [(model.policy.optimizer, "main")]
    lead = [(model.ent_coef_optimizer, "lead")] if getattr(model, "ent_coef_optimizer", None) is not None else []
    return [*lead, (model.critic.optimizer, "main"), (model.actor.optimizer, "actor")]


def _target_layer(algo: str) -> str:
    """``module:parameter-prefix`` of the first hidden layer of the policy network (layer_reset)."""
    return {"ppo": "policy:mlp_extractor.policy_net.0.", "sac": "actor:latent_pi.0.", "td3": "actor:mu.0."}[algo]


def _hidden_net(model: Any, algo: str) -> torch.nn.Sequential:
    return {"ppo": lambda: model.policy.mlp_extractor.policy_net, "sac": lambda: model.actor.latent_pi,
            "td3": lambda: model.actor.mu}[algo]()


def _hidden_activations(model: Any, algo: str) -> list[torch.nn.Module]:
    """The activation modules of the policy's hidden layers (TD3's final Tanh squash excluded)."""
    net = _hidden_net(model, algo)
    acts = [m for m in net if isinstance(m, (torch.nn.ReLU, torch.nn.Tanh))]
    return acts[:-1] if algo == "td3" else acts


def _hidden_forward(model: Any, algo: str, obs: torch.Tensor) -> None:
    _hidden_net(model, algo)(obs)


def _build_model(spec: RunSpec, cfg: Any, env: Any) -> Any:
    common = {"seed": spec.seed, "device": "cpu", "verbose": 0}
    if spec.algo == "ppo":
        return PPO("MlpPolicy", env, **common, **cfg.sb3_kwargs())
    action_dim = int(np.prod(env.action_space.shape))
    if spec.algo == "sac":
        return SAC("MlpPolicy", env, **common, **cfg.sb3_kwargs(action_dim))
    noise = NormalActionNoise(np.zeros(action_dim), cfg.action_noise_std * np.ones(action_dim))
    return TD3("MlpPolicy", env, action_noise=noise, **common, **cfg.sb3_kwargs(action_dim))


# ------------------------------------------------------------------------------ run
def run(spec: RunSpec, extra_callbacks: Sequence[BaseCallback] = ()) -> GeneratorResult:
    """Train ``spec.algo`` for ``spec.total_steps`` env steps and return its telemetry.

    ``extra_callbacks`` run after the telemetry callback (tests use them to observe
    the optimizers independently).
    """
    cfg = resolve(spec.algo, spec.env, spec.stochasticity, dict(spec.hparams))
    planned = cfg.planned_updates(spec.total_steps)
    onset_step = round(spec.onset_frac * planned)
    perturbation = build(spec.perturbation, spec.magnitude, onset_step, spec.duration_steps, seed=spec.seed)
    clock = TrainingClock()

    env = make_train_env(spec.env, spec.seed, cfg.n_envs, cfg.normalize, cfg.gamma, perturbation, clock)
    model = _build_model(spec, cfg, env)
    partition = {"domain": spec.domain, "algo": spec.algo, "env": spec.env, "perturbation": spec.perturbation}
    recorder = StepRecorder(spec.run_id, partition)
    events = EventLog(spec.run_id)
    probe_obs = probe_observations(spec.env, cfg.probe_batch, seed=spec.seed + 20_000)
    callback = RLTelemetry(spec, cfg, perturbation, clock, recorder, events, probe_obs, planned)
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
        knobs=cfg.knobs(),
        config={"algo": spec.algo, "policy": "MlpPolicy", "torch": torch.__version__,
                "probe_seconds": round(callback.probe_seconds, 4), "eval_every": callback.eval_every,
                "probe_every": callback.probe_every, **asdict(cfg)},
    )
