"""Online gradient coherence over a rolling window of K gradients.

With unit vectors u_i = g_i / ||g_i|| and S = sum_i u_i over the window,

    sum_{i != j} cos(g_i, g_j) = ||S||^2 - K,
    x_grad = (||S||^2 - K) / (K (K - 1)),

so the mean pairwise cosine needs one running sum S instead of K^2 dot products.
Memory is a K x P ring buffer plus S: constant in the length of the run. Each update
costs four in-place vector ops (no allocation), which matters at one call per
optimizer step.
"""

from __future__ import annotations

import torch


class RollingCoherence:
    """Mean pairwise cosine of the last ``window`` gradients (flattened, shape ``(P,)``).

    ``update(g)`` returns x_grad once ``window`` non-zero gradients have been seen and
    ``None`` before. Zero gradients carry no direction and are skipped. Arithmetic is
    in the gradient's dtype; S is re-summed from the buffer every ``RESUM_EVERY``
    updates so rounding in the running sum cannot accumulate.
    """

    RESUM_EVERY = 1024

    def __init__(self, window: int = 8) -> None:
        if window < 2:
            raise ValueError(f"coherence window must be >= 2, got {window}")
        self.window = window
        self._buf: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._count = 0

    def update(self, grad: torch.Tensor, norm: float | None = None) -> float | None:
        """Add one gradient (``norm`` = its L2 norm if already known) and return x_grad or None."""
        g = grad.detach().reshape(-1)
        if norm is None:
            norm = float(torch.linalg.vector_norm(g))
        if not norm > 0:
            return self.value()
        if self._buf is None:
            self._buf = torch.zeros(self.window, g.numel(), dtype=g.dtype)
            self._sum = torch.zeros(g.numel(), dtype=g.dtype)
        slot = self._buf[self._count % self.window]
        self._sum.sub_(slot)
        torch.div(g, norm, out=slot)
        self._sum.add_(slot)
        self._count += 1
        if self._count % self.RESUM_EVERY == 0:
            torch.sum(self._buf, dim=0, out=self._sum)
        return self.value()

    def value(self) -> float | None:
        if self._count < self.window:
            return None
        k = self.window
        return (float(self._sum.dot(self._sum)) - k) / (k * (k - 1))
