"""One training step: forward under autocast, masked float32 losses, balancer, backward, step.

No ``DistributedDataParallel`` wrapper: losses are global means, so after backward one SUM
all-reduce of the gradients gives exactly the single-process gradient (see
:mod:`cvmtl.balancers.machinery` for why the wrapper would break per-task gradients).

The returned dict holds tensors (no ``.item()``). Host reads decide the step and are batched:
the presence test of the losses (in :func:`cvmtl.losses.compute_losses`), then one read of all
finiteness tests: with an optimizer step and no GradScaler, the losses' test is read together
with the gradient-norm test at the optimizer step (loss level) or with the per-task gradient test
before combining (gradient level); otherwise (a micro-batch of an accumulation, fp16) at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from cvmtl.balancers import machinery as mach
from cvmtl.engine.distributed import get_world_size
from cvmtl.losses import compute_losses

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(amp: str, device: torch.device):
    """``torch.autocast`` for ``train.amp`` (``none`` -> a null context).

    fp16 works on CPU too (torch >= 2.3 autocasts and scales there), but is slower than bf16.
    """
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in _AMP_DTYPES:
        raise ValueError(f"train.amp: expected none|bf16|fp16, got {amp!r}")
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[amp])


def make_scaler(cfg, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that is enabled only for ``train.amp=fp16`` (bf16 needs none)."""
    return torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")


def train_step(
    model: nn.Module,
    batch: dict,
    balancer,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    cfg,
    *,
    step: bool = True,
    mark: Callable[[str], None] | None = None,
) -> dict:
    """Forward, losses, balancing and backward for one (micro-)batch; with ``step`` also the
    optimizer step (all-reduce, unscale, finiteness check, clipping, step, zero_grad, hooks).

    Gradients are divided by ``cfg.train.accumulate``; call with ``step=False`` for all but the
    last micro-batch. Returns ``losses`` ({task: detached float32 scalar}, present tasks only),
    ``total`` (detached scalar), ``weights`` (detached [T] in ``balancer.tasks`` order, absent
    tasks 0), ``grad_norm`` (tensor or None: the pre-clip global norm, after a step),
    ``skipped`` (bool: no update from this batch) and ``reason`` (str or None, naming the task
    when a loss or a per-task gradient is not finite, or the fp16 overflow).

    ``mark(phase)``, when given, is called as each phase ends (``forward``, ``losses``,
    ``balancer``, ``backward``, ``optimizer``; see :mod:`cvmtl.bench.phases`), so the benchmark
    times this very function rather than a copy of it.
    """
    mark = mark or _no_mark
    device = next(model.parameters()).device
    image = batch["image"].to(device, non_blocking=True)
    if cfg.train.channels_last and image.dim() == 4:
        image = image.contiguous(memory_format=torch.channels_last)
    autocast = autocast_context(cfg.train.amp, device)
    use_scaler = scaler is not None and scaler.is_enabled()
    # mult = loss scale / accumulation; a tensor, so reading the scale costs no host sync.
    one = torch.ones((), device=device)
    mult = (scaler.scale(one) if use_scaler else one) / cfg.train.accumulate
    tasks = list(balancer.tasks)
    gradient = balancer.kind == "gradient"
    if gradient:
        mach.check_balancer(balancer, cfg)
    features = gradient and cfg.loss.grad_source == "features"

    if features:
        z, zd, preds = mach.features_forward(model, image, autocast)
    else:
        with autocast:
            preds = model(image)
    mark("forward")
    losses = compute_losses(preds, batch, cfg)
    out = {"losses": {t: v.detach() for t, v in losses.items()}, "grad_norm": None}
    out.update(skipped=False, reason=None)

    if not losses:
        return _skip(out, "no labeled task", optimizer, step, len(tasks), device)
    names = list(losses)
    loss_ok: torch.Tensor | None = torch.isfinite(
        torch.stack([v.detach() for v in losses.values()])
    )
    if not step or use_scaler:
        # A bad micro-batch is left out of its accumulation, so it must be known now; with
        # fp16 the scaler must not back off for a bad loss. Otherwise the test is deferred.
        bad = _bad(names, loss_ok.tolist())
        if bad:
            return _skip(out, f"non-finite loss: {bad}", optimizer, step, len(tasks), device)
        loss_ok = None
    mark("losses")

    reduced: set[int] = set()  # parameters whose .grad is already global
    task_losses = None
    if not gradient:
        total = balancer(losses)
        reg = model.regularization()
        mark("balancer")
        # R(theta) is identical on every rank; the SUM all-reduce would count it world times.
        ((total + reg / get_world_size()) * mult).backward()
        mark("backward")
        out["total"] = (total + reg).detach()
        out["weights"] = balancer.last_weights
    else:
        if features:
            active, grads = mach.features_task_grads(model, zd, losses, tasks, mult)
            gram = mach.feature_gram(grads)  # global under DDP: the finiteness test agrees
            row_ok = torch.isfinite(gram.diagonal())
        else:
            active, shared, grads = mach.params_task_grads(model, losses, tasks, mult)
            mach.all_reduce_coalesced([grads])
            reduced = {id(p) for p in shared}
            row_ok = torch.isfinite(grads).all(dim=1)
        # one host read for the rows and the deferred loss test: the balancer must not see NaN
        flags = (row_ok if loss_ok is None else torch.cat([row_ok, loss_ok])).tolist()
        bad = _bad(names, flags[len(active) :])
        if bad:
            return _skip(out, f"non-finite loss: {bad}", optimizer, step, len(tasks), device)
        loss_ok = None
        bad_rows = [r for r, ok in enumerate(flags[: len(active)]) if not ok]
        task_losses = torch.stack([losses[tasks[i]].detach() for i in active])
        if bad_rows:
            which = ", ".join(tasks[active[r]] for r in bad_rows)
            why = f"non-finite gradient: {which}"
            out["reason"] = f"fp16 overflow ({why})" if use_scaler else why
            mach.poison_grads(model.parameters())  # the step below is skipped as for overflow
        elif features:
            combined = mach.combine_features(balancer, grads, gram, task_losses, active)
            mark("balancer")
            z.backward((combined * mult).view_as(z).to(z.dtype))
        else:
            combined, _ = balancer.combine(grads, task_losses, active)
            mach.write_shared_grad(shared, combined * mult)
            mark("balancer")  # in params mode the per-task backward passes are the balancer's
        mark("backward")
        # a skipped combination reports zero weights, not the previous step's
        weights = torch.zeros(len(tasks), device=device) if bad_rows else balancer.last_weights
        out["weights"] = weights
        out["total"] = (weights.to(device)[active] * task_losses).sum()
    if not step:
        out["skipped"] = out["reason"] is not None
        return out

    found_inf, losses_ok = _optimizer_step(model, optimizer, scaler, cfg, reduced, out, loss_ok)
    mark("optimizer")
    bad = _bad(names, losses_ok)
    if bad:  # the deferred loss test failed: nothing was applied
        return _skip(out, f"non-finite loss: {bad}", optimizer, False, len(tasks), device)
    if found_inf:
        out["skipped"] = True
        out["reason"] = out["reason"] or (
            "fp16 overflow (non-finite gradient)" if use_scaler else "non-finite gradient"
        )
        return out
    _after_step(model, image, batch, balancer, cfg, autocast, losses, task_losses)
    mark("balancer")  # the after-step hooks belong to the balancer
    return out


def _no_mark(phase: str) -> None:
    """The default phase hook: training does not time its phases."""


def _optimizer_step(
    model, optimizer, scaler, cfg, reduced: set[int], out: dict, loss_ok=None
) -> tuple[bool, list[bool]]:
    """All-reduce, unscale, check, clip, step, zero_grad; returns whether the step was skipped
    and the deferred loss test ``loss_ok`` (a bool tensor, or None: nothing deferred) as a list.

    One host read: the finiteness of the global gradient norm, with ``loss_ok`` appended.
    """
    use_scaler = scaler is not None and scaler.is_enabled()
    # Balancer parameters (UW's s_t) are left out: they see the global loss values on every rank,
    # so their gradients are already identical everywhere.
    mach.all_reduce_coalesced(
        [p.grad for p in model.parameters() if p.grad is not None and id(p) not in reduced]
    )
    if use_scaler:
        scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else None
    checks = [] if norm is None else [torch.isfinite(norm).view(1)]
    checks += [] if loss_ok is None else [loss_ok]
    flags = torch.cat(checks).tolist() if checks else []
    losses_ok = flags[1:] if norm is not None else flags
    found_inf = (norm is not None and not flags[0]) or not all(losses_ok)
    if cfg.train.grad_clip > 0 and params and not found_inf:
        torch.nn.utils.clip_grads_with_norm_(params, cfg.train.grad_clip, norm)
    if use_scaler:
        scaler.step(optimizer)  # skips the update itself when unscale_ found an inf
        scaler.update()
    elif not found_inf:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    out["grad_norm"] = norm
    return found_inf, losses_ok


def _after_step(model, image, batch, balancer, cfg, autocast, losses, task_losses) -> None:
    if balancer.kind == "gradient":
        balancer.after_step(task_losses)
        return
    if getattr(balancer, "needs_post_step_losses", False):
        # FAMO's update compares the losses of the same batch before and after the step; the
        # official trainer recomputes them with a second forward pass (train mode), as here.
        with torch.no_grad(), autocast:
            preds = model(image)
        losses = compute_losses(preds, batch, cfg)
    balancer.after_step({t: v.detach() for t, v in losses.items()})


def _bad(names: list[str], ok: list[bool]) -> str:
    """The names whose flag is False, comma-separated ("" when all are good)."""
    return ", ".join(t for t, good in zip(names, ok) if not good)


def _skip(out: dict, reason: str, optimizer, step: bool, num_tasks: int, device) -> dict:
    out.update(skipped=True, reason=reason, total=torch.zeros((), device=device))
    out["weights"] = torch.zeros(num_tasks, device=device)
    out["grad_norm"] = None
    if step:  # never apply a partial accumulation around a bad micro-batch
        optimizer.zero_grad(set_to_none=True)
    return out
