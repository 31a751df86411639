"""Controlled perturbations: a small interface and the registry of kinds.

A perturbation has a kind, a stability dimension, a magnitude, an onset (fraction of
the run's optimizer updates, resolved to an update index by the generator) and a
duration in optimizer updates. Generators ask it two things:

* ``active(step)``: does it act at optimizer update ``step``?
* the hooks it overrides, e.g. ``lr_factor(step)`` for the optimization dimension.

Later kinds (environmental, parametric, learning-signal) add hooks here and keep the
same constructor, so profiles, the manifest and the events table treat every kind alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from generate.errors import ProfileError


@dataclass(frozen=True)
class Perturbation:
    """Base class. ``onset_step`` and ``duration_steps`` count optimizer updates."""

    magnitude: float
    onset_step: int
    duration_steps: int

    kind: ClassVar[str] = "none"
    dimension: ClassVar[str] = "none"
    #: The magnitude at which the kind changes nothing (a sham perturbation).
    identity_magnitude: ClassVar[float] = 1.0

    def active(self, step: int) -> bool:
        return self.onset_step <= step < self.onset_step + self.duration_steps

    @property
    def offset_step(self) -> int:
        """First update after the perturbation stops acting."""
        return self.onset_step + self.duration_steps

    # ---- hooks (identity by default) -------------------------------------------
    def lr_factor(self, step: int) -> float:
        """Multiplier on the scheduled learning rate at optimizer update ``step``."""
        return 1.0

    @classmethod
    def check_magnitude(cls, magnitude: float) -> str | None:
        """A reason the magnitude is invalid for this kind, or None."""
        if not math.isfinite(magnitude):
            return "must be finite"
        return None


@dataclass(frozen=True)
class NoPerturbation(Perturbation):
    """The unperturbed control: never active."""

    def active(self, step: int) -> bool:
        return False


@dataclass(frozen=True)
class LRSpike(Perturbation):
    """Optimization: learning rate x ``magnitude`` for ``duration_steps`` updates from onset.

    The factor multiplies the algorithm's own schedule at every optimizer step, so it
    composes with decays and acts per update, not per SB3 ``train()`` call.
    """

    kind: ClassVar[str] = "lr_spike"
    dimension: ClassVar[str] = "optimization"

    def lr_factor(self, step: int) -> float:
        return self.magnitude if self.active(step) else 1.0

    @classmethod
    def check_magnitude(cls, magnitude: float) -> str | None:
        if not math.isfinite(magnitude) or magnitude <= 0:
            return "must be a finite number > 0 (a learning-rate multiplier)"
        return None


REGISTRY: dict[str, type[Perturbation]] = {
    "none": NoPerturbation,
    "lr_spike": LRSpike,
}


def perturbation_class(kind: str) -> type[Perturbation]:
    try:
        return REGISTRY[kind]
    except KeyError:
        raise ProfileError(f"unknown perturbation kind {kind!r} (available: {', '.join(REGISTRY)})") from None


def build(kind: str, magnitude: float, onset_step: int, duration_steps: int) -> Perturbation:
    return perturbation_class(kind)(magnitude=magnitude, onset_step=onset_step, duration_steps=duration_steps)
