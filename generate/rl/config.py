"""Frozen algorithm configs, rl-zoo3 defaults and stochasticity levels for the RL generators.

Kept free of SB3/torch imports so profiles validate instantly.

Resolution order for a run: the algorithm's SB3 defaults (the dataclass defaults) <
the rl-zoo3 tuned values for its env (:data:`ZOO`) < the named stochasticity level <
the profile's ``hparams``.

rl-zoo3 sources (DLR-RM/rl-baselines3-zoo, ``hyperparams/*.yml``, the "Tuned" MuJoCo
sections for the -v3 tasks, which the zoo reuses for v4/v5):

* ``ppo.yml``: HalfCheetah, Hopper and Walker2d each have tuned values (below), with
  ``normalize: true`` (VecNormalize) and, for HalfCheetah/Hopper,
  ``policy_kwargs = dict(log_std_init=-2, ortho_init=False, activation_fn=nn.ReLU,
  net_arch=dict(pi=[256, 256], vf=[256, 256]))``; Walker2d keeps SB3's policy.
* ``sac.yml``: ``&mujoco-defaults``: ``learning_starts: 10000`` on SB3 defaults.
* ``td3.yml``: ``&mujoco-defaults``: ``learning_starts: 10000, noise_type: normal,
  noise_std: 0.1, train_freq: 1, gradient_steps: 1, learning_rate: 1e-3,
  batch_size: 256, policy_kwargs: dict(net_arch=[400, 300])``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any


def check_fields(cfg: Any, nonnegative: frozenset[str] = frozenset(), free: frozenset[str] = frozenset()) -> None:
    """Raise ValueError naming the field if a value has the wrong type or range.

    Numbers must be > 0, or >= 0 for ``nonnegative`` fields; ``free`` fields may be any finite number.
    """
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        kind = {"int": int, "float": float, "bool": bool, "str": str}.get(str(f.type))
        if kind is None:
            continue
        if kind is bool or kind is str:
            if not isinstance(value, kind):
                raise ValueError(f"{f.name}={value!r} is not a valid {kind.__name__}")
            continue
        wrong_int = kind is int and not isinstance(value, int)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or wrong_int:
            raise ValueError(f"{f.name}={value!r} is not a valid {kind.__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{f.name}={value!r} must be finite")
        if f.name in free:
            continue
        if value < 0 or (value == 0 and f.name not in nonnegative):
            raise ValueError(f"{f.name}={value!r} must be {'>= 0' if f.name in nonnegative else '> 0'}")


_MAY_BE_ZERO = frozenset({"eval_every", "eval_episodes", "probe_every", "dormant_tau"})


@dataclass(frozen=True)
class RLCommon:
    """Settings every RL generator shares (telemetry and evaluation, not the algorithm)."""

    n_envs: int = 1
    normalize: bool = False  # VecNormalize on observations and rewards (rl-zoo3 PPO uses it)
    hidden: int = 64  # width of each hidden layer of policy and value/critic nets
    depth: int = 2  # number of hidden layers
    activation: str = "tanh"  # tanh | relu
    eval_every: int = 0  # env steps between deterministic evaluations; 0 = 10 evaluations per run
    eval_episodes: int = 1  # 0 disables evaluation
    probe_every: int = 0  # optimizer updates between dormant/erank probes; 0 = about 50 probes per run
    probe_batch: int = 256
    dormant_tau: float = 0.1

    def net_arch(self) -> list[int]:
        return [self.hidden] * self.depth

    def activation_fn(self) -> Any:
        import torch

        return {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[self.activation]

    def eval_interval(self, total_steps: int) -> int:
        return self.eval_every or max(1, total_steps // 10)

    def probe_interval(self, planned_updates: int) -> int:
        return self.probe_every or max(1, planned_updates // 50)

    def _check(self, **kw: Any) -> None:
        check_fields(self, **kw)
        if self.activation not in ("tanh", "relu"):
            raise ValueError(f"activation={self.activation!r} must be tanh or relu")
        if not 0 <= self.dormant_tau < 1:
            raise ValueError(f"dormant_tau={self.dormant_tau!r} must be in [0, 1)")


@dataclass(frozen=True)
class PPOConfig(RLCommon):
    """SB3 ``PPO`` hyperparameters; dataclass defaults are SB3's own (``stable_baselines3.PPO``)."""

    learning_rate: float = 3e-4
    n_steps: int = 2048
    batch_size: int = 64
    n_epochs: int = 10
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    log_std_init: float = 0.0
    ortho_init: bool = True

    def __post_init__(self) -> None:
        self._check(nonnegative=_MAY_BE_ZERO | {"ent_coef"},
                    free=frozenset({"log_std_init"}))

    def updates_per_rollout(self) -> int:
        """Optimizer updates per ``train()`` call: epochs x minibatches (last one may be partial)."""
        return self.n_epochs * math.ceil(self.n_steps * self.n_envs / self.batch_size)

    def planned_updates(self, total_steps: int) -> int:
        rollouts = math.ceil(total_steps / (self.n_steps * self.n_envs))
        return rollouts * self.updates_per_rollout()

    def sb3_kwargs(self) -> dict[str, Any]:
        keys = ("learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range",
                "ent_coef", "vf_coef", "max_grad_norm")
        kwargs: dict[str, Any] = {k: getattr(self, k) for k in keys}
        kwargs["policy_kwargs"] = {
            "net_arch": {"pi": self.net_arch(), "vf": self.net_arch()},
            "activation_fn": self.activation_fn(),
            "log_std_init": self.log_std_init,
            "ortho_init": self.ortho_init,
        }
        return kwargs

    def knobs(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "n_envs": self.n_envs, "ent_coef": self.ent_coef}


@dataclass(frozen=True)
class OffPolicyConfig(RLCommon):
    """Fields and helpers SAC and TD3 share; dataclass defaults are SB3's own."""

    hidden: int = 256
    activation: str = "relu"
    learning_rate: float = 3e-4
    buffer_size: int = 1_000_000
    learning_starts: int = 100
    batch_size: int = 256
    tau: float = 0.005
    gamma: float = 0.99
    train_freq: int = 1
    gradient_steps: int = 1

    #: Config fields passed to the SB3 constructor under the same name.
    SB3_KEYS = ("learning_rate", "buffer_size", "learning_starts", "batch_size", "tau", "gamma", "train_freq",
                "gradient_steps")

    def planned_updates(self, total_steps: int) -> int:
        calls = max(0, math.ceil((total_steps - self.learning_starts) / (self.train_freq * self.n_envs)))
        return calls * self.gradient_steps

    def _sb3_common(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {k: getattr(self, k) for k in self.SB3_KEYS}
        kwargs["policy_kwargs"] = {"net_arch": self.net_arch(), "activation_fn": self.activation_fn()}
        return kwargs


@dataclass(frozen=True)
class SACConfig(OffPolicyConfig):
    """SB3 ``SAC`` hyperparameters."""

    target_entropy_scale: float = 1.0  # target entropy = -scale * dim(A); SB3's "auto" is scale 1

    def __post_init__(self) -> None:
        self._check(nonnegative=_MAY_BE_ZERO | {"learning_starts"}, free=frozenset({"target_entropy_scale"}))

    def sb3_kwargs(self, action_dim: int) -> dict[str, Any]:
        return {**self._sb3_common(), "target_entropy": -self.target_entropy_scale * action_dim}

    def knobs(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "n_envs": self.n_envs, "target_entropy_scale": self.target_entropy_scale}


@dataclass(frozen=True)
class TD3Config(OffPolicyConfig):
    """SB3 ``TD3`` hyperparameters (plus the zoo's Gaussian exploration noise)."""

    learning_rate: float = 1e-3
    policy_delay: int = 2
    action_noise_std: float = 0.1  # exploration noise (rl-zoo3: normal, 0.1)
    target_policy_noise: float = 0.2
    target_noise_clip: float = 0.5

    def __post_init__(self) -> None:
        self._check(nonnegative=_MAY_BE_ZERO | {"learning_starts", "action_noise_std", "target_policy_noise",
                                                "target_noise_clip"})

    def sb3_kwargs(self, action_dim: int) -> dict[str, Any]:
        return {**self._sb3_common(), "policy_delay": self.policy_delay,
                "target_policy_noise": self.target_policy_noise, "target_noise_clip": self.target_noise_clip}

    def knobs(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "n_envs": self.n_envs, "action_noise_std": self.action_noise_std,
                "target_policy_noise": self.target_policy_noise}


_PPO_ZOO_POLICY = {"log_std_init": -2.0, "ortho_init": False, "activation": "relu", "hidden": 256}

#: rl-zoo3 tuned values per (algo, env); see the module docstring for the source.
ZOO: dict[str, dict[str, dict[str, Any]]] = {
    "ppo": {
        "HalfCheetah-v5": {"normalize": True, "batch_size": 64, "n_steps": 512, "gamma": 0.98,
                           "learning_rate": 2.0633e-05, "ent_coef": 0.000401762, "clip_range": 0.1, "n_epochs": 20,
                           "gae_lambda": 0.92, "max_grad_norm": 0.8, "vf_coef": 0.58096, **_PPO_ZOO_POLICY},
        "Hopper-v5": {"normalize": True, "batch_size": 32, "n_steps": 512, "gamma": 0.999,
                      "learning_rate": 9.80828e-05, "ent_coef": 0.00229519, "clip_range": 0.2, "n_epochs": 5,
                      "gae_lambda": 0.99, "max_grad_norm": 0.7, "vf_coef": 0.835671, **_PPO_ZOO_POLICY},
        "Walker2d-v5": {"normalize": True, "batch_size": 32, "n_steps": 512, "gamma": 0.99,
                        "learning_rate": 5.05041e-05, "ent_coef": 0.000585045, "clip_range": 0.1, "n_epochs": 20,
                        "gae_lambda": 0.95, "max_grad_norm": 1.0, "vf_coef": 0.871923},
    },
    "sac": {env: {"learning_starts": 10_000} for env in ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5")},
    # TD3's zoo net is [400, 300]; we keep equal-width layers (``hidden`` x ``depth``) so the
    # representation probes compare like with like, and use SB3's own 256 x 2 with the zoo's other values.
    "td3": {env: {"learning_starts": 10_000, "action_noise_std": 0.1, "learning_rate": 1e-3, "batch_size": 256}
            for env in ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5")},
}


def _ppo_levels(base: PPOConfig) -> dict[str, dict[str, Any]]:
    return {
        "low": {"batch_size": min(base.batch_size * 4, base.n_steps * base.n_envs), "ent_coef": 0.0},
        "default": {},
        "high": {"batch_size": max(8, base.batch_size // 4), "ent_coef": max(0.01, base.ent_coef * 10)},
    }


def _sac_levels(base: SACConfig) -> dict[str, dict[str, Any]]:
    return {
        "low": {"batch_size": base.batch_size * 2, "target_entropy_scale": 2.0},
        "default": {},
        "high": {"batch_size": max(16, base.batch_size // 4), "target_entropy_scale": 0.0},
    }


def _td3_levels(base: TD3Config) -> dict[str, dict[str, Any]]:
    return {
        "low": {"batch_size": base.batch_size * 2, "action_noise_std": 0.05, "target_policy_noise": 0.1},
        "default": {},
        "high": {"batch_size": max(16, base.batch_size // 4), "action_noise_std": 0.3, "target_policy_noise": 0.4},
    }


CONFIGS: dict[str, tuple[type, Any]] = {"ppo": (PPOConfig, _ppo_levels), "sac": (SACConfig, _sac_levels),
                                        "td3": (TD3Config, _td3_levels)}


def resolve(algo: str, env: str, stochasticity: str, hparams: dict[str, Any]) -> Any:
    """The frozen config of a run: SB3 defaults < rl-zoo3 (algo, env) < stochasticity level < hparams.

    Levels are relative to the zoo-resolved config (e.g. ``high`` quarters the
    minibatch), and the profile's ``hparams`` override everything, knobs included.
    """
    cls, levels = CONFIGS[algo]
    base = cls(**ZOO.get(algo, {}).get(env, {}))
    level = levels(base)
    if stochasticity not in level:
        raise ValueError(f"unknown stochasticity level {stochasticity!r} (available: {', '.join(level)})")
    return replace(base, **{**level[stochasticity], **hparams})
