"""Cross-task exchange: each task's stride-4 map gets a learned mix of the other tasks' maps.

PAD-Net's multi-modal distillation (Xu et al., CVPR 2018) in its plainest form, a 1x1 conv per
receiving task over the other tasks' maps, added to its own: ``f_t + W_t [f_s]_{s != t}``. The
weights start at zero, so a model starts as the network without the exchange (and a one-task
model has none: its single-task baseline is unchanged).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TaskExchange(nn.Module):
    """``{task: [B, C, H, W]} -> {task: own map + 1x1 conv of the others' maps, concatenated}``."""

    def __init__(self, tasks: list[str], channels: int) -> None:
        super().__init__()
        if len(tasks) < 2:
            raise ValueError(f"a task exchange needs at least two tasks, got {tasks}")
        self.tasks = list(tasks)
        others = channels * (len(tasks) - 1)
        # zeros made directly (not nn.Conv2d + zero_): no draw from the global generator, so the
        # rest of training sees the same random stream as without the exchange
        self.mix = nn.ParameterDict(
            {t: nn.Parameter(torch.zeros(channels, others, 1, 1)) for t in tasks}
        )

    def forward(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for task in self.tasks:
            others = torch.cat([maps[s] for s in self.tasks if s != task], dim=1)
            weight = self.mix[task].to(others.dtype)
            out[task] = maps[task] + F.conv2d(others, weight)
        return out
