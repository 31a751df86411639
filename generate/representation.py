"""Periodic representation probes: ReDo dormant fraction and effective rank.

Both look at a network's hidden features on a *fixed* probe batch, so successive
values are comparable within a run.

* **Dormant fraction** (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep RL",
  ReDo): for layer l with H units, unit i's score is
  ``s_i = E_x|h_i(x)| / ((1/H) sum_j E_x|h_j(x)|)``; the unit is tau-dormant if
  ``s_i <= tau``. We report the fraction of dormant units over all probed layers.
* **Effective rank** (Roy & Vetterli 2007): with the singular values sigma of the
  (batch x units) feature matrix and ``p = sigma / sum(sigma)``,
  ``erank = exp(-sum p log p)``; 1 for rank-one features, k for k equal singular values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

DEFAULT_TAU = 0.1


def dormant_fraction(features: list[torch.Tensor], tau: float = DEFAULT_TAU) -> float:
    """Fraction of tau-dormant units over layers; each tensor has shape ``(batch, units)``."""
    dormant = total = 0
    for h in features:
        score = h.abs().mean(0)  # (units,)
        denom = score.mean()
        if denom <= 0:  # every unit silent: all dormant
            dormant += score.numel()
        else:
            dormant += int((score / denom <= tau).sum())
        total += score.numel()
    return dormant / total if total else float("nan")


def effective_rank(features: torch.Tensor) -> float:
    """Roy & Vetterli effective rank of a ``(batch, units)`` feature matrix."""
    sigma = torch.linalg.svdvals(features.double())
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


class HiddenFeatures:
    """Collects the outputs of the given activation modules during one probing forward pass.

    The forward hooks exist only inside :meth:`capture`, so training forwards pay nothing
    and keep no activations alive.
    """

    def __init__(self, activations: list[torch.nn.Module]) -> None:
        self.activations = activations
        self.outputs: list[torch.Tensor] = []

    def _hook(self, module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        self.outputs.append(output.detach())

    def capture(self, forward: Callable[[], object]) -> list[torch.Tensor]:
        self.outputs = []
        handles = [m.register_forward_hook(self._hook) for m in self.activations]
        try:
            with torch.no_grad():
                forward()
        finally:
            for h in handles:
                h.remove()
        out, self.outputs = self.outputs, []
        return out

    def remove(self) -> None:
        """Nothing stays registered between captures; kept for symmetry with other probes."""
        self.outputs = []
