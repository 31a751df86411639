"""The Meta-State Monitor: models of unperturbed telemetry whose prediction error is the MSD.

* :class:`~stabilitybench.analysis.metastate.kalman.KalmanMonitor`: linear-Gaussian SSM (EM + Kalman filter);
* :class:`~stabilitybench.analysis.metastate.gru.GRUMonitor`: recurrent SSM (GRU with a Gaussian head).

Both follow the scikit-learn/lifelines style: settings in the constructor, ``fit(sequences)
-> self`` on unperturbed training runs, fitted attributes ending in ``_``, ``score(X)`` ->
per-step MSD, ``calibrate(...)`` -> alarm threshold at a target FPR, ``save``/``load``, and
``stepper()`` -> the same score one block at a time (live). Their registry entries (names, labels,
builders) are in :mod:`stabilitybench.analysis.detectors`.
"""

from typing import Any

from stabilitybench.analysis.metastate.base import MonitorBase, calibration_threshold, rolling_mean, window_max
from stabilitybench.analysis.metastate.kalman import KalmanMonitor


def __getattr__(name: str) -> Any:
    """Import the GRU (and torch) only when it is asked for."""
    if name == "GRUMonitor":
        from stabilitybench.analysis.metastate.gru import GRUMonitor

        return GRUMonitor
    raise AttributeError(name)

__all__ = ["GRUMonitor", "KalmanMonitor", "MonitorBase", "calibration_threshold", "rolling_mean", "window_max"]
