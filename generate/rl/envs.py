"""Gymnasium env construction for the RL generators (MuJoCo tasks are the -v5 versions).

Wrapper order, inside out: the MuJoCo env, SB3's ``Monitor`` (records the *true*
episode return, which becomes ``episode_return`` / ``performance``), then the
perturbation's wrapper (what the agent observes, does and is rewarded), then
``DummyVecEnv`` and optionally ``VecNormalize``. Evaluation uses a separate, clean env.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stabilitybench.generate.errors import UnknownEnvError
from stabilitybench.generate.perturbations import Perturbation, TrainingClock


def check_env_id(env_id: str) -> None:
    """Raise :class:`UnknownEnvError` (one line, with a hint) if gymnasium does not know ``env_id``.

    Without gymnasium (the core install) there is nothing to check against: ``status --profile`` still
    plans, and ``generate`` refuses to start without the [generate] extra.
    """
    try:
        import gymnasium
    except ModuleNotFoundError:
        return

    if env_id in gymnasium.envs.registry:
        return
    base = env_id.split("-v")[0]
    versions = sorted(k for k in gymnasium.envs.registry if k.split("-v")[0] == base)
    hint = f" (registered versions: {', '.join(versions)})" if versions else ""
    raise UnknownEnvError(f"unknown env {env_id!r}{hint}")


def make_train_env(env_id: str, seed: int, n_envs: int, normalize: bool, gamma: float,
                   perturbation: Perturbation, clock: TrainingClock) -> Any:
    """The training VecEnv: Monitor inside, the perturbation's wrapper outside it."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    check_env_id(env_id)
    venv = make_vec_env(env_id, n_envs=n_envs, seed=seed,
                        wrapper_class=lambda env: perturbation.wrap_env(env, clock))
    if normalize:
        venv = VecNormalize(venv, gamma=gamma)
    return venv


def evaluate(model: Any, env: Any, episodes: int, seed: int) -> float:
    """Mean return of the deterministic policy over ``episodes`` episodes of a clean env.

    With VecNormalize, observations are normalised with the training env's current
    statistics (the policy was trained on normalised inputs); rewards stay raw.
    """
    vec_norm = model.get_vec_normalize_env()
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, total = False, 0.0
        while not done:
            inp = vec_norm.normalize_obs(obs) if vec_norm is not None else obs
            action, _ = model.predict(inp, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def probe_observations(env_id: str, n: int, seed: int) -> np.ndarray:
    """A fixed batch of ``n`` observations from uniformly random actions (seeded), shape ``(n, obs_dim)``."""
    import gymnasium

    env = gymnasium.make(env_id)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    batch = []
    while len(batch) < n:
        batch.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return np.asarray(batch, dtype=np.float32)
