"""``LightningCallback``: StabilityBench telemetry for a PyTorch Lightning ``Trainer``.

::

    with Recorder("corpus", "my-model", algo="mlp", env="my-data") as rec:
        Trainer(max_epochs=3, callbacks=[LightningCallback(rec)]).fit(model, loader)

A :class:`~stabilitybench.generate.probe.Probe` on the Trainer's torch optimizer records one row per optimizer
update, with the same guarantees as the Hugging Face adapter (``stabilitybench.generate.adapters.hf``):

* **Invisible to training.** The final parameters and every loss are bit-identical with and
  without the callback (``tests/test_lightning.py``).
* **LR-exact perturbations.** A perturbation multiplies each param group's LR for the update
  and restores it before Lightning steps the LR scheduler, so a spike is exact across a
  scheduler step.
* **``grad_norm`` is before clipping.** The gradient is read when autograd finishes accumulating
  it, before Lightning's precision plugin clips it (``gradient_clip_val``) after
  ``on_before_optimizer_step``.

Why the closure runs first: Lightning calls ``optimizer.step(closure)`` and the closure runs
``training_step``, ``zero_grad``, ``backward``, ``on_before_optimizer_step`` and the clipping
*inside* the step, so a step pre-hook would fire before the gradient exists. The callback puts
a pre-hook ahead of the probe's that runs the closure, then hands the optimizer a closure that
returns that result on its first call (and evaluates again on later calls, for LBFGS). The
optimizer sees the same values at the same point of its update; the probe's pre-step now sees
this update's gradient.

Columns: ``lr``, ``grad_norm``, ``grad_coherence``, ``update_norm``, ``param_norm``,
``perturbation_active`` (the probe); ``loss``: the update's training loss (the mean of the
``training_step`` losses of its micro-batches under ``accumulate_grad_batches``; read in the
probe's one batched host read); ``samples_seen``: training samples so far (batch size x world
size per batch); ``val_loss`` and ``performance = -val_loss`` after each validation that logged
``val_metric`` (and an ``eval`` event).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

try:
    import lightning.pytorch as pl
except ModuleNotFoundError as exc:  # one line that says what to install, not a bare "No module named"
    raise ModuleNotFoundError("LightningCallback needs PyTorch Lightning: pip install "
                              "'stabilitybench[lightning]'", name="lightning") from exc

from stabilitybench.generate.perturbations import Perturbation, TrainingClock
from stabilitybench.generate.probe import Probe, ProbeInternals, _WiredProbe
from stabilitybench.generate.telemetry import warn_deprecated


class LightningCallback(pl.Callback):
    """Records one ``steps`` row per optimizer update of a Lightning ``Trainer`` into ``recorder``.

    Parameters
    ----------
    recorder:
        A :class:`~stabilitybench.generate.recorder.Recorder` (with a corpus, or ``None`` to only buffer).
    perturbation:
        Optional controlled perturbation (``stabilitybench.perturbation(...)``); its window counts
        optimizer updates.
    coherence_window:
        K, the number of recent gradients whose mean pairwise cosine is ``grad_coherence``.
    val_metric:
        The metric name ``validation_step`` logs (``self.log(val_metric, ...)``) that becomes
        ``val_loss`` (and ``performance = -val_loss``); absent: no validation columns.
    close_recorder:
        Write the recorder when training ends (or fails: the recorder's own ``with`` rules decide
        the ``stop_reason``).
    optimizer_index:
        Which of ``trainer.optimizers`` to probe (manual optimization may have several; automatic
        optimization has one).
    nonfinite:
        Passed to the :class:`~stabilitybench.generate.probe.Probe` when given. The probe's default, ``"stop"``: a
        non-finite update is recorded, the run is closed as ``stop_reason = "nonfinite"`` (status ok)
        and :class:`~stabilitybench.generate.errors.TrainingDiverged` then ends ``fit``; ``"record"`` keeps training.
    """

    def __init__(self, recorder: Any, *, perturbation: Perturbation | None = None, coherence_window: int = 8,
                 val_metric: str = "val_loss", close_recorder: bool = False, optimizer_index: int = 0,
                 nonfinite: str | None = None) -> None:
        super().__init__()
        self.recorder = recorder
        self.perturbation = perturbation
        self.coherence_window = coherence_window
        self.val_metric = val_metric
        self.close_recorder = close_recorder
        self.optimizer_index = optimizer_index
        self.nonfinite = nonfinite
        #: Shared by every ``fit`` with this callback, so a second ``fit`` continues the step count.
        self.clock = TrainingClock()
        self.probe: Probe | None = None
        self.performance: float | None = None
        self._hook: Any = None
        self._automatic = True
        self._scaler: Any = None
        self._samples = 0
        self._attempted = False
        self._loss_stashed = False
        self._rows_at_batch_start = 0
        self._accumulated: torch.Tensor | None = None

    # -- set-up and tear-down ----------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizers = trainer.optimizers
        if not 0 <= self.optimizer_index < len(optimizers):
            raise ValueError(f"optimizer_index={self.optimizer_index}, but the Trainer has "
                             f"{len(optimizers)} optimizer(s)")
        optimizer = optimizers[self.optimizer_index]
        self.detach()
        if not len(self.recorder):
            self.recorder.t0 = time.perf_counter()
        self._automatic = pl_module.automatic_optimization
        # "16-mixed": the gradient autograd accumulates is the loss-scaled one (unscaled in place only later)
        scaler = getattr(trainer.strategy.precision_plugin, "scaler", None)
        self._scaler = scaler if scaler is not None and scaler.is_enabled() else None
        # registered before the probe's hooks, so it runs first: the probe's pre-step then sees the gradient
        self._hook = optimizer.register_step_pre_hook(self._run_closure_first)
        kwargs = {} if self.nonfinite is None else {"nonfinite": self.nonfinite}
        self.probe = _WiredProbe(optimizer, self.recorder, ProbeInternals(clock=self.clock),
                                 perturbation=self.perturbation, on_row=self._record,
                                 coherence_window=self.coherence_window, **kwargs)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.detach()
        if self.close_recorder:
            self.recorder.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Detach; record an interrupt as one (Lightning turns Ctrl-C into ``SystemExit(1)`` after this hook,
        which a ``with Recorder(...)`` block would otherwise file as an error)."""
        self.detach()
        if self.close_recorder or isinstance(exception, KeyboardInterrupt):
            self.recorder.__exit__(type(exception), exception, exception.__traceback__)

    def detach(self) -> None:
        """Detach the probe and the callback's optimizer hook (idempotent); the optimizer is left as it was."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.probe is not None:
            self.probe.detach()
            self.probe = None

    def remove(self) -> None:
        """Deprecated alias of :meth:`detach` (removed in 0.2)."""
        warn_deprecated("LightningCallback.remove()", "LightningCallback.detach()")
        self.detach()

    # -- the optimizer step ---------------------------------------------------------------------
    def _run_closure_first(self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Step pre-hook: run the step's closure now (training step, backward, clipping), then let the
        optimizer replay its result (module doc). Also hands the probe the loss and the loss scale."""
        if self._scaler is not None and self.probe is not None:
            scale = getattr(self._scaler, "_scale", None)  # the device tensor: no host read of its own
            scale = scale if isinstance(scale, torch.Tensor) else torch.tensor(self._scaler.get_scale())
            self.probe.stash(_grad_scale=scale.detach().reshape(()))
        positional = len(args) > 1
        closure: Callable[[], Any] | None = args[1] if positional else kwargs.get("closure")
        if closure is None:
            return None
        result = closure()
        if self._automatic and self.probe is not None and _scalar(result):
            loss = result.detach().reshape(())
            self.probe.stash(loss=loss if self._accumulated is None else loss + self._accumulated)
            self._loss_stashed = True
        calls = 0

        def replay() -> Any:
            nonlocal calls
            calls += 1
            return result if calls == 1 else closure()

        if positional:
            return (args[0], replay, *args[2:]), kwargs
        return args, {**kwargs, "closure": replay}

    def _record(self, step: int, stats: dict[str, Any]) -> None:
        scale = stats.pop("_grad_scale", None)
        if scale and stats.get("grad_norm") is not None:
            stats["grad_norm"] = stats["grad_norm"] / scale
        self.recorder.append(step=step, **stats, performance=self.performance)

    # -- batches and validation ---------------------------------------------------------------------
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._attempted = self._loss_stashed = False
        self._rows_at_batch_start = len(self.recorder)
        size = _batch_size(batch)
        if size is not None:
            self._samples += size * max(1, trainer.world_size)
            self.recorder.samples_seen = self._samples

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        self._attempted = True  # this batch ends an update (which "16-mixed"'s scaler may still skip)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        loss = loss.detach().reshape(()) if _scalar(loss) else None
        recorded = len(self.recorder) > self._rows_at_batch_start  # this batch made a row
        if not self._automatic:
            if recorded and loss is not None:  # manual optimization: the loss the training_step returned
                self.recorder.update_last(loss=float(loss))
            return
        if not self._attempted:  # an accumulation micro-batch: its (already 1/N-scaled) loss joins the update's
            if loss is not None:
                self._accumulated = loss if self._accumulated is None else self._accumulated + loss
            return
        if recorded and not self._loss_stashed and loss is not None:  # the closure ran outside step() ("16-mixed")
            self.recorder.update_last(loss=float(loss if self._accumulated is None else loss + self._accumulated))
        self._accumulated = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metric = trainer.callback_metrics.get(self.val_metric)
        if metric is None:
            return
        value = float(metric)
        self.performance = -value
        self.recorder.update_last(val_loss=value, performance=self.performance)
        step = self.recorder.rows[-1]["step"] if len(self.recorder) else 0
        self.recorder.event(step, "eval", detail=self.val_metric, value=value)


class StabilityLightningCallback(LightningCallback):
    """Deprecated name of :class:`LightningCallback` (removed in 0.2); warns when constructed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warn_deprecated("StabilityLightningCallback", "LightningCallback")
        super().__init__(*args, **kwargs)


def _scalar(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.numel() == 1


def _batch_size(batch: Any) -> int | None:
    """The leading dimension of the first tensor in ``batch`` (a tensor, or nested lists/tuples/dicts), or None."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else None
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            size = _batch_size(item)
            if size is not None:
                return size
    return None
