"""STCH: smooth Tchebycheff scalarization of the (log, nadir-normalised) task losses.

Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective Optimization", ICML 2024. The
Tchebycheff scalarization ``max_t f_t`` is smoothed into ``mu log sum_t exp(f_t / mu)`` (``mu`` the
smoothing; -> max as mu -> 0). For multi-task learning (LibMTL, after the authors' code) the
objectives are the log losses normalised by a nadir point ``n``: ``f_t = log(L_t / n_t + 1e-20)``,
and the total is ``T mu logsumexp(f / mu)`` (T the tasks present; LibMTL's factor ``task_num``).
Schedule: during the first ``warmup_epoch`` epochs the total is
``sum_t log(L_t + 1e-20)``; during epoch ``warmup_epoch`` (0-based) too, while the step losses are
averaged per task into ``n`` (fixed from then on; a task never seen that epoch gets ``n_t = 1``);
from the next epoch on, the smooth Tchebycheff total. Defaults from LibMTL: ``mu=1.0``,
``warmup_epoch=4``.

LibMTL backpropagates ``T mu log sum_t exp((f_t - max f) / mu)``: the same gradient, shifted by
the detached constant ``T max f``; here the total is the scalarization's value itself. The epoch
count advances with ``epoch_end`` (the trainer calls it; a loop of one's own must too) and the
nadir averages come from ``after_step``. The logged weights are the effective ``dTotal/dL_t``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cvmtl.balancers.base import LossBalancer
from cvmtl.balancers.gradient._common import check_range
from cvmtl.balancers.loss_level import _stack

_EPS = 1e-20  # inside the logs, as LibMTL


class STCH(LossBalancer):
    """Smooth Tchebycheff scalarization (mu=1.0, warmup_epoch=4); state: epoch, nadir sums."""

    def __init__(self, tasks: Sequence[str], mu: float = 1.0, warmup_epoch: int = 4) -> None:
        super().__init__(tasks)
        self.mu = check_range("stch", "mu", mu, 0.0)
        if self.mu == 0:  # mu -> 0 is the plain (non-smooth) max
            raise ValueError("stch: mu must be > 0, got 0")
        warm = check_range("stch", "warmup_epoch", warmup_epoch, 0)
        if warm != int(warm):
            raise ValueError(f"stch: warmup_epoch must be an integer, got {warmup_epoch}")
        self.warmup_epoch = int(warm)
        self.epoch = 0  # a Python int (extra state): the phase needs no host read
        n = len(self.tasks)
        self.register_buffer("sums", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("nadir", torch.ones(n, dtype=torch.float64))

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        active, _ = _stack(self, losses)  # checks the names
        values = torch.stack([losses[self.tasks[i]] for i in active])
        values = values.to(torch.promote_types(values.dtype, torch.float32))  # float64 stays
        if self.epoch <= self.warmup_epoch:  # warm-up and the nadir epoch: sum of log losses
            total = torch.log(values + _EPS).sum()
            weights = 1.0 / (values.detach() + _EPS)
        else:
            nadir = self.nadir.to(values.device, values.dtype)[active]
            f = torch.log(values / nadir + _EPS)
            total = len(active) * self.mu * torch.logsumexp(f / self.mu, 0)
            # dTotal/dL_t = T softmax(f / mu)_t / (L_t + 1e-20 n_t)
            soft = torch.softmax(f.detach() / self.mu, 0)
            weights = len(active) * soft / (values.detach() + _EPS * nadir)
        self._record({self.tasks[i]: w for i, w in zip(active, weights)})
        return total

    def after_step(self, losses: dict[str, torch.Tensor]) -> None:
        if self.epoch != self.warmup_epoch:
            return
        for i, task in enumerate(self.tasks):
            if task in losses:
                self.sums[i] += losses[task].detach().to(self.sums.device, torch.float64)
                self.counts[i] += 1

    def epoch_end(self) -> None:
        self.epoch += 1
        if self.epoch == self.warmup_epoch + 1:  # the nadir epoch is over: fix the nadir point
            seen = self.counts > 0
            avg = self.sums / self.counts.clamp_min(1)
            self.nadir.copy_(torch.where(seen, avg, torch.ones_like(avg)))

    def get_extra_state(self) -> dict:
        return {"epoch": self.epoch}

    def set_extra_state(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
