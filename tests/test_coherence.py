"""Online rolling gradient coherence equals the brute-force mean pairwise cosine."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stabilitybench.generate.coherence import RollingCoherence


def brute_force(grads: list[np.ndarray]) -> float:
    cos = [a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in itertools.combinations(grads, 2)]
    return float(np.mean(cos))


@settings(max_examples=30, deadline=None)
@given(
    window=st.integers(2, 10),
    n=st.integers(1, 40),
    dim=st.integers(1, 50),
    seed=st.integers(0, 2**31 - 1),
    shared=st.floats(0.0, 3.0),
)
def test_matches_brute_force_over_a_rolling_window(window: int, n: int, dim: int, seed: int, shared: float) -> None:
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim)  # a shared direction makes coherence non-trivial
    grads = [shared * common + rng.normal(size=dim) for _ in range(n)]
    coh = RollingCoherence(window)
    for i, g in enumerate(grads):
        got = coh.update(torch.from_numpy(g))
        if i + 1 < window:
            assert got is None
        else:
            assert got == pytest.approx(brute_force(grads[i + 1 - window : i + 1]), abs=1e-9)


def test_identical_and_opposite_gradients() -> None:
    coh = RollingCoherence(4)
    g = torch.tensor([1.0, 2.0, -3.0])
    for _ in range(4):
        value = coh.update(g * 5)
    assert value == pytest.approx(1.0)
    coh = RollingCoherence(2)
    coh.update(g)
    assert coh.update(-2 * g) == pytest.approx(-1.0)


def test_zero_gradient_is_skipped() -> None:
    coh = RollingCoherence(2)
    coh.update(torch.tensor([1.0, 0.0]))
    assert coh.update(torch.zeros(2)) is None  # no direction: not counted
    assert coh.update(torch.tensor([0.0, 1.0])) == pytest.approx(0.0)


def test_no_drift_over_a_long_run() -> None:
    """The running sum is re-summed periodically; after many updates it still matches."""
    rng = np.random.default_rng(0)
    coh = RollingCoherence(8)
    grads = [rng.normal(size=32) + 0.5 for _ in range(5000)]
    for g in grads:
        value = coh.update(torch.from_numpy(g))
    assert value == pytest.approx(brute_force(grads[-8:]), abs=1e-9)


def test_window_must_allow_pairs() -> None:
    with pytest.raises(ValueError):
        RollingCoherence(1)
