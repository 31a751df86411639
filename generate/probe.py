"""The public optimizer probe: one telemetry row per optimizer update, from any torch training loop.

:class:`Probe` attaches to a ``torch.optim.Optimizer`` through its public step hooks and to
the parameters through post-accumulate-grad hooks; the training code is not changed. Per
optimizer update it records ``lr``, ``grad_norm`` (before clipping), ``grad_coherence``,
``update_norm``, ``param_norm``, ``perturbation_active`` and, for Adam/AdamW, ``adam_update_ratio_rms``
(:class:`AdamUpdateRatio`: the RMS of g^2 / v_hat of Wortsman et al. 2023).

What it guarantees (each is tested in ``tests/test_probe.py``):

* **Learning rates are the user's.** A perturbation *multiplies* the LR each param group already
  has for the duration of one ``step()`` and restores it afterwards, so per-group LRs and any
  ``torch.optim.lr_scheduler`` stay correct and a spike never compounds with a chained scheduler.
* **``grad_norm`` is always before clipping.** Gradients are read when autograd finishes
  accumulating them (the first backward learns which parameter's gradient arrives last; only
  that parameter keeps a hook). A parameter without a gradient is skipped and counted
  (:attr:`Probe.missing_grads`, and a ``grad_missing`` event when the count changes).
* **Parameters are not re-seated.** If the parameters already form one contiguous block, they
  are read through one flat view; otherwise with ``torch._foreach`` ops. The probe's own
  buffers (a copy of the parameters for ``update_norm``, the coherence ring buffer) live on the
  parameters' device and dtype.
* **One host read per row.** The statistics stay on the device until one batched ``.tolist()``
  after the step (on CPU the gradient norm is also read before the step, which costs nothing
  there, so that a non-finite gradient is never applied).
* **Bounded coherence memory.** Up to ``exact_max_params`` parameters the ring buffer holds the
  gradients exactly (K x P); above, a :class:`~stabilitybench.generate.coherence.SignSketch` to ``sketch_dim``
  (<= 4096) dimensions (K x d).
* **Invisible to training.** The probe draws no random numbers from the global streams (the
  sketch's signs come from their own generator) and writes nothing the optimizer reads, so a
  run with the probe gives bit-identical parameters to the same run without it.
* **Divergence is data.** A non-finite gradient or parameter is recorded (its row, a ``nonfinite``
  event); by default (``nonfinite="stop"``) the recorder is then closed as ``stop_reason =
  "nonfinite"``, status ok, and only then :class:`~stabilitybench.generate.errors.TrainingDiverged` is raised;
  ``"record"`` keeps training and recording.
* **One probe per optimizer, and removal undoes it.** A second live Probe on the same optimizer is
  refused (:class:`~stabilitybench.generate.errors.ProbeAttachedError`): two would each multiply and restore the
  LR and leave it wrong for good. :meth:`Probe.detach` (or leaving ``with Probe(...)``) detaches every
  hook and restores any LR it had multiplied for an update that never finished.
* **Cheap on small models.** Where the cost is per torch call rather than per value (a small
  model on CPU), an update makes twelve torch calls: the gradient is copied into a reused flat
  buffer (one foreach copy) and normed; before the step the norm is read, the coherence ring is
  updated (three in-place calls) and the parameters are copied into a flat snapshot row; after it
  they are copied into a second row, and one reduction over [snapshot - after, after, coherence sum]
  gives ``update_norm``, ``param_norm`` and the coherence in one host read (for float32/float64 the four
  elementwise steps are NumPy calls on views of the same buffers: same results, cheaper). Elsewhere (accelerators,
  mixed dtypes, the sketch) the ``_foreach`` path above. ``benchmarks/bench_small_overhead.py``
  measures it. For Adam/AdamW, :class:`AdamUpdateRatio` adds seven calls after the step (two copies into its own
  flat buffers, a clamp, three NumPy calls; ~0.04 ms per update on the benchmark's CNN, under 1% of a generated PPO
  or GPT-2 run: BENCHMARKS.md).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stabilitybench.generate.coherence import RollingCoherence, SignSketch
from stabilitybench.generate.errors import NonFiniteTraining, ProbeAttachedError, TrainingDiverged
from stabilitybench.generate.perturbations import NoPerturbation, Perturbation, TrainingClock, UpdateContext
from stabilitybench.generate.telemetry import apply_perturbation, warn_deprecated

#: ``on_row(step, stats)``: ``stats`` holds lr, grad_norm, grad_coherence, update_norm, param_norm,
#: perturbation_active and, for Adam/AdamW, adam_update_ratio_rms.
RowCallback = Callable[[int, dict[str, Any]], None]
_TINY = 1e-30
#: What a probe does when an update is non-finite (the ``nonfinite`` argument).
NONFINITE_POLICIES = ("stop", "record", "raise")
#: The stash key under which an accelerator's update-ratio sum rides on the one batched host read.
_RATIO_KEY = "_adam_update_ratio_sum"
#: Up to this many parameters (on CPU) the update-norm snapshot is one flat buffer (2 x P values).
_FLAT_SNAPSHOT_MAX = 1 << 21
#: dtypes whose CPU elementwise steps run as NumPy calls on views of the probe's own buffers (same IEEE results).
_NUMPY_DTYPES = (torch.float32, torch.float64)
_np_subtract, _np_divide, _np_add = np.subtract, np.divide, np.add
_np_multiply, _np_sum = np.multiply, np.add.reduce
#: optimizer -> weak reference to its live Probe (neither is kept alive by this table).
_LIVE: weakref.WeakKeyDictionary[torch.optim.Optimizer, weakref.ReferenceType[Probe]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ProbeInternals:
    """How the project's own generators and adapters wire a :class:`Probe` in; not part of the public API.

    A user's probe is the defaults. :class:`_WiredProbe` takes one of these besides the public arguments.

    main, leads, clock:
        Several optimizers of one algorithm (SAC/TD3's critic, actor and entropy coefficient)
        share a :class:`~stabilitybench.generate.perturbations.TrainingClock`; the *main* probe advances it
        and defines ``step``, a follower's update belongs to the main update just made, unless ``leads``
        (it steps first).
    update_context:
        With it, the perturbation's ``before_update`` may change parameters or optimizer state just
        before the step (the generators' parametric kinds).
    skip_stepped_grads:
        Ignore gradient accumulations into a gradient this optimizer already applied (SAC/TD3: the
        actor's loss backpropagates through the critic, which would otherwise cost a wasted capture).
    record:
        False: only apply the perturbation's LR factor, record nothing (SAC's entropy coefficient).
    manual_grads, coherence:
        For loops that hand the gradient over themselves (:meth:`Probe.set_gradient`; no gradient hooks)
        and bring their own coherence estimator (the GPT-2 loop's microbatch coherence).
    exact_max_params:
        Up to this many parameters the coherence ring holds gradients exactly; above, the sketch.
    """

    main: bool = True
    leads: bool = False
    clock: TrainingClock | None = None
    update_context: UpdateContext | None = None
    skip_stepped_grads: bool = False
    record: bool = True
    manual_grads: bool = False
    coherence: Any = None
    exact_max_params: int = 1 << 21


#: A user's Probe: one optimizer, its own clock, gradient hooks and coherence.
_PUBLIC_INTERNALS = ProbeInternals()


class Probe:
    """Per-update telemetry of one optimizer (module docstring).

    ::

        with Recorder("corpus", "my-run", algo="cnn", env="digits") as rec, Probe(optimizer, rec):
            for x, y in loader:
                ...  # the loop is unchanged: zero_grad, backward, (clipping), optimizer.step()

    Parameters
    ----------
    optimizer:
        Any ``torch.optim.Optimizer``; its param groups define the parameters.
    recorder:
        A :class:`~stabilitybench.generate.recorder.Recorder` that receives one row per update (``step``,
        ``samples_seen``, ``wall_time_s`` are filled in by the recorder), or None with ``on_row``.
    perturbation:
        Optional controlled perturbation (``stabilitybench.perturbation(...)``); default none (or the
        recorder's). Its ``lr_factor`` multiplies every group's LR for the duration of each update it covers.
    on_row:
        ``on_row(step, stats)`` instead of (or as well as) the recorder; adapters use it.
    coherence_window:
        K, the number of recent applied gradients whose mean pairwise cosine is ``grad_coherence``.
    sketch_dim:
        Above 2**21 parameters, coherence is computed in a random-sign sketch of this many dimensions
        (<= 4096), so its memory stays K x ``sketch_dim``.
    nonfinite:
        What a non-finite gradient (caught before the step on CPU) or parameter does. In every case
        the update's row is recorded and the recorder gets one ``nonfinite`` event
        (:meth:`~stabilitybench.generate.recorder.Recorder.mark_nonfinite`), so the run ends as
        ``stop_reason = "nonfinite"``, status ok. ``"stop"`` (default): then detach the probe, close the
        recorder (its files and manifest row are written, with a corpus) and raise
        :class:`~stabilitybench.generate.errors.TrainingDiverged`. ``"record"``: keep training and recording rows.
        ``"raise"``: raise :class:`~stabilitybench.generate.errors.NonFiniteTraining` without closing (the project's
        generators, which own the recorder; a ``with Recorder`` block also records it as data).

    A second Probe on an optimizer that has a live one raises
    :class:`~stabilitybench.generate.errors.ProbeAttachedError` (a probe whose Recorder is closed, i.e. whose
    run is over, is detached instead). :meth:`detach` (or leaving ``with Probe(...) as probe:``) undoes it.
    The project's own generators and adapters wire probes in further (several optimizers sharing one step
    clock, a gradient handed over by the loop, ...) through :class:`ProbeInternals`; users never need it.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        recorder: Any = None,
        *,
        perturbation: Perturbation | None = None,
        on_row: RowCallback | None = None,
        coherence_window: int = 8,
        sketch_dim: int = 4096,
        nonfinite: str = "stop",
    ) -> None:
        self._setup(optimizer, recorder, perturbation, on_row, coherence_window, sketch_dim, nonfinite,
                    _PUBLIC_INTERNALS)

    def _setup(self, optimizer: torch.optim.Optimizer, recorder: Any, perturbation: Perturbation | None,
               on_row: RowCallback | None, coherence_window: int, sketch_dim: int, nonfinite: str,
               internals: ProbeInternals) -> None:
        """The constructor proper: the public arguments plus how the probe is wired in (:class:`ProbeInternals`)."""
        main, leads, clock = internals.main, internals.leads, internals.clock
        update_context, skip_stepped_grads = internals.update_context, internals.skip_stepped_grads
        record, manual_grads, coherence = internals.record, internals.manual_grads, internals.coherence
        exact_max_params = internals.exact_max_params
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {', '.join(map(repr, NONFINITE_POLICIES))}, got {nonfinite!r}")
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        if not self.params:
            raise ValueError("the optimizer has no parameters that require gradients")
        live = Probe.attached(optimizer)
        if live is not None and getattr(live.recorder, "closed", False):
            live.detach()  # its run is over (its Recorder was closed, e.g. by an exception): nothing to compete with
        elif live is not None:
            raise ProbeAttachedError(
                f"this {type(optimizer).__name__} already has a live Probe; detach it first "
                "(`Probe.attached(optimizer).detach()`, or attach with `with Probe(...)`)")
        self.recorder = recorder
        if recorder is not None:
            if perturbation is None:
                perturbation = getattr(recorder, "perturbation", None)  # Recorder(perturbation=...): apply it
            elif hasattr(recorder, "set_perturbation"):
                recorder.set_perturbation(perturbation)
            if hasattr(recorder, "seal"):
                recorder.seal()  # the run's identity is complete: a run_id the corpus holds is refused now
        self.perturbation = perturbation or NoPerturbation(1.0, 0, 0)
        self.nonfinite = nonfinite
        #: The first update that went non-finite (None while finite).
        self.nonfinite_step: int | None = None
        self.on_row = on_row
        self.clock = clock if clock is not None else TrainingClock()
        self.main, self.leads = main, leads
        self.update_context = update_context
        self.skip_stepped_grads = skip_stepped_grads
        self.raise_nonfinite = nonfinite != "record"
        self.record = record and (recorder is not None or on_row is not None)
        self.device = self.params[0].device
        #: Read the gradient norm on the host before the step (on CPU: free, there is no device to wait
        #: for; it lets a non-finite gradient stop the run before it is applied). Elsewhere the one
        #: batched read after the step is the only one.
        self.read_norm_early = self.device.type == "cpu"
        self.numel = sum(p.numel() for p in self.params)
        self.sketch = (SignSketch(self.numel, sketch_dim, seed=0, device=self.device)
                       if self.numel > exact_max_params else None)
        self._own_coherence = coherence is None
        self.manual_grads = manual_grads
        self._stash: dict[str, torch.Tensor] = {}
        #: Parameters without a gradient at the latest update (skipped in every gradient statistic).
        self.missing_grads = 0
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self._flat = contiguous_view(self.params)
        one_kind = len({(p.dtype, p.device) for p in self.params}) == 1
        #: CPU, one dtype, not one block: a (2, P) buffer [before -> before - after, after] filled through
        #: per-parameter views of its rows (module doc); both norms are then one reduction. With the
        #: probe's own exact coherence a third row holds the coherence's running sum S, so ||S|| comes out
        #: of the same reduction (the "fast" path: four torch calls and one host read after the step).
        self._pair: torch.Tensor | None = None
        self._pair_views: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._fast = False
        if self._flat is None and self.device.type == "cpu" and self.numel <= _FLAT_SNAPSHOT_MAX and one_kind:
            self._fast = coherence is None and self.sketch is None
            self._pair = torch.zeros(3 if self._fast else 2, self.numel, dtype=self.params[0].dtype)
            self._pair_views = (_views(self._pair[0], self.params), _views(self._pair[1], self.params))
        self._pair_rows = () if self._pair is None else self._pair.unbind(0)
        #: NumPy views of those rows (float32/float64): the elementwise steps cost a third of a torch call there.
        self._pair_np = [r.numpy() for r in self._pair_rows] if self._pair is not None and \
            self._pair.dtype in _NUMPY_DTYPES else []
        if self._fast:
            self.coherence: Any = _RowCoherence(coherence_window, self._pair_rows[2])
        else:
            self.coherence = coherence if coherence is not None else RollingCoherence(coherence_window)
        self._host_norm: float | None = None
        #: One dtype and device: the captured gradient is copied into this flat buffer through per-parameter
        #: views (one foreach copy instead of a reshape per parameter and a cat). Reused every update.
        self._gbuf: torch.Tensor | None = None
        self._gviews: list[torch.Tensor] = []
        if one_kind and not manual_grads:
            self._gbuf = torch.empty(self.numel, dtype=self.params[0].dtype, device=self.device)
            self._gviews = _views(self._gbuf, self.params)
        self._before: Any = None
        self._saved_lrs: list[Any] | None = None
        self._was_active = False
        self._pending: dict[str, Any] = {}
        self._grad: torch.Tensor | None = None
        self._norm: torch.Tensor | None = None
        self._stepped: torch.Tensor | None = None
        self._seen: list[int] = []
        self._snap: dict[int, torch.Tensor] = {}
        self._last: torch.nn.Parameter | None = None
        #: Extra LR multiplier, applied like a perturbation's (for one ``step()`` at a time; the user's LRs
        #: are restored after it): an :class:`~stabilitybench.generate.intervention.Intervention`'s LR back-off sets it.
        self.lr_scale = 1.0
        #: A gate that may refuse an update (:class:`~stabilitybench.generate.skip_step.SkipStep`, set by its
        #: ``attach``): ``before_step(step, grad_norm, optimizer, params) -> skip`` in the pre-step hook, and on a
        #: skip ``after_step(optimizer, params)`` first thing in the post-step hook, before the update is measured.
        self.gate: Any = None
        self._gated = False
        #: Adam/AdamW: ``adam_update_ratio_rms`` of each recorded update (:class:`AdamUpdateRatio`); None otherwise.
        self.update_ratio = AdamUpdateRatio.for_optimizer(optimizer, self.params) if self.record and main else None
        self._handles = [optimizer.register_step_pre_hook(self._pre_step),
                         optimizer.register_step_post_hook(self._post_step)]
        self._grad_handles: list[Any] = []
        if self.record and not manual_grads:
            self._learn_hooks()
        _LIVE[optimizer] = weakref.ref(self)

    # -- public ---------------------------------------------------------------------------
    @staticmethod
    def attached(optimizer: torch.optim.Optimizer) -> Probe | None:
        """The live (not detached) Probe on ``optimizer``, or None."""
        ref = _LIVE.get(optimizer)
        probe = None if ref is None else ref()
        return probe if probe is not None and probe._handles else None

    @property
    def step(self) -> int:
        """The index of the update this probe's optimizer makes next (or made last, for a follower)."""
        return self._current_step()

    def detach(self) -> None:
        """Detach every hook and undo what the probe changed; the optimizer and parameters are left as they were.

        If an update was cut off between the probe's pre- and post-step hooks (an exception inside
        ``optimizer.step()``), the learning rates it had multiplied for that update are restored.
        Idempotent; afterwards another Probe may attach to the optimizer.
        """
        self._restore_lrs()
        for handle in self._handles + self._grad_handles:
            handle.remove()
        self._handles, self._grad_handles = [], []
        ref = _LIVE.get(self.optimizer)
        if ref is not None and ref() is self:
            del _LIVE[self.optimizer]

    def remove(self) -> None:
        """Deprecated alias of :meth:`detach` (removed in 0.2)."""
        warn_deprecated("Probe.remove()", "Probe.detach()")
        self.detach()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.detach()

    def set_gradient(self, grad: torch.Tensor, norm: torch.Tensor | float) -> None:
        """Hand over this update's flat gradient (shape ``(P,)``) and its pre-clipping norm directly.

        For loops that already hold a flat gradient (the GPT-2 generator, ``manual_grads=True``).
        """
        self._grad = grad
        self._norm = torch.as_tensor(norm, device=self.device)

    def stash(self, **tensors: torch.Tensor) -> None:
        """Device scalars (e.g. the loss) to read in this update's one batched ``.tolist()``, as columns."""
        self._stash.update(tensors)

    # -- gradient capture -------------------------------------------------------------------
    def _learn_hooks(self) -> None:
        for handle in self._grad_handles:
            handle.remove()
        self._seen, self._snap, self._last = [], {}, None
        self._grad_handles = [p.register_post_accumulate_grad_hook(self._learn) for p in self.params]

    def _learn(self, param: torch.Tensor) -> None:
        i = self._index[id(param)]
        self._seen.append(i)
        self._snap[i] = param.grad.detach().clone()  # first update only: every gradient as accumulated

    def _capture(self, param: torch.Tensor) -> None:
        if self.skip_stepped_grads and param.grad is self._stepped:
            return  # accumulating into the gradient this optimizer already applied: not a new gradient
        self._grad = self._flat_grad()
        self._norm = torch.linalg.vector_norm(self._grad)

    def _flat_grad(self) -> torch.Tensor:
        grads = [p.grad for p in self.params]
        missing = sum(g is None for g in grads)
        if missing != self.missing_grads:
            self._set_missing(missing)
        # always a copy: clipping rescales .grad in place after this hook and before the step
        if not missing and self._gbuf is not None:
            if grads[0].requires_grad:  # a double backward (create_graph=True): copy without a graph
                with torch.no_grad():
                    torch._foreach_copy_(self._gviews, grads)
            else:
                torch._foreach_copy_(self._gviews, grads)
            return self._gbuf
        if missing:
            grads = [g for g in grads if g is not None]
        return torch.cat([g.reshape(-1) for g in grads]) if grads else torch.zeros(0, device=self.device)

    def _finish_learning(self) -> torch.Tensor | None:
        """At the first step after a backward: the pre-clip gradient from the snapshots; keep one hook."""
        if not self._seen:
            return None
        grads = [self._snap[i].reshape(-1) for i in sorted(self._snap)]
        self._set_missing(len(self.params) - len(self._snap))
        self._last = self.params[self._seen[-1]]
        for handle in self._grad_handles:
            handle.remove()
        self._grad_handles = [self._last.register_post_accumulate_grad_hook(self._capture)]
        self._seen, self._snap = [], {}
        return torch.cat(grads)

    def _set_missing(self, count: int) -> None:
        if count != self.missing_grads and self.recorder is not None:
            self.recorder.event(self._current_step(), "grad_missing", detail="parameters without a gradient",
                                value=float(count))
        self.missing_grads = count

    # -- optimizer hooks ----------------------------------------------------------------------
    def _current_step(self) -> int:
        if self.main or self.leads:
            return self.clock.step
        return max(self.clock.step - 1, 0)

    def _restore_lrs(self) -> None:
        if self._saved_lrs is not None:
            for group, lr in zip(self.optimizer.param_groups, self._saved_lrs, strict=True):
                group["lr"] = lr
            self._saved_lrs = None

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        step = self._current_step()
        active = self.perturbation.active(step)
        factor = self.perturbation.lr_factor(step) * self.lr_scale
        if self._saved_lrs is not None:
            self._restore_lrs()  # an earlier update cut off inside step(): never compound its factor
        if factor != 1.0:  # multiply the LR each group has now; restored after the step
            self._saved_lrs = [group["lr"] for group in optimizer.param_groups]
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * factor
        if self.main:
            self._perturbation_edges(step, active)
        if not self.record:
            return
        lr = optimizer.param_groups[0]["lr"]
        grad, norm = self._grad, self._norm
        self._grad = self._norm = None
        if grad is None and self._grad_handles and self._last is None:
            grad = self._finish_learning()
            norm = None if grad is None else torch.linalg.vector_norm(grad)
        if grad is None:  # no capture since the last step (the last parameter got no gradient): relearn
            grad = self._flat_grad()
            norm = torch.linalg.vector_norm(grad)
            if not self.manual_grads:
                self._learn_hooks()
        self._pending = {"lr": float(lr), "perturbation_active": active, "_norm": norm}
        host_norm = norm.item() if self.read_norm_early else None
        if host_norm is not None and self.raise_nonfinite and not _finite(host_norm):
            self._restore_lrs()  # the update is not applied: nothing of it may stay behind
            del self._pending["_norm"]  # (it leaked into the row, which then failed the schema)
            self._pending.update(grad_norm=host_norm, grad_coherence=None, update_norm=None, param_norm=None)
            stash, self._stash = self._stash, {}
            self._pending.update({k: float(v) for k, v in stash.items()})
            self._emit(step)
            self._diverged(step, "gradient")
        self._host_norm = host_norm
        if self.gate is not None:  # (on an accelerator this is the update's one extra host read)
            self._gated = bool(self.gate.before_step(step, host_norm if host_norm is not None else float(norm),
                                                     optimizer, self.params))
        if self._own_coherence:
            if self._fast and grad.numel() != self.numel:  # parameters without a gradient: the generic path
                self._fast = False
                self.coherence = RollingCoherence(self.coherence.window)
            vec = grad if self.sketch is None else self.sketch(grad)
            if self.sketch is not None:
                self.coherence.push(vec, torch.linalg.vector_norm(vec))
            else:
                self.coherence.push(vec, norm if host_norm is None else max(host_norm, _TINY))
        self._snapshot_params()

    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._gated:  # the gate refused this update: undo it before anything reads the parameters
            self._gated = False
            self.gate.after_step(optimizer, self.params)
        if self._saved_lrs is not None:
            self._restore_lrs()
        if not self.record:
            if self.main:
                self.clock.step += 1
            return
        if self.skip_stepped_grads and self._last is not None:
            self._stepped = self._last.grad
        pending = self._pending
        norm = pending.pop("_norm")
        if self.update_ratio is not None:
            ratio = self.update_ratio.sum_sq_ratio()
            if isinstance(ratio, torch.Tensor) and not self.read_norm_early:  # rides on the one batched read
                self._stash[_RATIO_KEY] = ratio
            else:
                pending["adam_update_ratio_rms"] = None if ratio is None else self.update_ratio.rms_of(float(ratio))
        pieces = self._param_norm_pieces()
        stash = self._stash
        if self._fast and self._host_norm is not None and not stash:
            # the one host read of this update: (||before - after||, ||after||, ||S||), one reduction
            update_norm, param_norm, s_norm = pieces.tolist()
            grad_norm, sum_sq = self._host_norm, s_norm * s_norm
        else:
            grad_norm, sum_sq, update_norm, param_norm = self._read_generic(norm, pieces, stash, pending)
        grad_ok = _finite(grad_norm)
        if grad_ok:
            pending["grad_norm"] = grad_norm
            pending["grad_coherence"] = self.coherence.value_from(sum_sq)
            pending["update_norm"] = update_norm
            pending["param_norm"] = param_norm
        else:
            self.coherence.drop_last()
            pending.update(grad_norm=grad_norm, grad_coherence=None, update_norm=None, param_norm=None)
        step = self._current_step()
        self._emit(step)
        if not grad_ok:
            self._diverged(step, "gradient")
        elif not (_finite(param_norm) and _finite(update_norm)):
            self._diverged(step, "parameters")

    def _read_generic(self, norm: torch.Tensor, pieces: torch.Tensor, stash: dict[str, torch.Tensor],
                      pending: dict[str, Any]) -> tuple[float, float, float, float]:
        """The one host read of an update (any device): grad_norm, ||S||^2, the stash, the norm pieces."""
        self._stash = {}
        if self._pair is not None:
            pieces = pieces[:2]
        sum_sq = self.coherence.sum_sq()
        if sum_sq is None:
            sum_sq = torch.zeros((), dtype=pieces.dtype, device=self.device)
        head = (norm, sum_sq, *stash.values())
        dtype = pieces.dtype if pieces.dtype in (torch.float32, torch.float64) else torch.float32
        if any(t.dtype != dtype for t in head) or pieces.dtype != dtype:
            head = tuple(t.to(dtype) for t in head)
            pieces = pieces.to(dtype)
        values = torch.cat((torch.stack(head), pieces)).tolist()
        if stash:
            pending.update(zip(stash, values[2 : 2 + len(stash)], strict=True))
            if _RATIO_KEY in pending:
                pending["adam_update_ratio_rms"] = self.update_ratio.rms_of(pending.pop(_RATIO_KEY))
        pieces_host = values[2 + len(stash) :]
        if len(pieces_host) == 2:
            update_norm, param_norm = pieces_host
        else:
            half = len(pieces_host) // 2
            update_norm, param_norm = math.hypot(*pieces_host[:half]), math.hypot(*pieces_host[half:])
        return values[0], values[1], update_norm, param_norm

    def _diverged(self, step: int, what: str) -> None:
        """Update ``step`` was non-finite (its row is recorded): apply the ``nonfinite`` policy."""
        if self.nonfinite_step is None:
            self.nonfinite_step = step
        rec = self.recorder
        if rec is not None and hasattr(rec, "mark_nonfinite"):
            rec.mark_nonfinite(step, what)
        if self.nonfinite == "record":
            return
        if self.nonfinite == "raise" or rec is None or not hasattr(rec, "close"):
            raise NonFiniteTraining(step, what) if self.nonfinite == "raise" else TrainingDiverged(step, what)
        self.detach()  # the run is over: the optimizer is left as the user made it
        rec.close("nonfinite")  # the row, the event and (with a corpus) the files are safe before the raise
        corpus = getattr(rec, "corpus", None)
        raise TrainingDiverged(step, what, getattr(rec, "run_id", None) if corpus is not None else None,
                               None if corpus is None else str(corpus))

    def _perturbation_edges(self, step: int, active: bool) -> None:
        if active != self._was_active and self.recorder is not None:
            kind = "perturbation_on" if active else "perturbation_off"
            self.recorder.event(step, kind, detail=self.perturbation.kind, value=self.perturbation.magnitude)
        self._was_active = active
        if self.update_context is not None:
            apply_perturbation(self.perturbation, step, self.update_context, self.recorder)

    def _snapshot_params(self) -> None:
        if self._flat is not None:
            if self._before is None:
                self._before = torch.empty_like(self._flat)
            self._before.copy_(self._flat)
            return
        if self._pair is not None:
            with _NoGrad():
                torch._foreach_copy_(self._pair_views[0], self.params)
            return
        if self._before is None:
            self._before = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in self.params]
        with torch.no_grad():
            torch._foreach_copy_(self._before, self.params)

    def _param_norm_pieces(self) -> torch.Tensor:
        """Norms whose first half combine (root of the sum of squares) to ||after - before|| and second
        half to ||after||, shape ``(2m,)`` on the device; one foreach call, no host read. Consumes the snapshot."""
        with _NoGrad():
            if self._flat is not None:
                return torch.stack((torch.linalg.vector_norm(self._before.sub_(self._flat)),
                                    torch.linalg.vector_norm(self._flat)))
            if self._pair is not None:
                torch._foreach_copy_(self._pair_views[1], self.params)
                if self._pair_np:
                    _np_subtract(self._pair_np[0], self._pair_np[1], out=self._pair_np[0])
                else:
                    self._pair_rows[0].sub_(self._pair_rows[1])
                return torch.linalg.vector_norm(self._pair, dim=1)  # (||before - after||, ||after||[, ||S||])
            torch._foreach_sub_(self._before, self.params)
            return torch.stack(torch._foreach_norm(self._before + self.params))

    def _emit(self, step: int) -> None:
        stats = self._pending
        self._pending = {}
        if self.on_row is not None:
            self.on_row(step, stats)
        elif self.recorder is not None and self.main:
            self.recorder.append(step=step, **stats)
        if self.main:
            self.clock.step += 1


class _WiredProbe(Probe):
    """A :class:`Probe` wired in by the project's own generators and adapters (:class:`ProbeInternals`).

    ``_WiredProbe(optimizer, recorder, internals, **public)``: the public keyword arguments of :class:`Probe`
    plus ``internals``; behaves exactly as a Probe otherwise.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, recorder: Any = None,
                 internals: ProbeInternals = _PUBLIC_INTERNALS, *, perturbation: Perturbation | None = None,
                 on_row: RowCallback | None = None, coherence_window: int = 8, sketch_dim: int = 4096,
                 nonfinite: str = "stop") -> None:
        self._setup(optimizer, recorder, perturbation, on_row, coherence_window, sketch_dim, nonfinite, internals)


class AdamUpdateRatio:
    """``adam_update_ratio_rms``: the RMS over all parameter elements of g_t^2 / max(v_hat_t, eps^2), per update.

    The update-ratio signal of Wortsman et al. 2023 (arXiv 2304.13013; StableAdamW, their Algorithm 1:
    ``RMS_t = sqrt(E[g_t^2 / max(u_t, eps^2)])``). Here g_t is the gradient the optimizer applied at update t (after
    any clipping) and v_hat_t = v_t / (1 - beta2^t) Adam's bias-corrected second-moment estimate *after* it took in
    g_t (``exp_avg_sq`` once the step ran); eps and beta2 are each param group's. The paper's u_t is this v_hat_t
    (its beta-hat form folds the bias correction into the EMA). At t = 1 every ratio is exactly 1; above 1, v
    under-estimates the current g^2, the precursor of loss spikes the paper reports 1-8 iterations ahead. The mean
    runs over every element of every parameter (a zero gradient counts as 0); the paper shows it per layer, this is
    the whole model's. AMSGrad's running max is not used.

    One pass after the step. On CPU with one float32/float64 dtype (``flat``) the applied gradients and
    ``exp_avg_sq`` are copied into two reused flat buffers (one ``_foreach_copy_`` each), then per param group a
    ``clamp_min_`` and NumPy's ``divide``, ``multiply`` and pairwise ``add.reduce`` on views of the buffers give the
    sum (no BLAS dot: its thread pool would compete with torch's); elsewhere
    ``torch._foreach`` ops give a 0-d tensor on the device. :meth:`for_optimizer` is None for an optimizer that is
    not Adam/AdamW (the column is null).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], *,
                 flat: bool | None = None) -> None:
        self.optimizer = optimizer
        self.params = params
        self.numel = sum(p.numel() for p in params)
        index = {id(p): i for i, p in enumerate(params)}
        #: per param group: (slice of the flat layout, indices into ``params``, the group)
        self._groups: list[tuple[slice, list[int], dict[str, Any]]] = []
        offset = 0
        for group in optimizer.param_groups:
            members = [index[id(p)] for p in group["params"] if id(p) in index]
            n = sum(params[i].numel() for i in members)
            if members:
                self._groups.append((slice(offset, offset + n), members, group))
            offset += n
        one_kind = len({(p.dtype, p.device) for p in params}) == 1
        can_flat = (one_kind and params[0].device.type == "cpu" and params[0].dtype in _NUMPY_DTYPES
                    and self.numel <= _FLAT_SNAPSHOT_MAX)
        self.flat = can_flat if flat is None else (flat and can_flat)
        self._one_group = len(self._groups) == 1
        self._state_of: Any = None  # the optimizer.state object the cached lists below belong to
        self._vs: list[torch.Tensor] | None = None
        self._steps: list[tuple[Any, bool]] | None = None
        if self.flat:
            g, self._vt = (torch.empty(self.numel, dtype=params[0].dtype) for _ in range(2))
            self._gviews, self._vviews = _views(g, params), _views(self._vt, params)
            self._gnp, self._vnp = g.numpy(), self._vt.numpy()

    @classmethod
    def for_optimizer(cls, optimizer: torch.optim.Optimizer,
                      params: list[torch.Tensor] | None = None) -> AdamUpdateRatio | None:
        """The ratio of an Adam/AdamW optimizer over ``params`` (default: its parameters that require a gradient),
        or None for any other optimizer."""
        if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            return None
        if params is None:
            params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        return cls(optimizer, params) if params else None

    def _state(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """The applied gradient and ``exp_avg_sq`` of every parameter; None unless every one has both.

        The ``exp_avg_sq`` list (and each group's ``step``) is looked up once per ``optimizer.state`` object:
        ``load_state_dict`` (a rollback) replaces that object, Adam and the perturbations update the tensors in place.
        """
        grads = [p.grad for p in self.params]
        state = self.optimizer.state
        if state is not self._state_of:
            self._vs, self._steps, self._state_of = None, None, None
            entries = [state.get(p) for p in self.params]
            if any(e is None or "exp_avg_sq" not in e for e in entries):
                return None
            self._vs = [e["exp_avg_sq"] for e in entries]  # type: ignore[index]
            steps = [entries[members[0]]["step"] for _span, members, _group in self._groups]  # type: ignore[index]
            self._steps = [(t, isinstance(t, torch.Tensor) and t.device.type != "cpu") for t in steps]
            self._state_of = state
        if any(g is None for g in grads):
            return None
        return grads, self._vs

    @staticmethod
    def _floor_and_scale(group: dict[str, Any], step: tuple[Any, bool]) -> tuple[Any, Any]:
        """(bc2 eps^2, bc2) of a group, bc2 = 1 - beta2^t: g^2 / max(v / bc2, eps^2) = bc2 g^2 / max(v, bc2 eps^2).

        ``step``: the group's step count and whether it lives on an accelerator (capturable: no host read)."""
        t, on_device = step
        beta2, eps = group["betas"][1], group["eps"]
        bc2: Any = 1.0 - torch.pow(beta2, t) if on_device else 1.0 - beta2 ** float(t)
        return bc2 * eps * eps, bc2

    def sum_sq_ratio(self) -> float | torch.Tensor | None:
        """Sum over all elements of g^2 / max(v_hat, eps^2): a host float (``flat``) or a 0-d tensor on the device;
        None before the optimizer has state for every parameter, or when a parameter has no gradient."""
        got = self._state()
        if got is None:
            return None
        grads, vs = got
        steps = self._steps
        if self.flat:
            with _NoGrad():
                torch._foreach_copy_(self._gviews, grads)
                torch._foreach_copy_(self._vviews, vs)
            if self._one_group:  # the whole buffers: no slicing
                floor, bc2 = self._floor_and_scale(self._groups[0][2], steps[0])
                g, v = self._gnp, self._vnp
                self._vt.clamp_min_(floor)  # (torch's is twice as fast as NumPy's maximum here)
                _np_divide(g, v, out=v)
                _np_multiply(v, g, out=v)  # g^2 / max(v, floor); then NumPy's pairwise sum (not BLAS: no threads)
                return bc2 * float(_np_sum(v))
            total = 0.0
            for (span, _members, group), step in zip(self._groups, steps, strict=True):
                floor, bc2 = self._floor_and_scale(group, step)
                g, v = self._gnp[span], self._vnp[span]
                self._vt[span].clamp_min_(floor)
                _np_divide(g, v, out=v)
                _np_multiply(v, g, out=v)
                total += bc2 * float(_np_sum(v))
            return total
        out: torch.Tensor | None = None
        with _NoGrad():
            for (_span, members, group), step in zip(self._groups, steps, strict=True):
                floor, bc2 = self._floor_and_scale(group, step)
                g = [grads[i] for i in members]
                v = [vs[i] for i in members]
                # one P-sized temporary (a 124M-parameter model on a GPU): 1 / max(v, floor), then x g, x g in place
                r = (torch._foreach_clamp_min(v, floor) if not isinstance(floor, torch.Tensor)
                     else [x.clamp_min(floor) for x in v])
                torch._foreach_reciprocal_(r)
                torch._foreach_mul_(r, g)
                torch._foreach_mul_(r, g)
                part = torch.stack([n.float() for n in torch._foreach_norm(r, 1)]).sum() * bc2  # L1 of >= 0: the sum
                out = part if out is None else out + part
        return out

    def rms(self) -> float | None:
        """The latest update's value (a host read): sqrt(sum / number of elements); None as :meth:`sum_sq_ratio`."""
        total = self.sum_sq_ratio()
        return None if total is None else self.rms_of(float(total))

    def rms_of(self, total: float) -> float:
        """sqrt(``total`` / number of elements), ``total`` a value of :meth:`sum_sq_ratio` read to the host."""
        return math.sqrt(total / self.numel) if total >= 0 else math.nan


class _NoGrad:
    """``torch.no_grad()`` for the probe's hooks, without its per-use Python overhead (measured at several
    microseconds per update on a small CPU model, a tenth of the probe's cost there)."""

    __slots__ = ("prev",)

    def __enter__(self) -> None:
        self.prev = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)

    def __exit__(self, *exc: object) -> None:
        torch._C._set_grad_enabled(self.prev)


class _RowCoherence(RollingCoherence):
    """:class:`~stabilitybench.generate.coherence.RollingCoherence` whose running sum S is a row of the probe's buffer.

    The ring buffer is allocated up front and :meth:`push` takes the host norm (CPU), so an update
    costs three in-place elementwise calls; ``||S||`` then comes out of the probe's one reduction. For
    float32/float64 the three are NumPy calls on views of the same memory, made once: the same IEEE
    operations on the same values (bit-identical to the torch calls, ``tests/test_probe.py``) at a
    third of the dispatch cost of a torch call on a small vector.
    """

    def __init__(self, window: int, sum_row: torch.Tensor) -> None:
        super().__init__(window)
        self._sum = sum_row
        self._buf = torch.zeros(window, sum_row.numel(), dtype=sum_row.dtype, device=sum_row.device)
        self._rows = self._buf.unbind(0)
        self._np = sum_row.dtype in _NUMPY_DTYPES
        self._sum_np = sum_row.numpy() if self._np else None
        self._rows_np = [row.numpy() for row in self._rows] if self._np else []
        self._grad: torch.Tensor | None = None  # the probe's reused gradient buffer, and its NumPy view
        self._grad_np: Any = None

    def push(self, grad: torch.Tensor, norm: torch.Tensor | float) -> None:
        if isinstance(norm, torch.Tensor) or grad.dim() != 1 or grad.requires_grad:
            super().push(grad, norm)
            return
        i = self._count % self.window
        if self._np:
            if grad is not self._grad:
                self._grad, self._grad_np = grad, grad.numpy()
            slot = self._rows_np[i]
            _np_subtract(self._sum_np, slot, out=self._sum_np)
            _np_divide(self._grad_np, norm, out=slot)
            _np_add(self._sum_np, slot, out=self._sum_np)
        else:
            slot_t = self._rows[i]
            self._sum.sub_(slot_t)
            torch.div(grad, norm, out=slot_t)
            self._sum.add_(slot_t)
        self._count += 1
        if self._count % self.RESUM_EVERY == 0:
            torch.sum(self._buf, dim=0, out=self._sum)


def _views(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views of the 1-d ``flat``, back to back, shaped like each tensor of ``like``."""
    out, offset = [], 0
    for t in like:
        out.append(flat[offset : offset + t.numel()].view(t.shape))
        offset += t.numel()
    return out


def contiguous_view(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """One flat view over ``tensors`` if they are laid out back to back in one storage, else None.

    Lets the probe read a whole parameter (or gradient) vector without a copy when the user's
    layout already allows it; it never changes that layout.
    """
    if not tensors:
        return None
    first = tensors[0]
    storage = first.untyped_storage()
    offset = first.storage_offset()
    expected = offset
    for t in tensors:
        if (t.untyped_storage().data_ptr() != storage.data_ptr() or t.dtype != first.dtype
                or t.storage_offset() != expected or not t.is_contiguous()):
            return None
        expected += t.numel()
    flat = torch.empty(0, dtype=first.dtype, device=first.device)
    flat.set_(storage, offset, (expected - offset,))
    return flat


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))
