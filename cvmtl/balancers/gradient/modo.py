"""MoDo: multi-objective gradient with double sampling.

Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective Learning: Optimization,
Generalization and Conflict-Avoidance", NeurIPS 2023. Weights ``lambda`` on the simplex are kept
across steps; each step draws three independent samples ``z1, z2, z3`` and does
``lambda <- Proj_simplex(lambda - gamma (G_z1 G_z2^T lambda + rho lambda))`` (a projected
stochastic gradient step on ``1/2 ||G lambda||^2 + rho/2 ||lambda||^2``, unbiased because the two
factors come from independent samples), then updates the model with ``G_z3^T lambda``.
Defaults from LibMTL (median-research-group/LibMTL, ``LibMTL/weighting/MoDo.py``):
``gamma=1e-3``, ``rho=0.1``.

One batch per step here, not three. LibMTL's trainer runs three forward passes on three fresh
batches for MoDo and feeds their per-task gradients as ``z1, z2, z3`` (and averages the heads'
gradients over the three). Our balancers see one batch's gradients ``G`` per step, so ``G`` stands
in for all three samples: the weight step uses ``G G^T`` (the batch's Gram matrix) instead of the
cross-product of two independent samples, which makes ``lambda``'s stochastic gradient biased (it
estimates ``E[G G^T]`` rather than ``E[G] E[G]^T``) but costs one batch instead of three. The
update rule given the matrix ``G_z1 G_z2^T`` is :func:`modo_weights`, checked against LibMTL with
three independent samples as well as with one sample used three times (our setting) in
``tests/test_peer_libmtl_stochastic.py``.

Only the Gram matrix is used: ``uses_gram=True``, exact under DDP in both gradient modes. Tasks
absent from a step keep their entries of ``lambda``; a step reads its tasks' entries rescaled onto
their simplex (``_common.simplex_step``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..base import GradientBalancer
from ..solvers import project_simplex
from ._common import active_index, check_range, parse_hparams, simplex_step


def modo_weights(
    cross: torch.Tensor, lambd: torch.Tensor, gamma: float, rho: float
) -> torch.Tensor:
    """One MoDo weight step: ``Proj(lambda - gamma (cross lambda + rho lambda))`` with
    ``cross = G_z1 G_z2^T`` (``[T, T]``; the Gram matrix ``G G^T`` with one sample)."""
    return project_simplex(lambd - gamma * (cross @ lambd + rho * lambd))


class MoDo(GradientBalancer):
    """MoDo (hparams: gamma=1e-3, rho=0.1); state: the weights ``lambd [T]`` on the simplex."""

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        hp = parse_hparams("modo", hparams, {"gamma": 1e-3, "rho": 0.1})
        self.gamma = check_range("modo", "gamma", hp["gamma"], 0.0)
        self.rho = check_range("modo", "rho", hp["rho"], 0.0)
        n = len(self.tasks)
        self.lambd = torch.full((n,), 1.0 / n, dtype=torch.float64)

    def _weights_from_gram(
        self, gram: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> torch.Tensor:
        idx = active_index(active, gram.device)
        self.lambd, new = simplex_step(
            self.lambd, idx, lambda lambd: modo_weights(gram, lambd, self.gamma, self.rho)
        )
        return new

    def state_dict(self) -> dict:
        return {"lambd": self.lambd.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.lambd = state["lambd"].to(torch.float64).clone()
