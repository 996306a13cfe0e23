"""Per-phase timing of the engine's own step (:class:`cvmtl.engine.step.TrainStep`).

Phases: ``forward`` (input to device, model forward), ``losses`` (masked task losses),
``balancer`` (loss level: the balancer's total; gradient level: the per-task backward passes
through the heads (features) or through the whole shared network (params), the Gram matrix, the
finiteness test and the combination; plus the after-step hooks), ``backward`` (the backward pass
of the combined objective; 0 in params mode, whose backward passes are all per task),
``optimizer`` (all-reduce, norm, clipping, step, zero_grad). train_step calls the clock's
``mark`` as each phase ends; the clock synchronizes the device there, so each phase holds its own
kernels, and the sum is compared with the untimed step.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from cvmtl.engine.step import TrainStep
from cvmtl.workflows.bench.steps import random_batch
from cvmtl.workflows.bench.timing import sync

PHASES = ("forward", "losses", "balancer", "backward", "optimizer")


class PhaseClock:
    """Adds the time since the previous mark to the named phase (syncing the device first)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times = dict.fromkeys(PHASES, 0.0)
        self.t = time.perf_counter()

    def mark(self, phase: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.times[phase] += now - self.t
        self.t = now


def phased_train_step(
    model: nn.Module,
    batch: dict[str, Any],
    train_step: TrainStep,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> dict[str, float]:
    """One optimizer step of the engine's step, timed; returns ``{phase: seconds}``."""
    clock = PhaseClock(next(model.parameters()).device)
    out = train_step(model, batch, optimizer, scaler, mark=clock.mark)
    if out.skipped:
        raise RuntimeError(f"benchmark: the training step was skipped ({out.reason})")
    return clock.times


def median_phases(step, model, optimizer, cfg, dev, iters, data, train_med) -> dict[str, Any]:
    """Median seconds per phase over ``iters`` timed steps (after one warm-up)."""
    batches = None
    if data:
        from cvmtl.workflows.bench.data import data_config, endless, train_loader

        batches = endless(train_loader(data_config(cfg, (iters + 1) * cfg.train.batch_size)))
    fixed = random_batch(cfg, cfg.train.batch_size, dev)
    rows = []
    for i in range(iters + 1):
        wait = None
        if batches is not None:
            t0 = time.perf_counter()
            batch = next(batches)
            wait = time.perf_counter() - t0
        else:
            batch = fixed
        times = phased_train_step(model, batch, step.step, optimizer, step.scaler)
        if i > 0:  # the first step warms the loader and the new input's kernels
            rows.append({"data": wait, **times})
    phases = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "data"}
    data_s = statistics.median(r["data"] for r in rows) if batches is not None else None
    total = sum(phases.values()) + (data_s or 0.0)
    return {
        "phases": {"data": data_s, **phases},
        "phases_sum_s": total,
        "phases_vs_step": sum(phases.values()) / train_med,
    }
