"""GradDrop: keep, per coordinate, only the gradients of one sign.

Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout",
NeurIPS 2020. Per coordinate the sign purity ``P = (1 + sum_t g_t / sum_t |g_t|) / 2`` is compared
with ``U ~ Uniform(0, 1)``: positive gradients survive where ``P > U``, negative ones where
``P < U``; with ``leak`` l, task t contributes ``(l + (1 - l) M_t) g_t``; the update is their sum.
Paper default ``leak=0.0``. The paper applies it to activations, which is what
``grad_source=features`` provides (without the optional multiplication by the layer input).

Needs the raw vectors (signs per coordinate): ``uses_gram=False``, ``needs_raw=True``. ``U`` comes
from a generator on the gradients' device seeded by (seed, step counter), so ranks agree and a
resumed run reproduces. The returned weights are the mean kept fraction per task (logging only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..base import GradientBalancer
from ._common import check_range, parse_hparams, step_seed


def graddrop_uniform(shape: int, device: torch.device, seed: int, step: int) -> torch.Tensor:
    """The ``U`` of step ``step`` (also used by the tests to replay a step)."""
    gen = torch.Generator(device=device).manual_seed(step_seed(seed, step))
    return torch.rand(shape, generator=gen, device=device)


class GradDrop(GradientBalancer):
    """GradDrop (hparams: leak=0.0, seed=0)."""

    uses_gram = False
    needs_raw = True

    def __init__(self, tasks: Sequence[str], **hparams) -> None:
        super().__init__(tasks)
        hp = parse_hparams("graddrop", hparams, {"leak": 0.0, "seed": 0})
        self.leak = check_range("graddrop", "leak", hp["leak"], 0.0, 1.0)
        self.seed = int(hp["seed"])
        self.step = 0

    def _combine(
        self, grads: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        purity = 0.5 * (1.0 + grads.sum(0) / (grads.abs().sum(0) + 1e-7))
        u = graddrop_uniform(grads.shape[1], grads.device, self.seed, self.step)
        self.step += 1
        keep = ((purity > u) & (grads > 0)) | ((purity < u) & (grads < 0))
        factor = self.leak + (1.0 - self.leak) * keep.to(grads.dtype)
        shared = (factor * grads).sum(0)
        return shared, factor.mean(1)

    def state_dict(self) -> dict:
        return {"step": torch.tensor(self.step)}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
