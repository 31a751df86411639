"""Recurrent meta-state monitor: a small GRU with a Gaussian predictive head (torch, CPU).

The GRU reads the standardised telemetry ``y_0..y_{t-1}`` and its hidden state (the
nonlinear meta-state, ``hidden`` units) predicts ``y_t ~ N(mu_t, diag(sigma_t^2))``. It is
trained by minimising that Gaussian negative log-likelihood on windows of
``window`` steps cut from the unperturbed training sequences (stride ``window // 2``) with
Adam: ``epochs`` steps, each on ``batch_windows`` windows drawn without replacement from a
seeded generator (every window when there are fewer; no early stopping, so no held-out data
is used in training). ``torch.set_num_threads(1)``: a fit on one 500-step run takes seconds.

Why minibatches: on the CPU a step's cost is mostly the 63-step recurrence's per-step
overhead, so a step on 64 windows costs about half a step on all 252 windows of a 18-run
Swimmer fold, and 150 such steps at ``lr = 5e-3`` reach the same training NLL as 150
full-batch steps at 3e-3 (BENCHMARKS.md, "Analysis scaling").

The score is ``nll[t] = -log N(y_t; mu_t, sigma_t^2) / p`` with the hidden state carried
through the whole sequence; ``nll[0]`` (nothing to predict from) is NaN.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from stabilitybench.analysis.metastate.base import MonitorBase

LOG_2PI = float(np.log(2 * np.pi))


class _Net(nn.Module):
    def __init__(self, p: int, hidden: int) -> None:
        super().__init__()
        self.gru = nn.GRU(p, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2 * p)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y (B, T, p)`` -> predicted mean and log-variance of ``y[:, 1:]``, each ``(B, T-1, p)``."""
        h, _ = self.gru(y[:, :-1])
        out = self.head(h)
        mu, logvar = out.chunk(2, dim=-1)
        return mu, logvar.clamp(-8.0, 8.0)


def _gauss_nll(y: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logvar + (y - mu) ** 2 / logvar.exp() + LOG_2PI)


class GRUMonitor(MonitorBase):
    """GRU next-step predictor with a Gaussian head.

    Parameters: ``hidden`` units, training ``window`` (steps), ``epochs`` (Adam steps),
    ``batch_windows`` (windows per step), ``lr``, ``weight_decay``, MSD ``smooth`` window and ``seed``.

    Fitted attributes: ``net_`` (the torch module), ``train_loss_`` (each step's minibatch NLL),
    ``train_nll_`` (the fitted model's NLL on all training windows),
    ``mean_``/``scale_``, ``threshold_``.
    """

    def __init__(
        self, hidden: int = 32, window: int = 64, epochs: int = 150, lr: float = 5e-3, weight_decay: float = 1e-4,
        smooth: int = 5, seed: int = 0, batch_windows: int = 64,
    ) -> None:
        self.hidden = hidden
        self.window = window
        self.epochs = epochs
        self.batch_windows = batch_windows
        self.lr = lr
        self.weight_decay = weight_decay
        self.smooth = smooth
        self.seed = seed

    def _fit(self, seqs: list[np.ndarray]) -> None:
        torch.set_num_threads(1)
        torch.manual_seed(self.seed)
        p = seqs[0].shape[1]
        W = max(2, min(self.window, min(s.shape[0] for s in seqs)))
        windows = []
        for s in seqs:
            for a in range(0, s.shape[0] - W + 1, max(1, W // 2)):
                windows.append(s[a : a + W])
        batch = torch.tensor(np.stack(windows), dtype=torch.float32)
        net = _Net(p, self.hidden)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        draw = torch.Generator().manual_seed(self.seed)
        n_mb = min(len(windows), max(1, int(self.batch_windows)))
        self.train_loss_: list[float] = []  # each step's minibatch NLL
        for _ in range(self.epochs):
            mb = batch if n_mb == len(windows) else batch[torch.randperm(len(windows), generator=draw)[:n_mb]]
            opt.zero_grad()
            mu, logvar = net(mb)
            loss = _gauss_nll(mb[:, 1:], mu, logvar).mean()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            self.train_loss_.append(loss.item())
        self.net_ = net.eval()
        with torch.no_grad():  # the fitted model's NLL on every training window (what a report quotes)
            mu, logvar = net(batch)
            self.train_nll_ = float(_gauss_nll(batch[:, 1:], mu, logvar).mean())

    def _predict(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch.set_num_threads(1)
        with torch.no_grad():
            y = torch.tensor(Z[None], dtype=torch.float32)
            pad = torch.cat([y, torch.zeros_like(y[:, :1])], dim=1)  # so the output covers y[1:]
            mu, logvar = self.net_(pad)
        return mu[0, :-1].numpy().astype(float), logvar[0, :-1].numpy().astype(float)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """One-step-ahead predicted mean of the raw telemetry, shape ``(T, p)``; row 0 is NaN."""
        self._check_fitted()
        Z, _ = self._standardise(np.asarray(X, dtype=float))
        out = np.full(Z.shape, np.nan)
        if Z.shape[0] > 1:
            mu, _ = self._predict(Z)
            out[1:] = mu
        return out * self.scale_ + self.mean_

    def _nll(self, Z: np.ndarray) -> np.ndarray:
        out = np.full(Z.shape[0], np.nan)
        if Z.shape[0] > 1:
            mu, logvar = self._predict(Z)
            out[1:] = (0.5 * (logvar + (Z[1:] - mu) ** 2 / np.exp(logvar) + LOG_2PI)).mean(axis=1)
        return out

    def _nll_stepper(self) -> Callable[[np.ndarray], float]:
        """One GRU cell step per block: score ``z`` against the prediction made from the past blocks, then
        advance the hidden state (float32, as :meth:`_nll`; equal to it up to float32 round-off)."""
        net = self.net_
        h: Any = None
        pred: tuple[np.ndarray, np.ndarray] | None = None

        def step(z: np.ndarray) -> float:
            nonlocal h, pred
            nll = float("nan")
            if pred is not None:
                mu, logvar = pred
                nll = float(np.mean(0.5 * (logvar + (z - mu) ** 2 / np.exp(logvar) + LOG_2PI)))
            with torch.no_grad():
                y = torch.tensor(z[None, None], dtype=torch.float32)
                out, h = net.gru(y, h)
                mu_t, logvar_t = net.head(out[0, 0]).chunk(2, dim=-1)
            pred = (mu_t.numpy().astype(float), logvar_t.clamp(-8.0, 8.0).numpy().astype(float))
            return nll

        return step

    def fit_summary(self) -> dict[str, Any]:
        """The fitted model's NLL on all training windows (NaN for a monitor loaded from a file)."""
        return {"final_train_nll": getattr(self, "train_nll_", float("nan"))}

    # ---- persistence ------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "window": self.window, "epochs": self.epochs, "lr": self.lr,
                "weight_decay": self.weight_decay, "smooth": self.smooth, "seed": self.seed,
                "batch_windows": self.batch_windows}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Standardisation, threshold and weights as plain arrays (for :mod:`stabilitybench.analysis.monitor_file`)."""
        self._check_fitted()
        out = {"mean_": np.asarray(self.mean_, dtype=float), "scale_": np.asarray(self.scale_, dtype=float),
               "threshold_": np.asarray(self.threshold_, dtype=float)}
        out.update({f"net.{k}": v.detach().cpu().numpy() for k, v in self.net_.state_dict().items()})
        return out

    @classmethod
    def from_arrays(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> GRUMonitor:
        """Inverse of :meth:`to_arrays` (with :meth:`get_params`)."""
        m = cls(**params)
        m.mean_, m.scale_ = np.asarray(arrays["mean_"], float), np.asarray(arrays["scale_"], float)
        m.threshold_ = float(arrays["threshold_"])
        m.n_features_ = int(m.mean_.size)
        m.net_ = _Net(m.n_features_, m.hidden)
        m.net_.load_state_dict({k[4:]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
                                if k.startswith("net.")})
        m.net_.eval()
        return m

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write settings, standardisation, threshold and weights with ``torch.save``."""
        self._check_fitted()
        torch.save({"params": self.get_params(), "mean": self.mean_, "scale": self.scale_,
                    "threshold": self.threshold_, "state": self.net_.state_dict(),
                    "n_features": self.n_features_}, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GRUMonitor:
        """Read a monitor written by :meth:`save`."""
        blob = torch.load(path, weights_only=False)
        m = cls(**blob["params"])
        m.mean_, m.scale_, m.threshold_ = blob["mean"], blob["scale"], float(blob["threshold"])
        m.n_features_ = int(blob["n_features"])
        m.net_ = _Net(m.n_features_, m.hidden)
        m.net_.load_state_dict(blob["state"])
        m.net_.eval()
        return m
