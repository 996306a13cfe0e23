"""FairGrad: alpha-fair allocation of the update among the tasks.

Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024. The update ``d`` maximises
the alpha-fair utility ``sum_t u(g_t . d)`` of the task gains (``u(x) = log x`` for alpha = 1,
``x^(1-alpha) / (1-alpha)`` otherwise) over a ball; with ``d = sum_t w_t g_t`` its optimality
condition is ``(G w)_t = w_t^(-1/alpha)``, ``w > 0`` (``G`` the Gram matrix), and the update is
``sum_t w_t g_t`` as solved (no normalisation or clipping, as in LibMTL).
alpha = 1 is Nash-MTL's system ``G w = 1/w``; larger alpha moves toward max-min fairness.
Default ``alpha=1.0`` (LibMTL's ``FairGrad_alpha``).

``priority={task: r}`` (ours; missing tasks 1) weighs the tasks' utilities, ``sum_t r_t u(g_t . d)``
(weighted alpha-fairness), so the condition becomes ``(G w)_t = (r_t / w_t)^(1/alpha)``. Scaling a
task's loss by ``c`` is the same as ``r_t = c^(1-alpha)`` for alpha != 1, so for alpha > 1 a task
whose loss has a large scale (its gains ``g_t . d`` are large in its own units) is served last;
a priority says how much each task counts without rescaling its loss. At alpha = 1 (scale-free)
it is the only way to favour a task.

The system is the stationarity condition of ``phi(w) = w^T G w / 2 - sum_t h(w_t)`` with
``h' = w^(-1/alpha)``; ``h`` is concave, so ``phi`` is strictly convex on ``w > 0`` and its
minimiser (when one exists: not at Pareto-stationary gradients) is the unique solution. LibMTL
solves with scipy's ``least_squares`` on the CPU; here Newton's method on ``phi`` runs in torch
on the Gram's device (``solvers.fairgrad_newton``, ``optim_niter`` iterations): steps taken in
``log w`` (so ``w`` stays positive), with a branch-free backtracking search (every step size
``2^-k`` evaluated at once, the largest with enough decrease of ``phi`` kept), from the solution
for orthogonal gradients. A solve whose relative residual ``max |(G w)_t w_t^(1/alpha) - 1|``
exceeds ``tol`` is counted in ``failures`` and reported by a ``RuntimeWarning`` when the weights
or the state are next read (lazily: the hot loop never syncs); the last iterate is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cvmtl.tasks import TASKS

from ..solvers import fairgrad_newton
from ._common import (
    ReportsFailures,
    SolveFailures,
    active_index,
    check_range,
    parse_hparams,
    to_device,
)


class FairGrad(ReportsFailures):
    """FairGrad (hparams: alpha=1.0, optim_niter=30, tol=1e-4, priority={})."""

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        defaults = {"alpha": 1.0, "optim_niter": 30, "tol": 1e-4, "priority": {}}
        hp = parse_hparams("fairgrad", hparams, defaults)
        self.alpha = check_range("fairgrad", "alpha", hp["alpha"], 0.0)
        if self.alpha == 0:  # w^(-1/alpha) needs alpha > 0 (alpha -> 0 is the plain sum)
            raise ValueError("fairgrad: alpha must be > 0, got 0")
        self.optim_niter = int(check_range("fairgrad", "optim_niter", hp["optim_niter"], 1))
        self.tol = check_range("fairgrad", "tol", hp["tol"], 0.0)
        self.failures = SolveFailures("fairgrad", self.tol, "last Newton iterate")
        self.priority = self._parse_priority(hp["priority"])

    def _parse_priority(self, given: object) -> torch.Tensor:
        """``{task: r}`` -> ``[T]`` float64 on the CPU (missing tasks 1)."""
        if not isinstance(given, dict):
            raise ValueError(f"fairgrad: priority must be a mapping task -> number, got {given!r}")
        # As with `fixed` weights, built-in tasks this run does not train are allowed (one config
        # serves every task subset); any other name is a typo.
        unknown = sorted(set(given) - set(TASKS) - set(self.tasks))
        if unknown:
            raise ValueError(
                f"fairgrad: priority for unknown tasks {unknown} (tasks: {self.tasks})"
            )
        values = [
            check_range("fairgrad", f"priority.{t}", given.get(t, 1.0), 1e-12) for t in self.tasks
        ]
        return torch.tensor(values, dtype=torch.float64)

    def _weights_from_gram(
        self, gram: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> torch.Tensor:
        priority = None
        if bool((self.priority != 1).any()):  # a host-side check: the tensor lives on the CPU
            priority = to_device(self.priority, gram.device)[active_index(active, gram.device)]
        w, res = fairgrad_newton(gram, self.alpha, self.optim_niter, priority)
        bad = ~torch.isfinite(w).all() | ~(res <= self.tol)
        self.failures.record(bad, res)
        return w

    def state_dict(self) -> dict:
        return {"failures": self.failures.state()}

    def load_state_dict(self, state: dict) -> None:
        self.failures.load(state["failures"])
