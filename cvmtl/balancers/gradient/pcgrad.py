"""PCGrad: project each task gradient off the others' conflicting directions.

Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020. Algorithm 1: for each task
``i`` and the other tasks ``j`` in a random order, if ``g_i^PC . g_j < 0`` then
``g_i^PC -= (g_i^PC . g_j) / ||g_j||^2 g_j``; the update is ``sum_i g_i^PC`` (no 1/T).

Every projected gradient is a linear combination of the original rows, so we track the
coefficient matrix ``C`` (``g_i^PC = C[i] @ grads``) using inner products only: Gram-based, exact
under DDP. The order is drawn from a CPU generator seeded by (seed, step counter): every rank
agrees and a resumed run continues the same sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..base import GradientBalancer
from ._common import parse_hparams, random_orders


def project_conflicts(gram: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """Coefficients ``C [T, T]`` of the PCGrad-projected gradients, given the orders ``[T, T-1]``.

    The T projections are independent, so round ``k`` treats every ``i`` at once with its own
    ``j = orders[i, k]``.
    """
    n = gram.shape[0]
    coef = torch.eye(n, dtype=gram.dtype, device=gram.device)
    rows = torch.arange(n, device=gram.device)
    sq = gram.diagonal().clamp_min(1e-300)
    for k in range(n - 1):
        j = orders[:, k]
        dot = (coef @ gram)[rows, j]  # g_i^PC . g_j
        coef[rows, j] -= dot.clamp_max(0) / sq[j]
    return coef


class PCGrad(GradientBalancer):
    """PCGrad (hparams: ``seed`` of the per-step task orders, default 0)."""

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        hp = parse_hparams("pcgrad", hparams, {"seed": 0})
        self.seed = int(hp["seed"])
        self.step = 0

    def _weights_from_gram(
        self, gram: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> torch.Tensor:
        orders = random_orders(gram.shape[0], self.seed, self.step, gram.device)
        self.step += 1
        return project_conflicts(gram, orders).sum(0)

    def state_dict(self) -> dict:
        return {"step": torch.tensor(self.step)}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
