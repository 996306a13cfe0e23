"""ExcessMTL: task weights that grow with each task's estimated excess risk.

He et al., "Robust Multi-Task Learning with Excess Risks", ICML 2024. A task's excess risk (its
loss above the best it can reach) is estimated from a local quadratic model with AdaGrad's
diagonal preconditioner: with ``S_t <- S_t + g_t^2`` (per coordinate, over the task's steps) and
``H_t = sqrt(S_t + 1e-7)``, ``e_t = g_t^T H_t^-1 g_t``. The first step of a task records its
``e_t`` as the scale ``e_t^0``; from then on the loss weights take an exponentiated-gradient
step ``lambda_t <- lambda_t exp(eta e_t / e_t^0)`` and are renormalised to sum to T, and the update
is ``sum_t lambda_t g_t`` (the current weights, after this step's update). Weights start at 1.
Default ``robust_step_size=1e-2`` (eta; LibMTL's and the authors' default).

The accumulator ``S [T, D]`` needs the raw per-coordinate gradients over steps, so
``uses_gram=False`` and ``needs_raw=True``: meaningful with ``grad_source=params`` (in
``features`` mode the D coordinates are different samples each step; a change of D restarts the
accumulator and the scales, with a warning). With tasks missing from a step, only the present
tasks' weights move, renormalised to keep their sum (with every task present: the sum T).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..base import GradientBalancer
from ._common import active_index, check_range, parse_hparams, task_rows, to_device


class ExcessMTL(GradientBalancer):
    """ExcessMTL (hparams: robust_step_size=1e-2); state: ``S [T, D]``, scales, weights."""

    uses_gram = False
    needs_raw = True

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        hp = parse_hparams("excessmtl", hparams, {"robust_step_size": 1e-2})
        self.step_size = check_range("excessmtl", "robust_step_size", hp["robust_step_size"], 0.0)
        n = len(self.tasks)
        self.grad_sq_sum: torch.Tensor | None = None  # S [T, D]
        self.scale = torch.ones(n, dtype=torch.float64)  # e_t at the task's first step
        self.loss_weight = torch.ones(n, dtype=torch.float64)
        self.seen = torch.zeros(n, dtype=torch.bool)  # on the CPU: set from ``active`` only

    def _combine(
        self, grads: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dev = grads.device
        idx = active_index(active, dev)
        self.grad_sq_sum, fresh = task_rows(
            self.grad_sq_sum, grads, len(self.tasks), "excessmtl", "the accumulator"
        )
        if fresh:
            self.seen = torch.zeros(len(self.tasks), dtype=torch.bool)
        self.scale, self.loss_weight = self.scale.to(dev), self.loss_weight.to(dev)
        acc = self.grad_sq_sum[idx] + grads**2
        self.grad_sq_sum.index_copy_(0, idx, acc)
        excess = (grads**2 / torch.sqrt(acc + 1e-7)).sum(1).double()  # g^T H^-1 g
        first = to_device(~self.seen[active], dev)  # a task's first step sets its scale
        scale = torch.where(first, excess, self.scale[idx])
        self.scale = self.scale.index_copy(0, idx, scale)
        self.seen[active] = True
        # Exponentiated-gradient step on the tasks past their first step, renormalised to keep
        # the present weights' sum; in log space (a softmax), so that no exp overflows.
        old = self.loss_weight[idx]
        ratio = excess / scale.clamp_min(torch.finfo(scale.dtype).tiny)
        logits = old.log() + torch.where(first, torch.zeros_like(ratio), self.step_size * ratio)
        new = old.sum() * torch.softmax(logits, 0)
        self.loss_weight = self.loss_weight.index_copy(0, idx, new)
        weights = new.to(grads.dtype)
        return weights @ grads, weights

    def state_dict(self) -> dict:
        state = {
            "scale": self.scale.detach().cpu().clone(),
            "loss_weight": self.loss_weight.detach().cpu().clone(),
            "seen": self.seen.clone(),
        }
        if self.grad_sq_sum is not None:
            state["grad_sq_sum"] = self.grad_sq_sum.detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.scale = state["scale"].to(torch.float64).clone()
        self.loss_weight = state["loss_weight"].to(torch.float64).clone()
        self.seen = state["seen"].to(torch.bool).clone()
        self.grad_sq_sum = state["grad_sq_sum"].clone() if "grad_sq_sum" in state else None
