"""LM-specific telemetry: microbatch gradient coherence and logit probes.

Output logits (:func:`output_logit_stats`): on the sampled updates, the max output logit and the log-partition
``log Z = log sum_v exp(logit_v)`` averaged over the positions of the first microbatch (``logit_logz``, schema 1.3):
the output-logit divergence that arXiv 2309.14322 reproduces in small models at a high LR (its z-loss penalises
(log Z)^2). The attention logits (:class:`LogitProbe`) are recomputed from the fused q/k/v projection.

The per-update logic (LR factor, perturbation hooks and events, grad/update/param norms,
non-finite checks) is the public :class:`stabilitybench.generate.probe.Probe`; the GPT-2 loop hands it
its flat gradient buffer and a :class:`MicrobatchCoherence`, which changes what
``grad_coherence`` means for the LM.

Microbatch coherence
--------------------
An LM optimizer step accumulates K microbatch gradients g_1..g_K. After microbatch i the
(flat) ``.grad`` buffer holds the running sum A_i = g_1 + ... + g_i, so g_i = A_i - A_{i-1}.
With u_i = g_i / ||g_i|| and S = sum_i u_i,

    x_grad = (||S||^2 - K) / (K (K - 1)),

the mean pairwise cosine of the K microbatch gradients of that step, computed online with
two buffers (S and A_{i-1}) of the parameter count P: O(1) in K. Gradient clipping
rescales the summed gradient only, so it does not change these cosines. A zero microbatch
gradient contributes u = 0 (it has no direction) and lowers x_grad.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def attach_flat_grads_(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Give every parameter a ``.grad`` that is a view into one zeroed flat buffer; return the buffer.

    Autograd accumulates into an existing ``.grad`` in place, so after a backward the
    buffer (shape ``(P,)``, in ``params`` order) *is* the gradient, readable without a
    ``torch.cat``. Zero it with ``buffer.zero_()`` instead of ``optimizer.zero_grad()``.
    """
    sizes = [p.numel() for p in params]
    flat = torch.zeros(sum(sizes), dtype=params[0].dtype, device=params[0].device)
    for p, view in zip(params, flat.split(sizes), strict=True):
        p.grad = view.view_as(p)
    return flat


class MicrobatchCoherence:
    """Mean pairwise cosine of the K microbatch gradients of one optimizer step (module docstring).

    Call :meth:`start` before the first microbatch, :meth:`add` with the accumulated flat
    gradient (shape ``(P,)``) after each microbatch's backward, then :meth:`value`.
    No host synchronisation until :meth:`value`.
    """

    def __init__(self, numel: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self._sum = torch.zeros(numel, device=device, dtype=dtype)
        self._prev = torch.zeros(numel, device=device, dtype=dtype)
        self.count = 0

    def start(self) -> None:
        self._sum.zero_()
        self._prev.zero_()
        self.count = 0

    def add(self, accumulated: torch.Tensor) -> None:
        """Fold in microbatch i, given A_i (the accumulated gradient after its backward)."""
        diff = self._prev.sub_(accumulated)  # A_{i-1} - A_i = -g_i, in place
        norm = torch.linalg.vector_norm(diff).clamp_min(torch.finfo(diff.dtype).tiny)
        self._sum.sub_(diff.div_(norm))  # S += u_i
        self._prev.copy_(accumulated)
        self.count += 1

    def value(self) -> float | None:
        k = self.count
        if k < 2:
            return None
        return (float(self._sum.dot(self._sum)) - k) / (k * (k - 1))

    # -- the Probe's coherence interface (the probe calls these once per update) ---------------
    def push(self, grad: torch.Tensor, norm: Any) -> None:
        """Nothing to do: the loop folded the microbatches in already."""

    def drop_last(self) -> None:
        """Nothing to forget: the next update starts afresh."""

    def sum_sq(self) -> torch.Tensor:
        return self._sum.dot(self._sum)

    def value_from(self, sum_sq: float) -> float | None:
        k = self.count
        return None if k < 2 else (sum_sq - k) / (k * (k - 1))


def output_logit_stats(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Device scalars (no host read) of output logits of shape ``(B, T, V)``: ``output_logit_max`` (their max) and
    ``logit_logz`` (``torch.logsumexp`` over the vocabulary in float32, mean over the B x T positions)."""
    x = logits.detach()
    return {"output_logit_max": x.amax(), "logit_logz": torch.logsumexp(x.float(), dim=-1).mean()}


def attention_logits(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """Causal pre-softmax attention logits ``q k^T / sqrt(d)`` (float32) from GPT-2's fused ``c_attn`` output.

    ``qkv``: shape ``(B, T, 3C)``; returns shape ``(B, H, T, T)`` with ``-inf`` above the diagonal.
    """
    x = qkv.float()
    b, t, c3 = x.shape
    c = c3 // 3
    d = c // n_head
    q, k = (z.reshape(b, t, n_head, d).transpose(1, 2) for z in x[..., : 2 * c].split(c, dim=2))
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d))
    causal = torch.ones(t, t, dtype=torch.bool, device=att.device).tril()
    return att.masked_fill(~causal, float("-inf"))


class LogitProbe:
    """Max pre-softmax attention logit and max output logit, on armed forward passes.

    Forward hooks on every block's ``attn.c_attn`` (the fused q/k/v projection, output
    ``(B, T, 3C)``) recompute ``q k^T / sqrt(d)`` for the first ``rows`` sequences with the
    causal mask (SDPA never materialises these logits). Costs nothing when not armed.
    """

    def __init__(self, model: torch.nn.Module, n_head: int, rows: int) -> None:
        self.n_head, self.rows = n_head, rows
        self.armed = False
        self.attn_max: torch.Tensor | None = None
        self._handles = [block.attn.c_attn.register_forward_hook(self._hook) for block in model.transformer.h]

    def arm(self) -> None:
        self.armed, self.attn_max = True, None

    def disarm(self) -> float | None:
        """Stop probing; the max attention logit seen while armed (one host read), None if no forward ran."""
        m = self.disarm_lazy()
        return None if m is None else float(m)

    def disarm_lazy(self) -> torch.Tensor | None:
        """Stop probing; the max as a device scalar (no host read: the loop reads it after its microbatches)."""
        self.armed = False
        return self.attn_max

    def _hook(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if not self.armed:
            return
        with torch.no_grad():
            m = attention_logits(output[: self.rows].detach(), self.n_head).amax()
            self.attn_max = m if self.attn_max is None else torch.maximum(self.attn_max, m)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
