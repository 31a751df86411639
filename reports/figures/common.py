"""Display helpers the figure modules share (scales, colours, labels); no statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from stabilitybench.reports.data import finite
from stabilitybench.reports.style import PALETTE, grid, too_little_data

SIGNAL_LABELS = {
    "performance": "performance\n(return; −val loss for LM)",
    "grad_norm": "gradient norm\n(L2, before clipping)",
    "grad_coherence": "gradient coherence\n(mean pairwise cosine)",
    "msd": "MSD, Kalman monitor\n(nats per feature)",
}
# matplotlib >= 3.10 takes orientation=, older ones vert= (deprecated since 3.11)
HORIZONTAL: dict[str, Any] = (
    {"orientation": "horizontal"} if tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 10)
    else {"vert": False})


def colors(keys: Sequence[str]) -> dict[str, Any]:
    """One palette colour per key, in the order given."""
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}


def mag_scale(ax: Axes, mags: Sequence[float]) -> None:
    """Log x when the magnitudes span a decade or more."""
    m = [float(x) for x in mags if finite(x)]
    if m and min(m) > 0 and max(m) / min(m) >= 10:
        ax.set_xscale("log")


def symlog_y(ax: Axes) -> None:
    """Symlog y (MSD spans decades); the negative side is cut at -2 (an MSD barely goes below 0)."""
    ax.set_yscale("symlog", linthresh=1.0)
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, -2.0), hi)


def inf_to_top(v: np.ndarray) -> np.ndarray:
    """For display: +inf (a non-finite run) drawn just above the largest finite score."""
    v = np.asarray(v, float)
    fin = v[np.isfinite(v)]
    top = (fin.max() * 1.5 if fin.size and fin.max() > 0 else 1.0)
    return np.where(np.isposinf(v), top, v)


def placeholder(why: str, title: str) -> tuple[Figure, list[str]]:
    """A one-panel figure saying why there is nothing to draw, and that reason."""
    fig, axes = grid(1, 1, panel=(6.0, 2.6))
    too_little_data(axes[0], why, title)
    return fig, [why]
