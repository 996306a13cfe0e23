"""MoCo: stochastic multi-objective gradient correction.

Fernando et al., "Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent
Approach", ICLR 2023. MGDA's weights computed from one batch's gradients are a biased estimate;
MoCo instead tracks each task's gradient with ``y_t <- y_t - beta_k (y_t - h_t)`` (``h_t`` this
step's stochastic gradient, ``beta_k = beta / k^beta_sigma``) and takes one step on the weights
``lambda <- P(lambda - gamma_k (Y Y^T + rho I) lambda)`` (``gamma_k = gamma / k^gamma_sigma``),
then updates the model with ``Y^T lambda``. As in LibMTL (median-research-group/LibMTL,
``LibMTL/weighting/MoCo.py``, from the authors' code): ``h_t = L_t g_t / (||g_t|| + 1e-8)`` (each
gradient normalised and scaled by its loss) and ``P`` is a softmax (the paper projects onto the
simplex). Defaults from there: ``beta=0.5``, ``beta_sigma=0.5``, ``gamma=0.1``,
``gamma_sigma=0.5``, ``rho=0``.

``k``: for ``beta_k`` the number of steps the task has been present (its tracker's own count), for
``gamma_k`` the number of steps; with every task present in every step both are LibMTL's step
counter. Tasks absent from a step keep their tracker and their entry of ``lambda``; a step reads
its tasks' entries rescaled onto their simplex (``_common.simplex_part``).

The trackers ``Y [T, D]`` hold past raw vectors, so ``uses_gram=False`` and ``needs_raw=True``
(like db_mtl): exact under DDP with ``grad_source=params`` only, and only meaningful there (with
``features`` the D values are different samples each step; a change of D restarts the trackers
with a warning). The returned weights are ``lambda_t beta_k L_t / (||g_t|| + 1e-8)``, the weights
of this step's raw gradients in the update (the rest of ``Y^T lambda`` is the trackers' past);
``lambda`` itself is ``self.lambd``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..base import GradientBalancer
from ._common import (
    active_index,
    check_range,
    parse_hparams,
    simplex_step,
    task_rows,
    to_device,
)


class MoCo(GradientBalancer):
    """MoCo (hparams: beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0); state: the
    trackers ``y [T, D]``, the weights ``lambd [T]`` and the step counts."""

    uses_gram = False
    needs_raw = True

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        defaults = {"beta": 0.5, "beta_sigma": 0.5, "gamma": 0.1, "gamma_sigma": 0.5, "rho": 0.0}
        hp = parse_hparams("moco", hparams, defaults)
        self.beta = check_range("moco", "beta", hp["beta"], 0.0, 1.0)
        self.beta_sigma = check_range("moco", "beta_sigma", hp["beta_sigma"], 0.0)
        self.gamma = check_range("moco", "gamma", hp["gamma"], 0.0)
        self.gamma_sigma = check_range("moco", "gamma_sigma", hp["gamma_sigma"], 0.0)
        self.rho = check_range("moco", "rho", hp["rho"], 0.0)
        n = len(self.tasks)
        self.y: torch.Tensor | None = None
        self.lambd = torch.full((n,), 1.0 / n, dtype=torch.float64)
        self.counts = torch.zeros(n, dtype=torch.int64)  # steps each task has been present
        self.step = 0

    def _combine(
        self, grads: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dev = grads.device
        idx = active_index(active, dev)
        self.y, fresh = task_rows(self.y, grads, len(self.tasks), "moco", "the trackers")
        if fresh:
            self.counts = torch.zeros(len(self.tasks), dtype=torch.int64)
        self.counts[active] += 1
        self.step += 1
        # counts live on the CPU: the step sizes are computed there and copied without a sync
        k = self.counts[active].to(torch.float64)
        beta_k = to_device((self.beta / k**self.beta_sigma).to(grads.dtype), dev)
        gamma_k = self.gamma / self.step**self.gamma_sigma

        # h_t: the gradient's direction at the loss's scale (the authors' normalisation)
        scale = losses.to(grads.dtype) / (grads.norm(dim=1) + 1e-8)
        h = grads * scale[:, None]
        old = self.y[idx]
        y = old - beta_k[:, None] * (old - h)
        self.y.index_copy_(0, idx, y)

        yy = (y @ y.T).double()
        yy.diagonal().add_(self.rho)
        self.lambd, new = simplex_step(
            self.lambd, idx, lambda lambd: torch.softmax(lambd - gamma_k * (yy @ lambd), dim=0)
        )

        w = new.to(grads.dtype)
        return w @ y, w * beta_k * scale

    def state_dict(self) -> dict:
        state = {
            "step": torch.tensor(self.step),
            "counts": self.counts.clone(),
            "lambd": self.lambd.detach().cpu().clone(),
        }
        if self.y is not None:
            state["y"] = self.y.detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.counts = state["counts"].clone()
        self.lambd = state["lambd"].to(torch.float64).clone()
        self.y = state["y"].clone() if "y" in state else None
