"""Exceptions of the generators and the runner."""

from __future__ import annotations

from stabilitybench.data_schema.errors import StabilityBenchError


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


class TrainingDiverged(NonFiniteTraining):
    """Raised by a :class:`~generate.probe.Probe` (``nonfinite="stop"``, the default) when the run went non-finite.

    Raised only *after* the run is safely recorded: the non-finite update's row is kept, a
    ``nonfinite`` event is added and the :class:`~stabilitybench.generate.recorder.Recorder` is closed with
    ``stop_reason = "nonfinite"`` and status ok (with a corpus: its files and manifest row are
    written). A subclass of :class:`NonFiniteTraining`, so code that catches that keeps working.
    """

    def __init__(self, step: int, what: str, run_id: str | None = None, corpus: str | None = None) -> None:
        super().__init__(step, what)
        self.run_id = run_id
        self.corpus = corpus
        if run_id is not None:
            where = f" in {corpus}" if corpus is not None else ""
            self.args = (f"non-finite {what} at update {step}: run {run_id} recorded{where} "
                         f"(stop_reason=nonfinite, status ok)",)


class RunExistsError(StabilityBenchError):
    """A :class:`~stabilitybench.generate.recorder.Recorder` would write a run_id the corpus already holds.

    Raised before training (when the run's identity is complete); pass ``overwrite=True`` to
    replace the old run, or change ``run_name``/``config``/``seed``/the perturbation.
    """


class ProbeAttachedError(StabilityBenchError):
    """A second :class:`~stabilitybench.generate.probe.Probe` on an optimizer that already has a live one.

    Two probes would each multiply and restore the learning rate, and the LR would drift for good.
    Detach the first (``Probe.attached(optimizer).detach()``) or use ``with Probe(...)``.
    """


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
