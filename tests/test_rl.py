"""The RL generators on real SB3 training: the spike acts, the rows line up, NaN is data."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

from stabilitybench.data_schema import validate
from stabilitybench.generate.rl.train import run
from stabilitybench.generate.spec import RunSpec

# SB3's PPO defaults where the rl-zoo3 HalfCheetah values differ, small rollouts: 8 updates per rollout.
HP = {"n_steps": 256, "batch_size": 64, "n_epochs": 2, "learning_rate": 3e-4, "normalize": False, "hidden": 64,
      "activation": "tanh", "log_std_init": 0.0, "ortho_init": True, "eval_episodes": 0}
UPR = 8


def spec(**kw) -> RunSpec:
    base = dict(domain="rl", algo="ppo", env="HalfCheetah-v5", seed=0, total_steps=1024, hparams=HP,
                onset_frac=0.5, duration_steps=UPR)
    return RunSpec(**{**base, **kw})


class OptimizerSpy(BaseCallback):
    """Independently records, at every optimizer step, the LR in the param group and the applied gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.lrs: list[float] = []
        self.grads: list[np.ndarray] = []
        self.deltas: list[float] = []

    def _on_training_start(self) -> None:
        opt = self.model.policy.optimizer
        params = [p for p in self.model.policy.parameters() if p.requires_grad]

        def pre(optimizer, args, kwargs):
            self.lrs.append(optimizer.param_groups[0]["lr"])
            self.grads.append(torch.cat([p.grad.reshape(-1) for p in params]).numpy().copy())
            self._before = torch.cat([p.detach().reshape(-1) for p in params]).clone()

        def post(optimizer, args, kwargs):
            after = torch.cat([p.detach().reshape(-1) for p in params])
            self.deltas.append(float((after - self._before).norm()))

        opt.register_step_pre_hook(pre)
        opt.register_step_post_hook(post)

    def _on_step(self) -> bool:
        return True


@pytest.fixture(scope="module")
def spiked():
    spy = OptimizerSpy()
    result = run(spec(perturbation="lr_spike", magnitude=100.0), extra_callbacks=[spy])
    return result, spy


def test_lr_spike_changes_the_lr_the_optimizer_applies(spiked) -> None:
    result, spy = spiked
    steps = result.steps.to_pydict()
    onset = result.onset_step
    assert onset == 16  # 0.5 * 32 planned updates
    active = steps["perturbation_active"]
    assert [i for i, a in enumerate(active) if a] == list(range(onset, onset + UPR))
    # what the optimizer saw at step time (registered after our probe, so it sees our setting)
    assert spy.lrs == pytest.approx([3e-4 * (100.0 if a else 1.0) for a in active])
    assert steps["lr"] == pytest.approx(spy.lrs)
    # and the parameters really moved further: Adam's step scales with the LR
    during = np.mean(spy.deltas[onset : onset + UPR])
    before = np.mean(spy.deltas[onset - UPR : onset])
    assert during > 20 * before
    assert steps["update_norm"] == pytest.approx(spy.deltas, rel=1e-5)
    kinds = [(e["event"], e["step"]) for e in result.events.to_pylist()]
    assert kinds == [("perturbation_on", onset), ("perturbation_off", onset + UPR)]


def test_coherence_in_a_real_run_equals_brute_force(spiked) -> None:
    result, spy = spiked
    coh = result.steps.column("grad_coherence").to_pylist()
    k = 8
    assert all(c is None for c in coh[: k - 1])
    for i in range(k - 1, len(coh)):
        window = spy.grads[i - k + 1 : i + 1]
        pairs = [a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in itertools.combinations(window, 2)]
        assert coh[i] == pytest.approx(float(np.mean(pairs)), abs=1e-6)


def test_rows_match_updates_and_train_stats_sit_on_the_last_update(spiked) -> None:
    result, _ = spiked
    validate(result.steps, "steps")
    d = result.steps.to_pydict()
    assert result.planned_updates == 32 and result.steps.num_rows == 32 and result.stop_reason == "completed"
    assert d["step"] == list(range(32))
    assert d["samples_seen"] == [256 * (i // UPR + 1) for i in range(32)]
    last_of_train = {i for i in range(32) if i % UPR == UPR - 1}
    for col in ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"):
        present = {i for i, v in enumerate(d[col]) if v is not None}
        assert present == last_of_train, col
    assert all(v is None for v in d["q_mean"])  # an SAC/TD3 column: null for PPO
    assert all(g is not None and g > 0 for g in d["grad_norm"])
    # HalfCheetah episodes are 1000 steps: the first return appears after the 4th rollout
    perf = d["performance"]
    assert all(p is None for p in perf[: 3 * UPR]) and all(p is not None for p in perf[3 * UPR :])
    assert d["episode_return"][-1] == pytest.approx(perf[-1])


def test_sham_spike_is_bit_identical_to_the_control() -> None:
    """x1 'spike' and no perturbation must give the same trajectory: runs are deterministic."""
    a = run(spec(perturbation="none")).steps
    b = run(spec(perturbation="lr_spike", magnitude=1.0)).steps
    for col in ("loss", "grad_norm", "update_norm", "param_norm", "grad_coherence", "performance"):
        assert a.column(col).to_pylist() == b.column(col).to_pylist(), col
    assert pc.sum(b.column("perturbation_active")).as_py() == UPR


def test_divergence_is_recorded_as_data_not_a_crash() -> None:
    result = run(spec(perturbation="lr_spike", magnitude=1e6, onset_frac=0.3))
    assert result.stop_reason == "nonfinite"
    events = result.events.to_pylist()
    assert events[-1]["event"] == "nonfinite"
    assert result.steps.num_rows < result.planned_updates
    validate(result.steps, "steps")


# ------------------------------------------------------------------------- SAC / TD3
OFF_HP = {"learning_starts": 100, "hidden": 32, "batch_size": 64, "eval_episodes": 1, "eval_every": 200,
          "probe_every": 50}


class AllOptimizersSpy(BaseCallback):
    """Records (name, lr) at every step of every SAC/TD3 optimizer."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, float]] = []

    def _on_training_start(self) -> None:
        opts = {"critic": self.model.critic.optimizer, "actor": self.model.actor.optimizer}
        if getattr(self.model, "ent_coef_optimizer", None) is not None:
            opts["ent"] = self.model.ent_coef_optimizer
        for name, opt in opts.items():
            opt.register_step_pre_hook(lambda o, a, k, name=name: self.calls.append((name, o.param_groups[0]["lr"])))

    def _on_step(self) -> bool:
        return True


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_off_policy_rows_spike_and_actor_columns(algo: str) -> None:
    spy = AllOptimizersSpy()
    s = RunSpec(domain="rl", algo=algo, env="HalfCheetah-v5", seed=0, total_steps=600, hparams=OFF_HP,
                perturbation="lr_spike", magnitude=10.0, onset_frac=0.5, duration_steps=20)
    result = run(s, extra_callbacks=[spy])
    validate(result.steps, "steps")
    d = result.steps.to_pydict()
    assert result.planned_updates == 500 and result.steps.num_rows == 500 and d["step"] == list(range(500))
    onset = result.onset_step
    base_lr = 3e-4 if algo == "sac" else 1e-3
    # every optimizer of the algorithm runs at the spiked LR inside the window, and only there
    critic_lrs = [lr for name, lr in spy.calls if name == "critic"]
    assert critic_lrs == pytest.approx([base_lr * (10.0 if onset <= i < onset + 20 else 1.0) for i in range(500)])
    actor_lrs = [lr for name, lr in spy.calls if name == "actor"]
    assert sum(lr == pytest.approx(10 * base_lr) for lr in actor_lrs) == (20 if algo == "sac" else 10)
    assert all(q is not None and np.isfinite(q) for q in d["q_mean"])
    assert all(v is not None for v in d["value_loss"])
    actor_rows = [i for i, v in enumerate(d["actor_grad_norm"]) if v is not None]
    if algo == "sac":
        assert actor_rows == list(range(500))
        assert all(v is not None for v in d["alpha"])
    else:  # TD3 updates the actor every policy_delay = 2 critic updates
        assert actor_rows == list(range(1, 500, 2))
        assert all(v is None for v in d["alpha"])
    probed = [i for i, v in enumerate(d["effective_rank"]) if v is not None]
    assert probed == list(range(0, 500, 50))
    assert all(0.0 <= d["dormant_fraction"][i] <= 1.0 for i in probed)
    evals = [e for e in result.events.to_pylist() if e["event"] == "eval"]
    assert len(evals) == 3  # at 200, 400 and 600 env steps
    assert sum(v is not None for v in d["eval_return"]) >= 2


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_parametric_perturbation_between_gradient_steps(algo: str) -> None:
    """Weight noise hits actor and critic once, between gradient steps (no autograd version clash)."""
    s = RunSpec(domain="rl", algo=algo, env="HalfCheetah-v5", seed=0, total_steps=400, hparams=OFF_HP,
                perturbation="weight_noise", magnitude=0.5, onset_frac=0.5, duration_steps=1)
    result = run(s)
    applied = [e for e in result.events.to_pylist() if e["event"] == "perturbation_applied"]
    assert len(applied) == 1 and applied[0]["step"] == result.onset_step
    pn = result.steps.column("param_norm").to_pylist()
    k = result.onset_step
    assert pn[k] > 1.05 * pn[k - 1]  # the critic's parameters jumped by ~half their norm
