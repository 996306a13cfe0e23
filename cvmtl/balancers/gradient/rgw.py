"""RGW: random gradient weighting.

Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
Learning", TMLR 2022. Each step draws ``z ~ N(0, I_T)`` and combines the task gradients with
``w = softmax(z)``: ``sum_t w_t g_t`` (RLW's random weights applied to the gradients instead of
the losses; with a shared representation and ``grad_source=features`` they act on the feature
gradients, as LibMTL's ``rep_grad`` mode). No hyper-parameter besides ``seed``.

The weights do not depend on the gradients, so the method is Gram-based (exact under DDP, both
gradient sources). ``T`` normals are drawn per combination (per micro-batch with
``train.accumulate``), whatever tasks are present (the softmax runs over the present ones), from
the balancer's own CPU generator seeded with ``seed``, in float64: every rank and both gradient
paths draw the same numbers, a resume continues the stream (the generator state is in the state
dict), and seed ``s`` draws what LibMTL draws after ``torch.manual_seed(s)`` with float64 as the
default dtype (LibMTL has RGW on its v1.1.6 branch only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..base import GradientBalancer
from ._common import parse_hparams, to_device


class RGW(GradientBalancer):
    """Random gradient weighting (hparams: seed=0)."""

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        hp = parse_hparams("rgw", hparams, {"seed": 0})
        self.seed = int(hp["seed"])
        self._gen = torch.Generator().manual_seed(self.seed)

    def _draw(self, active: list[int], device: torch.device) -> torch.Tensor:
        z = torch.randn(len(self.tasks), generator=self._gen, dtype=torch.float64)
        return to_device(torch.softmax(z[active], 0), device)

    def _weights_from_gram(
        self, gram: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> torch.Tensor:
        return self._draw(active, gram.device)

    def _combine(
        self, grads: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self._draw(active, grads.device).to(grads.dtype)  # no Gram needed
        return weights @ grads, weights

    def state_dict(self) -> dict:
        return {"generator": self._gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._gen.set_state(state["generator"].cpu())
