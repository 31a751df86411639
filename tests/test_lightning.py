"""The Lightning adapter (``LightningCallback``) keeps the Hugging Face adapter's guarantees.

On a tiny LightningModule (CPU, a few dozen updates): invisible to training (parameters, every loss
and every applied LR bit-identical with and without it, with momentum, two param groups, a per-step
scheduler, gradient accumulation and clipping); an LR spike multiplies each group's LR exactly for
its window across a scheduler step and the user's LRs come back; ``grad_norm`` is the norm before
Lightning's ``gradient_clip_val`` clipping; the corpus it writes passes ``verify --deep``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from stabilitybench.data_schema import read_manifest, read_table  # noqa: E402
from stabilitybench.data_schema.verify import verify_corpus  # noqa: E402

BASE_LR, BATCH = 0.05, 8


class Tiny(pl.LightningModule):
    """A 4-16-1 tanh MLP on a fixed regression set; records what a hand check needs."""

    def __init__(self, *, momentum: float = 0.9, groups: bool = True, step_lr: int = 5) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.momentum, self.groups, self.step_lr = momentum, groups, step_lr
        self.losses: list[torch.Tensor] = []  # every training_step loss, in order
        self.pre_clip_norms: list[float] = []  # gradient norm in on_before_optimizer_step (Lightning clips after it)
        self.applied_lrs: list[list[float]] = []  # each group's LR as the optimizer applies it

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.losses.append(loss.detach().clone())
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        if self.groups:
            params: Any = [{"params": self.net[0].parameters()},
                           {"params": self.net[2].parameters(), "lr": BASE_LR / 4}]
        else:
            params = self.parameters()
        opt = torch.optim.SGD(params, lr=BASE_LR, momentum=self.momentum)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.step_lr, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_start(self) -> None:
        # runs after the callbacks' on_train_start, so this pre-hook comes after the probe's: it sees the LR
        # each group has when the update is applied
        self.trainer.optimizers[0].register_step_pre_hook(
            lambda opt, args, kwargs: self.applied_lrs.append([g["lr"] for g in opt.param_groups]))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad.reshape(-1) for p in self.parameters() if p.grad is not None]
        self.pre_clip_norms.append(float(torch.linalg.vector_norm(torch.cat(grads))))


def loader(n: int = 96) -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=gen)
    y = torch.sin(x.sum(1, keepdim=True)) + 0.1 * torch.randn(n, 1, generator=gen)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def fit(callbacks: list[Any], *, max_steps: int, module_kw: dict[str, Any] | None = None,
        **trainer_kw: Any) -> tuple[Tiny, Any]:
    torch.manual_seed(0)
    model = Tiny(**(module_kw or {}))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, callbacks=callbacks,
                         enable_progress_bar=False, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, num_sanity_val_steps=0, **trainer_kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice about num_workers and the like
        trainer.fit(model, loader(), loader(32) if trainer_kw.get("limit_val_batches") else None)
    return model, trainer


@pytest.fixture(autouse=True)
def quiet_lightning() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(1)


def test_callback_is_invisible_and_records_the_pre_clip_gradient() -> None:
    from stabilitybench import LightningCallback, Recorder

    kw = {"max_steps": 20, "accumulate_grad_batches": 2, "gradient_clip_val": 0.05}
    plain, _ = fit([], **kw)
    rec = Recorder(None, "tiny", algo="mlp", env="toy")
    ours, trainer = fit([LightningCallback(rec)], **kw)

    # invisible: every loss, every applied LR and the final parameters bit-identical
    assert len(ours.losses) == len(plain.losses) == 40
    assert all(torch.equal(a, b) for a, b in zip(ours.losses, plain.losses, strict=True))
    assert ours.applied_lrs == plain.applied_lrs and len(ours.applied_lrs) == 20
    for a, b in zip(ours.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    # detached at the end: only the module's own pre-hook is left on the optimizer
    assert len(trainer.optimizers[0]._optimizer_step_pre_hooks) == 1
    assert len(trainer.optimizers[0]._optimizer_step_post_hooks) == 0

    rows = rec.steps_table().to_pylist()
    assert [r["step"] for r in rows] == list(range(20))
    assert [r["samples_seen"] for r in rows] == [(s + 1) * 2 * BATCH for s in range(20)]
    # grad_norm: the norm before Lightning clipped it to 0.05, i.e. what on_before_optimizer_step saw
    norms = [r["grad_norm"] for r in rows]
    assert min(norms) > 0.05 * 2  # every update was clipped, and a post-clip norm could not pass
    assert norms == pytest.approx(ours.pre_clip_norms, rel=1e-6)
    # loss: the mean of the update's two micro-batch losses (Lightning scales each by 1/2)
    want = [float(ours.losses[2 * s] / 2 + ours.losses[2 * s + 1] / 2) for s in range(20)]
    assert [r["loss"] for r in rows] == pytest.approx(want, rel=1e-6)
    assert [r["lr"] for r in rows] == [lrs[0] for lrs in ours.applied_lrs]
    assert all(r["grad_coherence"] is not None for r in rows[7:])
    assert all(r["update_norm"] > 0 and r["param_norm"] > 0 for r in rows)


def test_update_norm_shows_the_clipped_step_while_grad_norm_is_before_clipping() -> None:
    """Plain SGD, one group, no schedule change: the step is lr * clipped gradient, so update_norm must be
    lr * clip (what Lightning applied), while grad_norm is the larger norm before the clip."""
    from stabilitybench import LightningCallback, Recorder

    clip = 0.02
    rec = Recorder(None, "tiny", algo="mlp", env="toy")
    model, _ = fit([LightningCallback(rec)], max_steps=12, gradient_clip_val=clip,
                   module_kw={"momentum": 0.0, "groups": False, "step_lr": 1000})
    rows = rec.steps_table().to_pylist()
    assert len(rows) == 12
    for row, norm in zip(rows, model.pre_clip_norms, strict=True):
        assert row["grad_norm"] == pytest.approx(norm, rel=1e-6) and norm > 5 * clip
        # clip_grad_norm_ scales by clip / (norm + 1e-6)
        assert row["update_norm"] == pytest.approx(BASE_LR * clip * norm / (norm + 1e-6), rel=1e-4)


def test_lr_spike_is_exact_across_a_scheduler_step_and_the_corpus_verifies(tmp_path: Path) -> None:
    from stabilitybench import LightningCallback, Recorder, perturbation

    kw = {"max_steps": 14, "limit_val_batches": 2, "val_check_interval": 6}
    plain, plain_trainer = fit([], **kw)
    spike = perturbation("lr_spike", 10.0, onset_step=3, duration_steps=5)  # updates 3..7; StepLR halves at 5
    with Recorder(tmp_path / "corpus", "tiny-spike", algo="mlp", env="toy") as rec:
        ours, trainer = fit([LightningCallback(rec, perturbation=spike)], **kw)

    bases = [BASE_LR, BASE_LR / 4]
    for step, lrs in enumerate(ours.applied_lrs):
        factor = 10.0 if 3 <= step < 8 else 1.0
        scheduled = [b * 0.5 ** (step // 5) for b in bases]
        assert plain.applied_lrs[step] == scheduled
        assert lrs == [lr * factor for lr in scheduled], step
    assert len(ours.applied_lrs) == 14
    # the user's LRs afterwards are the schedule's, not compounded by the spike
    assert ([g["lr"] for g in trainer.optimizers[0].param_groups]
            == [g["lr"] for g in plain_trainer.optimizers[0].param_groups])

    corpus = tmp_path / "corpus"
    report = verify_corpus(corpus, deep=True)
    assert report.problems == [] and report.runs == 1
    row = read_manifest(corpus).to_pylist()[0]
    assert row["status"] == "ok" and row["stop_reason"] == "completed" and row["n_updates"] == 14
    assert row["perturbation"] == "lr_spike" and row["onset_step"] == 3 and row["duration_steps"] == 5
    steps = read_table(next((corpus / "steps").rglob("*.parquet")), "steps").to_pylist()
    assert [r["lr"] for r in steps] == [lrs[0] for lrs in ours.applied_lrs]
    assert [r["perturbation_active"] for r in steps] == [3 <= s < 8 for s in range(14)]
    evals = [r for r in steps if r["val_loss"] is not None]
    assert [r["step"] for r in evals] == [5, 11]  # validation every 6 batches
    assert all(r["performance"] == -r["val_loss"] for r in evals)
    events = read_table(next((corpus / "events").glob("*.parquet")), "events").to_pylist()
    assert [(e["step"], e["event"]) for e in events] == [(3, "perturbation_on"), (5, "eval"),
                                                         (8, "perturbation_off"), (11, "eval")]


class Manual(Tiny):
    """Manual optimization: the user calls backward and step; the callback still sees each update."""

    def __init__(self) -> None:
        super().__init__(groups=False)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.losses.append(loss.detach().clone())
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return loss.detach()


def test_manual_optimization_records_each_update_and_its_loss() -> None:
    from stabilitybench import LightningCallback, Recorder

    torch.manual_seed(0)
    model = Manual()
    rec = Recorder(None, "manual", algo="mlp", env="toy")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, callbacks=[LightningCallback(rec)],
                         enable_progress_bar=False, logger=False, enable_checkpointing=False,
                         enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader(48))
    rows = rec.steps_table().to_pylist()
    assert len(rows) == 6
    assert [r["loss"] for r in rows] == pytest.approx([float(x) for x in model.losses], rel=1e-6)
    assert [r["grad_norm"] for r in rows] == pytest.approx(model.pre_clip_norms, rel=1e-6)


def test_a_bad_optimizer_index_is_one_line() -> None:
    from stabilitybench import LightningCallback, Recorder

    rec = Recorder(None, "x")
    with pytest.raises(ValueError, match="optimizer_index=3, but the Trainer has 1 optimizer"):
        fit([LightningCallback(rec, optimizer_index=3)], max_steps=2)


def test_without_lightning_the_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    import stabilitybench

    monkeypatch.delitem(sys.modules, "stabilitybench.generate.adapters.lightning", raising=False)
    for name in [m for m in sys.modules if m == "lightning" or m.startswith("lightning.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "lightning", None)
    with pytest.raises(ModuleNotFoundError, match=r"^LightningCallback needs PyTorch Lightning: "
                                                  r"pip install 'stabilitybench\[lightning\]'$"):
        stabilitybench.LightningCallback  # noqa: B018
    monkeypatch.undo()
    importlib.import_module("stabilitybench.generate.adapters.lightning")


class Interrupted(Tiny):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step == 5:
            raise KeyboardInterrupt
        return super().training_step(batch, batch_idx)


def test_ctrl_c_is_recorded_as_an_interrupt_not_an_error(tmp_path: Path) -> None:
    """Lightning turns Ctrl-C into ``SystemExit(1)``, which a ``with Recorder`` would file as an error; the
    callback records the interrupt first, and the five updates made are a valid run."""
    import signal

    from stabilitybench import LightningCallback, Recorder

    handler = signal.getsignal(signal.SIGINT)
    torch.manual_seed(0)
    try:
        with pytest.raises(SystemExit), Recorder(tmp_path / "c", "ctrl-c", algo="mlp", env="toy") as rec:
            trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=20,
                                 callbacks=[LightningCallback(rec)], enable_progress_bar=False,
                                 logger=False, enable_checkpointing=False, enable_model_summary=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer.fit(Interrupted(), loader())
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT from then on; later tests need it
    row = read_manifest(tmp_path / "c").to_pylist()[0]
    assert (row["status"], row["stop_reason"], row["n_updates"]) == ("ok", "interrupted", 5)
    assert rec.closed and verify_corpus(tmp_path / "c", deep=True).problems == []


def test_16_mixed_records_the_unscaled_pre_clip_norm_and_skips_overflowed_steps() -> None:
    """With a GradScaler, autograd accumulates loss-scaled gradients and Lightning unscales them after the
    closure; grad_norm must be the unscaled norm before clipping. Steps the scaler skips (overflow) make no
    row. A CPU scaler drives the same code path as CUDA's "16-mixed"; the large initial scale makes the first
    updates overflow."""
    from lightning.pytorch.plugins import MixedPrecision

    from stabilitybench import LightningCallback, Recorder

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20)
    rec = Recorder(None, "amp", algo="mlp", env="toy")
    model, _ = fit([LightningCallback(rec)], max_steps=8, accumulate_grad_batches=2,
                   gradient_clip_val=0.05, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    rows = rec.steps_table().to_pylist()
    finite = [n for n in model.pre_clip_norms if torch.isfinite(torch.tensor(n))]
    assert 0 < len(rows) == len(finite) < len(model.pre_clip_norms)  # some updates overflowed and were skipped
    assert [r["step"] for r in rows] == list(range(len(rows)))
    assert [r["grad_norm"] for r in rows] == pytest.approx(finite, rel=1e-5)
    assert min(finite) > 0.1  # before the 0.05 clip
    applied = [u for u, n in enumerate(model.pre_clip_norms) if torch.isfinite(torch.tensor(n))]
    want = [float(model.losses[2 * u] / 2 + model.losses[2 * u + 1] / 2) for u in applied]
    assert [r["loss"] for r in rows] == pytest.approx(want, rel=1e-5)


def test_a_diverging_lightning_run_is_data(tmp_path: Path) -> None:
    """A x1e6 LR spike blows the run up: the probe records the non-finite update, closes the run as
    ``stop_reason=nonfinite`` (status ok, files written, verify clean) and only then stops ``fit``."""
    from stabilitybench import LightningCallback, Recorder, perturbation
    from stabilitybench.generate.errors import TrainingDiverged

    rec = Recorder(tmp_path / "c", "diverge", algo="mlp", env="toy")
    callback = LightningCallback(rec, perturbation=perturbation("lr_spike", 1e6, 3, 5))
    with pytest.raises(TrainingDiverged, match="stop_reason=nonfinite"):
        fit([callback], max_steps=20, module_kw={"momentum": 0.0})
    row = read_manifest(tmp_path / "c").to_pylist()[0]
    assert (row["status"], row["stop_reason"]) == ("ok", "nonfinite") and 3 < row["n_updates"] < 20
    assert verify_corpus(tmp_path / "c", deep=True).problems == []
    assert [e["event"] for e in rec.events] == ["perturbation_on", "nonfinite"]
    assert callback.probe is None  # detached: the optimizer is the user's again
