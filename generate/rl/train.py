"""PPO, SAC and TD3 on MuJoCo with full telemetry, via an SB3 callback and optimizer hooks.

Read top to bottom: resolve the frozen config, build the envs and the SB3 model,
attach :class:`RLTelemetry` (the public :class:`~stabilitybench.generate.adapters.sb3.SB3Callback`
plus the generator's extras), call ``learn``, hand the buffered rows back. SB3's training
loops are not copied or patched, and the run is bit-identical to plain SB3's.

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
* ``grad_coherence_fixed`` (PPO): on the same probe rows, the mean pairwise cosine of K minibatch
  gradients at fixed parameters (:mod:`stabilitybench.generate.rl.fixed_point`); ``grad_coherence`` is the rolling
  estimator across K successive updates.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import gymnasium
import numpy as np
import torch
from stable_baselines3 import PPO, SAC, TD3
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.noise import NormalActionNoise

from stabilitybench.data_schema.keys import control_onset
from stabilitybench.generate.adapters.sb3 import SB3Callback
from stabilitybench.generate.errors import NonFiniteTraining
from stabilitybench.generate.intervention import from_hparams, split_hparams
from stabilitybench.generate.perturbations import Perturbation, TrainingClock, UpdateContext, build
from stabilitybench.generate.recorder import Recorder
from stabilitybench.generate.registry import GeneratorResult
from stabilitybench.generate.representation import HiddenFeatures, dormant_fraction, effective_rank
from stabilitybench.generate.rl.config import resolve
from stabilitybench.generate.rl.envs import evaluate, make_train_env, probe_observations
from stabilitybench.generate.rl.fixed_point import FixedPointCoherence
from stabilitybench.generate.spec import RunSpec
from stabilitybench.generate.telemetry import apply_perturbation, params_finite


class RLTelemetry(SB3Callback):
    """The public :class:`SB3Callback` plus the generator's extras.

    Extras: the perturbation acting on parameters/optimizer state (PPO: inside the update,
    SAC/TD3: between gradient steps), deterministic evaluation on a clean env, the periodic
    dormant-fraction / effective-rank probes on a fixed observation batch, and SAC/TD3's
    ``q_mean``. None of them draws from the global random streams (the eval env and the probe
    batch have their own seeds), so the training run is the same as plain SB3's.
    """

    def __init__(self, spec: RunSpec, cfg: Any, perturbation: Perturbation, clock: TrainingClock,
                 recorder: Recorder, probe_obs: np.ndarray, planned_updates: int) -> None:
        super().__init__(recorder, perturbation=perturbation, coherence_window=spec.coherence_window,
                         perf_window=spec.perf_window)
        self.clock = clock  # shared with the env-side perturbation wrappers
        self.spec, self.cfg = spec, cfg
        self.probe_obs = torch.as_tensor(probe_obs)
        self.features: HiddenFeatures | None = None
        self.eval_every = cfg.eval_interval(spec.total_steps)
        self.probe_every = cfg.probe_interval(planned_updates)
        self.next_eval = self.eval_every
        self.ctx: UpdateContext | None = None
        self.eval_env = gymnasium.make(spec.env) if cfg.eval_episodes > 0 else None
        self._q_pending: float | None = None
        self._q_hook: Any = None
        self.probe_seconds = 0.0  # cost of the periodic representation probes, reported separately
        self.fixed_coherence_seconds = 0.0  # of which the fixed-point coherence probe
        # PPO: the paper's fixed-point minibatch coherence, on the probe rows (its own index stream)
        self.fixed_coherence = FixedPointCoherence(spec.coherence_window, seed=spec.seed + 2_000_003) \
            if spec.algo == "ppo" else None

    # -- SB3Callback extension points -------------------------------------------------
    def update_context(self, role: str) -> UpdateContext | None:
        # PPO: perturb parameters between backward and step (safe: one optimizer). SAC/TD3 build
        # the actor's graph before the critic step, so they perturb between gradient steps (_on_step).
        return self.ctx if role == "main" and self.spec.algo == "ppo" else None

    def extra_row(self, step: int) -> dict[str, Any]:
        row: dict[str, Any] = {"q_mean": self._q_pending}
        self._q_pending = None
        if step % self.probe_every == 0:
            row.update(self._representation())
            if self.fixed_coherence is not None:
                t0 = time.perf_counter()
                row["grad_coherence_fixed"] = self.fixed_coherence(self.model)
                self.fixed_coherence_seconds += time.perf_counter() - t0
                self.probe_seconds += time.perf_counter() - t0
        return row

    def on_actor_row(self, stats: dict[str, Any]) -> None:
        self._q_pending = None  # the actor's critic forward is not Q(s, a_replay)

    # -- SB3 callback API -------------------------------------------------------------------
    def _on_training_start(self) -> None:
        model, algo = self.model, self.spec.algo
        modules = {"policy": model.policy} if algo == "ppo" else {"actor": model.actor, "critic": model.critic}
        self.ctx = UpdateContext(
            optimizers=[o for o, _ in _optimizers(model, algo)],
            modules=modules,
            initial_state={k: copy.deepcopy(m.state_dict()) for k, m in modules.items()},
            generator=torch.Generator().manual_seed(self.spec.seed + 1_000_003),
            target_layer=_target_layer(algo),
        )
        super()._on_training_start()
        self.features = HiddenFeatures(_hidden_activations(model, algo))
        if algo != "ppo":
            self._q_hook = model.critic.register_forward_hook(self._capture_q)

    def _on_step(self) -> bool:
        if self.spec.algo != "ppo" and self.ctx is not None and self.clock.step > 0:
            apply_perturbation(self.perturbation, self.clock.step, self.ctx, self.recorder)
        keep_going = super()._on_step()  # False after an intervention's ``stop``
        if self.eval_env is not None and self.model.num_timesteps >= self.next_eval:
            self.next_eval = (self.model.num_timesteps // self.eval_every + 1) * self.eval_every
            value = evaluate(self.model, self.eval_env, self.cfg.eval_episodes, seed=self.spec.seed + 10_000)
            self.recorder.update_last(eval_return=value)
            self.recorder.event(max(len(self.recorder) - 1, 0), "eval", value=value)
        return keep_going

    def _on_training_end(self) -> None:
        super()._on_training_end()
        self.close()

    # -- internals -----------------------------------------------------------------------------
    def _capture_q(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if self._q_pending is None:  # the first critic forward of a gradient step: Q(s, a) on the replay batch
            self._q_pending = float(torch.stack([q.detach().mean() for q in output]).mean())

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

    def close(self) -> None:
        self.detach()
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
    from stabilitybench.generate.adapters.sb3 import sb3_optimizers

    return sb3_optimizers(model)


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
    hparams, live = split_hparams(dict(spec.hparams))  # issue 17: an optional live monitor + action
    cfg = resolve(spec.algo, spec.env, spec.stochasticity, hparams)
    planned = cfg.planned_updates(spec.total_steps)
    onset_step = control_onset(spec.onset_frac, planned)
    perturbation = build(spec.perturbation, spec.magnitude, onset_step, spec.duration_steps, seed=spec.seed)
    clock = TrainingClock()

    env = make_train_env(spec.env, spec.seed, cfg.n_envs, cfg.normalize, cfg.gamma, perturbation, clock)
    model = _build_model(spec, cfg, env)
    recorder = Recorder(None, domain=spec.domain, algo=spec.algo, env=spec.env, seed=spec.seed, run_id=spec.run_id)
    probe_obs = probe_observations(spec.env, cfg.probe_batch, seed=spec.seed + 20_000)
    callback = RLTelemetry(spec, cfg, perturbation, clock, recorder, probe_obs, planned)
    callback.intervention = from_hparams(live, recorder, onset_step=onset_step, seed=spec.seed,  # issues 17, 25
                                         perturbation=spec.perturbation, duration_steps=spec.duration_steps)

    stop_reason = "completed"
    try:
        model.learn(total_timesteps=spec.total_steps, callback=CallbackList([callback, *extra_callbacks]))
    except NonFiniteTraining as exc:
        stop_reason = "nonfinite"
        recorder.event(exc.step, "nonfinite", detail=exc.what)
    except ValueError as exc:
        # A policy whose outputs overflowed fails inside torch.distributions during the
        # rollout ("... found invalid values"). That is a collapse, not a crash.
        if "invalid values" not in str(exc) and params_finite(model.policy.parameters()):
            raise
        stop_reason = "nonfinite"
        recorder.event(max(len(recorder) - 1, 0), "nonfinite", detail="policy output")
    finally:
        callback.close()
        env.close()

    return GeneratorResult(
        steps=recorder.steps_table(),
        events=recorder.events_table(),
        planned_updates=planned,
        onset_step=onset_step,
        stop_reason=stop_reason,
        knobs=cfg.knobs(),
        config={"algo": spec.algo, "policy": "MlpPolicy", "torch": torch.__version__,
                "probe_seconds": round(callback.probe_seconds, 4),
                "fixed_coherence_seconds": round(callback.fixed_coherence_seconds, 4),
                "eval_every": callback.eval_every, "probe_every": callback.probe_every, **asdict(cfg)},
    )
