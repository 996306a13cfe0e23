"""FairGrad: alpha-fair allocation of the update among the tasks.

Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024. The update ``d`` maximises
the alpha-fair utility ``sum_t u(g_t . d)`` of the task gains (``u(x) = log x`` for alpha = 1,
``x^(1-alpha) / (1-alpha)`` otherwise) over a ball; with ``d = sum_t w_t g_t`` its optimality
condition is ``(G w)_t = w_t^(-1/alpha)``, ``w > 0`` (``G`` the Gram matrix), and the update is
``sum_t w_t g_t`` as solved (no normalisation or clipping, as in LibMTL).
alpha = 1 is Nash-MTL's system ``G w = 1/w``; larger alpha moves toward max-min fairness.
Default ``alpha=1.0`` (LibMTL's ``FairGrad_alpha``).

The system is the stationarity condition of ``phi(w) = w^T G w / 2 - sum_t h(w_t)`` with
``h' = w^(-1/alpha)``; ``h`` is concave, so ``phi`` is strictly convex on ``w > 0`` and its
minimiser (when one exists: not at Pareto-stationary gradients) is the unique solution. LibMTL
solves with scipy's ``least_squares`` on the CPU; here Newton's method on ``phi`` runs in torch on
the Gram's device (``fairgrad_newton``, ``optim_niter`` iterations): steps taken in ``log w`` (so
``w`` stays positive), with a branch-free backtracking search (every step size ``2^-k`` evaluated
at once, the largest with enough decrease of ``phi`` kept), from the solution for orthogonal
gradients. A solve whose relative residual ``max |(G w)_t w_t^(1/alpha) - 1|`` exceeds ``tol`` is
counted in ``failures`` and reported by a ``RuntimeWarning`` when the weights or the state are
next read (lazily: the hot loop never syncs); the last iterate is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._common import ReportsFailures, SolveFailures, check_range, parse_hparams

_BACKTRACK = 41  # candidate step sizes 1, 1/2, ..., 2^-40 (and staying put), evaluated at once
_MAX_LOG_STEP = 10.0  # at most a factor e^10 per weight and iteration


def fairgrad_newton(
    gram: torch.Tensor, alpha: float, iters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``G w = w^(-1/alpha), w > 0``; returns ``(w, max |(G w) w^(1/alpha) - 1|)``."""
    p = 1.0 / alpha
    # made on the device (a copy from the host would wait for the device stream)
    steps = torch.exp2(-torch.arange(_BACKTRACK, dtype=gram.dtype, device=gram.device))[:, None]

    def h(w: torch.Tensor) -> torch.Tensor:  # the concave part: h' = w^-p
        return torch.log(w) if p == 1.0 else w ** (1.0 - p) / (1.0 - p)

    def phi(w: torch.Tensor) -> torch.Tensor:  # [..., T] -> [...]; +inf outside w > 0
        val = 0.5 * torch.einsum("...i,ij,...j->...", w, gram, w) - h(w).sum(-1)
        inf = torch.full_like(val, math.inf)
        return torch.where((w > 0).all(-1) & val.isfinite(), val, inf)

    # Start from the solution for orthogonal gradients, ``w_t = G_tt^(-1/(1+p))`` (scale-free and
    # right for mixed gradient norms), moved to the minimiser of phi along its ray:
    # phi(s u) is least at s^(1+p) = sum_t u_t^(1-p) / u^T G u (bounded: u^T G u may be ~0).
    tiny = torch.finfo(gram.dtype).tiny
    diag = gram.diagonal()
    u = diag.clamp_min(1e-12 * diag.max() + tiny) ** (-1.0 / (1.0 + p))
    ratio = (u ** (1.0 - p)).sum() / (u @ gram @ u).clamp_min(tiny)
    w = u * (ratio ** (1.0 / (1.0 + p))).clamp(1e-3, 1e3)
    for _ in range(iters):
        grad = gram @ w - w ** (-p)
        hess = gram + torch.diag(p * w ** (-p - 1.0))
        d = -torch.linalg.solve_ex(hess, grad.unsqueeze(-1), check_errors=False)[0].squeeze(-1)
        # The Newton step taken in log w, ``w exp(t d / w)``: the same first-order step, but it
        # never leaves w > 0 and shrinks a weight by orders of magnitude per iteration where
        # additive steps only halve it (large alpha, unequal gradient norms). Its largest log
        # change is capped at _MAX_LOG_STEP so that an early, poorly modelled step cannot jump
        # far past the solution toward 0, where phi is nearly flat for alpha > 1.
        r = d / w
        t = steps * (_MAX_LOG_STEP / r.abs().max().clamp_min(tiny)).clamp_max(1.0)  # [K, 1]
        cand = w * torch.exp(t * r)  # [K, T]
        # Armijo with a rounding slack: near the solution the decrease is below the precision
        # of phi, and the full step must still be taken for Newton's quadratic convergence.
        base = phi(w)
        slack = 1e-12 * (1.0 + base.abs())
        ok = phi(cand) <= base + 1e-4 * t[:, 0] * (grad @ d) + slack
        # staying put always qualifies (appended as w itself: a singular Hessian gives r = NaN)
        ok, cand = torch.cat([ok, ok.new_ones(1)]), torch.cat([cand, w[None]])
        first = ok.to(gram.dtype).argmax()  # the largest qualifying step (no host sync)
        w = cand.index_select(0, first.reshape(1))[0]
    residual = ((gram @ w) * w**p - 1.0).abs().max()
    return w, residual


class FairGrad(ReportsFailures):
    """FairGrad (hparams: alpha=1.0, optim_niter=30, tol=1e-4)."""

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        hp = parse_hparams("fairgrad", hparams, {"alpha": 1.0, "optim_niter": 30, "tol": 1e-4})
        self.alpha = check_range("fairgrad", "alpha", hp["alpha"], 0.0)
        if self.alpha == 0:  # w^(-1/alpha) needs alpha > 0 (alpha -> 0 is the plain sum)
            raise ValueError("fairgrad: alpha must be > 0, got 0")
        self.optim_niter = int(check_range("fairgrad", "optim_niter", hp["optim_niter"], 1))
        self.tol = check_range("fairgrad", "tol", hp["tol"], 0.0)
        self.failures = SolveFailures("fairgrad", self.tol, "last Newton iterate")

    def _weights_from_gram(
        self, gram: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> torch.Tensor:
        w, res = fairgrad_newton(gram, self.alpha, self.optim_niter)
        bad = ~torch.isfinite(w).all() | ~(res <= self.tol)
        self.failures.record(bad, res)
        return w

    def state_dict(self) -> dict:
        return {"failures": self.failures.state()}

    def load_state_dict(self, state: dict) -> None:
        self.failures.load(state["failures"])
