"""Per-task gradients for gradient-level balancers, exact under DDP without the DDP wrapper.

Why no ``DistributedDataParallel``: its hooks all-reduce on every backward, and the per-task
machinery runs T backward passes (plus one through the backbone) per step. Instead every loss is
a *global* mean (see :mod:`cvmtl.losses`), so each rank's gradient is its share of the global
gradient and one SUM all-reduce after backward gives exactly the single-process gradient. The
pieces that a balancer must see before combining are reduced earlier: the ``T x T`` Gram matrix in
``features`` mode (feature coordinates of different samples are disjoint, so the global Gram is
the sum of the local ones) and the per-task gradient matrix in ``params`` mode.

All gradients are accumulated into ``.grad`` multiplied by ``mult`` (the GradScaler scale over the
accumulation steps); the matrices handed to balancers are divided by it again (the scale is a
power of two, so this is exact), so balancers always see true per-task gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from cvmtl.balancers.base import GradientBalancer
from cvmtl.distributed import all_reduce_sum, is_dist


def check_balancer(
    balancer, cfg, distributed: bool | None = None, model: nn.Module | None = None
) -> None:
    """Raise ValueError for a balancer / model / grad-source combination that cannot be exact
    (or cannot run: a model without a shared representation in ``features`` mode)."""
    if getattr(balancer, "kind", None) != "gradient":
        return
    distributed = is_dist() if distributed is None else distributed
    name = type(balancer).__name__
    shared = getattr(getattr(model, "module", model), "has_shared_features", True)
    if cfg.loss.grad_source == "features" and not shared:
        raise ValueError(
            f"{name} with loss.grad_source=features needs a shared representation, which "
            f"model.arch={cfg.model.arch} has not: use loss.grad_source=params"
        )
    if cfg.model.sharing == "soft":
        raise ValueError(
            f"{name} is a gradient-level balancer and needs something shared: "
            "model.sharing=soft has none (use model.sharing=hard or a loss-level balancer)"
        )
    if distributed and cfg.loss.grad_source == "features" and not balancer.uses_gram:
        raise ValueError(
            f"{name} needs the raw per-task gradients, which are split across ranks in "
            "loss.grad_source=features under DDP, so it cannot be exact there: "
            "use loss.grad_source=params or a single process"
        )


def accumulate_grad(param: nn.Parameter, grad: torch.Tensor | None) -> None:
    if grad is None:
        return
    if param.grad is None:
        param.grad = grad.detach().clone()
    else:
        param.grad.add_(grad)


def poison_grads(params: Iterable[nn.Parameter]) -> None:
    """Make the step's gradient non-finite, so that the usual checks (ours, GradScaler's) skip it.

    Used when a per-task gradient is non-finite before it reaches the balancer: GradScaler then
    backs off its scale and resets its growth tracker exactly as for any overflow.
    """
    for p in params:
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.fill_(float("nan"))
            return


def trainable(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    return [p for p in params if p.requires_grad]


def features_forward(
    model: nn.Module, image: torch.Tensor, autocast
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``(z, zd, preds)``: the shared representation, its detached float32 leaf, and the heads'
    predictions computed from the leaf (so per-task backward passes stop at ``zd``)."""
    with autocast:
        z = model.forward_features(image)
    # float32 leaf: the per-task gradients, their Gram and the combination are in float32.
    zd = z.detach().float().requires_grad_()
    with autocast:
        preds = model.forward_heads(zd, tuple(image.shape[-2:]))
    return z, zd, preds


OwnParameters = Callable[[str], Iterable[nn.Parameter]]


def features_task_grads(
    features: Sequence[torch.Tensor],
    losses: dict[str, torch.Tensor],
    tasks: Sequence[str],
    own: OwnParameters,
    mult: torch.Tensor | float,
    keep_graph: bool = False,
) -> tuple[list[int], torch.Tensor]:
    """One backward per present task down to ``features``: ``(active, G [T_active, D])``.

    ``G`` holds the float32 gradients of the task losses w.r.t. the features, flattened and
    concatenated. Each task's own parameters (``own(task)``) receive that task's gradient only
    (times ``mult``), in ``.grad``; nothing behind the features is reached. ``keep_graph``: the
    features are inside the graph that the combination goes back through afterwards (not
    detached leaves), so even the last task's backward must keep it.
    """
    active = [i for i, t in enumerate(tasks) if t in losses]
    rows = []
    for k, i in enumerate(active):
        task = tasks[i]
        torch.autograd.backward(
            losses[task] * mult,
            inputs=[*features, *trainable(own(task))],
            retain_graph=keep_graph or k < len(active) - 1,
        )
        rows.append(torch.cat([f.grad.reshape(-1).float() for f in features]) / mult)
        for f in features:
            f.grad = None
    return active, torch.stack(rows)


def params_task_grads(
    shared: Sequence[nn.Parameter],
    losses: dict[str, torch.Tensor],
    tasks: Sequence[str],
    own: OwnParameters,
    mult: torch.Tensor | float,
) -> tuple[list[int], torch.Tensor]:
    """Per-task gradients w.r.t. the (trainable) ``shared`` parameters as ``G [T_active, P]``
    (float32).

    One ``autograd.grad`` per task over the shared parameters and that task's own parameters;
    the latter are accumulated into ``.grad`` (times ``mult``), the former returned unscaled.
    """
    active = [i for i, t in enumerate(tasks) if t in losses]
    rows = []
    for k, i in enumerate(active):
        mine = trainable(own(tasks[i]))
        grads = torch.autograd.grad(
            losses[tasks[i]] * mult,
            [*shared, *mine],
            retain_graph=k < len(active) - 1,
            allow_unused=True,
        )
        for p, g in zip(mine, grads[len(shared) :]):
            accumulate_grad(p, g)
        flat = [
            (g if g is not None else torch.zeros_like(p)).reshape(-1).float()
            for p, g in zip(shared, grads[: len(shared)])
        ]
        rows.append(torch.cat(flat) / mult)
    return active, torch.stack(rows)


def feature_gram(grads: torch.Tensor) -> torch.Tensor:
    """The Gram matrix ``G G^T`` (float64), summed over ranks under DDP (the global Gram).

    The product runs in float32 and is widened afterwards: casting ``[T, D]`` (D ~ 7e6 at
    288x384, batch 8) to float64 first costs ~0.3 s per step on a CPU, for a relative error of
    ~1e-6 that no solver here can see.
    """
    gram = (grads @ grads.T).double()
    return all_reduce_sum(gram)


def combine_features(
    balancer: GradientBalancer,
    grads: torch.Tensor,
    gram: torch.Tensor,
    losses: torch.Tensor,
    active: list[int],
) -> torch.Tensor:
    """The combined feature gradient ``[D]`` of this rank.

    Methods that depend only on inner products take their weights from the (under DDP: global)
    Gram via ``weights_from_gram`` and apply them to the local rows; methods that need the raw
    rows use ``combine`` (single process only: :func:`check_balancer` refuses them under DDP).
    """
    if is_dist() or balancer.uses_gram:  # the Gram is already here: don't compute it again
        weights = balancer.weights_from_gram(gram, losses, active)
        return weights.to(grads.dtype) @ grads
    combined, _ = balancer.combine(grads, losses, active)
    return combined


def apply_combination(
    balancer: GradientBalancer,
    grads: torch.Tensor,
    task_losses: torch.Tensor,
    active: list[int],
    *,
    mult: torch.Tensor | float,
    k: int = 1,
    features: Sequence[torch.Tensor] | None = None,
    gram: torch.Tensor | None = None,
    shared: Sequence[nn.Parameter] | None = None,
    mark: Callable[[str], None] | None = None,
) -> None:
    """Combine the per-task gradients and send the combination backward: through ``features``
    (with their ``gram``; the features mode) or into the ``shared`` parameters' ``.grad``.

    With ``k`` accumulated micro-batches the balancer sees the gradients (and ``task_losses``,
    which the caller gives at that scale) k times larger, at the scale of the whole step, and
    the update written is the combination's k-th share (for fixed weights: exactly the big
    batch's gradient). ``mark("balancer")`` ends the balancer's phase: before the backward
    through the trunk (features), after writing the shared gradients (params).
    """
    if features is None:
        combined, _ = balancer.combine(_scaled(grads, k), task_losses, active)
        write_shared_grad(shared or [], combined * (mult / k))
        if mark is not None:
            mark("balancer")
        return
    gram = feature_gram(grads) if gram is None else gram
    combined = combine_features(
        balancer, _scaled(grads, k), _scaled(gram, k * k), task_losses, active
    )
    if mark is not None:
        mark("balancer")
    push_features(features, combined * (mult / k))  # the backward through the trunk


def _scaled(x: torch.Tensor, factor: float) -> torch.Tensor:
    return x if factor == 1 else x * factor


def push_features(features: Sequence[torch.Tensor], vector: torch.Tensor) -> None:
    """Backward the flat feature gradient ``vector`` through the ``features`` (in order) into
    everything behind them."""
    grads, offset = [], 0
    for f in features:
        grads.append(vector[offset : offset + f.numel()].view_as(f).to(f.dtype))
        offset += f.numel()
    torch.autograd.backward(list(features), grads)


def write_shared_grad(params: Sequence[nn.Parameter], vector: torch.Tensor) -> None:
    """Add the flat ``vector`` into the ``.grad`` of ``params`` (in order)."""
    offset = 0
    for p in params:
        n = p.numel()
        accumulate_grad(p, vector[offset : offset + n].view_as(p).to(p.dtype))
        offset += n
