"""Balancers in anyone's training loop: :func:`mtl_backward` (no ``Config``, any model).

    balancer = cvmtl.build_balancer("upgrad", tasks=["seg", "depth"])
    optimizer = torch.optim.SGD([*model.parameters(), *balancer.parameters()], lr=0.1)
    losses = {"seg": ce(seg_out, y), "depth": l1(depth_out, d)}
    weights = cvmtl.mtl_backward(losses, balancer, shared_params=trunk.parameters(),
                                 features=trunk_out)  # features: optional, the cheap mode
    optimizer.step(); optimizer.zero_grad()
    cvmtl.mtl_after_step(losses, balancer)  # stateful methods (DWA, FAMO, RLW, ...); else no-op

It is the engine's balancing backward (:mod:`cvmtl.balancers.machinery`), the same functions
that ``tools/train.py`` runs: gradient methods take one backward per task down to the
``features`` (or, without them, to the ``shared_params``), combine the per-task gradients, and
send the combination into the shared parameters; a loss-level method backwards its weighted sum.
Each task's own parameters (what its loss reaches without passing through the features or a
shared parameter, found from the autograd graph, as TorchJD does) receive that task's gradient.
The balancer's own parameters (UW's log-variances) receive theirs: put them in the optimizer.

Under torchrun (no ``DistributedDataParallel`` wrapper: it would all-reduce every per-task
backward) each rank passes its *share* of the global mean as its losses (its local sum over the
global count; for equal local batches, local mean / world size), every rank the same task names.
Inside, as the engine does for its own losses (:func:`cvmtl.losses.compute_losses`), the loss
*values* the balancer sees are the global ones (the shares summed over ranks, one small
all-reduce) while each loss keeps its share's gradient; the features-mode Gram matrix, or in
params mode the per-task gradient matrix, is summed over ranks before combining. So with the
model's gradients summed over ranks before the optimizer step (not the balancer's parameters':
computed from the global values, they are already the same on every rank) and
:func:`mtl_after_step` after it, N processes train exactly like one process on the whole batch,
for every balancer (``examples/ddp_own_model.py``; ``tests/ddp_balancers.py`` checks them all).
On one process nothing of this applies and nothing is reduced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from cvmtl.balancers import machinery as mach
from cvmtl.distributed import all_reduce_coalesced, all_reduce_sum, get_world_size, is_dist


def _step_losses(
    losses: Mapping[str, torch.Tensor], tasks: list[str], k: int
) -> dict[str, torch.Tensor]:
    """The value of the whole step's global loss (k times the shares summed over ranks: k * g),
    the gradient of this rank's micro-batch share (as the engine's StepInputs.losses). On one
    process g is v, and this is the engine's v + (k - 1) v to the bit."""
    g = _global_values(losses, tasks)
    return {t: v + ((k - 1) * v + k * (g[t].to(v.dtype) - v)).detach() for t, v in losses.items()}


def _check_features_mode(balancer) -> None:
    """Raw-vector methods cannot see features-mode gradients split across ranks."""
    if is_dist() and not balancer.uses_gram:
        raise ValueError(
            f"mtl_backward: {type(balancer).__name__} needs the raw per-task feature "
            "gradients, which are split across ranks: pass no features (params mode)"
        )


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
    parameters that task's gradient (loss-level methods: weighted by the task's weight); the
    balancer's own parameters (UW's) theirs. Tasks of the balancer missing from ``losses`` are
    left out of this step.

    ``features``: the shared representation (a tensor or several) that every task's loss is
    computed from; gradient methods then differentiate the losses w.r.t. it (cheap) instead of
    w.r.t. ``shared_params``. ``scaler``: a ``GradScaler`` whose scale the gradients carry, as
    ``scaler.scale(loss).backward()`` would (then ``scaler.step(optimizer)``).
    ``accumulation_steps`` = k when each loss is a micro-batch's share (loss / k) of a k-step
    accumulation: the balancer then sees losses and gradients at the scale of the whole step.
    Under torchrun each loss is this rank's share of the global mean, and the balancer sees the
    global values (see the module docstring). After each optimizer step call
    :func:`mtl_after_step`.
    """
    k = _checked(losses, balancer, accumulation_steps)
    tasks = list(balancer.tasks)
    enabled = scaler is not None and scaler.is_enabled()
    mult = scaler.scale(torch.ones((), device=_device(losses))) if enabled else 1.0
    step_losses = _step_losses(losses, tasks, k)
    if balancer.kind != "gradient":
        _loss_level_backward(balancer, step_losses, mult, k)
        return _weights(balancer, losses)
    shared = mach.trainable(shared_params)
    feats = _as_list(features)
    stop = feats if feats is not None else []
    own = _OwnParameters(step_losses, shared, stop)
    if feats is not None:
        _check_features_mode(balancer)
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


def mtl_after_step(losses: Mapping[str, torch.Tensor], balancer) -> dict[str, torch.Tensor]:
    """After each optimizer step: ``balancer.after_step`` with the step's global loss values,
    which it returns (``{task: detached value}``, the same on every rank: for logging).

    ``losses`` as given to :func:`mtl_backward` (with accumulation: their sum over the step's
    micro-batches; under torchrun: this rank's shares, summed over ranks here). Methods that
    compare the losses before and after the step (FAMO: ``balancer.needs_post_step_losses``)
    want those of the same batch recomputed after the step instead, as the engine does. The
    values reach the balancer in the form its kind takes (a dict, or a vector in task order).
    Stateless methods ignore it; call ``balancer.epoch_end()`` at the end of each epoch (DWA).
    """
    _checked(losses, balancer, 1)
    tasks = list(balancer.tasks)
    values = _global_values(losses, tasks)
    if balancer.kind == "gradient":
        balancer.after_step(torch.stack([values[t] for t in tasks if t in values]))
    else:
        balancer.after_step(dict(values))
    return values


def _global_values(
    losses: Mapping[str, torch.Tensor], tasks: Sequence[str]
) -> dict[str, torch.Tensor]:
    """``{task: detached value}``: under torchrun the sum of every rank's value (each rank's
    share of a global mean: the global mean), in one all-reduce; else the values themselves.

    Every rank must give the same tasks (a rank without data for a task passes its zero share):
    the per-task backward passes and their reductions would not match otherwise. A mismatch is
    a ValueError on every rank (the presence flags travel in the same all-reduce; reading them
    is the one host sync).
    """
    detached = {t: v.detach() for t, v in losses.items()}
    if get_world_size() == 1:
        return detached
    ref = next(iter(detached.values()))
    zero = torch.zeros((), dtype=torch.float64, device=ref.device)
    flat = torch.stack(
        [detached[t].double() if t in detached else zero for t in tasks]
        + [zero + (t in detached) for t in tasks]
    )
    all_reduce_sum(flat)
    counts = flat[len(tasks) :].tolist()
    uneven = [t for t, n in zip(tasks, counts) if 0 < n < get_world_size()]
    if uneven:
        raise ValueError(
            f"mtl_backward: losses for {uneven} on some ranks only: every rank must pass the "
            "same tasks (a rank without data for a task passes a zero share)"
        )
    return {t: flat[i].to(detached[t].dtype) for i, t in enumerate(tasks) if t in detached}


def _loss_level_backward(balancer, step_losses: dict, mult, k: int) -> None:
    """Backward the balancer's total. Its own parameters (UW's ``s_t``) take the mean of the k
    micro-batches' gradients, each taken at that micro-batch's estimate of the step loss: for
    UW (linear in the losses) exactly their gradient at the step's loss, as the engine gives
    them (``cvmtl.engine.step``), instead of k times it (the ``+ s_t`` term is no share)."""
    params = [p for p in balancer.parameters() if p.requires_grad] if k > 1 else []
    hooks = [p.register_hook(lambda g: g / k) for p in params]
    try:
        (balancer(step_losses) * mult).backward()
    finally:
        for hook in hooks:
            hook.remove()


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
