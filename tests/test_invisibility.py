"""The probe is invisible to training: the generator's run equals plain SB3's, bit for bit.

The old probe re-seated the parameters as views into one flat buffer. Training then drifted from
plain SB3 after a few thousand updates (on InvertedPendulum-v5 the last-5-episode mean matched for
four rollouts, then diverged). Turning evaluation and the representation probes off did not remove
the drift; not re-seating did. This test runs the generator (evaluation and representation probes
on, at short intervals) and plain SB3 with the same seed and hyperparameters, and compares every
episode return and the final parameters.
"""

from __future__ import annotations

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from stabilitybench.generate.rl import train as rl_train
from stabilitybench.generate.spec import RunSpec

ENV, STEPS, N_STEPS = "InvertedPendulum-v5", 3072, 256


class Returns(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.returns: list[float] = []
        self.params: list[torch.Tensor] = []

    def _on_step(self) -> bool:
        self.returns += [float(i["episode"]["r"]) for i in self.locals["infos"] if "episode" in i]
        return True

    def _on_training_end(self) -> None:
        self.params = [p.detach().clone() for p in self.model.policy.parameters()]


def test_generator_run_is_bit_identical_to_plain_sb3() -> None:
    torch.set_num_threads(1)
    plain = Returns()
    venv = make_vec_env(ENV, n_envs=1, seed=0)
    PPO("MlpPolicy", venv, seed=0, n_steps=N_STEPS, device="cpu").learn(STEPS, callback=plain)

    ours = Returns()
    spec = RunSpec(domain="rl", algo="ppo", env=ENV, seed=0, total_steps=STEPS,
                   hparams={"n_steps": N_STEPS, "eval_every": 500, "probe_every": 7})
    result = rl_train.run(spec, extra_callbacks=[ours])
    assert result.steps.num_rows == STEPS // N_STEPS * 10 * (N_STEPS // 64)
    assert result.steps.column("eval_return").null_count < result.steps.num_rows  # evaluation ran
    assert result.steps.column("dormant_fraction").null_count < result.steps.num_rows  # probes ran

    assert len(plain.returns) > 20
    assert ours.returns == plain.returns
    assert len(ours.params) == len(plain.params)
    for a, b in zip(ours.params, plain.params, strict=True):
        assert torch.equal(a, b)
