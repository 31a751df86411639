"""Telemetry helpers shared by the generators (the probe itself is :mod:`stabilitybench.generate.probe`)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch

from stabilitybench.generate.perturbations import Perturbation, UpdateContext


def apply_perturbation(perturbation: Perturbation, step: int, ctx: UpdateContext, recorder: Any) -> None:
    """Let the perturbation act on parameters/optimizer state; log what it did as an event on ``recorder``."""
    effect = perturbation.before_update(step, ctx)
    if effect and recorder is not None:
        detail = ", ".join(f"{k}={v:.6g}" for k, v in effect.items())
        recorder.event(step, "perturbation_applied", detail=f"{perturbation.kind}: {detail}",
                       value=next(iter(effect.values())))


def params_finite(params: Iterable[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


def warn_deprecated(old: str, new: str, stacklevel: int = 3) -> None:
    """A ``DeprecationWarning`` that ``old`` is now ``new`` (kept as an alias for one minor version, until 0.2).

    ``stacklevel`` 3 points at the caller of the deprecated function or constructor.
    """
    warnings.warn(f"{old} is deprecated and will be removed in stabilitybench 0.2; use {new}", DeprecationWarning,
                  stacklevel=stacklevel)
