"""ConFIG: conflict-free update direction (registered as ``config``).

Liu, Chu & Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks",
ICLR 2025 (arXiv 2408.11104), Eq. 2. With the unit gradients ``u_i = g_i / ||g_i||`` stacked as
``U [T, D]``, the direction ``x = U^+ 1`` (Moore-Penrose pseudo-inverse) has the same inner
product with every ``u_i`` (when the gradients are independent), so it makes the same angle with
every task gradient; the update is ``(sum_i g_i . x_hat) x_hat`` with ``x_hat = x / ||x||``: the
direction scaled by the summed projections of the raw gradients on it (TorchJD's ``ConFIG``
with its default preference vector of ones).

Gram-only: ``U^+ = U^T (U U^T)^+`` and ``U U^T`` is the Gram matrix rescaled by the norms (its
diagonal), so ``x = U^T c`` with ``c = G_u^+ 1``, ``||x||^2 = c^T G_u c`` and
``g_i . x = ||g_i|| (G_u c)_i``; the update is ``sum_j w_j g_j`` with
``w_j = (sum_i g_i . x_hat) c_j / (||x|| ||g_j||)``. Hence exact under DDP and usable in features
mode. A zero gradient gets a zero unit vector (as TorchJD's ``nan_to_num``) and weight 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..base import GradientBalancer
from ._common import parse_hparams


class ConFIG(GradientBalancer):
    """ConFIG with equal preferences (no hyper-parameters)."""

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        parse_hparams("config", hparams, {})

    def _weights_from_gram(
        self, gram: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> torch.Tensor:
        norms = gram.diagonal().clamp_min(0).sqrt()
        inv = torch.where(norms > 0, 1.0 / norms.clamp_min(1e-300), torch.zeros_like(norms))
        unit_gram = gram * inv[:, None] * inv[None, :]
        # Pseudo-inverse by eigendecomposition: eigenvalues of U U^T are the squared singular
        # values of U. The Gram matrix arrives from a float32 product, so eigenvalues below
        # float32 round-off (relative to the largest) are noise and dropped, as a pinv drops
        # small singular values (same cut as aligned_mtl).
        lam, vec = torch.linalg.eigh(unit_gram)
        tol = lam.max() * gram.shape[0] * torch.finfo(torch.float32).eps
        keep = lam > tol
        inv_lam = torch.where(keep, 1.0 / lam.clamp_min(1e-300), torch.zeros_like(lam))
        c = vec @ (inv_lam * vec.sum(0))  # G_u^+ 1 (vec.sum(0) = V^T 1)
        uc = unit_gram @ c  # u_i . x
        # torch.nn.functional.normalize's floor on ||x||, as the reference normalizes x.
        x_norm = (c @ uc).clamp_min(0).sqrt().clamp_min(1e-12)
        length = (norms * uc).sum() / x_norm  # sum_i g_i . x_hat
        return (length / x_norm) * c * inv
