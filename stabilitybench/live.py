"""Live early warning: a saved monitor file scoring your own run as it trains, and actions on its alarms.

This is where the two halves meet (``generate`` records and acts, ``analysis`` fits and scores; neither
imports the other)::

    from stabilitybench import Intervention, Recorder, SB3Callback, load_monitor

    monitor = load_monitor("results/monitors/rl_ppo_HalfCheetah-v5_default/kalman_fold0.monitor.npz")
    with Recorder("corpus", "my-ppo", algo="ppo", env="HalfCheetah-v5", seed=0) as rec:
        guard = Intervention(monitor.online(), rec, actions=["lr_backoff"], lr_factor=0.1, lr_duration=200)
        model.learn(100_000, callback=SB3Callback(rec, intervention=guard))

See the guide "Live early warning" (docs/guides/live.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any


def load_monitor(path: str | os.PathLike[str], columns: Iterable[str] | None = None) -> Any:
    """Read a monitor file (:class:`stabilitybench.analysis.monitor_file.MonitorFile`); with ``columns``, check them."""
    from stabilitybench.analysis.monitor_file import MonitorFile

    return MonitorFile.load(path, columns)


def online_monitor(path: str | os.PathLike[str]) -> Any:
    """A fresh :class:`analysis.online.OnlineMonitor` from a monitor file (the generators' default loader)."""
    return load_monitor(path).online()


def skip_step_decision(window: int = 128, sigma: float = 6.0) -> Any:
    """OLMo-core's skip decision, one update at a time (:class:`analysis.baselines.OlmoSkipDecision`): the
    generators' default rule for :class:`stabilitybench.generate.skip_step.SkipStep`."""
    from stabilitybench.analysis.baselines import OlmoSkipDecision

    return OlmoSkipDecision(window, sigma)
