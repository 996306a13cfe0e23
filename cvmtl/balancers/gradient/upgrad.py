"""UPGrad: unconflicting projection of gradients.

Quinton & Layer, "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232 (2024).
Each task gradient is projected onto the dual cone ``{x : g_j . x >= 0 for all j}`` of the
gradients and the projections are averaged. The projection of ``J^T u`` is ``J^T w`` with
``w = argmin_{v >= u} v^T G v`` (paper Prop. 1), so with ``u_i = e_i / T`` the weights are
``sum_i w_i``: Gram-based, solved exactly by active-set enumeration (``solvers.min_quad_lower``).
The Gram matrix is used as is (the torchjd reference adds a 1e-4 ridge and normalizes; both only
serve its quadprog solver): the weights equal TorchJD's UPGrad with that ridge off, badly scaled
gradients included (``tests/test_peer_torchjd.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..base import GradientBalancer
from ..solvers import min_quad_lower
from ._common import parse_hparams


class UPGrad(GradientBalancer):
    """UPGrad with the mean as base weighting (no hyper-parameters)."""

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        parse_hparams("upgrad", hparams, {})

    def _weights_from_gram(
        self, gram: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> torch.Tensor:
        n = gram.shape[0]
        lower = torch.eye(n, dtype=gram.dtype, device=gram.device) / n
        return min_quad_lower(gram, lower).sum(0)
