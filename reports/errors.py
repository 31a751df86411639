"""Exceptions of the reports package.

Errors a user can cause (no results folder, an output path that is a file) derive from
:class:`~stabilitybench.data_schema.errors.StabilityBenchError`, so the CLI prints one line. A figure
whose analysis was not testable is not an error: it is drawn as a "too little data" panel.
"""

from __future__ import annotations

from stabilitybench.data_schema.errors import OutputPathError, StabilityBenchError


class ReportError(StabilityBenchError):
    """Base class of the reports package's user-facing errors."""


class ResultsMissingError(ReportError):
    """The results folder (or its summary.json) does not exist: run ``stabilitybench analyze`` first."""


__all__ = ["OutputPathError", "ReportError", "ResultsMissingError"]  # OutputPathError: data_schema's, re-exported
