"""Exceptions of the generators and the runner."""

from __future__ import annotations

from data_schema.errors import StabilityBenchError


class ProfileError(StabilityBenchError):
    """A profile (or --only filter) is malformed; the message names the file and the key."""


class UnknownEnvError(StabilityBenchError):
    """The env id is not registered with gymnasium."""


class NonFiniteTraining(Exception):
    """Raised inside a training loop when a loss, gradient or parameter is NaN/Inf.

    Not a user error: the generator catches it, records the run as collapsed data
    (an events row, ``stop_reason = "nonfinite"``, status ok) and stops the run cleanly.
    """

    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"non-finite {what} at update {step}")
        self.step = step
        self.what = what


class CorpusError(StabilityBenchError):
    """The LM text corpus is missing, empty or unreadable (one line naming the path)."""


class BackendError(StabilityBenchError):
    """The execution backend cannot be used: Ray missing or unreachable, a run no node can host, bad options."""


class Interrupted(Exception):
    """The driver was stopped by SIGINT/SIGTERM after recording every finished run."""

    def __init__(self, done: int, left: int) -> None:
        super().__init__(f"interrupted: {done} done, {left} left; rerun to resume")
        self.done = done
        self.left = left
