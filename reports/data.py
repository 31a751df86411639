"""What a report draws from: ``results/`` only (via :mod:`stabilitybench.analysis.results`).

Every number a caption or table quotes comes from ``summary.json``; the figures draw the results
tables, including those analysis writes for them (``onset_telemetry`` for F1, ``early_warning_roc`` for
F8, ``dissociation_runs`` for F9). The report never opens the corpus: it draws from a results folder
alone, wherever the corpus now is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from stabilitybench.analysis.results import load_table
from stabilitybench.analysis.summary import ResultsNotFoundError, StatusKind, Summary, read_summary
from stabilitybench.data_schema import DIMENSIONS as ALL_DIMENSIONS
from stabilitybench.data_schema.keys import NO_PERTURBATION
from stabilitybench.reports.errors import ResultsMissingError

#: The perturbation dimensions, in the order the paper (and data_schema.DIMENSIONS) lists them.
DIMENSIONS = tuple(d for d in ALL_DIMENSIONS if d != NO_PERTURBATION)


@dataclass
class ReportData:
    """A results folder read once: ``summary`` (summary.json, typed) and the tables, loaded lazily.

    ``corpus`` is where the results came from, for display only."""

    results: Path
    summary: Summary
    corpus: Path | None = None
    _tables: dict[str, pl.DataFrame | None] = field(default_factory=dict, repr=False)

    def table(self, name: str) -> pl.DataFrame | None:
        """A results table (see :data:`stabilitybench.analysis.results.TABLES`), or None when analysis wrote none."""
        if name not in self._tables:
            frame = load_table(self.results, name)
            self._tables[name] = frame if frame is not None and frame.height else None
        return self._tables[name]

    def status(self, *keys: str) -> str | None:
        """The text of the NOT_TESTABLE status of the entry at ``keys`` (which must exist), or None."""
        st = self.summary.status(*keys)
        return st.text if st is not None and st.kind is StatusKind.NOT_TESTABLE else None


def load(results: str | os.PathLike[str], corpus: str | os.PathLike[str] | None = None) -> ReportData:
    """Open a results folder written by ``stabilitybench analyze``.

    ``corpus`` overrides the corpus path recorded in summary.json, which the page names as the results'
    source; nothing is read from it (the report draws from ``results`` alone).
    """
    path = Path(results)
    if not path.is_dir():
        raise ResultsMissingError(f"{path}: no such results folder (run `stabilitybench analyze --out {path}` first)")
    try:
        summary = read_summary(path)
    except ResultsNotFoundError as exc:
        raise ResultsMissingError(str(exc)) from None
    c = Path(corpus) if corpus is not None else (Path(summary.corpus) if summary.corpus else None)
    return ReportData(path, summary, c)


def finite(x: Any) -> bool:
    """True for a real, finite number."""
    return isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool) and bool(np.isfinite(x))
