"""Aligned-MTL: align the principal components of the gradient system.

Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023. With the
Gram matrix ``G = V diag(lambda) V^T`` (rank r), the gradient matrix is replaced by its aligned
version with all singular values equal to the smallest non-zero one, ``sigma_r``:
``G_hat = G_rows^T B`` with ``B = sigma_r V diag(lambda^-1/2) V^T``, and the update is the sum of
the aligned task gradients, i.e. weights ``a = B 1`` (the paper's code, ``scale_mode="min"``).
Eigenvalues below ``max(lambda) * T * eps`` are dropped, as in the paper's code, with masks rather
than data-dependent shapes (no sync).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..base import GradientBalancer
from ._common import parse_hparams


class AlignedMTL(GradientBalancer):
    """Aligned-MTL (no hyper-parameters); identical gradients get weights 1 (plain sum)."""

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        parse_hparams("aligned_mtl", hparams, {})

    def _weights_from_gram(
        self, gram: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> torch.Tensor:
        lam, vec = torch.linalg.eigh(gram)
        # The reference code uses float32 eps (its Gram is float32); float64 eps would keep
        # round-off eigenvalues of a rank-deficient system.
        tol = lam.max() * gram.shape[0] * torch.finfo(torch.float32).eps
        keep = lam > tol
        sigma_min = torch.where(keep, lam, torch.full_like(lam, float("inf"))).min().sqrt()
        inv_sqrt = torch.where(keep, lam.clamp_min(1e-300).rsqrt(), torch.zeros_like(lam))
        b = sigma_min * (vec * inv_sqrt) @ vec.T
        return b.sum(1)
