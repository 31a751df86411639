"""Online gradient coherence over a rolling window of K gradients, exact or in a sketch.

With unit vectors u_i = g_i / ||g_i|| and S = sum_i u_i over the window,

    sum_{i != j} cos(g_i, g_j) = ||S||^2 - K,
    x_grad = (||S||^2 - K) / (K (K - 1)),

so the mean pairwise cosine needs one running sum S instead of K^2 dot products.
Memory is a K x D ring buffer plus S: constant in the length of the run. Each update
costs four in-place vector ops (no allocation), which matters at one call per
optimizer step. Buffers live on the gradient's device and in its dtype.

For large models the ring buffer holds a sketch of each gradient instead of the
gradient (:class:`SignSketch`, D = ``sketch_dim`` <= 4096), so the memory is K x D
whatever the parameter count P; below ``exact_max_params`` the gradients are kept exactly.
"""

from __future__ import annotations

import math

import torch


class SignSketch:
    """A sparse Johnson-Lindenstrauss sketch R^P -> R^d: random signs, then fold (CountSketch, hash j mod d).

    ``y_k = sum_{j = k mod d} s_j g_j`` with i.i.d. random signs ``s_j`` (a fixed seed, so every
    gradient of a run is sketched alike). ``E <y, y'> = <g, g'>``; for gradients whose energy is
    spread over many coordinates (any layer with more than d weights spreads it over every bucket)
    the error of a cosine is about ``sqrt(2 / d)`` (0.022 at d = 4096); :data:`EPSILON` is the
    bound the tests check. Memory: P signs as int8 plus a d-vector; work: one multiply and one
    sum over P per gradient, on the gradient's device, no host sync.
    """

    def __init__(self, numel: int, dim: int = 4096, seed: int = 0, device: torch.device | str = "cpu") -> None:
        if not 2 <= dim <= 4096:
            raise ValueError(f"sketch dimension must be in [2, 4096], got {dim}")
        self.numel, self.dim = numel, dim
        gen = torch.Generator().manual_seed(seed)
        signs = torch.randint(0, 2, (numel,), generator=gen, dtype=torch.int8).mul_(2).sub_(1)
        self.signs = signs.to(device)
        self._pad = -numel % dim

    @staticmethod
    def epsilon(dim: int) -> float:
        """The stated bound on |cos_sketch - cos_exact| for spread-out gradients: 6 standard errors."""
        return 6.0 * math.sqrt(2.0 / dim)

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        """Sketch a flat gradient, shape ``(P,)`` -> ``(d,)``."""
        signed = grad.reshape(-1) * self.signs
        if self._pad:
            signed = torch.nn.functional.pad(signed, (0, self._pad))
        return signed.view(-1, self.dim).sum(dim=0)


class RollingCoherence:
    """Mean pairwise cosine of the last ``window`` gradients (flattened, shape ``(P,)``).

    Two interfaces:

    * ``update(g)`` returns x_grad (a float) once ``window`` non-zero gradients have been seen
      and ``None`` before; zero gradients carry no direction and are skipped (one host read).
    * ``push(g, norm)`` with ``norm`` a 0-d tensor never leaves the device; ``sum_sq()`` is
      ``||S||^2`` as a 0-d tensor and :meth:`value_from` turns its host value into x_grad.
      A zero gradient enters as u = 0 (``norm`` is clamped), since skipping would need a host read.

    Arithmetic is in the gradient's dtype, on its device; S is re-summed from the buffer every
    ``RESUM_EVERY`` updates so rounding in the running sum cannot accumulate.
    """

    RESUM_EVERY = 1024

    def __init__(self, window: int = 8) -> None:
        if window < 2:
            raise ValueError(f"coherence window must be >= 2, got {window}")
        self.window = window
        self._buf: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def update(self, grad: torch.Tensor, norm: float | None = None) -> float | None:
        """Add one gradient (``norm`` = its L2 norm if already known) and return x_grad or None."""
        g = grad.detach().reshape(-1)
        if norm is None:
            norm = float(torch.linalg.vector_norm(g))
        if not norm > 0:
            return self.value()
        self.push(g, norm)
        return self.value()

    def push(self, grad: torch.Tensor, norm: torch.Tensor | float) -> None:
        """Fold in one gradient with its L2 norm (a 0-d tensor or a float); no host synchronisation."""
        g = grad.detach().reshape(-1)
        if self._buf is None:
            self._buf = torch.zeros(self.window, g.numel(), dtype=g.dtype, device=g.device)
            self._sum = torch.zeros(g.numel(), dtype=g.dtype, device=g.device)
        slot = self._buf[self._count % self.window]
        self._sum.sub_(slot)
        if isinstance(norm, torch.Tensor):
            norm = norm.clamp_min(torch.finfo(g.dtype).tiny)
        torch.div(g, norm, out=slot)
        self._sum.add_(slot)
        self._count += 1
        if self._count % self.RESUM_EVERY == 0:
            torch.sum(self._buf, dim=0, out=self._sum)

    def drop_last(self) -> None:
        """Forget the most recent gradient (e.g. a non-finite one), re-summing S from the buffer."""
        if self._buf is None or not self._count:
            return
        self._count -= 1
        self._buf[self._count % self.window].zero_()
        torch.nan_to_num_(self._buf, nan=0.0, posinf=0.0, neginf=0.0)
        torch.sum(self._buf, dim=0, out=self._sum)

    def sum_sq(self) -> torch.Tensor | None:
        """``||S||^2`` as a 0-d tensor on the gradients' device (None before the first gradient)."""
        return None if self._sum is None else self._sum.dot(self._sum)

    def value_from(self, sum_sq: float) -> float | None:
        if self._count < self.window:
            return None
        k = self.window
        return (sum_sq - k) / (k * (k - 1))

    def value(self) -> float | None:
        if self._count < self.window:
            return None
        return self.value_from(float(self._sum.dot(self._sum)))


def mean_pairwise_cosine(grads: torch.Tensor) -> float | None:
    """Mean pairwise cosine of the rows of ``grads`` (shape ``(K, P)``), by the same identity as
    :class:`RollingCoherence`: ``(||sum_i u_i||^2 - K) / (K (K - 1))``. Zero rows carry no direction
    and are left out; None when fewer than two rows are left or a value is not finite."""
    g = grads.detach().double()
    norms = torch.linalg.vector_norm(g, dim=1)
    keep = norms > 0
    if int(keep.sum()) < 2 or not bool(torch.isfinite(g).all()):
        return None
    u = g[keep] / norms[keep, None]
    k = u.shape[0]
    s = u.sum(dim=0)
    return float((s.dot(s) - k) / (k * (k - 1)))
