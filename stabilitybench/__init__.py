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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each name is imported on first use
    from stabilitybench.analysis.monitor_file import MonitorFile, fit_monitor
    from stabilitybench.analysis.online import OnlineMonitor
    from stabilitybench.generate.adapters.hf import StabilityTrainerCallback
    from stabilitybench.generate.adapters.lightning import StabilityLightningCallback
    from stabilitybench.generate.adapters.sb3 import StabilityCallback
    from stabilitybench.generate.errors import NonFiniteTraining, ProbeAttachedError, RunExistsError, TrainingDiverged
    from stabilitybench.generate.intervention import Intervention
    from stabilitybench.generate.probe import Probe
    from stabilitybench.generate.recorder import Recorder
    from stabilitybench.live import load_monitor

_LAZY = {
    "Probe": "stabilitybench.generate.probe",
    "Recorder": "stabilitybench.generate.recorder",
    "StabilityCallback": "stabilitybench.generate.adapters.sb3",
    "StabilityTrainerCallback": "stabilitybench.generate.adapters.hf",
    "StabilityLightningCallback": "stabilitybench.generate.adapters.lightning",
    "NonFiniteTraining": "stabilitybench.generate.errors",
    "TrainingDiverged": "stabilitybench.generate.errors",
    "RunExistsError": "stabilitybench.generate.errors",
    "ProbeAttachedError": "stabilitybench.generate.errors",
    "Intervention": "stabilitybench.generate.intervention",
    "OnlineMonitor": "stabilitybench.analysis.online",
    "MonitorFile": "stabilitybench.analysis.monitor_file",
    "fit_monitor": "stabilitybench.analysis.monitor_file",
    "load_monitor": "stabilitybench.live",
}

__all__ = [  # = the names of _LAZY plus perturbation (tests/test_namespace.py checks it); a literal for type checkers
    "Intervention", "MonitorFile", "NonFiniteTraining", "OnlineMonitor", "Probe", "ProbeAttachedError", "Recorder",
    "RunExistsError", "StabilityCallback", "StabilityLightningCallback", "StabilityTrainerCallback", "TrainingDiverged",
    "fit_monitor", "load_monitor", "perturbation",
]


def perturbation(kind: str, magnitude: float = 1.0, onset_step: int = 0, duration_steps: int = 1,
                 seed: int = 0) -> Any:
    """A controlled perturbation for :class:`Probe` / the adapters, e.g. ``perturbation("lr_spike", 10, 500, 10)``.

    ``onset_step`` and ``duration_steps`` count optimizer updates; kinds and magnitudes: ``generate.perturbations``.
    """
    from stabilitybench.generate.perturbations import build

    return build(kind, magnitude, onset_step, duration_steps, seed=seed)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stabilitybench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
