"""Loss-level balancers: fixed, uw, dwa, rlw, gls, famo (``nn.Module``s, see base.LossBalancer).

Each maps ``{task: loss}`` of the tasks present in the batch to one differentiable scalar. Absent
tasks are left out of the sum and their state is untouched. All state lives in parameters or
buffers, so ``state_dict`` / ``load_state_dict`` resume exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cvmtl.balancers.base import LossBalancer
from cvmtl.tasks import TASKS


def _stack(
    balancer: LossBalancer, losses: dict[str, torch.Tensor]
) -> tuple[list[int], torch.Tensor]:
    """Indices of the present tasks and their losses as a float32 vector."""
    active = [i for i, t in enumerate(balancer.tasks) if t in losses]
    if not active:
        raise ValueError("no task loss given to the balancer")
    unknown = set(losses) - set(balancer.tasks)
    if unknown:
        raise ValueError(f"losses for unknown tasks {sorted(unknown)} (tasks: {balancer.tasks})")
    return active, torch.stack([losses[balancer.tasks[i]].float() for i in active])


def _weighted_sum(
    balancer: LossBalancer, active: list[int], values: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    balancer._record({balancer.tasks[i]: w for i, w in zip(active, weights)})
    return (weights.to(values.dtype) * values).sum()


class Fixed(LossBalancer):
    """``sum_t w_t L_t``; ``weights={task: float}``, missing tasks weigh 1."""

    linear_in_losses = True

    def __init__(self, tasks: Sequence[str], weights: dict[str, float] | None = None) -> None:
        super().__init__(tasks)
        weights = dict(weights or {})
        # Any name of ``tasks`` may be weighed (a user's own model has its own task names).
        # Weights of built-in tasks that this run does not train (e.g. `tasks=[seg]` over a
        # config that weighs normals) are simply unused, so one config serves every task subset;
        # any other name is a typo.
        unknown = set(weights) - set(TASKS) - set(self.tasks)
        if unknown:
            raise ValueError(
                f"fixed: weights for unknown tasks {sorted(unknown)} (tasks: {self.tasks})"
            )
        w = [float(weights.get(t, 1.0)) for t in self.tasks]
        self.register_buffer("task_weights", torch.tensor(w), persistent=False)

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        active, values = _stack(self, losses)
        weights = self.task_weights.to(values.device)[active]
        return _weighted_sum(self, active, values, weights)


class UW(LossBalancer):
    """Uncertainty weighting (Kendall et al. 2018): ``sum_t exp(-s_t) L_t + s_t``, ``s_t(0) = 0``.

    One parameter per task so that an absent task's ``s_t`` gets no gradient (``None``) and the
    optimizer leaves it alone. Keep them out of weight decay.
    """

    linear_in_losses = True

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        self.log_vars = nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t in self.tasks})

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        active, values = _stack(self, losses)
        s = torch.stack([self.log_vars[self.tasks[i]] for i in active]).to(values.device)
        weights = torch.exp(-s)
        self._record({self.tasks[i]: w for i, w in zip(active, weights)})
        return (weights * values + s).sum()


class DWA(LossBalancer):
    """Dynamic weight average (Liu et al. 2019): ``w = T * softmax(r / temperature)``.

    ``r_t = L_t(e-1) / L_t(e-2)`` from the epoch-average losses of the last two epochs (averaged
    from ``after_step``); equal weights (1) during the first two epochs. A task never seen in an
    epoch keeps its previous average.
    """

    linear_in_losses = True

    def __init__(self, tasks: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if temperature <= 0:
            raise ValueError(f"dwa: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        n = len(self.tasks)
        self.register_buffer("history", torch.ones(2, n, dtype=torch.float64))  # [e-2, e-1]
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))
        self.register_buffer("sums", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(n, dtype=torch.float64))

    def task_weights(self) -> torch.Tensor:
        """The weights ``[T]`` of the current epoch."""
        n = len(self.tasks)
        if int(self.epochs) < 2:
            return torch.ones(n, device=self.history.device)
        ratio = self.history[1] / self.history[0].clamp_min(1e-12)
        return (n * F.softmax(ratio / self.temperature, dim=0)).float()

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        active, values = _stack(self, losses)
        weights = self.task_weights().to(values.device)[active]
        return _weighted_sum(self, active, values, weights)

    def after_step(self, losses: dict[str, torch.Tensor]) -> None:
        for i, task in enumerate(self.tasks):
            if task in losses:
                self.sums[i] += losses[task].detach().to(self.sums.device, torch.float64)
                self.counts[i] += 1

    def epoch_end(self) -> None:
        seen = self.counts > 0
        avg = torch.where(seen, self.sums / self.counts.clamp_min(1), self.history[1])
        self.history.copy_(torch.stack([self.history[1], avg]))
        self.epochs += 1
        self.sums.zero_()
        self.counts.zero_()


class RLW(LossBalancer):
    """Random loss weighting (Lin et al. 2022): ``w = softmax(randn(T))`` each step (sum to 1).

    Drawn from the balancer's own CPU generator (``seed``), saved in ``state_dict`` as extra state:
    every DDP rank draws the same weights whatever the ranks' global RNG states, and a resume
    continues the stream exactly. ``T`` normals are drawn once per optimizer step (so the stream
    depends neither on which tasks are present nor on ``train.accumulate``); the softmax runs over
    the present tasks.
    """

    linear_in_losses = True

    def __init__(self, tasks: Sequence[str], seed: int = 0) -> None:
        super().__init__(tasks)
        self._gen = torch.Generator().manual_seed(int(seed))
        self._z: torch.Tensor | None = None  # this step's draw; after_step ends the step

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        active, values = _stack(self, losses)
        if self._z is None:
            self._z = torch.randn(len(self.tasks), generator=self._gen)
        weights = F.softmax(self._z[active], dim=0).to(values.device)
        return _weighted_sum(self, active, values, weights)

    def after_step(self, losses: dict[str, torch.Tensor]) -> None:
        self._z = None

    def get_extra_state(self) -> dict:
        return {"generator": self._gen.get_state(), "z": self._z}

    def set_extra_state(self, state: dict | torch.Tensor) -> None:
        if isinstance(state, torch.Tensor):  # checkpoints before the per-step draw
            state = {"generator": state, "z": None}
        self._gen.set_state(state["generator"].cpu())
        self._z = state["z"]


class GLS(LossBalancer):
    """Geometric loss strategy (Chennupati et al. 2019): ``(prod_t L_t)^(1/T)``, T present tasks.

    Its logged weights are the effective ``dTotal/dL_t = total / (T L_t)``.
    """

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        active, values = _stack(self, losses)
        total = torch.exp(torch.log(values.clamp_min(1e-12)).mean())
        self._record(
            {self.tasks[i]: w for i, w in zip(active, total.detach() / (len(active) * values))}
        )
        return total


class FAMO(LossBalancer):
    """Fast adaptive multitask optimization (Liu et al. 2023), after the official code.

    Logits ``xi`` (init 0), ``z = softmax(xi)``; with ``D_t = L_t - min_t + eps`` (``min_t`` = 0)
    the total is ``sum_t z_t log D_t / c``, ``c = sum_t z_t / D_t`` (detached), so the effective
    loss weights ``z_t / (c D_t)`` sum to 1. After the optimizer step, ``after_step`` gets the new
    losses of the same batch (the engine recomputes them, as the official trainer does; see
    ``needs_post_step_losses``) and takes one Adam step (lr ``w_lr``, L2 weight decay ``gamma``)
    on ``xi`` along ``d = J_softmax^T delta``, ``delta_t = log D_t(before) - log D_t(after)``.
    Adam is written out so that only the present tasks' entries (and step counts) move.
    Defaults: ``w_lr=0.025`` (paper), ``gamma=0.01`` (the FAMO repo's run script; its class
    default is 1e-5).
    """

    needs_post_step_losses = True

    def __init__(
        self, tasks: Sequence[str], gamma: float = 0.01, w_lr: float = 0.025, eps: float = 1e-8
    ) -> None:
        super().__init__(tasks)
        self.gamma, self.w_lr, self.eps = float(gamma), float(w_lr), float(eps)
        self.betas = (0.9, 0.999)
        n = len(self.tasks)
        for name in ("xi", "exp_avg", "exp_avg_sq", "steps", "min_losses", "prev_losses"):
            self.register_buffer(name, torch.zeros(n, dtype=torch.float32))
        self.register_buffer("prev_active", torch.zeros(n, dtype=torch.bool))

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        active, values = _stack(self, losses)
        xi = self.xi.to(values.device)[active]
        z = F.softmax(xi, dim=0)
        d = values - self.min_losses.to(values.device)[active] + self.eps
        c = (z / d).sum().detach()
        self.prev_losses[active] = values.detach().to(self.prev_losses.device)
        self.prev_active.zero_()
        self.prev_active[active] = True
        self._record({self.tasks[i]: w for i, w in zip(active, z / (c * d.detach()))})
        return (z * torch.log(d) / c).sum()

    @torch.no_grad()
    def after_step(self, losses: dict[str, torch.Tensor]) -> None:
        active = [i for i, t in enumerate(self.tasks) if t in losses and self.prev_active[i]]
        if not active:
            return
        dev = self.xi.device
        new = torch.stack([losses[self.tasks[i]].detach().float().to(dev) for i in active])
        mins = self.min_losses[active]
        delta = torch.log(self.prev_losses[active] - mins + self.eps) - torch.log(
            new - mins + self.eps
        )
        z = F.softmax(self.xi[active], dim=0)
        grad = z * (delta - (z * delta).sum())  # J_softmax^T delta (J is symmetric)
        self._adam(active, grad)

    def _adam(self, active: list[int], grad: torch.Tensor) -> None:
        # torch.optim.Adam(weight_decay=gamma) on the present entries only.
        b1, b2 = self.betas
        xi = self.xi[active]
        grad = grad + self.gamma * xi
        m = self.exp_avg[active].mul(b1).add(grad, alpha=1 - b1)
        v = self.exp_avg_sq[active].mul(b2).addcmul(grad, grad, value=1 - b2)
        t = self.steps[active] + 1
        step = self.w_lr / (1 - b1**t)
        denom = (v / (1 - b2**t)).sqrt() + 1e-8
        self.xi[active] = xi - step * m / denom
        self.exp_avg[active] = m
        self.exp_avg_sq[active] = v
        self.steps[active] = t
