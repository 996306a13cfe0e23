"""Balancers in anyone's training loop: :func:`mtl_backward` (no ``Config``, any model).

    balancer = cvmtl.build_balancer("upgrad", tasks=["seg", "depth"])
    losses = {"seg": ce(seg_out, y), "depth": l1(depth_out, d)}
    weights = cvmtl.mtl_backward(losses, balancer, shared_params=trunk.parameters(),
                                 features=trunk_out)  # features: optional, the cheap mode
    optimizer.step(); optimizer.zero_grad()

It is the engine's balancing backward (:mod:`cvmtl.balancers.machinery`), the same functions
that ``tools/train.py`` runs: gradient methods take one backward per task down to the
``features`` (or, without them, to the ``shared_params``), combine the per-task gradients, and
send the combination into the shared parameters; a loss-level method backwards its weighted sum.
Each task's own parameters (what its loss reaches without passing through the features or a
shared parameter, found from the autograd graph, as TorchJD does) receive that task's gradient.

Under torchrun (no ``DistributedDataParallel`` wrapper: it would all-reduce every per-task
backward) the features-mode Gram matrix, or in params mode the per-task gradient matrix, is
summed over ranks before combining, as in the engine. With losses that are each rank's share of
the global mean (its local sum over the global count; for equal local batches, local mean /
world size), the update is the single-process one on the whole batch once every gradient is
summed over ranks before the optimizer step (``examples/ddp_own_model.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from cvmtl.balancers import machinery as mach
from cvmtl.distributed import all_reduce_coalesced, get_world_size, is_dist


def mtl_backward(
    losses: Mapping[str, torch.Tensor],
    balancer,
    *,
    shared_params: Iterable[nn.Parameter],
    features: torch.Tensor | Sequence[torch.Tensor] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    accumulation_steps: int = 1,
) -> dict[str, float]:
    """One balanced backward for ``losses`` ({task: scalar}); returns the weights used.

    Afterwards the ``shared_params`` hold the balanced gradient in ``.grad`` (added to what is
    there: gradient accumulation works as with ``loss.backward()``) and each task's own
    parameters that task's gradient (loss-level methods: weighted by the task's weight). Tasks of
    the balancer missing from ``losses`` are left out of this step.

    ``features``: the shared representation (a tensor or several) that every task's loss is
    computed from; gradient methods then differentiate the losses w.r.t. it (cheap) instead of
    w.r.t. ``shared_params``. ``scaler``: a ``GradScaler`` whose scale the gradients carry, as
    ``scaler.scale(loss).backward()`` would (then ``scaler.step(optimizer)``).
    ``accumulation_steps`` = k when each loss is a micro-batch's share (loss / k) of a k-step
    accumulation: the balancer then sees losses and gradients at the scale of the whole step.
    Stateful methods (DWA, GLS, FAMO) also want ``balancer.after_step({task: loss})`` after
    each optimizer step.
    """
    k = _checked(losses, balancer, accumulation_steps)
    enabled = scaler is not None and scaler.is_enabled()
    mult = scaler.scale(torch.ones((), device=_device(losses))) if enabled else 1.0
    # the value of the whole step's loss, the gradient of this micro-batch's share (as the
    # engine's StepInputs.losses)
    step_losses = {t: v + ((k - 1) * v).detach() for t, v in losses.items()}
    if balancer.kind != "gradient":
        (balancer(step_losses) * mult).backward()
        return _weights(balancer, losses)
    shared = mach.trainable(shared_params)
    feats = _as_list(features)
    stop = feats if feats is not None else []
    own = _OwnParameters(step_losses, shared, stop)
    tasks = list(balancer.tasks)
    if feats is not None:
        if is_dist() and not balancer.uses_gram:
            raise ValueError(
                f"mtl_backward: {type(balancer).__name__} needs the raw per-task feature "
                "gradients, which are split across ranks: pass no features (params mode)"
            )
        active, grads = mach.features_task_grads(feats, step_losses, tasks, own, mult, True)
    else:
        active, grads = mach.params_task_grads(shared, step_losses, tasks, own, mult)
        all_reduce_coalesced([grads])  # the global per-task gradients: the same on every rank
        mult = mult / get_world_size()  # ... so each rank writes its share of the combination
    task_losses = torch.stack([step_losses[tasks[i]].detach() for i in active])
    mach.apply_combination(
        balancer, grads, task_losses, active, mult=mult, k=k, features=feats, shared=shared
    )
    return _weights(balancer, losses)


def _checked(losses: Mapping[str, torch.Tensor], balancer, accumulation_steps: int) -> int:
    """The accumulation steps, once the losses fit the balancer (else a one-line ValueError)."""
    unknown = sorted(set(losses) - set(balancer.tasks))
    if unknown:
        raise ValueError(f"mtl_backward: losses for {unknown}, not tasks of the balancer")
    if not losses:
        raise ValueError("mtl_backward: no loss given")
    k = int(accumulation_steps)
    if k < 1:
        raise ValueError(f"mtl_backward: accumulation_steps must be >= 1, got {k}")
    return k


class _OwnParameters:
    """``own(task)``: the trainable parameters ``losses[task]`` reaches in the autograd graph
    without passing through a ``stop`` tensor (the features) or a shared parameter."""

    def __init__(self, losses, shared: Sequence[nn.Parameter], stop: Sequence[torch.Tensor]):
        self.losses = losses
        self.excluded = {id(p) for p in shared} | {id(t) for t in stop}
        self.stop_nodes = [t.grad_fn for t in stop if t.grad_fn is not None]

    def __call__(self, task: str) -> list[nn.Parameter]:
        found: list[nn.Parameter] = []
        seen: set[int] = set()
        pending = [self.losses[task].grad_fn]
        while pending:
            node = pending.pop()
            if node is None or id(node) in seen or any(node is s for s in self.stop_nodes):
                continue
            seen.add(id(node))
            leaf = getattr(node, "variable", None)  # an AccumulateGrad node: a leaf tensor
            if leaf is not None:
                if leaf.requires_grad and id(leaf) not in self.excluded:
                    found.append(leaf)
                continue
            pending.extend(child for child, _ in node.next_functions)
        return found


def _as_list(features) -> list[torch.Tensor] | None:
    if features is None:
        return None
    feats = [features] if isinstance(features, torch.Tensor) else list(features)
    if not feats or not all(f.requires_grad for f in feats):
        raise ValueError("mtl_backward: features must be tensors that require grad")
    return feats


def _device(losses: Mapping[str, torch.Tensor]) -> torch.device:
    return next(iter(losses.values())).device


def _weights(balancer, losses: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """The weights of the tasks given (the balancer also reports 0 for the absent ones)."""
    return {t: w for t, w in balancer.weights.items() if t in losses}
