"""Fixed-point minibatch coherence (PPO): equals brute force, leaves training alone, lands on the probe rows."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from stabilitybench.generate.coherence import mean_pairwise_cosine
from stabilitybench.generate.rl.fixed_point import FixedPointCoherence


def _brute(rows: torch.Tensor) -> float:
    rows = [r for r in rows.double() if torch.linalg.vector_norm(r) > 0]
    cos = [float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in itertools.combinations(rows, 2)]
    return float(np.mean(cos))


def test_mean_pairwise_cosine_equals_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(6, 50, generator=gen) + 0.5 * torch.randn(1, 50, generator=gen)  # correlated rows
    assert mean_pairwise_cosine(g) == pytest.approx(_brute(g), abs=1e-12)
    g[2] = 0.0  # a zero gradient has no direction: left out
    assert mean_pairwise_cosine(g) == pytest.approx(_brute(g), abs=1e-12)
    assert mean_pairwise_cosine(torch.ones(3, 4)) == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.zeros(3, 4)) is None
    g[0, 0] = float("nan")
    assert mean_pairwise_cosine(g) is None


@pytest.fixture(scope="module")
def trained_ppo():
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    model = PPO("MlpPolicy", "InvertedPendulum-v5", n_steps=128, batch_size=32, n_epochs=1, seed=0,
                policy_kwargs={"net_arch": [16, 16]}, device="cpu")
    model.learn(128)  # one rollout and one train(): the buffer stays flattened until the next rollout
    return model


def test_fixed_point_equals_brute_force_on_a_small_model(trained_ppo) -> None:
    model = trained_ppo
    before = [p.detach().clone() for p in model.policy.parameters()]
    grads_before = [None if p.grad is None else p.grad.clone() for p in model.policy.parameters()]
    g = FixedPointCoherence(k=5, seed=3).gradients(model)
    assert g is not None and g.shape == (5, sum(p.numel() for p in model.policy.parameters()))
    value = FixedPointCoherence(k=5, seed=3)(model)  # same seed: same minibatches
    assert value == pytest.approx(_brute(g), abs=1e-9)
    assert -1.0 <= value <= 1.0
    # nothing moved: parameters and their .grad are as they were
    for p, b in zip(model.policy.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)
    for p, gb in zip(model.policy.parameters(), grads_before, strict=True):
        assert (p.grad is None and gb is None) or torch.equal(p.grad, gb)
    # the gradients are of PPO's loss at these parameters: a minibatch gradient recomputed by hand matches
    fc = FixedPointCoherence(k=2, seed=11)
    idx = np.random.default_rng(11).choice(128, size=32, replace=False)
    from stabilitybench.generate.rl.fixed_point import ppo_minibatch_loss

    loss = ppo_minibatch_loss(model, model.rollout_buffer._get_samples(idx))
    manual = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, list(model.policy.parameters()))])
    assert torch.allclose(fc.gradients(model)[0], manual)


def test_needs_a_flattened_rollout() -> None:
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", "InvertedPendulum-v5", n_steps=64, batch_size=32, seed=0, device="cpu")
    assert FixedPointCoherence(k=2, seed=0)(model) is None  # no rollout collected yet
    with pytest.raises(ValueError, match="k >= 2"):
        FixedPointCoherence(k=1, seed=0)


def test_generator_records_it_on_probe_rows_only(tmp_path) -> None:
    import polars as pl

    from stabilitybench.generate.spec import RunSpec
    from stabilitybench.generate.worker import run_one

    spec = RunSpec(domain="rl", algo="ppo", env="InvertedPendulum-v5", seed=0, total_steps=1024,
                   hparams=(("n_steps", 256), ("batch_size", 64), ("n_epochs", 2), ("hidden", 16),
                            ("probe_every", 4)))
    row = run_one(spec, tmp_path)
    assert row["status"] == "ok", row.get("error")
    steps = pl.read_parquet(next(tmp_path.rglob("steps/**/*.parquet")), hive_partitioning=False)
    fixed = steps.filter(pl.col("grad_coherence_fixed").is_not_null())
    assert fixed.height > 0
    assert set(fixed["step"].to_list()) <= {s for s in steps["step"].to_list() if s % 4 == 0}
    assert fixed["grad_coherence_fixed"].is_between(-1.0, 1.0).all()
    assert steps.filter(pl.col("step") % 4 != 0)["grad_coherence_fixed"].null_count() == \
        steps.filter(pl.col("step") % 4 != 0).height
