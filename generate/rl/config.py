"""Frozen algorithm configs and stochasticity levels for the RL generators.

Kept free of SB3/torch imports so profiles validate instantly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class PPOConfig:
    """SB3 ``PPO`` hyperparameters; defaults are SB3's own (stable_baselines3.PPO, v2.x).

    Profiles override any field through ``hparams``. ``n_envs`` and ``batch_size``
    (and ``ent_coef``) double as stochasticity knobs and are recorded in the manifest.
    """

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
    n_envs: int = 1

    def __post_init__(self) -> None:
        check_fields(self, nonnegative={"ent_coef"})

    def updates_per_rollout(self) -> int:
        """Optimizer updates per ``train()`` call: epochs x minibatches (last one may be partial)."""
        return self.n_epochs * math.ceil(self.n_steps * self.n_envs / self.batch_size)

    def planned_updates(self, total_steps: int) -> int:
        rollouts = math.ceil(total_steps / (self.n_steps * self.n_envs))
        return rollouts * self.updates_per_rollout()

    def sb3_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "n_envs"}


def check_fields(cfg: Any, nonnegative: set[str] = frozenset()) -> None:
    """Raise ValueError naming the field if a value has the wrong type or is not > 0 (>= 0 if listed)."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        kind = {"int": int, "float": float}.get(str(f.type))
        if kind is None:
            continue
        wrong_int = kind is int and not isinstance(value, int)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or wrong_int:
            raise ValueError(f"{f.name}={value!r} is not a valid {kind.__name__}")
        if not math.isfinite(value) or value < 0 or (value == 0 and f.name not in nonnegative):
            raise ValueError(f"{f.name}={value!r} must be {'>= 0' if f.name in nonnegative else '> 0'}")


#: Named stochasticity levels: overrides applied before the profile's own hparams.
PPO_STOCHASTICITY: dict[str, dict[str, Any]] = {
    "default": {},
}
