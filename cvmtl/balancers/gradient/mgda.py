"""MGDA: the min-norm point of the convex hull of the task gradients.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018 (after
Desideri's MGDA, 2012). Default ``normalization="none"`` is the plain MGDA of the paper's
Algorithm 2 (and LibMTL's default); ``l2 | loss | loss+`` are the paper code's normalizers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..base import GradientBalancer
from ..solvers import min_norm_simplex
from ._common import parse_hparams

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


class MGDA(GradientBalancer):
    """Weights on the raw gradients summing to 1 (the balancer contract): the min-norm point is
    found on the normalized gradients ``g_t / n_t`` and mapped back (``w_t ∝ sol_t / n_t``)."""

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        hp = parse_hparams("mgda", hparams, {"normalization": "none"})
        if hp["normalization"] not in NORMALIZATIONS:
            raise ValueError(
                f"mgda: normalization must be one of {NORMALIZATIONS}, got {hp['normalization']!r}"
            )
        self.normalization: str = hp["normalization"]

    def _weights_from_gram(
        self, gram: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> torch.Tensor:
        norms = gram.diagonal().clamp_min(0).sqrt()
        if self.normalization == "none":
            return min_norm_simplex(gram)
        if self.normalization == "l2":
            scale = norms
        elif self.normalization == "loss":
            scale = losses
        else:  # loss+
            scale = losses * norms
        scale = scale.clamp_min(1e-12)
        sol = min_norm_simplex(gram / (scale[:, None] * scale[None, :]))
        w = sol / scale
        return w / w.sum()
