"""Fixed-point minibatch gradient coherence for PPO (the paper's estimator), without touching training.

At a probe update, draw K minibatches from the current rollout, take the gradient of PPO's loss on
each at the *same* parameters (``torch.autograd.grad``: nothing is accumulated into ``.grad``, no
optimizer steps, no parameter moves) and record their mean pairwise cosine::

    x_fixed = (||sum_i u_i||^2 - K) / (K (K - 1)),   u_i = g_i / ||g_i||

The loss is SB3's PPO loss as ``PPO.train`` computes it (clipped surrogate + ``vf_coef`` x value
loss + ``ent_coef`` x entropy loss, advantages normalised per minibatch). Minibatch indices come
from the probe's own ``numpy`` generator, so SB3's global random streams, and hence the training
run, are the same with or without the probe. The rolling ``grad_coherence`` (across K successive
updates) stays its own column: the two estimators answer different questions (does the *data*
agree at one point vs. do successive *steps* agree).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces

from stabilitybench.generate.coherence import mean_pairwise_cosine


def ppo_minibatch_loss(model: Any, batch: Any) -> torch.Tensor:
    """SB3 PPO's training loss on one ``RolloutBufferSamples`` minibatch, at the current parameters."""
    actions = batch.actions
    if isinstance(model.action_space, spaces.Discrete):
        actions = actions.long().flatten()
    values, log_prob, entropy = model.policy.evaluate_actions(batch.observations, actions)
    values = values.flatten()
    adv = batch.advantages
    if model.normalize_advantage and len(adv) > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    clip = model.clip_range(model._current_progress_remaining)
    ratio = torch.exp(log_prob - batch.old_log_prob)
    policy_loss = -torch.min(adv * ratio, adv * torch.clamp(ratio, 1 - clip, 1 + clip)).mean()
    if model.clip_range_vf is None:
        values_pred = values
    else:
        clip_vf = model.clip_range_vf(model._current_progress_remaining)
        values_pred = batch.old_values + torch.clamp(values - batch.old_values, -clip_vf, clip_vf)
    value_loss = F.mse_loss(batch.returns, values_pred)
    entropy_loss = -torch.mean(-log_prob) if entropy is None else -torch.mean(entropy)
    return policy_loss + model.ent_coef * entropy_loss + model.vf_coef * value_loss


class FixedPointCoherence:
    """K minibatch gradients of PPO's loss at fixed parameters -> their mean pairwise cosine.

    ``k``: minibatches per probe (>= 2); ``seed``: the probe's own index stream.
    """

    def __init__(self, k: int, seed: int) -> None:
        if k < 2:
            raise ValueError(f"fixed-point coherence needs k >= 2 minibatches, got {k}")
        self.k = k
        self.rng = np.random.default_rng(seed)

    def gradients(self, model: Any) -> torch.Tensor | None:
        """``(k, P)`` flat gradients, or None when the rollout buffer holds no full rollout yet."""
        buf = model.rollout_buffer
        if not buf.full or not buf.generator_ready:
            return None  # only inside train(), where SB3 has flattened the rollout
        n = buf.buffer_size * buf.n_envs
        size = min(model.batch_size, n)
        params = [p for p in model.policy.parameters() if p.requires_grad]
        rows = []
        with torch.enable_grad():  # called from an optimizer hook: make sure autograd is on
            rows = self._grads(model, buf, n, size, params)
        return torch.stack(rows)

    def _grads(self, model: Any, buf: Any, n: int, size: int, params: list[torch.Tensor]) -> list[torch.Tensor]:
        rows = []
        for _ in range(self.k):
            idx = self.rng.choice(n, size=size, replace=False)
            loss = ppo_minibatch_loss(model, buf._get_samples(idx))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                   for g, p in zip(grads, params, strict=True)]))
        return rows

    def __call__(self, model: Any) -> float | None:
        g = self.gradients(model)
        return None if g is None else mean_pairwise_cosine(g)
