"""Exceptions of the corpus contract.

:class:`StabilityBenchError` is the root of every error a user can cause (a bad
profile, a missing corpus, a corrupt file). The CLI prints such errors as one line
and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class StabilityBenchError(Exception):
    """Base class of all user-facing StabilityBench errors."""


class SchemaError(StabilityBenchError):
    """A table or file does not match its declared schema; names the file and column."""


class CorruptFileError(StabilityBenchError):
    """A file exists but cannot be read as Parquet."""


class CorpusNotFoundError(StabilityBenchError):
    """The corpus directory (or a table in it) does not exist."""
