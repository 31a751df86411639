"""The detector registry: one :class:`DetectorSpec` per detector, the one place that names them.

Every detector the early-warning evaluation scores (:mod:`stabilitybench.analysis.early_warning`),
every kind a monitor file holds (:mod:`stabilitybench.analysis.monitor_file`) and every label a report
prints is looked up here::

    from stabilitybench.analysis.detectors import DETECTORS, detector_label, monitor_names, spec_for

    monitor_names()                 # ("kalman", "gru")
    spec_for("loss_spike").cls      # <class LossSpike>
    detector_label("kalman")        # "Kalman monitor (MSD)"

The meta-state monitors and the references are declared below; each baseline is declared next to its
class in :mod:`stabilitybench.analysis.baselines` (``SPECS``), so adding a baseline touches that one module
(plus its test). A detector defined elsewhere (a notebook, a plug-in) joins with :func:`register`.
Registry order is the evaluation's default order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stabilitybench.analysis.baselines import RULE_SPECS
from stabilitybench.analysis.baselines import SPECS as BASELINE_SPECS
from stabilitybench.analysis.errors import UnknownDetectorError
from stabilitybench.analysis.metastate.base import FAMILIES, DetectorSpec, MonitorBase
from stabilitybench.analysis.metastate.kalman import KalmanMonitor

__all__ = ["DETECTORS", "FAMILIES", "DetectorSpec", "baseline_names", "default_names", "detector_label",
           "monitor_names", "reference_names", "register", "rule_names", "saveable_names", "spec_for", "spec_of"]


def _kalman(features: list[str], cfg: Any) -> MonitorBase:
    return KalmanMonitor(n_latent="pca90", n_iter=cfg.kalman_iter, smooth=cfg.smooth, seed=cfg.seed)


def _gru(features: list[str], cfg: Any) -> MonitorBase:
    from stabilitybench.analysis.metastate.gru import GRUMonitor

    return GRUMonitor(hidden=cfg.gru_hidden, epochs=cfg.gru_epochs, smooth=cfg.smooth, seed=cfg.seed)


_MONITORS = (
    DetectorSpec("kalman", "Kalman monitor (MSD)", "monitor", KalmanMonitor, _kalman, saveable=True, echo=True,
                 fit_order=1),
    DetectorSpec("gru", "GRU monitor (MSD)", "monitor", "stabilitybench.analysis.metastate.gru:GRUMonitor", _gru,
                 saveable=True, needs_torch=True, echo=True, fit_order=0),
)

#: Question (b)'s references (:mod:`stabilitybench.analysis.questions`): scored there from the configuration or
#: the kick, never fitted; registered for their names and labels (reports print their names as they are).
_REFERENCES = (
    DetectorSpec("config_only", "config_only", "reference"),
    DetectorSpec("kick_size", "kick_size", "reference"),
    DetectorSpec("perturbation_on", "perturbation_on", "reference"),
)

DETECTORS: dict[str, DetectorSpec] = {}
"""Every detector by name, in evaluation order: the monitors, the baselines, then the references."""


def register(spec: DetectorSpec, replace: bool = False) -> DetectorSpec:
    """Add ``spec`` to :data:`DETECTORS` (at the end); refuses a name already taken unless ``replace``."""
    if not isinstance(spec, DetectorSpec):
        raise TypeError(f"register() takes a DetectorSpec, not {type(spec).__name__}")
    if spec.name in DETECTORS and not replace:
        raise ValueError(f"detector {spec.name!r} is already registered")
    if "+" in spec.name:
        raise ValueError(f"detector {spec.name!r}: '+' is reserved for variants such as '<monitor>+echo'")
    DETECTORS[spec.name] = spec
    return spec


for _spec in (*_MONITORS, *BASELINE_SPECS, *RULE_SPECS, *_REFERENCES):
    register(_spec)

#: Registered, but scored only when named in ``cfg.detectors`` (:func:`default_names` leaves them out).
_OPT_IN = frozenset(s.name for s in RULE_SPECS)


def spec_for(name: str) -> DetectorSpec:
    """The spec of detector (or monitor-file kind) ``name``; a ``<name>+echo`` variant gives its detector's spec."""
    spec = DETECTORS.get(name) or DETECTORS.get(str(name).split("+")[0])
    if spec is None:
        raise UnknownDetectorError(f"unknown detector {name!r} (known: {', '.join(DETECTORS)})")
    return spec


def spec_of(detector: object) -> DetectorSpec:
    """The spec whose class ``detector`` is an instance of (exactly: a subclass is a different detector)."""
    for spec in DETECTORS.values():
        if spec.is_class_of(detector):
            return spec
    raise UnknownDetectorError(f"{type(detector).__name__} is not a registered detector "
                               f"(known: {', '.join(DETECTORS)})")


def _names(family: str | None = None, where: Iterable[DetectorSpec] | None = None) -> tuple[str, ...]:
    return tuple(s.name for s in (where if where is not None else DETECTORS.values())
                 if family is None or s.family == family)


def monitor_names() -> tuple[str, ...]:
    """The meta-state monitors (the detectors the study is about): ``("kalman", "gru")``."""
    return _names("monitor")


def baseline_names() -> tuple[str, ...]:
    """The baselines the monitors are compared with, in registry order."""
    return _names("baseline")


def reference_names() -> tuple[str, ...]:
    """Question (b)'s references (not fitted; scored in :mod:`stabilitybench.analysis.questions`)."""
    return _names("reference")


def saveable_names() -> tuple[str, ...]:
    """The detectors a monitor file can hold and :class:`~stabilitybench.analysis.online.OnlineMonitor` runs."""
    return tuple(s.name for s in DETECTORS.values() if s.saveable)


def default_names(has_torch: bool) -> tuple[str, ...]:
    """What the evaluation scores by default: every monitor and baseline, less those needing torch without it and
    the practitioners' spike rules (:func:`rule_names`: scored when named, e.g. ``EarlyWarningConfig(detectors=
    (*default_detectors(), *rule_names()))``)."""
    return tuple(s.name for s in DETECTORS.values()
                 if s.family != "reference" and (has_torch or not s.needs_torch) and s.name not in _OPT_IN)


def rule_names() -> tuple[str, ...]:
    """The practitioners' spike rules (OLMo-core, llm.c, Megatron, llm-foundry, Lightning), baselines scored on
    request only (:data:`stabilitybench.analysis.baselines.RULE_SPECS`)."""
    return tuple(s.name for s in RULE_SPECS)


def detector_label(name: str) -> str:
    """How reports name detector ``name``: its spec's label; a variant or unknown name is printed as it is."""
    spec = DETECTORS.get(name)
    return spec.label if spec is not None else name
