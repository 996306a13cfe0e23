"""DB-MTL: dual-balancing multi-task learning.

Lin et al., "Dual-Balancing for Multi-Task Learning", arXiv 2308.12029 (2023). Loss scale: each
task's gradient is that of ``log L_t`` (``g_t / L_t``). Gradient magnitude: an EMA of those
gradients ``m_t <- g_t + beta_k (m_t - g_t)`` with ``beta_k = beta / k^beta_sigma`` (``k`` the
task's step count, ``m_t = g_t`` at its first step) is rescaled to the largest norm:
``d = sum_t (max_s ||m_s|| / ||m_t||) m_t``. Defaults from LibMTL, the authors' code:
``beta=0.9``, ``beta_sigma=0``.

The EMA needs the past raw vectors, so ``uses_gram=False`` and ``needs_raw=True``; it is only
meaningful with ``grad_source=params`` (with ``features`` the D values are different samples each
step; a change of D resets the EMA with a warning). With ``beta=0`` there is no EMA and the method
is Gram-based (``uses_gram=True``). The returned weights are ``alpha_t / L_t``, the weights of the
current raw gradients (exact when ``beta=0``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..base import GradientBalancer
from ._common import active_index, check_range, parse_hparams, task_rows, to_device


class DBMTL(GradientBalancer):
    """DB-MTL (hparams: beta=0.9, beta_sigma=0.0); state: the EMA buffer ``[T, D]``."""

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        hp = parse_hparams("db_mtl", hparams, {"beta": 0.9, "beta_sigma": 0.0})
        self.beta = check_range("db_mtl", "beta", hp["beta"], 0.0, 1.0)
        self.beta_sigma = check_range("db_mtl", "beta_sigma", hp["beta_sigma"], 0.0)
        self.uses_gram = self.beta == 0.0
        self.needs_raw = not self.uses_gram
        self.buffer: torch.Tensor | None = None
        self.counts = torch.zeros(len(self.tasks), dtype=torch.int64)

    def _weights_from_gram(
        self, gram: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> torch.Tensor:
        inv = 1.0 / (losses + 1e-8)
        norms = gram.diagonal().clamp_min(0).sqrt() * inv
        return norms.max() / (norms + 1e-8) * inv

    def _combine(
        self, grads: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.uses_gram:
            return super()._combine(grads, losses, active)
        dev = grads.device
        idx = active_index(active, dev)
        inv = 1.0 / (losses + 1e-8)
        logg = grads * inv[:, None]  # gradient of log L_t
        self.buffer, fresh = task_rows(self.buffer, grads, len(self.tasks), "db_mtl", "the EMA")
        if fresh:
            self.counts = torch.zeros(len(self.tasks), dtype=torch.int64)
        self.counts[active] += 1
        k = self.counts[active].to(torch.float32)
        beta_k = torch.where(k > 1, self.beta / k**self.beta_sigma, torch.zeros_like(k))
        beta_k = to_device(beta_k, dev)[:, None]  # counts live on the CPU: no sync
        new = logg + beta_k * (self.buffer[idx] - logg)
        self.buffer.index_copy_(0, idx, new)
        norms = new.norm(dim=1)
        alpha = norms.max() / (norms + 1e-8)
        return alpha @ new, alpha * inv

    def state_dict(self) -> dict:
        state = {"counts": self.counts.clone()}
        if self.buffer is not None:
            state["buffer"] = self.buffer.detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.counts = state["counts"].clone()
        self.buffer = state["buffer"].clone() if "buffer" in state else None
