"""Dormant fraction and effective rank on hand-built activations with known answers."""

from __future__ import annotations

import pytest
import torch

from stabilitybench.generate.representation import HiddenFeatures, dormant_fraction, effective_rank


def test_effective_rank_of_known_spectra() -> None:
    torch.manual_seed(0)
    # float32 round-off leaves singular values ~1e-7 instead of 0: a stated tolerance, not a loose one
    assert effective_rank(torch.randn(64, 1) @ torch.randn(1, 32)) == pytest.approx(1.0, abs=1e-4)
    assert effective_rank(torch.eye(8)) == pytest.approx(8.0)
    # singular values (3, 1): p = (0.75, 0.25), erank = exp(H) = exp(-(.75 ln .75 + .25 ln .25))
    expected = torch.exp(-(torch.tensor(0.75) * torch.log(torch.tensor(0.75))
                           + torch.tensor(0.25) * torch.log(torch.tensor(0.25))))
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(float(expected))
    assert effective_rank(torch.zeros(4, 4)) == 0.0


def test_dormant_fraction_counts_units_below_tau_of_the_layer_mean() -> None:
    # unit mean |h|: (0, 1, 1, 2) -> layer mean 1 -> scores (0, 1, 1, 2)
    layer = torch.tensor([[0.0, 1.0, 1.0, 2.0], [0.0, -1.0, 1.0, 2.0]])
    assert dormant_fraction([layer], tau=0.0) == 0.25
    assert dormant_fraction([layer], tau=1.0) == 0.75
    # scores (0.05, 1.95) in a second layer: one more dormant at tau=0.1
    second = torch.tensor([[0.05, 1.95]])
    assert dormant_fraction([layer, second], tau=0.1) == pytest.approx(2 / 6)
    assert dormant_fraction([torch.zeros(3, 5)], tau=0.1) == 1.0


def test_hidden_features_captures_activation_outputs() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2), torch.nn.Tanh())
    grab = HiddenFeatures([net[1]])
    x = torch.randn(5, 3)
    (h,) = grab.capture(lambda: net(x))
    assert torch.equal(h, torch.relu(net[0](x)))
    # between captures nothing is hooked: training forwards cost nothing and keep nothing alive
    assert not net[1]._forward_hooks
    net(x)
    assert grab.outputs == []
