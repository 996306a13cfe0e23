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

from collections.abc import Iterable, Sequence

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


def _trainable(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
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


def features_task_grads(
    model: nn.Module,
    zd: torch.Tensor,
    losses: dict[str, torch.Tensor],
    tasks: Sequence[str],
    mult: torch.Tensor,
) -> tuple[list[int], torch.Tensor]:
    """One backward per present task down to ``zd``: ``(active, G [T_active, D])``.

    ``G`` holds the float32 gradients of the task losses w.r.t. the flattened features. Each
    head's parameters receive their own task's gradient only (times ``mult``), in ``.grad``.
    """
    active = [i for i, t in enumerate(tasks) if t in losses]
    rows = []
    for k, i in enumerate(active):
        task = tasks[i]
        inputs = [zd, *_trainable(model.task_parameters(task))]
        torch.autograd.backward(
            losses[task] * mult, inputs=inputs, retain_graph=k < len(active) - 1
        )
        rows.append(zd.grad.reshape(-1) / mult)
        zd.grad = None
    return active, torch.stack(rows)


def params_task_grads(
    model: nn.Module,
    losses: dict[str, torch.Tensor],
    tasks: Sequence[str],
    mult: torch.Tensor,
) -> tuple[list[int], list[nn.Parameter], torch.Tensor]:
    """Per-task gradients w.r.t. ``model.shared_parameters()`` as ``G [T_active, P]`` (float32).

    One ``autograd.grad`` per task over the shared parameters and that task's own parameters;
    the latter are accumulated into ``.grad`` (times ``mult``), the former returned unscaled.
    """
    shared = _trainable(model.shared_parameters())
    active = [i for i, t in enumerate(tasks) if t in losses]
    rows = []
    for k, i in enumerate(active):
        own = _trainable(model.task_parameters(tasks[i]))
        grads = torch.autograd.grad(
            losses[tasks[i]] * mult,
            shared + own,
            retain_graph=k < len(active) - 1,
            allow_unused=True,
        )
        for p, g in zip(own, grads[len(shared) :]):
            accumulate_grad(p, g)
        flat = [
            (g if g is not None else torch.zeros_like(p)).reshape(-1).float()
            for p, g in zip(shared, grads[: len(shared)])
        ]
        rows.append(torch.cat(flat) / mult)
    return active, shared, torch.stack(rows)


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


def write_shared_grad(params: Sequence[nn.Parameter], vector: torch.Tensor) -> None:
    """Add the flat ``vector`` into the ``.grad`` of ``params`` (in order)."""
    offset = 0
    for p in params:
        n = p.numel()
        accumulate_grad(p, vector[offset : offset + n].view_as(p).to(p.dtype))
        offset += n
