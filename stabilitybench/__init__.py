"""StabilityBench: a telemetry corpus of controlled training collapses, and the probe that records it.

The public API is imported lazily (``import stabilitybench`` imports no torch, SB3 or
transformers; only the name you use does)::

    from stabilitybench import Probe, Recorder                       # any torch loop
    from stabilitybench import SB3Callback                           # stable-baselines3
    from stabilitybench import HFTrainerCallback                     # transformers.Trainer
    from stabilitybench import LightningCallback                     # lightning.pytorch.Trainer
    from stabilitybench import perturbation                          # a controlled perturbation
    from stabilitybench import load_monitor, Intervention            # live early warning and actions

Every object that attaches to training (``Probe``, the callbacks, ``Intervention``) detaches with ``detach()``.
The adapters' names before 0.1 (``StabilityCallback``, ``StabilityTrainerCallback``,
``StabilityLightningCallback``) still import, with a ``DeprecationWarning``, until 0.2.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each name is imported on first use
    from stabilitybench.analysis.monitor_file import MonitorFile, fit_monitor
    from stabilitybench.analysis.online import OnlineMonitor
    from stabilitybench.generate.adapters.hf import HFTrainerCallback
    from stabilitybench.generate.adapters.lightning import LightningCallback
    from stabilitybench.generate.adapters.sb3 import SB3Callback
    from stabilitybench.generate.errors import NonFiniteTraining, ProbeAttachedError, RunExistsError, TrainingDiverged
    from stabilitybench.generate.intervention import Intervention
    from stabilitybench.generate.probe import Probe
    from stabilitybench.generate.recorder import Recorder
    from stabilitybench.live import load_monitor

_LAZY = {
    "Probe": "stabilitybench.generate.probe",
    "Recorder": "stabilitybench.generate.recorder",
    "SB3Callback": "stabilitybench.generate.adapters.sb3",
    "HFTrainerCallback": "stabilitybench.generate.adapters.hf",
    "LightningCallback": "stabilitybench.generate.adapters.lightning",
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
#: Deprecated names (until 0.2) -> their module; each is a subclass of the new name that warns when constructed.
#: Not in ``__all__``: ``from stabilitybench import *`` gives only the current names.
_DEPRECATED = {
    "StabilityCallback": "stabilitybench.generate.adapters.sb3",  # -> SB3Callback
    "StabilityTrainerCallback": "stabilitybench.generate.adapters.hf",  # -> HFTrainerCallback
    "StabilityLightningCallback": "stabilitybench.generate.adapters.lightning",  # -> LightningCallback
}

__all__ = [  # = the names of _LAZY plus perturbation (tests/test_namespace.py checks it); a literal for type checkers
    "HFTrainerCallback", "Intervention", "LightningCallback", "MonitorFile", "NonFiniteTraining", "OnlineMonitor",
    "Probe", "ProbeAttachedError", "Recorder", "RunExistsError", "SB3Callback", "TrainingDiverged", "fit_monitor",
    "load_monitor", "perturbation",
]


def perturbation(kind: str, magnitude: float, onset_step: int = 0, duration_steps: int = 1, seed: int = 0) -> Any:
    """A controlled perturbation for :class:`Probe` / the adapters, e.g. ``perturbation("lr_spike", 10, 500, 10)``.

    ``magnitude`` has no default: its meaning depends on the kind (1.0 is the identity for ``lr_spike`` but a
    full reset for ``adam_reset``). ``onset_step`` and ``duration_steps`` count optimizer updates; kinds and
    magnitudes: :mod:`stabilitybench.generate.perturbations`.
    """
    from stabilitybench.generate.perturbations import build

    return build(kind, magnitude, onset_step, duration_steps, seed=seed)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _DEPRECATED:
        return getattr(importlib.import_module(_DEPRECATED[name]), name)
    raise AttributeError(f"module 'stabilitybench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
