"""Masked per-task losses, always in float32, exact under DDP.

Every loss is a mean over the valid pixels of the labeled samples of the batch (``batch["has"]``).
Under DDP it is the *global* mean: each rank divides its local sum by the all-reduced count, so
the parameter gradients summed over ranks equal the single-process gradient on the global batch.
The returned *value* is the global loss on every rank (``local + (global - local).detach()``):
balancers that are nonlinear in the loss values (GLS, DWA, FAMO, MGDA's loss normalization, ...)
then see the same numbers on all ranks and their chain-rule factor is the global one, while
backprop still only flows through the local part. A task without any valid pixel (globally) is
absent from the returned dict: no loss, no gradient, never NaN.

Losses per pixel (``d`` = prediction - target):

- seg: cross-entropy, ignore 255, optional class weights (then the mean is weighted by
  ``w[target]``, as ``F.cross_entropy(reduction="mean")``) and label smoothing.
- depth ``l1``: ``|d|``; ``log_l1``: ``|log p - log t|``; ``berhu``: ``|d|`` if ``|d| <= c`` else
  ``(d^2 + c^2) / 2c`` with ``c = 0.2 max|d|`` over the (global) batch, treated as a constant;
  ``silog`` (Eigen et al. 2014): ``mean(g^2) - 0.85 mean(g)^2`` with ``g = log p - log t``. SILog is
  not a pixel mean; its global form uses the global means of ``g^2`` and ``g``; the local part that
  carries the gradient is ``A_r/N - 2 lambda S S_r / N^2`` (``A_r``, ``S_r`` this rank's sums of
  ``g^2`` and ``g``, ``S`` the global sum, ``N`` the global count), whose gradients summed over
  ranks are those of the global loss.
- normal ``cosine``: ``1 - cos(p, t)``; ``l1``: ``sum_c |p/|p| - t|``. Valid: target non-zero.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from cvmtl.distributed import all_reduce_sum, is_dist

IGNORE_INDEX = 255
SILOG_LAMBDA = 0.85
BERHU_FRACTION = 0.2
_EPS = 1e-6


def _labeled(batch: dict, task: str, n: int, device: torch.device) -> torch.Tensor:
    has = batch.get("has", {}).get(task) if isinstance(batch.get("has"), dict) else None
    if has is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    return torch.as_tensor(has, device=device).bool().view(n)


def seg_terms(
    logits: torch.Tensor,
    target: torch.Tensor,
    labeled: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel cross-entropy ``[B,H,W]`` (already times ``w[target]``) and its denominators.

    The denominators are the validity mask, or ``w[target]`` with class weights, so that the sum
    of the terms over the sum of the denominators is ``F.cross_entropy``'s weighted mean.
    """
    valid = _seg_valid(target, labeled)
    safe = torch.where(valid, target, torch.zeros_like(target)).long()
    loss = F.cross_entropy(
        logits.float(),
        safe,
        weight=class_weights,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    denom = valid.float() if class_weights is None else class_weights[safe] * valid
    return torch.where(valid, loss, torch.zeros_like(loss)), denom


def _seg_valid(target: torch.Tensor, labeled: torch.Tensor) -> torch.Tensor:
    return (target != IGNORE_INDEX) & labeled.view(-1, 1, 1)


def _depth_valid(target: torch.Tensor, labeled: torch.Tensor) -> torch.Tensor:
    return (target > 0) & labeled.view(-1, 1, 1, 1)


def _normal_valid(target: torch.Tensor, labeled: torch.Tensor) -> torch.Tensor:
    return (target != 0).any(dim=1) & labeled.view(-1, 1, 1)


def depth_terms(
    pred: torch.Tensor, target: torch.Tensor, labeled: torch.Tensor, kind: str = "l1"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel depth loss ``[B,1,H,W]`` (``l1``, ``log_l1``, ``berhu``) and validity mask.

    ``silog`` is not a pixel mean; see :func:`silog_sums`.
    """
    valid = _depth_valid(target, labeled)
    pred = pred.float()
    target = target.float()
    if kind == "l1":
        loss = (pred - target).abs()
    elif kind == "log_l1":
        loss = (_safe_log(pred, valid) - _safe_log(target, valid)).abs()
    elif kind == "berhu":
        diff = (pred - target).abs()
        masked = torch.where(valid, diff.detach(), torch.zeros_like(diff))
        c = masked.amax() if masked.numel() else masked.new_zeros(())
        if is_dist():  # the threshold is a function of the global batch
            dist.all_reduce(c, op=dist.ReduceOp.MAX)
        c = (BERHU_FRACTION * c).clamp_min(_EPS)
        loss = torch.where(diff <= c, diff, (diff * diff + c * c) / (2 * c))
    else:
        raise ValueError(f"unknown depth loss {kind!r} (available: l1, silog, berhu, log_l1)")
    return torch.where(valid, loss, torch.zeros_like(loss)), valid.float()


def _safe_log(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # Invalid pixels get log(1) = 0 so that neither the value nor the gradient turns into NaN.
    return torch.where(valid, x, torch.ones_like(x)).clamp_min(_EPS).log()


def normal_terms(
    pred: torch.Tensor, target: torch.Tensor, labeled: torch.Tensor, kind: str = "cosine"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel normal loss ``[B,H,W]`` (``cosine``: 1 - cos, ``l1``) and validity mask."""
    target = target.float()
    valid = _normal_valid(target, labeled)
    unit = F.normalize(pred.float(), dim=1, eps=_EPS)
    if kind == "cosine":
        loss = 1.0 - (unit * target).sum(dim=1)
    elif kind == "l1":
        loss = (unit - target).abs().sum(dim=1)
    else:
        raise ValueError(f"unknown normal loss {kind!r} (available: cosine, l1)")
    return torch.where(valid, loss, torch.zeros_like(loss)), valid.float()


def _class_weights(cfg, device: torch.device) -> torch.Tensor | None:
    weights = cfg.loss.seg_class_weights
    if not weights:
        return None
    if len(weights) != cfg.data.num_classes:
        raise ValueError(
            f"loss.seg_class_weights has {len(weights)} values for {cfg.data.num_classes} classes"
        )
    return torch.tensor(weights, dtype=torch.float32, device=device)


def pixel_counts(batch: dict, cfg, device: torch.device) -> torch.Tensor:
    """This rank's loss denominators ``[T]`` of ``batch`` (float64, ``cfg.tasks`` order): the
    number of valid pixels of labeled samples (with class weights: the sum of ``w[target]``).

    They depend on the targets only, so a step can add them up over its micro-batches (and ranks)
    before any forward pass: the global denominators that make accumulation a bigger batch.
    """
    counts = []
    for task in cfg.tasks:
        target = batch[task].to(device)
        labeled = _labeled(batch, task, target.shape[0], device)
        counts.append(_VALID[task](target, labeled, cfg).double().sum())
    return torch.stack(counts)


def compute_losses(
    preds: dict, batch: dict, cfg, denominators: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Masked float32 task losses ``{task: scalar}`` for the tasks of ``cfg.tasks`` in ``preds``.

    ``cfg`` is the full :class:`cvmtl.config.Config`. Without ``denominators`` every loss is the
    (global) mean over this batch, and tasks without a valid pixel are absent: under DDP one small
    all-reduce (plus one for berHu's threshold) and, like any presence test, one host read.
    ``denominators`` ``{task: global count}`` (see :func:`pixel_counts`) replaces the batch's own
    counts, for a step whose mean runs over several micro-batches; then only the tasks it names are
    computed, and no host read is made.
    """
    tasks = [t for t in cfg.tasks if t in preds]
    if denominators is not None:
        tasks = [t for t in tasks if t in denominators]
    local: dict[str, torch.Tensor] = {}
    stats: list[torch.Tensor] = []  # per task: [sum, count, sum_g] (sum_g only used by silog)
    silog: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with torch.autocast(device_type=_device_type(preds), enabled=False):
        for task in tasks:
            pred = preds[task]
            target = batch[task].to(pred.device)
            labeled = _labeled(batch, task, pred.shape[0], pred.device)
            if task == "depth" and cfg.loss.depth == "silog":
                valid = _depth_valid(target, labeled)
                g = _safe_log(pred.float(), valid) - _safe_log(target.float(), valid)
                g = torch.where(valid, g, torch.zeros_like(g))
                sq, s = (g * g).sum(), g.sum()
                silog[task] = (sq, s)
                stats.append(torch.stack([sq.detach(), valid.float().sum(), s.detach()]))
                continue
            terms, denom = _TERMS[task](pred, target, labeled, cfg)
            local[task] = terms.sum()
            stats.append(torch.stack([local[task].detach(), denom.sum(), denom.new_zeros(())]))
        if not tasks:
            return {}
        # float64: a float32 pixel count stops being exact past 2^24 (a few large DDP batches)
        totals = all_reduce_sum(torch.stack(stats).double())  # [T, 3]: global sums, counts
        if denominators is None:
            # The one host read: which tasks are present. It stays (rather than weighting absent
            # tasks 0 on the device): the balancers' contract is a dict of the present tasks,
            # and their state (DWA / FAMO / GLS / RLW histories, gradient balancers' active rows)
            # is updated for those only.
            present = [c > 0 for c in totals[:, 1].tolist()]
            counts = totals[:, 1]
        else:
            present = [True] * len(tasks)
            counts = torch.stack([denominators[t].to(totals) for t in tasks])
        return {
            task: _global_loss(local.get(task), silog.get(task), totals[i], counts[i])
            for i, task in enumerate(tasks)
            if present[i]
        }


def _global_loss(
    local: torch.Tensor | None,
    silog: tuple[torch.Tensor, torch.Tensor] | None,
    totals: torch.Tensor,
    count: torch.Tensor,
) -> torch.Tensor:
    """One task's loss: the gradient of this rank's part (local sum / global ``count``), the
    value of the global loss (``totals`` = global [sum, count, sum_g])."""
    n = count.float()
    if silog is not None:
        sq, s = silog
        s_glob = totals[2].float()
        value = totals[0].float() / n - SILOG_LAMBDA * (s_glob / n) ** 2
        part = sq / n - SILOG_LAMBDA * 2.0 * s_glob * s / (n * n)
    else:
        value = totals[0].float() / n
        part = local / n
    return part + (value - part).detach()


def _device_type(preds: dict) -> str:
    for value in preds.values():
        if isinstance(value, torch.Tensor):
            return value.device.type
    return "cpu"


def _seg(pred, target, labeled, cfg):
    return seg_terms(
        pred, target, labeled, _class_weights(cfg, pred.device), cfg.loss.seg_label_smoothing
    )


def _depth(pred, target, labeled, cfg):
    return depth_terms(pred, target, labeled, cfg.loss.depth)


def _normal(pred, target, labeled, cfg):
    return normal_terms(pred, target, labeled, cfg.loss.normal)


_TERMS: dict[str, Callable] = {"seg": _seg, "depth": _depth, "normal": _normal}


def _seg_weights(target, labeled, cfg):
    valid = _seg_valid(target, labeled)
    weights = _class_weights(cfg, target.device)
    if weights is None:
        return valid
    return weights[torch.where(valid, target, torch.zeros_like(target)).long()] * valid


# Each loss's denominator from its target alone: the weights of the valid pixels.
_VALID: dict[str, Callable] = {
    "seg": _seg_weights,
    "depth": lambda target, labeled, cfg: _depth_valid(target, labeled),
    "normal": lambda target, labeled, cfg: _normal_valid(target, labeled),
}
