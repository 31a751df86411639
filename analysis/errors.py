"""Exceptions of the analysis package.

Every error a user can cause (no corpus, no finished runs, an unreadable results
folder) derives from :class:`~stabilitybench.data_schema.errors.StabilityBenchError`, so the CLI prints
one line. Too little data for *one* analysis (a group without unperturbed runs, a split
without calibration seeds) is not an error: it becomes an entry with a NOT_TESTABLE
:class:`~stabilitybench.analysis.summary.Status` in ``summary.json`` and the rest of the analysis goes on.
summary.json's own errors (:class:`~stabilitybench.analysis.summary.SummaryFieldError`, ...) live in
:mod:`stabilitybench.analysis.summary`.
"""

from __future__ import annotations

from stabilitybench.data_schema.errors import StabilityBenchError


class AnalysisError(StabilityBenchError):
    """Base class of the analysis package's user-facing errors."""


class NoRunsError(AnalysisError):
    """The corpus has no finished (status ``ok``) runs to analyse."""


class InsufficientDataError(AnalysisError):
    """An estimator was given too little data to fit (e.g. no training sequence long enough)."""


class NotFittedError(AnalysisError):
    """``score``/``save`` was called on an estimator before ``fit``."""


class MonitorFileError(AnalysisError):
    """A monitor file cannot be read, or does not fit the run it is asked to score (e.g. missing columns)."""


class UnknownDetectorError(AnalysisError, KeyError):
    """A detector name that :data:`stabilitybench.analysis.detectors.DETECTORS` does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
