"""IMTL-G: impartial gradient weighting.

Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021. The aggregate ``g = sum a_t g_t``
(``sum a_t = 1``) has equal projections on every unit task gradient ``u_t``; closed form
``a_{2:T} = g_1 U^T (D U^T)^{-1}`` with ``D`` rows ``g_1 - g_t`` and ``U`` rows ``u_1 - u_t``,
``a_1 = 1 - sum a_{2:T}``. Every product is an inner product, so this is Gram-based.
(IMTL-L, the loss-scale half of the paper, is a loss-level method and not part of this class.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..base import GradientBalancer
from ._common import parse_hparams


class IMTL(GradientBalancer):
    """IMTL-G (no hyper-parameters); weights sum to 1."""

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        parse_hparams("imtl", hparams, {})

    def _weights_from_gram(
        self, gram: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> torch.Tensor:
        norms = gram.diagonal().clamp_min(0).sqrt()
        gu = gram / norms.clamp_min(1e-300)[None, :]  # gu[a, b] = g_a . u_b
        x = gu[0, 0] - gu[0, 1:]  # g_1 U^T
        du = gu[0, 0] - gu[0, 1:][None, :] - gu[1:, 0][:, None] + gu[1:, 1:]  # D U^T
        # a_{2:T} = x (D U^T)^-1, i.e. solve (D U^T)^T a = x. A tiny ridge keeps identical
        # gradients (D = 0, x = 0 -> a = e_1) solvable; solve_ex skips the error check (a sync).
        eye = torch.eye(du.shape[0], dtype=du.dtype, device=du.device)
        ridge = 1e-10 * norms.mean().clamp_min(1e-300)
        rest = torch.linalg.solve_ex(du.T + ridge * eye, x.unsqueeze(-1), check_errors=False)[0]
        rest = rest.squeeze(-1)
        return torch.cat([(1.0 - rest.sum()).reshape(1), rest])
