"""GradVac: gradient vaccine, aligning task gradients to an EMA of their cosine similarity.

Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task Optimization in Massively
Multilingual Models", ICLR 2021 (Algorithm 2, whole-model granularity). For each task ``i`` and
the others ``j`` in a random order, with ``phi = cos(g_i^PC, g_j)`` and target ``phi_hat_ij``:
if ``phi < phi_hat`` then ``g_i^PC += ||g_i^PC|| (phi_hat sqrt(1-phi^2) - phi sqrt(1-phi_hat^2))
/ (||g_j|| sqrt(1-phi_hat^2)) g_j``; always ``phi_hat_ij <- (1-beta) phi_hat_ij + beta phi``.
The update is ``sum_i g_i^PC``. ``beta`` defaults to the paper's 1e-2 (LibMTL uses 0.5).

Like PCGrad this only moves along the original rows, so it is Gram-based (exact under DDP);
orders come from a CPU generator seeded by (seed, step counter).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..base import GradientBalancer
from ._common import active_index, check_range, parse_hparams, random_orders


class GradVac(GradientBalancer):
    """GradVac (hparams: beta=0.01, seed=0); state: the EMA targets ``rho [T, T]``."""

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        hp = parse_hparams("gradvac", hparams, {"beta": 0.01, "seed": 0})
        self.beta = check_range("gradvac", "beta", hp["beta"], 0.0, 1.0)
        self.seed = int(hp["seed"])
        self.step = 0
        self.rho = torch.zeros(len(self.tasks), len(self.tasks), dtype=torch.float64)

    def _weights_from_gram(
        self, gram: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> torch.Tensor:
        n, dev = gram.shape[0], gram.device
        orders = random_orders(n, self.seed, self.step, dev)
        self.step += 1
        idx = active_index(active, dev)
        self.rho = self.rho.to(dev)
        rho = self.rho[idx][:, idx].clone()
        coef = torch.eye(n, dtype=gram.dtype, device=dev)
        rows = torch.arange(n, device=dev)
        norms = gram.diagonal().clamp_min(0).sqrt()
        for k in range(n - 1):  # the T walks are independent: round k does all i at once
            j = orders[:, k]
            pc_norm = torch.einsum("it,tu,iu->i", coef, gram, coef).clamp_min(0).sqrt()
            phi = (coef @ gram)[rows, j] / (pc_norm * norms[j]).clamp_min(1e-300)
            target = rho[rows, j]
            root_t = (1.0 - target**2).clamp_min(1e-12).sqrt()
            step = (
                pc_norm
                * (target * (1.0 - phi**2).clamp_min(0).sqrt() - phi * root_t)
                / (norms[j] * root_t).clamp_min(1e-300)
            )
            coef[rows, j] += torch.where(phi < target, step, torch.zeros_like(step))
            rho[rows, j] = (1.0 - self.beta) * target + self.beta * phi
        full = self.rho.clone()
        full[idx[:, None], idx[None, :]] = rho  # absent tasks' targets untouched
        self.rho = full
        return coef.sum(0)

    def state_dict(self) -> dict:
        return {"step": torch.tensor(self.step), "rho": self.rho.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.rho = state["rho"].to(torch.float64).clone()
