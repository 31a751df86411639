"""One look for every figure: seaborn theme, colour-blind-safe palettes, the "too little data" panel.

Importing this module selects matplotlib's non-interactive Agg backend.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

#: Okabe-Ito-like categorical palette (seaborn "colorblind"), and a sequential one for magnitudes.
PALETTE = sns.color_palette("colorblind")
SEQUENTIAL = "viridis"
CONTROL_COLOR = "0.45"
DPI = 130


def apply_style() -> None:
    """The project's plotting theme (call before drawing; idempotent)."""
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.05,
                  rc={"axes.titleweight": "bold", "axes.titlesize": 10.5, "axes.labelsize": 9.5,
                      "legend.fontsize": 8, "legend.title_fontsize": 8.5, "figure.dpi": DPI,
                      "savefig.dpi": DPI, "axes.spines.top": False, "axes.spines.right": False,
                      "svg.fonttype": "none", "figure.constrained_layout.use": True})


def new_axes(ax: Axes | None, size: tuple[float, float] = (5.0, 3.6)) -> Axes:
    """``ax`` itself, or the axes of a new figure of ``size`` inches."""
    if ax is not None:
        return ax
    apply_style()
    _, new = plt.subplots(figsize=size)
    return new


def grid(nrows: int, ncols: int, panel: tuple[float, float] = (4.2, 3.2), **kw: object) -> tuple[Figure, list[Axes]]:
    """A figure with ``nrows x ncols`` panels of ``panel`` inches each, axes flattened row-major."""
    apply_style()
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), squeeze=False, **kw)
    return fig, list(axes.ravel())


def too_little_data(ax: Axes | None, reason: str, title: str | None = None) -> Axes:
    """Replace a plot by a clear message: ``too little data: <reason>`` (no axes, no misleading marks)."""
    ax = new_axes(ax)
    ax.set_axis_off()
    msg = reason.removeprefix("not testable: ").replace(": not testable: ", ": ")
    msg = msg if msg.lower().startswith("too little data") else f"too little data: {msg}"
    ax.text(0.5, 0.5, textwrap.fill(msg, 44), ha="center", va="center", fontsize=9.5, color="0.25",
            transform=ax.transAxes, wrap=True,
            bbox={"boxstyle": "round,pad=0.8", "facecolor": "#fff4e5", "edgecolor": "#e69f00"})
    if title:
        ax.set_title(title)
    return ax


def outside_legend(ax: Axes, title: str | None = None, handles: Sequence[object] | None = None,
                   labels: Sequence[str] | None = None, ncol: int = 1) -> None:
    """A legend to the right of the axes, so it never covers data."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    ax.legend(handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              ncol=ncol, borderaxespad=0.0)


def save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` under ``out_dir``; returns both paths. Closes the figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    try:
        for p in paths:
            tmp = p.with_name(f".{p.name}.tmp")
            fig.savefig(tmp, format=p.suffix[1:], bbox_inches="tight", metadata=_metadata(p.suffix))
            tmp.replace(p)
    finally:
        plt.close(fig)
    return paths


def _metadata(suffix: str) -> dict[str, str | None]:
    # reproducible files: no creation date in the output
    return {"Date": None} if suffix == ".svg" else {"Software": "StabilityBench reports (matplotlib)"}
