"""StabilityBench: a telemetry corpus of controlled training collapses, and the probe that records it.

The public API is imported lazily (``import stabilitybench`` imports no torch, SB3 or
transformers; only the name you use does)::

    from stabilitybench import Probe, Recorder                       # any torch loop
    from stabilitybench import StabilityCallback                     # stable-baselines3
    from stabilitybench import StabilityTrainerCallback              # transformers.Trainer
    from stabilitybench import StabilityLightningCallback            # lightning.pytorch.Trainer
    from stabilitybench import perturbation                          # a controlled perturbation
    from stabilitybench import load_monitor, Intervention            # live early warning and actions
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Probe": "generate.probe",
    "Recorder": "generate.recorder",
    "StabilityCallback": "generate.adapters.sb3",
    "StabilityTrainerCallback": "generate.adapters.hf",
    "StabilityLightningCallback": "generate.adapters.lightning",
    "NonFiniteTraining": "generate.errors",
    "TrainingDiverged": "generate.errors",
    "RunExistsError": "generate.errors",
    "ProbeAttachedError": "generate.errors",
    "Intervention": "generate.intervention",
    "OnlineMonitor": "analysis.online",
    "MonitorFile": "analysis.monitor_file",
    "fit_monitor": "analysis.monitor_file",
    "load_monitor": "stabilitybench.live",
}

__all__ = [*_LAZY, "perturbation"]


def perturbation(kind: str, magnitude: float = 1.0, onset_step: int = 0, duration_steps: int = 1,
                 seed: int = 0) -> Any:
    """A controlled perturbation for :class:`Probe` / the adapters, e.g. ``perturbation("lr_spike", 10, 500, 10)``.

    ``onset_step`` and ``duration_steps`` count optimizer updates; kinds and magnitudes: ``generate.perturbations``.
    """
    from generate.perturbations import build

    return build(kind, magnitude, onset_step, duration_steps, seed=seed)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stabilitybench' has no attribute {name!r}")
