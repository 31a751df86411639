"""``HFTrainerCallback``: StabilityBench telemetry for a Hugging Face ``transformers.Trainer``.

::

    with Recorder("corpus", "gpt2-tiny", domain="lm", algo="gpt2", env="my-text") as rec:
        Trainer(model=model, args=args, train_dataset=ds, callbacks=[HFTrainerCallback(rec)]).train()

A :class:`~stabilitybench.generate.probe.Probe` on the Trainer's torch optimizer (unwrapped from accelerate's
wrapper) records one row per optimizer update: ``lr`` (what the Trainer's scheduler set),
``grad_norm`` before the Trainer's clipping, ``grad_coherence`` over the last K updates,
``update_norm``, ``param_norm``. ``samples_seen`` counts training samples (global step x
total batch size); the Trainer's logged ``loss`` lands on the row of the step it was logged at,
and each evaluation's ``eval_loss`` becomes ``val_loss`` and ``performance = -val_loss``.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from stabilitybench.generate.perturbations import Perturbation
from stabilitybench.generate.probe import Probe
from stabilitybench.generate.telemetry import warn_deprecated


class HFTrainerCallback(TrainerCallback):
    """Records one ``steps`` row per optimizer update of a ``Trainer`` into ``recorder``."""

    def __init__(self, recorder: Any, *, perturbation: Perturbation | None = None, coherence_window: int = 8,
                 close_recorder: bool = False) -> None:
        self.recorder = recorder
        self.perturbation = perturbation
        self.coherence_window = coherence_window
        self.close_recorder = close_recorder
        self.probe: Probe | None = None
        self.performance: float | None = None
        self._batch = 1

    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
        self._batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
        self.probe = Probe(optimizer, self.recorder, perturbation=self.perturbation, on_row=self._record,
                           coherence_window=self.coherence_window)

    def _record(self, step: int, stats: dict[str, Any]) -> None:
        self.recorder.samples_seen = (step + 1) * self._batch
        self.recorder.append(step=step, **stats, performance=self.performance)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.recorder.update_last(loss=float(logs["loss"]), train_loss=float(logs["loss"]))

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        if metrics and "eval_loss" in metrics:
            self.performance = -float(metrics["eval_loss"])
            self.recorder.update_last(val_loss=float(metrics["eval_loss"]), performance=self.performance)
            self.recorder.event(max(len(self.recorder) - 1, 0), "eval", value=float(metrics["eval_loss"]))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.detach()
        if self.close_recorder:
            self.recorder.close()

    def detach(self) -> None:
        """Detach the probe (idempotent); the optimizer is left as it was."""
        if self.probe is not None:
            self.probe.detach()
            self.probe = None


class StabilityTrainerCallback(HFTrainerCallback):
    """Deprecated name of :class:`HFTrainerCallback` (removed in 0.2); warns when constructed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warn_deprecated("StabilityTrainerCallback", "HFTrainerCallback")
        super().__init__(*args, **kwargs)
