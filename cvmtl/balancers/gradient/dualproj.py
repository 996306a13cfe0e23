"""DualProj: the mean gradient projected onto the dual cone of the task gradients.

Quinton & Layer, "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232 (2024)
(TorchJD's ``DualProj``); the projection is the one of GEM, Lopez-Paz & Ranzato, "Gradient
Episodic Memory for Continual Learning", NeurIPS 2017, Eq. 11. The mean ``g_bar = J^T u`` with
``u = 1/T`` is replaced by its Euclidean projection onto the dual cone
``{x : g_i . x >= 0 for all i}``, so no task's loss increases to first order. By Prop. 1 of the
first paper the projection is ``J^T w`` with ``w = argmin_{v >= u} v^T G v``: Gram-based, solved
exactly by active-set enumeration (``solvers.min_quad_lower``, as ``upgrad``, which projects each
task gradient instead of their mean). DualProj changes the mean only when the mean itself
conflicts with a task (UPGrad: whenever two task gradients conflict).

The projection is exact: TorchJD's default quadprog projector first divides the Gram matrix by
its trace and adds ``1e-4 I`` (its solver needs a positive-definite matrix), which moves the
answer by up to ~1e-3 relative, and it returns the plain mean when the trace is below 1e-4. The
exact projection is scale-invariant and needs neither (as in ``upgrad``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..base import GradientBalancer
from ..solvers import MAX_ENUM_TASKS, min_quad_lower
from ._common import parse_hparams


class DualProj(GradientBalancer):
    """DualProj with the mean as base weighting (no hyper-parameters)."""

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        parse_hparams("dualproj", hparams, {})
        if len(self.tasks) > MAX_ENUM_TASKS:  # the exact solver enumerates 2^T active sets
            raise ValueError(f"dualproj: at most {MAX_ENUM_TASKS} tasks, got {len(self.tasks)}")

    def _weights_from_gram(
        self, gram: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> torch.Tensor:
        n = gram.shape[0]
        return min_quad_lower(gram, gram.new_full((1, n), 1.0 / n))[0]
