"""CAGrad: conflict-averse gradient descent.

Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021. The update
maximises the worst task improvement in a ball of radius ``c ||g0||`` around the mean gradient
``g0``; via the dual, ``d = g0 + (c ||g0|| / ||g_w||) g_w`` with ``w`` minimising
``g_w . g0 + c ||g0|| ||g_w||`` over the simplex. ``rescale=1`` divides by ``1 + c^2``
(``2``: by ``1 + c``, ``0``: none), as in the paper's code. Paper defaults ``c=0.4``, ``rescale=1``.
The dual is solved exactly in torch (``solvers.cagrad_dual``) instead of scipy's SLSQP.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..base import GradientBalancer
from ..solvers import cagrad_dual
from ._common import check_range, parse_hparams


class CAGrad(GradientBalancer):
    """CAGrad at the mean-gradient scale (weights sum to 1 when ``c = 0``)."""

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        hp = parse_hparams("cagrad", hparams, {"c": 0.4, "rescale": 1})
        self.c = check_range("cagrad", "c", hp["c"], 0.0)
        if hp["rescale"] not in (0, 1, 2):
            raise ValueError(f"cagrad: rescale must be 0, 1 or 2, got {hp['rescale']!r}")
        self.rescale = int(hp["rescale"])

    def _weights_from_gram(
        self, gram: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> torch.Tensor:
        n = gram.shape[0]
        mean = gram.new_full((n,), 1.0 / n)
        w = cagrad_dual(gram, self.c)
        g0_norm = (mean @ gram @ mean).clamp_min(0).sqrt()
        gw_norm = (w @ gram @ w).clamp_min(0).sqrt()
        lmbda = self.c * g0_norm / (gw_norm + 1e-8)  # the paper code's epsilon
        weights = mean + lmbda * w
        if self.rescale == 1:
            weights = weights / (1.0 + self.c**2)
        elif self.rescale == 2:
            weights = weights / (1.0 + self.c)
        return weights
