"""Telemetry helpers shared by the generators (the probe itself is :mod:`stabilitybench.generate.probe`)."""

from __future__ import annotations

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
