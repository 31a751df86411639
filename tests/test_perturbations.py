"""Every perturbation kind acts as stated: by the stated amount, only inside its window."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

from stabilitybench.data_schema import DIMENSIONS
from stabilitybench.generate.errors import ProfileError
from stabilitybench.generate.perturbations import REGISTRY, TrainingClock, UpdateContext, build, perturbation_class
from stabilitybench.generate.rl.envs import make_train_env


def test_registry_covers_every_schema_dimension_with_two_kinds() -> None:
    """Each kind's ``dimension`` (the manifest column) is one the schema declares; only the control is "none";
    each of the paper's four dimensions can be audited by at least two kinds."""
    by_kind = {k: cls.dimension for k, cls in REGISTRY.items()}
    assert set(by_kind.values()) == set(DIMENSIONS), by_kind
    assert [k for k, d in by_kind.items() if d == "none"] == ["none"]
    for dim in DIMENSIONS:
        if dim != "none":
            assert sum(d == dim for d in by_kind.values()) >= 2, dim
    with pytest.raises(ProfileError, match="unknown perturbation kind 'nope'"):
        perturbation_class("nope")


@pytest.mark.parametrize(("kind", "bad"), [
    ("lr_spike", 0.0), ("lr_spike", -1.0), ("adam_reset", 1.5), ("weight_noise", -0.1), ("layer_reset", 2.0),
    ("obs_noise", -1.0), ("action_noise", float("nan")), ("mass_shift", 0.0), ("reward_noise", -2.0),
    ("reward_flip", 1.01), ("reward_scale", float("inf")),
])
def test_bad_magnitudes_are_rejected(kind: str, bad: float) -> None:
    assert perturbation_class(kind).check_magnitude(bad) is not None


def test_identity_magnitudes_are_valid() -> None:
    for kind, cls in REGISTRY.items():
        if cls.identity_magnitude is not None:
            assert cls.check_magnitude(cls.identity_magnitude) is None, kind


# ------------------------------------------------------------------ optimizer / params
def _net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _ctx(net: torch.nn.Module, opt=None, initial=None) -> UpdateContext:
    return UpdateContext(optimizers=[opt] if opt else [], modules={"policy": net},
                         initial_state={"policy": initial or copy.deepcopy(net.state_dict())},
                         generator=torch.Generator().manual_seed(0), target_layer="policy:0.")


def test_lr_spike_factor_only_inside_the_window() -> None:
    p = build("lr_spike", 30.0, onset_step=10, duration_steps=5)
    assert [p.lr_factor(s) for s in (9, 10, 14, 15)] == [1.0, 30.0, 30.0, 1.0]


@pytest.mark.parametrize("magnitude", [1.0, 0.75])
def test_adam_reset_shrinks_both_moments_during_the_window(magnitude: float) -> None:
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(8, 5)).pow(2).sum().backward()
        opt.step()
    before = {id(p): {k: opt.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq")} for p in net.parameters()}
    pert = build("adam_reset", magnitude, onset_step=3, duration_steps=2)
    ctx = _ctx(net, opt)
    assert pert.before_update(2, ctx) is None  # not yet
    assert all(torch.equal(opt.state[p]["exp_avg"], before[id(p)]["exp_avg"]) for p in net.parameters())
    assert pert.before_update(3, ctx) == {"tensors": 8.0}
    for p in net.parameters():
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(opt.state[p][k], (1 - magnitude) * before[id(p)][k])
    assert opt.state[next(iter(net.parameters()))]["step"] == 3  # step count kept: bias correction won't hide it


@pytest.mark.parametrize("magnitude", [0.1, 1.0])
def test_weight_noise_moves_each_tensor_by_the_stated_relative_norm_once(magnitude: float) -> None:
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    pert = build("weight_noise", magnitude, onset_step=4, duration_steps=1)
    ctx = _ctx(net)
    assert pert.before_update(3, ctx) is None
    effect = pert.before_update(5, ctx)  # first update at or after onset
    assert effect is not None
    expected_total = 0.0
    for p, b in zip(net.parameters(), before, strict=True):
        assert float((p.detach() - b).norm()) == pytest.approx(magnitude * float(b.norm()), rel=1e-5)
        expected_total += (magnitude * float(b.norm())) ** 2
    assert effect["delta_norm"] == pytest.approx(expected_total**0.5, rel=1e-5)
    after = [p.detach().clone() for p in net.parameters()]
    assert pert.before_update(6, ctx) is None  # acts once
    assert all(torch.equal(p, a) for p, a in zip(net.parameters(), after, strict=True))


@pytest.mark.parametrize("magnitude", [1.0, 0.5])
def test_layer_reset_moves_only_the_target_layer_towards_its_initial_values(magnitude: float) -> None:
    net = _net()
    initial = copy.deepcopy(net.state_dict())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # training moved everything
    trained = copy.deepcopy(net.state_dict())
    pert = build("layer_reset", magnitude, onset_step=0, duration_steps=1)
    pert.before_update(0, _ctx(net, initial=initial))
    now = net.state_dict()
    for name in ("0.weight", "0.bias"):
        assert torch.allclose(now[name], (1 - magnitude) * trained[name] + magnitude * initial[name])
    for name in ("2.weight", "2.bias"):
        assert torch.equal(now[name], trained[name])


# -------------------------------------------------------------------------- env side
class Recorder(gym.Env):
    """1-D env with constant reward 1 that records the executed action."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float64)
    action_space = gym.spaces.Box(-2.0, 2.0, shape=(2,), dtype=np.float32)

    def __init__(self) -> None:
        self.actions: list[np.ndarray] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3), {}

    def step(self, action):
        self.actions.append(np.asarray(action))
        return np.ones(3), 1.0, False, False, {}


def _wrapped(kind: str, magnitude: float, active: bool, env: gym.Env | None = None):
    clock = TrainingClock()
    pert = build(kind, magnitude, onset_step=5, duration_steps=10, seed=3)
    clock.step = 7 if active else 15
    inner = env or Recorder()
    return pert.wrap_env(inner, clock), inner, clock


def test_obs_noise_adds_noise_of_the_stated_std_only_when_active() -> None:
    env, _, clock = _wrapped("obs_noise", 0.5, active=True)
    obs = np.array([env.step(np.zeros(2))[0] for _ in range(4000)])
    assert np.std(obs - 1.0) == pytest.approx(0.5, rel=0.05)
    clock.step = 15
    assert np.array_equal(env.step(np.zeros(2))[0], np.ones(3))


def test_action_noise_perturbs_executed_actions_by_the_stated_fraction_of_the_range() -> None:
    env, inner, clock = _wrapped("action_noise", 0.1, active=True)
    for _ in range(4000):
        env.step(np.zeros(2, dtype=np.float32))
    executed = np.array(inner.actions)
    assert np.std(executed) == pytest.approx(0.1 * 2.0, rel=0.05)  # half the range of [-2, 2] is 2
    assert executed.min() >= -2.0 and executed.max() <= 2.0
    clock.step = 15
    env.step(np.full(2, 0.3, dtype=np.float32))
    assert np.allclose(inner.actions[-1], 0.3)


@pytest.mark.parametrize(("kind", "magnitude"), [("reward_scale", -3.0), ("reward_noise", 2.0), ("reward_flip", 0.3)])
def test_reward_perturbations_act_by_the_stated_amount(kind: str, magnitude: float) -> None:
    env, _, clock = _wrapped(kind, magnitude, active=True)
    rewards = np.array([env.step(np.zeros(2))[1] for _ in range(4000)])
    if kind == "reward_scale":
        assert np.all(rewards == -3.0)
    elif kind == "reward_noise":
        assert np.std(rewards) == pytest.approx(2.0, rel=0.05)
        assert np.mean(rewards) == pytest.approx(1.0, abs=0.1)
    else:
        assert set(np.unique(rewards)) == {-1.0, 1.0}
        assert np.mean(rewards == -1.0) == pytest.approx(0.3, abs=0.03)
    clock.step = 15
    assert env.step(np.zeros(2))[1] == 1.0


def test_mass_shift_scales_every_body_mass_while_active_and_restores_it() -> None:
    env, _, clock = _wrapped("mass_shift", 2.5, active=True, env=gym.make("HalfCheetah-v5"))
    env.reset(seed=0)
    model = env.unwrapped.model
    base = model.body_mass.copy()
    env.step(env.action_space.sample())
    assert np.allclose(model.body_mass, 2.5 * base)
    clock.step = 15
    env.step(env.action_space.sample())
    assert np.allclose(model.body_mass, base)


def test_agent_sees_the_perturbed_reward_but_monitor_records_the_true_return() -> None:
    pert = build("reward_scale", 10.0, onset_step=0, duration_steps=10**9)
    venv = make_train_env("HalfCheetah-v5", seed=0, n_envs=1, normalize=False, gamma=0.99, perturbation=pert,
                          clock=TrainingClock())
    venv.reset()
    seen = 0.0
    for _ in range(1000):  # one HalfCheetah episode
        _, reward, done, infos = venv.step(np.array([venv.action_space.sample()]))
        seen += float(reward[0])
    assert done[0]
    assert seen == pytest.approx(10.0 * infos[0]["episode"]["r"], rel=1e-4)
