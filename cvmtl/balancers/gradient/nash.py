"""Nash-MTL: the Nash bargaining solution of the task gradients.

Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022. The weights solve
``G a = 1/a, a > 0`` (``G`` the Gram matrix); as in the paper's code the Gram matrix is first
divided by its Frobenius norm, so the returned weights satisfy ``(G / ||G||_F) a = 1/a``
(``a = sqrt(||G||_F) a*`` with ``a*`` the unnormalised solution; the direction is the same, the
scale is the one the published numbers were obtained with). Defaults from the paper's code:
``update_weights_every=1``, ``optim_niter=20``, ``max_norm=1.0`` (0 disables clipping; the clip
uses ``||sum a_t g_t|| = sqrt(a^T G a)``, so it is exact from the Gram matrix too).

The paper's code solves by CCP with cvxpy and silently returns the previous (initially equal)
weights when the solver fails. Here a damped Newton method (``solvers.nash_newton``, warm started,
``optim_niter`` iterations) runs in torch on the Gram's device; a step whose residual
``max |a (G a) - 1|`` exceeds ``tol`` (Pareto-stationary or badly conditioned gradients) is
*counted* in ``failures`` (state_dict) and reported by a loud ``RuntimeWarning`` when the weights
or the state are next read (the check is lazy so the hot loop never syncs). The best Newton iterate
is used; a non-finite one is replaced by the warm start, never by equal weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..solvers import nash_newton
from ._common import ReportsFailures, SolveFailures, active_index, check_range, parse_hparams


class NashMTL(ReportsFailures):
    """Nash-MTL (hparams: update_weights_every, optim_niter, max_norm, tol)."""

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        hp = parse_hparams(
            "nash_mtl",
            hparams,
            {"update_weights_every": 1, "optim_niter": 20, "max_norm": 1.0, "tol": 1e-4},
        )
        self.update_weights_every = int(
            check_range("nash_mtl", "update_weights_every", hp["update_weights_every"], 1)
        )
        self.optim_niter = int(check_range("nash_mtl", "optim_niter", hp["optim_niter"], 1))
        self.max_norm = check_range("nash_mtl", "max_norm", hp["max_norm"], 0.0)
        self.tol = check_range("nash_mtl", "tol", hp["tol"], 0.0)
        self.step = 0
        self.alpha = torch.ones(len(self.tasks), dtype=torch.float64)  # last solution, all tasks
        self.failures = SolveFailures("nash_mtl", self.tol, "best Newton iterate")

    def _weights_from_gram(
        self, gram: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> torch.Tensor:
        idx = active_index(active, gram.device)
        self.alpha = self.alpha.to(gram.device)
        warm = self.alpha[idx]
        if self.step % self.update_weights_every == 0:
            g = gram / torch.linalg.matrix_norm(gram).clamp_min(1e-300)
            # Rescale the warm start to its best multiple: phi(s a) is minimal at
            # s = sqrt(T / a^T G a); a cheap first step toward the new solution.
            scale = (len(active) / (warm @ g @ warm).clamp_min(1e-300)).sqrt()
            warm = warm * scale.clamp(1e-3, 1e3)  # bounded: a^T G a ~ 0 near Pareto-stationarity
            alpha, res = nash_newton(g, warm, self.optim_niter)
            finite = torch.isfinite(alpha).all() & (alpha > 0).all()
            alpha = torch.where(finite, alpha, warm)
            bad = ~finite | ~(res <= self.tol)
            self.failures.record(bad, res)
            self.alpha = self.alpha.index_copy(0, idx, alpha)
        else:
            alpha = warm
        self.step += 1
        if self.max_norm > 0:
            norm = (alpha @ gram @ alpha).clamp_min(0).sqrt()
            alpha = alpha * (self.max_norm / norm.clamp_min(1e-300)).clamp_max(1.0)
        return alpha

    def state_dict(self) -> dict:
        return {
            "step": torch.tensor(self.step),
            "alpha": self.alpha.detach().cpu().clone(),
            "failures": self.failures.state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.alpha = state["alpha"].to(torch.float64).clone()
        self.failures.load(state["failures"])
