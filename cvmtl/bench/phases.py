"""An instrumented copy of :func:`cvmtl.engine.step.train_step` that times its phases.

Phases: ``forward`` (input to device, model forward), ``losses`` (masked task losses),
``balancer`` (loss level: the balancer's total; gradient level: the per-task backward passes
through the heads (features) or through the whole shared network (params), the Gram matrix, the
finiteness test and the combination; plus the after-step hooks), ``backward`` (the backward pass
of the combined objective; 0 in params mode, whose backward passes are all per task),
``optimizer`` (all-reduce, norm, clipping, step, zero_grad). The device is synchronized at every
boundary, so each phase holds its own kernels; the sum is compared with the untimed step.

It is a copy (same calls, same order as train_step, minus the skip paths), so a test checks that
it makes exactly train_step's update.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from cvmtl.balancers import machinery as mach
from cvmtl.bench.timing import sync
from cvmtl.engine.distributed import get_world_size
from cvmtl.engine.step import _after_step, _optimizer_step, autocast_context
from cvmtl.losses import compute_losses

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
    balancer: Any,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    cfg: Any,
) -> dict[str, float]:
    """One optimizer step as train_step makes it; returns ``{phase: seconds}``."""
    device = next(model.parameters()).device
    clock = PhaseClock(device)
    image = batch["image"].to(device, non_blocking=True)
    if cfg.train.channels_last and image.dim() == 4:
        image = image.contiguous(memory_format=torch.channels_last)
    autocast = autocast_context(cfg.train.amp, device)
    use_scaler = scaler is not None and scaler.is_enabled()
    one = torch.ones((), device=device)
    mult = (scaler.scale(one) if use_scaler else one) / cfg.train.accumulate
    tasks = list(balancer.tasks)
    gradient = balancer.kind == "gradient"
    features = gradient and cfg.loss.grad_source == "features"
    if features:
        z, zd, preds = mach.features_forward(model, image, autocast)
    else:
        with autocast:
            preds = model(image)
    clock.mark("forward")
    losses = compute_losses(preds, batch, cfg)
    loss_ok = torch.isfinite(torch.stack([v.detach() for v in losses.values()]))
    clock.mark("losses")
    reduced: set[int] = set()
    task_losses = None
    out: dict[str, Any] = {"grad_norm": None, "reason": None}
    if not gradient:
        total = balancer(losses) + model.regularization() / get_world_size()
        clock.mark("balancer")
        (total * mult).backward()
        clock.mark("backward")
    else:
        if features:
            active, grads = mach.features_task_grads(model, zd, losses, tasks, mult)
            gram = mach.feature_gram(grads)
            row_ok = torch.isfinite(gram.diagonal())
        else:
            active, shared, grads = mach.params_task_grads(model, losses, tasks, mult)
            mach.all_reduce_coalesced([grads])
            reduced = {id(p) for p in shared}
            row_ok = torch.isfinite(grads).all(dim=1)
        if not all(torch.cat([row_ok, loss_ok]).tolist()):
            raise RuntimeError("benchmark: a loss or a per-task gradient is not finite")
        task_losses = torch.stack([losses[tasks[i]].detach() for i in active])
        if features:
            combined = mach.combine_features(balancer, grads, gram, task_losses, active)
            clock.mark("balancer")
            z.backward((combined * mult).view_as(z).to(z.dtype))
            clock.mark("backward")
        else:
            combined, _ = balancer.combine(grads, task_losses, active)
            mach.write_shared_grad(shared, combined * mult)
            clock.mark("balancer")
            clock.mark("backward")  # the per-task backward passes are the balancer's
        loss_ok = None
    found_inf, _ = _optimizer_step(model, optimizer, scaler, cfg, reduced, out, loss_ok)
    clock.mark("optimizer")
    if found_inf:
        raise RuntimeError("benchmark: the step was skipped (non-finite loss or gradient)")
    _after_step(model, image, batch, balancer, cfg, autocast, losses, task_losses)
    clock.mark("balancer")
    return clock.times
