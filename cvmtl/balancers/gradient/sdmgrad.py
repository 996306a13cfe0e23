"""SDMGrad: stochastic direction-oriented multi-objective gradient descent.

Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic
Algorithms", NeurIPS 2023. The direction ``d = (G^T w + lamda g0) / (1 + lamda)`` (``g0`` the mean
task gradient) stays near ``g0`` while improving every task; ``w`` on the simplex minimises
``1/2 ||G^T w + lamda g0||^2``, approached by ``niter`` projected stochastic gradient steps per
training step, warm-started from the previous step's ``w``: with samples ``xi1, xi2`` and
``A = G_xi1 G_xi2^T / s^2`` (``s`` the mean task-gradient norm, from ``diag A``),
``w <- Proj_simplex(w - lr (A w + lamda mean_j A[:, j]))`` with heavy-ball momentum; the update
uses a third sample ``zeta``. As in LibMTL (``LibMTL/weighting/SDMGrad.py``, from the authors'
code): ``lamda=0.3``, ``niter=20``, step size 5 and momentum 0.5 (a fresh momentum buffer each
training step: the authors create a new ``torch.optim.SGD`` per step).

One batch per step here, not three: LibMTL's trainer draws three batches per step for SDMGrad and
uses them as ``zeta, xi1, xi2``; our balancers see one batch's gradients ``G``, which stand in for
all three (``A`` is the batch's scaled Gram matrix, a biased estimate of ``E[G] E[G]^T``; see
:mod:`cvmtl.balancers.gradient.modo` for the same choice). :func:`sdmgrad_simplex_weights` takes
the cross matrix ``G_xi1 G_xi2^T``, so the rule is checked against LibMTL with three independent
samples too (``tests/test_peer_libmtl_stochastic.py``).

Only the Gram matrix is used: ``uses_gram=True``, exact under DDP in both gradient modes. The
returned weights are ``(w + lamda / T) / (1 + lamda)`` (``update = weights @ G``); ``w`` itself is
the state. Tasks absent from a step keep their entries of ``w`` (as for MoDo's ``lambda``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..base import GradientBalancer
from ..solvers import project_simplex
from ._common import active_index, check_range, parse_hparams, simplex_step

# The inner solver's step size and momentum: fixed in the authors' code and in LibMTL.
INNER_LR = 5.0
INNER_MOMENTUM = 0.5


def sdmgrad_simplex_weights(
    cross: torch.Tensor, w: torch.Tensor, lamda: float, niter: int
) -> torch.Tensor:
    """``niter`` projected heavy-ball steps on ``w`` from ``cross = G_xi1 G_xi2^T`` (``[T, T]``;
    the Gram matrix with one sample). The matrix is divided by the squared mean gradient norm so
    that the fixed step size suits any gradient scale."""
    scale = cross.diagonal().clamp_min(0.0).sqrt().mean()
    a = cross / (scale**2 + 1e-8)
    a0 = a.mean(dim=1)  # G_xi1 g0(xi2) / s^2
    buf = None
    for _ in range(niter):
        grad = a @ w + lamda * a0
        # torch.optim.SGD's momentum without dampening: the first buffer is the gradient itself
        buf = grad if buf is None else INNER_MOMENTUM * buf + grad
        w = project_simplex(w - INNER_LR * buf)
    return w


class SDMGrad(GradientBalancer):
    """SDMGrad (hparams: lamda=0.3, niter=20); state: the simplex weights ``w [T]``."""

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        hp = parse_hparams("sdmgrad", hparams, {"lamda": 0.3, "niter": 20})
        self.lamda = check_range("sdmgrad", "lamda", hp["lamda"], 0.0)
        niter = check_range("sdmgrad", "niter", hp["niter"], 1)
        if niter != int(niter):
            raise ValueError(f"sdmgrad: niter must be an integer, got {hp['niter']!r}")
        self.niter = int(niter)
        n = len(self.tasks)
        self.w = torch.full((n,), 1.0 / n, dtype=torch.float64)

    def _weights_from_gram(
        self, gram: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> torch.Tensor:
        idx = active_index(active, gram.device)
        self.w, w = simplex_step(
            self.w, idx, lambda w: sdmgrad_simplex_weights(gram, w, self.lamda, self.niter)
        )
        return (w + self.lamda / len(active)) / (1.0 + self.lamda)

    def state_dict(self) -> dict:
        return {"w": self.w.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.w = state["w"].to(torch.float64).clone()
