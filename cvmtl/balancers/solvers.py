"""Small torch solvers for the gradient balancers (all on the Gram matrix's device, no sync).

The problems live in T dimensions (T = number of tasks, a handful), so the exact solvers enumerate
the 2^T candidate supports / active sets at once as one batched ``linalg.solve``: no data-dependent
branches, no ``.item()``, no CPU round trip, and the answer is exact (up to a 1e-12 ridge) rather
than an iterate (the ridge is relative to each task's squared gradient norm, so badly scaled
tasks are solved as exactly as unit ones). The enumeration is capped at ``MAX_ENUM_TASKS`` tasks.

- ``min_norm_simplex``: MGDA's min-norm point of the convex hull (Sener & Koltun, NeurIPS 2018);
  Frank-Wolfe beyond the cap.
- ``cagrad_dual``: CAGrad's dual over the simplex (Liu et al., NeurIPS 2021).
- ``min_quad_lower``: ``min_w w^T G w  s.t.  w >= u`` per row of ``u`` (UPGrad's projection onto
  the dual cone, Quinton & Layer 2024).
- ``project_simplex``: Euclidean projection onto the probability simplex (MoDo, SDMGrad).
- ``nash_newton``: the Nash bargaining solution ``G a = 1/a`` (Navon et al., ICML 2022) by damped
  Newton on the self-concordant potential ``a^T G a / 2 - sum(log a)``.
- ``fairgrad_newton``: FairGrad's ``G w = w^(-1/alpha)`` (Ban & Ji, ICML 2024; alpha = 1 is the
  Nash system), or ``(G w)_t = (r_t / w_t)^(1/alpha)`` with task priorities ``r``, by Newton
  steps in ``log w`` with a branch-free backtracking search.
"""

from __future__ import annotations

import math

import torch

MAX_ENUM_TASKS = 12
_RIDGE = 1e-12


def subset_masks(n: int, device: torch.device, empty: bool = False) -> torch.Tensor:
    """``[S, n]`` float64 0/1 masks of the non-empty subsets of ``range(n)``, largest first.

    Largest first so that ties (e.g. identical gradients) resolve to the full support.
    """
    codes = torch.arange(0 if empty else 1, 2**n, device=device)
    bits = ((codes[:, None] >> torch.arange(n, device=device)) & 1).to(torch.float64)
    return bits[bits.sum(1).argsort(descending=True, stable=True)]


def _ridge(gram: torch.Tensor) -> torch.Tensor:
    """``[T]`` ridge that keeps singular faces solvable (identical rows), relative to each task's
    own squared gradient norm: the same as solving in the unit gradients' coordinates
    (``D^-1 G D^-1``, ``D = diag(||g_i||)``) with a constant ridge, so the answer does not
    depend on the tasks' relative scales. A ridge relative to the mean squared norm would swamp
    a small task's diagonal (norms 1e-2 vs 1e2: UPGrad's weight on it off by 1e-2).
    A zero gradient gets the mean's (its row is zero: any ridge keeps its faces solvable)."""
    d = gram.diagonal()
    return _RIDGE * torch.where(d > 0, d, d.mean()).clamp_min(1e-300)


def _masked_solve(gram: torch.Tensor, masks: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve ``G_SS x_S = rhs_S`` for each support ``S`` (rows of ``masks``); ``x = rhs`` off S."""
    eye = torch.diag_embed(1.0 - masks)
    a = gram * (masks[..., :, None] * masks[..., None, :]) + eye
    a = a + torch.diag_embed(masks * _ridge(gram))
    # solve_ex without error checks: checking would sync with the device; a singular system
    # yields non-finite candidates, which the callers discard.
    return torch.linalg.solve_ex(a, rhs.unsqueeze(-1), check_errors=False)[0].squeeze(-1)


def _pick(w: torch.Tensor, obj: torch.Tensor) -> torch.Tensor:
    # index_select with a tensor index: ``w[obj.argmin()]`` would turn the index into a Python
    # int, a device sync.
    return w.index_select(0, obj.argmin().reshape(1))[0]


def _quad(w: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    return torch.einsum("...i,ij,...j->...", w, gram, w)


def min_norm_simplex(gram: torch.Tensor, fw_iters: int = 250) -> torch.Tensor:
    """``argmin_{w in simplex} w^T G w`` for a PSD ``gram [T, T]`` (float64)."""
    n = gram.shape[0]
    if n == 1:
        return gram.new_ones(1)
    if n > MAX_ENUM_TASKS:
        return _frank_wolfe(gram, fw_iters)
    masks = subset_masks(n, gram.device)
    u = _masked_solve(gram, masks, masks)  # G_S^{-1} 1_S
    s = u.sum(-1, keepdim=True)
    w = u / s  # the minimiser on the affine hull of the face
    ok = (s.squeeze(-1) > 0) & (w >= -1e-9).all(-1)
    w = w.clamp_min(0)
    w = w / w.sum(-1, keepdim=True)
    # Every feasible candidate is a point of the simplex and the optimum's own face yields the
    # optimum, so the feasible candidate of least value is the answer.
    obj = _quad(w, gram)
    obj = torch.where(ok & obj.isfinite(), obj, torch.full_like(obj, float("inf")))
    return _pick(w, obj)


def _frank_wolfe(gram: torch.Tensor, iters: int) -> torch.Tensor:
    """Frank-Wolfe with exact line search (MGDA-UB's solver) for many tasks."""
    n = gram.shape[0]
    w = gram.new_full((n,), 1.0 / n)
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    for _ in range(iters):
        gw = gram @ w
        v = eye.index_select(0, gw.argmin().reshape(1))[0]
        d = v - w
        den = _quad(d, gram).clamp_min(1e-300)
        gamma = (-(d @ gw) / den).clamp(0.0, 1.0)
        w = w + gamma * d
    return w


def cagrad_dual(gram: torch.Tensor, c: float) -> torch.Tensor:
    """CAGrad's dual ``argmin_{w in simplex} w^T G b + c ||g0|| sqrt(w^T G w)``, ``b = 1/T``.

    On a face ``S`` with ``Q = G_SS``, ``p = (G b)_S``, ``k = c ||g0||``, stationarity reads
    ``p + k Q w / r = mu 1`` with ``r = ||g_w||``; with ``z = k w / r``:
    ``z = mu Q^-1 1 - Q^-1 p`` and ``z^T Q z = k^2`` is a quadratic in ``mu`` (take the root with
    ``sum(z) > 0``), then ``w = z / sum(z)``.
    Singletons are vertices (always candidates); the feasible candidate of least value wins.
    """
    n = gram.shape[0]
    if n == 1:
        return gram.new_ones(1)
    if n > MAX_ENUM_TASKS:
        raise ValueError(f"cagrad: at most {MAX_ENUM_TASKS} tasks, got {n}")
    b = gram.new_full((n,), 1.0 / n)
    gb = gram @ b
    k = c * _quad(b, gram).clamp_min(0).sqrt()
    masks = subset_masks(n, gram.device)
    u = _masked_solve(gram, masks, masks)
    v = _masked_solve(gram, masks, masks * gb)
    a1, b1 = u.sum(-1), v.sum(-1)
    disc = b1**2 - a1 * ((v * gb * masks).sum(-1) - k**2)
    mu = (b1 + disc.clamp_min(0).sqrt()) / a1
    z = mu[:, None] * u - v
    w = z / z.sum(-1, keepdim=True)
    single = masks.sum(-1) == 1
    w = torch.where(single[:, None], masks, w)
    ok = single | ((disc > 0) & (w >= -1e-9).all(-1))
    w = torch.nan_to_num(w.clamp_min(0))
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-300)
    obj = w @ gb + k * (_quad(w, gram).clamp_min(0) + 1e-20).sqrt()
    obj = torch.where(ok & obj.isfinite(), obj, torch.full_like(obj, float("inf")))
    return _pick(w, obj)


def min_quad_lower(gram: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """``W[r] = argmin_{w >= lower[r]} w^T G w`` for each row of ``lower [R, T]``.

    Active-set enumeration: for a free set ``F`` the rest sits at its bound and
    ``G_FF w_F = -G_FA lower_A``; the feasible candidate of least value is the optimum.
    """
    n = gram.shape[0]
    if n > MAX_ENUM_TASKS:
        raise ValueError(f"upgrad: at most {MAX_ENUM_TASKS} tasks, got {n}")
    free = subset_masks(n, gram.device, empty=True)  # [S, n]
    low = lower[:, None, :]  # [R, 1, n]
    fixed = low * (1.0 - free)  # bounds on the active set, zero on F
    rhs = free * -(fixed @ gram) + fixed  # gram symmetric: (G fixed)_F
    w = _masked_solve(gram, free.expand(lower.shape[0], -1, -1), rhs)  # [R, S, n]
    tol = 1e-9 * (1.0 + w.abs())
    ok = (w >= low - tol).all(-1)
    w = torch.maximum(w, low)
    obj = _quad(w, gram)
    obj = torch.where(ok & obj.isfinite(), obj, torch.full_like(obj, float("inf")))
    best = obj.argmin(-1)
    return w[torch.arange(lower.shape[0], device=gram.device), best]


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of ``v [n]`` onto the probability simplex (sort-based; Held, Wolfe &
    Crowder 1974, Duchi et al. ICML 2008). Runs on ``v``'s device without a host sync."""
    n = v.shape[0]
    u = v.sort(descending=True).values
    k = torch.arange(1, n + 1, dtype=v.dtype, device=v.device)
    excess = u.cumsum(0) - 1.0
    # u_k > (sum_{i<=k} u_i - 1) / k holds on a prefix of k; theta comes from its last index,
    # the argmax of k masked by the condition (gathered: indexing with a 0-dim tensor would read
    # it on the host)
    last = ((u * k > excess) * k).argmax().view(1)
    theta = excess.gather(0, last) / k.gather(0, last)
    return (v - theta).clamp_min(0.0)


def nash_newton(
    gram: torch.Tensor, alpha0: torch.Tensor, iters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``G a = 1/a, a > 0`` from ``alpha0 > 0``; returns ``(a, max |a * (G a) - 1|)``.

    ``G a - 1/a`` is the gradient of ``phi(a) = a^T G a / 2 - sum(log a)``, self-concordant and
    strictly convex, so damped Newton (step ``1/(1 + lambda)``, lambda the Newton decrement)
    converges from any positive start and never leaves ``a > 0``; once ``lambda < 1/4`` full
    steps converge quadratically. A solution exists unless the gradients are Pareto-stationary
    (a non-negative combination is zero); the residual then stays large and the caller counts it.
    """
    a = alpha0
    for _ in range(iters):
        grad = gram @ a - 1.0 / a
        hess = gram + torch.diag(1.0 / a**2)
        d = -torch.linalg.solve_ex(hess, grad.unsqueeze(-1), check_errors=False)[0].squeeze(-1)
        lam = (-(grad @ d)).clamp_min(0).sqrt()
        step = torch.where(lam < 0.25, torch.ones_like(lam), 1.0 / (1.0 + lam))
        a = a + step * d
    residual = (a * (gram @ a) - 1.0).abs().max()
    return a, residual


_BACKTRACK = 41  # candidate step sizes 1, 1/2, ..., 2^-40 (and staying put), evaluated at once
_MAX_LOG_STEP = 10.0  # at most a factor e^10 per weight and iteration


def fairgrad_newton(
    gram: torch.Tensor, alpha: float, iters: int, priority: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``(G w)_t = (r_t / w_t)^(1/alpha), w > 0`` for task priorities ``r`` (default 1: the
    plain system ``G w = w^(-1/alpha)``); returns ``(w, max |(G w) (w / r)^(1/alpha) - 1|)``.

    ``r`` weighs each task's utility in the alpha-fair objective ``sum_t r_t u(g_t . d)``.
    """
    p = 1.0 / alpha
    q = gram.new_ones(gram.shape[0]) if priority is None else priority.to(gram) ** p  # h' = q w^-p
    # made on the device (a copy from the host would wait for the device stream)
    steps = torch.exp2(-torch.arange(_BACKTRACK, dtype=gram.dtype, device=gram.device))[:, None]

    def h(w: torch.Tensor) -> torch.Tensor:  # the concave part: h' = q w^-p
        return q * (torch.log(w) if p == 1.0 else w ** (1.0 - p) / (1.0 - p))

    def phi(w: torch.Tensor) -> torch.Tensor:  # [..., T] -> [...]; +inf outside w > 0
        val = 0.5 * torch.einsum("...i,ij,...j->...", w, gram, w) - h(w).sum(-1)
        inf = torch.full_like(val, math.inf)
        return torch.where((w > 0).all(-1) & val.isfinite(), val, inf)

    # Start from the solution for orthogonal gradients, ``w_t = (q_t / G_tt)^(1/(1+p))`` (scale-free
    # and right for mixed gradient norms), moved to the minimiser of phi along its ray:
    # phi(s u) is least at s^(1+p) = sum_t q_t u_t^(1-p) / u^T G u (bounded: u^T G u may be ~0).
    tiny = torch.finfo(gram.dtype).tiny
    diag = gram.diagonal()
    u = (q / diag.clamp_min(1e-12 * diag.max() + tiny)) ** (1.0 / (1.0 + p))
    ratio = (q * u ** (1.0 - p)).sum() / (u @ gram @ u).clamp_min(tiny)
    w = u * (ratio ** (1.0 / (1.0 + p))).clamp(1e-3, 1e3)
    for _ in range(iters):
        grad = gram @ w - q * w ** (-p)
        hess = gram + torch.diag(p * q * w ** (-p - 1.0))
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
    residual = ((gram @ w) * w**p / q - 1.0).abs().max()
    return w, residual
