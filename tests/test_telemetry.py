"""The optimizer-update probe measures what it claims, on a model small enough to check by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from generate.errors import NonFiniteTraining
from generate.perturbations import LRSpike, NoPerturbation, TrainingClock
from generate.telemetry import EventLog, UpdateProbe

BASE_LR = 0.05
MAX_NORM = 0.5


def make_probe(perturbation, optimizer_cls=torch.optim.SGD, window=3):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = optimizer_cls(net.parameters(), lr=BASE_LR)
    rows: list[dict] = []
    events = EventLog("r")
    probe = UpdateProbe(
        opt, perturbation, TrainingClock(), scheduled_lr=lambda: BASE_LR,
        on_update=lambda step, stats: rows.append({"step": step, **stats}), events=events, coherence_window=window,
    )
    return net, opt, probe, rows, events


def train_step(net, opt, x, y, loss_scale=1.0):
    """One SB3-style step: zero_grad, backward, clip by global norm, step. Returns (raw norm, applied grad)."""
    opt.zero_grad()
    loss = loss_scale * ((net(x) - y) ** 2).mean()
    loss.backward()
    raw = float(torch.nn.utils.clip_grad_norm_(net.parameters(), MAX_NORM))
    applied = torch.cat([p.grad.reshape(-1) for p in net.parameters()]).clone()
    before = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).clone()
    opt.step()
    after = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    return raw, applied, after - before, after


def test_probe_measures_norms_coherence_and_applied_lr() -> None:
    spike = LRSpike(magnitude=10.0, onset_step=3, duration_steps=2)
    net, opt, _probe, rows, events = make_probe(spike)
    gen = torch.Generator().manual_seed(1)
    applied_grads = []
    for step in range(8):
        x, y = torch.randn(16, 4, generator=gen), torch.randn(16, 2, generator=gen)
        raw, applied, delta, after = train_step(net, opt, x, y, loss_scale=1.0 + 10 * (step % 2))
        applied_grads.append(applied.numpy())
        row = rows[-1]
        assert row["step"] == step
        assert row["grad_norm"] == pytest.approx(raw, rel=1e-5)  # before clipping
        expected_lr = BASE_LR * (10.0 if 3 <= step < 5 else 1.0)
        assert row["lr"] == pytest.approx(expected_lr)
        assert row["perturbation_active"] is (3 <= step < 5)
        # plain SGD: the parameter change is exactly lr * applied gradient, so this checks the
        # optimizer really used the spiked LR, not just that we recorded it
        assert float(delta.norm()) == pytest.approx(expected_lr * float(applied.norm()), rel=1e-5)
        assert row["update_norm"] == pytest.approx(float(delta.norm()), rel=1e-5)
        assert row["param_norm"] == pytest.approx(float(after.norm()), rel=1e-6)
        if step >= 2:
            window = applied_grads[-3:]
            cos = [a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in itertools.combinations(window, 2)]
            assert row["grad_coherence"] == pytest.approx(float(np.mean(cos)), abs=1e-6)
        else:
            assert row["grad_coherence"] is None
    assert any(r["grad_norm"] > MAX_NORM for r in rows), "test should exercise clipping"
    assert [(e["step"], e["event"]) for e in events.rows] == [(3, "perturbation_on"), (5, "perturbation_off")]


def test_spike_composes_with_the_algorithms_schedule() -> None:
    spike = LRSpike(magnitude=3.0, onset_step=1, duration_steps=1)
    schedule = iter([1.0, 0.5, 0.25])
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(net.parameters(), lr=1.0)
    rows: list[dict] = []
    UpdateProbe(opt, spike, TrainingClock(), scheduled_lr=lambda: next(schedule),
                on_update=lambda s, st: rows.append(st), events=EventLog("r"))
    for _ in range(3):
        opt.zero_grad()
        net(torch.ones(1, 2)).sum().backward()
        opt.step()
    assert [r["lr"] for r in rows] == [1.0, 1.5, 0.25]
    assert opt.param_groups[0]["lr"] == 0.25


def test_nonfinite_gradient_stops_before_the_step_and_is_recorded() -> None:
    net, opt, _probe, rows, _events = make_probe(NoPerturbation(1.0, 0, 1))
    x, y = torch.randn(4, 4), torch.randn(4, 2)
    train_step(net, opt, x, y)
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(NonFiniteTraining) as info:
        train_step(net, opt, x, y, loss_scale=float("nan"))
    assert info.value.step == 1 and info.value.what == "gradient"
    assert len(rows) == 2 and math.isnan(rows[-1]["grad_norm"])
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))  # step not applied


def test_remove_detaches_every_hook() -> None:
    net, opt, probe, rows, _ = make_probe(NoPerturbation(1.0, 0, 1))
    probe.remove()
    train_step(net, opt, torch.randn(4, 4), torch.randn(4, 2))
    assert rows == []
