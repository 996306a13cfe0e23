"""GradNorm: learn task weights that equalise the tasks' training rates.

Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask
Networks", ICML 2018. With ``G_t = w_t ||g_t||``, ``Gbar = mean_t G_t``, ``r_t = Lt_t / mean Lt``
and ``Lt_t = L_t / L_t(0)``, the weights descend ``L_grad = sum_t |G_t - Gbar r_t^alpha|`` with the
target held constant (paper Sec. 3.2), i.e. ``dL_grad/dw_t = sign(G_t - target_t) ||g_t||``; then
they are renormalised so that they keep summing to T (over the tasks present in the step).

Deviations (documented): the norms are those of the task gradients w.r.t. the D shared values
(the FPN output with ``grad_source=features``, or all shared parameters) instead of the last
shared layer's weights; the weights take a plain SGD step of size ``w_lr`` (default 0.025) rather
than sharing the network's optimizer. The update uses the current weights, then they are stepped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..base import GradientBalancer
from ._common import active_index, check_range, parse_hparams


class GradNorm(GradientBalancer):
    """GradNorm (hparams: alpha=1.5 from the paper's NYUv2 runs, w_lr=0.025)."""

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        hp = parse_hparams("gradnorm", hparams, {"alpha": 1.5, "w_lr": 0.025})
        self.alpha = check_range("gradnorm", "alpha", hp["alpha"], 0.0)
        self.w_lr = check_range("gradnorm", "w_lr", hp["w_lr"], 0.0)
        n = len(self.tasks)
        self.w = torch.ones(n, dtype=torch.float64)
        self.initial_losses = torch.zeros(n, dtype=torch.float64)
        self.seen = torch.zeros(n, dtype=torch.bool)

    def _weights_from_gram(
        self, gram: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> torch.Tensor:
        dev = gram.device
        idx = active_index(active, dev)
        self.w, self.initial_losses, self.seen = (
            t.to(dev) for t in (self.w, self.initial_losses, self.seen)
        )
        # L_t(0): the loss the first time the task is present.
        l0 = torch.where(self.seen[idx], self.initial_losses[idx], losses)
        self.initial_losses = self.initial_losses.index_copy(0, idx, l0)
        self.seen = self.seen.index_fill(0, idx, True)

        w = self.w[idx]
        norms = gram.diagonal().clamp_min(0).sqrt()
        gw = w * norms
        ratio = losses / l0.clamp_min(1e-12)
        rel = ratio / ratio.mean().clamp_min(1e-12)
        target = gw.mean() * rel**self.alpha
        new = (w - self.w_lr * torch.sign(gw - target) * norms).clamp_min(1e-6)
        new = new * (w.sum() / new.sum())  # keep the sum (T over all tasks)
        self.w = self.w.index_copy(0, idx, new)
        return w

    def state_dict(self) -> dict:
        return {
            "w": self.w.detach().cpu().clone(),
            "initial_losses": self.initial_losses.detach().cpu().clone(),
            "seen": self.seen.detach().cpu().clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.w = state["w"].to(torch.float64).clone()
        self.initial_losses = state["initial_losses"].to(torch.float64).clone()
        self.seen = state["seen"].clone()
