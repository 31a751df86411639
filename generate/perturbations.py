"""Controlled perturbations: a small interface and the registry of kinds.

A perturbation has a kind, a stability dimension, a magnitude, an onset (fraction of
the run's optimizer updates, resolved to an update index by the generator) and a
duration in optimizer updates. It is *active* at update ``step`` when
``onset_step <= step < onset_step + duration_steps``. Env-side kinds use the
:class:`TrainingClock` (the index of the next optimizer update) to decide whether the
env step being taken falls in that window.

Generators call the hooks; each kind overrides the ones of its dimension:

=================  =====================================  ===========================
dimension          kinds                                  hook
=================  =====================================  ===========================
optimization       lr_spike, lr_regime, adam_reset        ``lr_factor``, ``before_update``
environmental      obs_noise, action_noise, mass_shift    ``wrap_env`` (gymnasium wrapper)
parametric         weight_noise, layer_reset              ``before_update``
learning_signal    reward_noise, reward_scale,            ``wrap_env`` (reward the agent sees)
                   reward_flip
environmental (LM) token_corruption                       ``transform_batch`` (inputs)
learning_signal    label_noise                            ``transform_batch`` (targets)
(LM)
=================  =====================================  ===========================

``domains`` says which generators call a kind's hook (env-side kinds are RL only, batch
kinds LM only); the LM generator refuses a kind it cannot apply.

Every kind's magnitude is documented on its class; the ``identity_magnitude`` is the
value at which it changes nothing (a sham perturbation), or None if there is none.

Kicks and regimes: every kind but one is a *kick*, switched on at an onset the generator chooses.
``lr_regime`` (``sustained = True``; :data:`stabilitybench.data_schema.keys.SUSTAINED_KINDS`) is a *regime*: it
holds from update 0 for the whole run, so a collapse in such a run comes at a time nobody chose. Its window is
not a profile's choice: a :class:`~stabilitybench.generate.spec.RunSpec` of a sustained kind always has
``onset_frac = 0`` and ``duration_steps`` = the run's planned updates (so the manifest says onset 0 and a
duration of the whole run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from stabilitybench.generate.errors import ProfileError


class TrainingClock:
    """Shared counter of optimizer updates, advanced by the update probe."""

    def __init__(self) -> None:
        self.step = 0


@dataclass(frozen=True)
class UpdateContext:
    """What an update hook may touch: the optimizers, the modules to perturb and a seeded RNG.

    Generators call ``before_update`` only where changing parameters in place is safe:
    PPO between backward and step (one optimizer), SAC/TD3 between gradient steps.
    """

    optimizers: list[Any]
    modules: dict[str, Any]  # name -> torch.nn.Module (e.g. {"policy": ...} or {"actor": ..., "critic": ...})
    initial_state: dict[str, dict[str, Any]]  # name -> state_dict copy at the start of training
    generator: Any  # torch.Generator
    target_layer: str | None = None  # "module:parameter-prefix" of the layer that layer_reset acts on
    fired: set[str] = field(default_factory=set)  # one-shot kinds that already acted


@dataclass(frozen=True)
class Perturbation:
    """Base class. ``onset_step`` and ``duration_steps`` count optimizer updates."""

    magnitude: float
    onset_step: int
    duration_steps: int
    seed: int = 0

    kind: ClassVar[str] = "none"
    dimension: ClassVar[str] = "none"
    #: The magnitude at which the kind changes nothing, if any.
    identity_magnitude: ClassVar[float | None] = None
    #: Parametric kinds act once, at onset; others act at every update of the window.
    once: ClassVar[bool] = False
    #: Domains whose generators call this kind's hook (env-side kinds: rl; batch kinds: lm).
    domains: ClassVar[tuple[str, ...]] = ("rl", "lm")
    #: A regime (held from update 0 for the whole run) rather than a kick (module docstring).
    sustained: ClassVar[bool] = False

    def active(self, step: int) -> bool:
        return self.onset_step <= step < self.onset_step + self.duration_steps

    @property
    def offset_step(self) -> int:
        return self.onset_step + self.duration_steps

    # ---- hooks (identity by default) -------------------------------------------
    def lr_factor(self, step: int) -> float:
        """Multiplier on the scheduled learning rate at optimizer update ``step``."""
        return 1.0

    def before_update(self, step: int, ctx: UpdateContext) -> dict[str, float] | None:
        """Called just before optimizer update ``step`` is applied; may change params or optimizer state.

        Returns a dict of measured effects for the events table (e.g. ``{"delta_norm": ...}``).
        """
        return None

    def wrap_env(self, env: Any, clock: TrainingClock) -> Any:
        """Wrap a gymnasium env (outside SB3's Monitor, so episode returns stay the true task's)."""
        return env

    def transform_batch(self, step: int, inputs: Any, targets: Any, vocab_size: int, generator: Any) -> tuple[Any, Any]:
        """LM: the (inputs, targets) token batch, each shape ``(B, T)`` int64, that update ``step`` trains on.

        ``generator`` is the run's perturbation RNG (a ``torch.Generator``; separate from the
        data order, so a perturbed run sees the same batches as its control). Identity by default.
        """
        return inputs, targets

    #: Valid magnitudes: "finite", "positive" (> 0), "nonnegative" (>= 0) or "fraction" ([0, 1]).
    magnitude_range: ClassVar[str] = "finite"

    @classmethod
    def check_magnitude(cls, magnitude: float) -> str | None:
        """A reason the magnitude is invalid for this kind, or None."""
        ok, reason = _MAGNITUDE_RANGES[cls.magnitude_range]
        return None if math.isfinite(magnitude) and ok(magnitude) else reason


_MAGNITUDE_RANGES = {
    "finite": (lambda m: True, "must be finite"),
    "positive": (lambda m: m > 0, "must be a finite number > 0"),
    "nonnegative": (lambda m: m >= 0, "must be a finite number >= 0"),
    "fraction": (lambda m: 0 <= m <= 1, "must be a fraction in [0, 1]"),
}


@dataclass(frozen=True)
class NoPerturbation(Perturbation):
    """The unperturbed control: never active."""

    def active(self, step: int) -> bool:
        return False


# ------------------------------------------------------------------ optimization
@dataclass(frozen=True)
class LRSpike(Perturbation):
    """LR x ``magnitude`` for ``duration_steps`` updates from onset.

    The factor multiplies the algorithm's own schedule at every optimizer step (every
    optimizer of the algorithm: actor, critic and entropy for SAC), so it composes with
    decays and acts per update, not per SB3 ``train()`` call.
    """

    kind: ClassVar[str] = "lr_spike"
    dimension: ClassVar[str] = "optimization"
    identity_magnitude: ClassVar[float | None] = 1.0

    def lr_factor(self, step: int) -> float:
        return self.magnitude if self.active(step) else 1.0

    magnitude_range: ClassVar[str] = "positive"


@dataclass(frozen=True)
class LRRegime(Perturbation):
    """LR x ``magnitude`` from update 0 for the whole run: a regime (training throughout at an elevated LR), no kick.

    The factor multiplies the run's own schedule at every optimizer step of every optimizer of the
    algorithm, exactly as ``lr_spike`` does, but with no step change at any time: for the GPT-2 loop's
    warm-up + cosine it is "peak LR x m" with the same schedule shape, for SB3's constant LR it is the base
    LR x m. The window is the whole run: the spec says onset 0 and ``duration_steps`` = the planned updates
    (:class:`~stabilitybench.generate.spec.RunSpec` sets both), and the factor also stays on for any update past
    the planned ones, so no run ever sees the LR step down. ``magnitude = 1`` is the identity.
    """

    kind: ClassVar[str] = "lr_regime"
    dimension: ClassVar[str] = "optimization"
    identity_magnitude: ClassVar[float | None] = 1.0
    sustained: ClassVar[bool] = True

    def active(self, step: int) -> bool:
        return step >= self.onset_step

    def lr_factor(self, step: int) -> float:
        return self.magnitude if self.active(step) else 1.0

    magnitude_range: ClassVar[str] = "positive"


@dataclass(frozen=True)
class AdamReset(Perturbation):
    """Shrink Adam's moment estimates by ``(1 - magnitude)`` before every update of the window.

    ``magnitude = 1`` zeroes both moments (an optimizer-state reset). The step count is
    kept, so bias correction does not compensate: while v is small the normalised step
    ``m / sqrt(v)`` is several times larger than in steady state. 0 is the identity.
    """

    kind: ClassVar[str] = "adam_reset"
    dimension: ClassVar[str] = "optimization"
    identity_magnitude: ClassVar[float | None] = 0.0

    def before_update(self, step: int, ctx: UpdateContext) -> dict[str, float] | None:
        if not self.active(step):
            return None
        import torch

        keep = 1.0 - self.magnitude
        touched = 0
        for opt in ctx.optimizers:
            for state in opt.state.values():
                for key in ("exp_avg", "exp_avg_sq"):
                    if isinstance(state.get(key), torch.Tensor):
                        state[key].mul_(keep)
                        touched += 1
        return {"tensors": float(touched)}

    magnitude_range: ClassVar[str] = "fraction"


# ------------------------------------------------------------------- parametric
@dataclass(frozen=True)
class WeightNoise(Perturbation):
    """Add Gaussian noise to every weight tensor W, scaled so ``||noise|| = magnitude * ||W||``.

    Acts once, at the first update at or after onset, on every module the generator
    exposes (PPO: the policy; SAC/TD3: actor and critic).
    """

    kind: ClassVar[str] = "weight_noise"
    dimension: ClassVar[str] = "parametric"
    identity_magnitude: ClassVar[float | None] = 0.0
    once: ClassVar[bool] = True

    def before_update(self, step: int, ctx: UpdateContext) -> dict[str, float] | None:
        if step < self.onset_step or self.kind in ctx.fired:
            return None
        ctx.fired.add(self.kind)
        import torch

        total_sq = 0.0
        with torch.no_grad():
            for module in ctx.modules.values():
                for p in module.parameters():
                    noise = torch.randn(p.shape, generator=ctx.generator, dtype=p.dtype).to(p.device)
                    n = noise.norm()
                    if n > 0:
                        noise.mul_(self.magnitude * p.norm() / n)
                    p.add_(noise)
                    total_sq += float(noise.norm()) ** 2
        return {"delta_norm": math.sqrt(total_sq)}

    magnitude_range: ClassVar[str] = "nonnegative"


@dataclass(frozen=True)
class LayerReset(Perturbation):
    """Move one layer back towards its initialisation: ``W <- (1 - a) W + a W_init``, a = magnitude.

    ``magnitude = 1`` is a full reset of that layer to its initial values. The layer is
    the generator's ``target_layer`` (the first hidden layer of the policy / actor).
    Acts once, at the first update at or after onset.
    """

    kind: ClassVar[str] = "layer_reset"
    dimension: ClassVar[str] = "parametric"
    identity_magnitude: ClassVar[float | None] = 0.0
    once: ClassVar[bool] = True

    def before_update(self, step: int, ctx: UpdateContext) -> dict[str, float] | None:
        if step < self.onset_step or self.kind in ctx.fired or ctx.target_layer is None:
            return None
        ctx.fired.add(self.kind)
        import torch

        module_name, _, prefix = ctx.target_layer.partition(":")
        module = ctx.modules[module_name]
        init = ctx.initial_state[module_name]
        total_sq = 0.0
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name.startswith(prefix):
                    delta = self.magnitude * (init[name].to(p.dtype) - p)
                    p.add_(delta)
                    total_sq += float(delta.norm()) ** 2
        return {"delta_norm": math.sqrt(total_sq)}

    magnitude_range: ClassVar[str] = "fraction"


# ---------------------------------------------------------------- env-side kinds
class _ActiveWindow:
    """Mixin for wrappers: is the perturbation active at the clock's current update?"""

    def _active(self) -> bool:
        return self.perturbation.active(self.clock.step)


def _make_wrappers() -> dict[str, type]:
    """Gymnasium wrappers, built lazily so this module imports without gymnasium."""
    import gymnasium as gym

    class ObsNoise(gym.ObservationWrapper, _ActiveWindow):
        def __init__(self, env: gym.Env, perturbation: Perturbation, clock: TrainingClock) -> None:
            super().__init__(env)
            self.perturbation, self.clock = perturbation, clock
            self.rng = np.random.default_rng(perturbation.seed + 7919)

        def observation(self, obs: np.ndarray) -> np.ndarray:
            if not self._active():
                return obs
            return (obs + self.perturbation.magnitude * self.rng.standard_normal(obs.shape)).astype(obs.dtype)

    class ActionNoise(gym.ActionWrapper, _ActiveWindow):
        def __init__(self, env: gym.Env, perturbation: Perturbation, clock: TrainingClock) -> None:
            super().__init__(env)
            self.perturbation, self.clock = perturbation, clock
            self.rng = np.random.default_rng(perturbation.seed + 104729)
            space = env.action_space
            self.half_range = (space.high - space.low) / 2.0
            self.low, self.high = space.low, space.high

        def action(self, action: np.ndarray) -> np.ndarray:
            if not self._active():
                return action
            noise = self.perturbation.magnitude * self.half_range * self.rng.standard_normal(np.shape(action))
            return np.clip(action + noise, self.low, self.high).astype(np.asarray(action).dtype)

    class MassShift(gym.Wrapper, _ActiveWindow):
        def __init__(self, env: gym.Env, perturbation: Perturbation, clock: TrainingClock) -> None:
            super().__init__(env)
            self.perturbation, self.clock = perturbation, clock
            self.model = env.unwrapped.model
            self.base_mass = self.model.body_mass.copy()
            self.shifted = False

        def step(self, action: Any) -> Any:
            active = self._active()
            if active != self.shifted:
                factor = self.perturbation.magnitude if active else 1.0
                self.model.body_mass[:] = self.base_mass * factor
                self.shifted = active
            return self.env.step(action)

    class RewardNoise(gym.RewardWrapper, _ActiveWindow):
        def __init__(self, env: gym.Env, perturbation: Perturbation, clock: TrainingClock) -> None:
            super().__init__(env)
            self.perturbation, self.clock = perturbation, clock
            self.rng = np.random.default_rng(perturbation.seed + 15485863)

        def reward(self, reward: float) -> float:
            if not self._active():
                return reward
            kind, m = self.perturbation.kind, self.perturbation.magnitude
            if kind == "reward_noise":
                return float(reward + m * self.rng.standard_normal())
            if kind == "reward_scale":
                return float(reward * m)
            if kind == "reward_flip":
                return float(-reward if self.rng.random() < m else reward)
            raise AssertionError(kind)

    return {"obs_noise": ObsNoise, "action_noise": ActionNoise, "mass_shift": MassShift,
            "reward_noise": RewardNoise, "reward_scale": RewardNoise, "reward_flip": RewardNoise}


_WRAPPERS: dict[str, type] = {}


def wrapper_for(kind: str) -> type:
    if not _WRAPPERS:
        _WRAPPERS.update(_make_wrappers())
    return _WRAPPERS[kind]


@dataclass(frozen=True)
class _EnvPerturbation(Perturbation):
    domains: ClassVar[tuple[str, ...]] = ("rl",)

    def wrap_env(self, env: Any, clock: TrainingClock) -> Any:
        return wrapper_for(self.kind)(env, self, clock)


@dataclass(frozen=True)
class ObsNoise(_EnvPerturbation):
    """Environmental: Gaussian noise of std ``magnitude`` (observation units) on what the agent observes."""

    kind: ClassVar[str] = "obs_noise"
    dimension: ClassVar[str] = "environmental"
    identity_magnitude: ClassVar[float | None] = 0.0

    magnitude_range: ClassVar[str] = "nonnegative"


@dataclass(frozen=True)
class ActionNoise(_EnvPerturbation):
    """Environmental: Gaussian noise of std ``magnitude`` x half the action range on executed actions (clipped)."""

    kind: ClassVar[str] = "action_noise"
    dimension: ClassVar[str] = "environmental"
    identity_magnitude: ClassVar[float | None] = 0.0

    magnitude_range: ClassVar[str] = "nonnegative"


@dataclass(frozen=True)
class MassShift(_EnvPerturbation):
    """Environmental (dynamics shift): every MuJoCo body mass x ``magnitude`` while active."""

    kind: ClassVar[str] = "mass_shift"
    dimension: ClassVar[str] = "environmental"
    identity_magnitude: ClassVar[float | None] = 1.0

    magnitude_range: ClassVar[str] = "positive"


@dataclass(frozen=True)
class RewardNoise(_EnvPerturbation):
    """Learning signal: Gaussian noise of std ``magnitude`` (reward units) on the reward the agent learns from."""

    kind: ClassVar[str] = "reward_noise"
    dimension: ClassVar[str] = "learning_signal"
    identity_magnitude: ClassVar[float | None] = 0.0

    magnitude_range: ClassVar[str] = "nonnegative"


@dataclass(frozen=True)
class RewardScale(_EnvPerturbation):
    """Learning signal: the reward the agent learns from is multiplied by ``magnitude``."""

    kind: ClassVar[str] = "reward_scale"
    dimension: ClassVar[str] = "learning_signal"
    identity_magnitude: ClassVar[float | None] = 1.0

    magnitude_range: ClassVar[str] = "finite"


@dataclass(frozen=True)
class RewardFlip(_EnvPerturbation):
    """Learning signal: each transition's reward is negated with probability ``magnitude``."""

    kind: ClassVar[str] = "reward_flip"
    dimension: ClassVar[str] = "learning_signal"
    identity_magnitude: ClassVar[float | None] = 0.0

    magnitude_range: ClassVar[str] = "fraction"


# ====================================================================== language model
# Kinds that act on the token batch of an LM optimizer step (``transform_batch``). The LM
# generator also runs lr_spike, adam_reset, weight_noise and layer_reset unchanged.
def _replace_tokens(tokens: Any, fraction: float, vocab_size: int, generator: Any) -> Any:
    """A copy of ``tokens`` (shape ``(B, T)``) with each entry, with probability ``fraction``, drawn
    uniformly from ``[0, vocab_size)`` (so it may, with probability 1/vocab_size, keep its value)."""
    import torch

    mask = torch.rand(tokens.shape, generator=generator) < fraction
    random = torch.randint(0, vocab_size, tokens.shape, generator=generator, dtype=tokens.dtype)
    return torch.where(mask, random, tokens)


@dataclass(frozen=True)
class _TokenNoise(Perturbation):
    """Replace each token of one side of the batch (``side``: 0 inputs, 1 targets) by a uniformly
    random token with probability ``magnitude``, at every update of the window."""

    identity_magnitude: ClassVar[float | None] = 0.0
    magnitude_range: ClassVar[str] = "fraction"
    domains: ClassVar[tuple[str, ...]] = ("lm",)
    side: ClassVar[int] = 0

    def transform_batch(self, step: int, inputs: Any, targets: Any, vocab_size: int, generator: Any) -> tuple[Any, Any]:
        if not self.active(step):
            return inputs, targets
        batch = [inputs, targets]
        batch[self.side] = _replace_tokens(batch[self.side], self.magnitude, vocab_size, generator)
        return batch[0], batch[1]


@dataclass(frozen=True)
class TokenCorruption(_TokenNoise):
    """Data (LM): each *input* token is replaced by a uniformly random token with probability ``magnitude``.

    Targets are untouched: the model must predict the true next token from a corrupted context.
    """

    kind: ClassVar[str] = "token_corruption"
    dimension: ClassVar[str] = "environmental"
    side: ClassVar[int] = 0


@dataclass(frozen=True)
class LabelNoise(_TokenNoise):
    """Learning signal (LM): each *target* token is replaced by a uniformly random token with probability
    ``magnitude``; the inputs are untouched."""

    kind: ClassVar[str] = "label_noise"
    dimension: ClassVar[str] = "learning_signal"
    side: ClassVar[int] = 1


REGISTRY: dict[str, type[Perturbation]] = {
    cls.kind: cls
    for cls in (NoPerturbation, LRSpike, LRRegime, AdamReset, ObsNoise, ActionNoise, MassShift, WeightNoise,
                LayerReset, RewardNoise, RewardScale, RewardFlip, TokenCorruption, LabelNoise)
}


def definitions() -> dict[str, tuple[str, str]]:
    """kind -> (dimension, the first line of its docstring), for the dataset card."""
    return {k: (cls.dimension, (cls.__doc__ or "").strip().splitlines()[0]) for k, cls in REGISTRY.items()}


def perturbation_class(kind: str) -> type[Perturbation]:
    try:
        return REGISTRY[kind]
    except KeyError:
        raise ProfileError(f"unknown perturbation kind {kind!r} (available: {', '.join(REGISTRY)})") from None


def build(kind: str, magnitude: float, onset_step: int, duration_steps: int, seed: int = 0) -> Perturbation:
    return perturbation_class(kind)(magnitude=magnitude, onset_step=onset_step, duration_steps=duration_steps,
                                    seed=seed)
