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

import functools

import torch

from cvmtl.distributed import all_reduce_sum
from cvmtl.loss_terms import SILOG_LAMBDA, labeled_mask, safe_log
from cvmtl.tasks import get_task


def pixel_counts(batch: dict, cfg, device: torch.device) -> torch.Tensor:
    """This rank's loss denominators ``[T]`` of ``batch`` (float64, ``cfg.tasks`` order): the
    number of valid pixels of labeled samples (with class weights: the sum of ``w[target]``).

    They depend on the targets only, so a step can add them up over its micro-batches (and ranks)
    before any forward pass: the global denominators that make accumulation a bigger batch.
    """
    counts = []
    for task in cfg.tasks:
        target = batch[task].to(device)
        labeled = labeled_mask(batch, task, target.shape[0], device)
        counts.append(get_task(task).loss_weights(target, labeled, cfg).double().sum())
    return torch.stack(counts)


AUX = "aux"  # the models' deep-supervision key (cvmtl.models.arch.common.AUX)


def compute_losses(
    preds: dict,
    batch: dict,
    cfg,
    denominators: dict[str, torch.Tensor] | None = None,
    compiled: bool | str = False,
) -> dict[str, torch.Tensor]:
    """Masked float32 task losses ``{task: scalar}`` for the tasks of ``cfg.tasks`` in ``preds``.

    ``cfg`` is the full :class:`cvmtl.config.Config`. Without ``denominators`` every loss is the
    (global) mean over this batch, and tasks without a valid pixel are absent: under DDP one small
    all-reduce (plus one for berHu's threshold) and, like any presence test, one host read.
    ``denominators`` ``{task: global count}`` (see :func:`pixel_counts`) replaces the batch's own
    counts, for a step whose mean runs over several micro-batches; then only the tasks it names are
    computed, and no host read is made.

    Deep supervision: ``preds["aux"]`` ``{task: prediction or list of predictions}`` (the initial
    predictions of ``model.arch=padnet`` / ``mtinet`` in training mode) adds
    ``loss.aux_weight * loss(aux prediction)`` to the task's loss, each computed exactly as the
    task's own (same targets, masks and global means).

    ``compiled``: a ``train.compile`` value; the per-pixel terms then run under torch.compile in
    that mode (a few fused kernels per task instead of dozens; in the CPU step at 288x384 the
    loss phase took 0.030 s instead of 0.088 s, docs/benchmarks.md).
    """
    tasks = [t for t in cfg.tasks if t in preds]
    if denominators is not None:
        tasks = [t for t in tasks if t in denominators]
    entries = _entries(preds, tasks, cfg)
    with torch.autocast(device_type=_device_type(preds), enabled=False):
        if not tasks:
            return {}
        sums = _compiled_sums(compiled) if compiled else _local_sums
        local, silog, stats = sums(entries, _labels(batch, tasks), cfg)
        # float64: a float32 pixel count stops being exact past 2^24 (a few large DDP batches)
        totals = all_reduce_sum(torch.stack(stats).double())  # [E, 3]: global sums, counts
        if denominators is None:
            # The one host read: which tasks are present. It stays (rather than weighting absent
            # tasks 0 on the device): the balancers' contract is a dict of the present tasks,
            # and their state (DWA / FAMO / GLS / RLW histories, gradient balancers' active rows)
            # is updated for those only. Auxiliary entries share their task's count.
            counts = totals[:, 1]
            present: dict[str, bool] = {}
            for entry, count in zip(entries, counts.tolist()):
                present.setdefault(entry[0], count > 0)
        else:
            present = dict.fromkeys(tasks, True)
            counts = torch.stack([denominators[e[0]].to(totals) for e in entries])
        out: dict[str, torch.Tensor] = {}
        for i, (task, weight, _, _) in enumerate(entries):
            if present[task]:
                loss = _global_loss(local[i], silog[i], totals[i], counts[i])
                out[task] = loss if task not in out else out[task] + weight * loss
        return out


def _entries(preds: dict, tasks: list[str], cfg) -> list[tuple[str, float, torch.Tensor, bool]]:
    """``(task, weight, prediction, main)``: each task's prediction (weight 1, main) first, then
    its auxiliary ones (weight ``loss.aux_weight``; kept at weight 0 so that every head still takes
    part in the backward pass, as DDP requires)."""
    aux = preds.get(AUX) or {}
    weight = float(getattr(cfg.loss, "aux_weight", 1.0))
    entries = []
    for task in tasks:
        entries.append((task, 1.0, preds[task], True))
        extra = aux.get(task, [])
        for pred in extra if isinstance(extra, (list, tuple)) else [extra]:
            entries.append((task, weight, pred, False))
    return entries


def _labels(batch: dict, tasks: list[str]) -> dict:
    """The part of ``batch`` the loss terms read: a compiled function guards on what it is
    given, and a batch's ``meta`` (file names) changes every step."""
    return {**{t: batch[t] for t in tasks}, "has": batch.get("has", {})}


@functools.cache
def _compiled_sums(mode: bool | str):
    return torch.compile(_local_sums, mode="default" if mode is True else mode)


def _local_sums(entries: list, batch: dict, cfg) -> tuple[list, list, list[torch.Tensor]]:
    """Per entry: this rank's loss sum (or SILog's sums) and its ``[sum, count, sum_g]`` row."""
    local: list[torch.Tensor | None] = []
    silog: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    stats: list[torch.Tensor] = []  # per entry: [sum, count, sum_g] (sum_g only used by silog)
    for task, _, pred, main in entries:
        target = batch[task].to(pred.device)
        labeled = labeled_mask(batch, task, pred.shape[0], pred.device)
        spec = get_task(task)
        if spec.extras.get("silog", lambda cfg: False)(cfg):
            valid = spec.loss_weights(target, labeled, cfg) > 0
            g = safe_log(pred.float(), valid) - safe_log(target.float(), valid)
            g = torch.where(valid, g, torch.zeros_like(g))
            sq, s = (g * g).sum(), g.sum()
            local.append(None)
            silog.append((sq, s))
            stats.append(torch.stack([sq.detach(), valid.float().sum(), s.detach()]))
            continue
        terms, denom = spec.loss(pred, target, labeled, cfg)
        if main:
            terms = _add_consistency(terms, spec, pred, target, batch, labeled, cfg)
        local.append(terms.sum())
        silog.append(None)
        stats.append(torch.stack([local[-1].detach(), denom.sum(), denom.new_zeros(())]))
    return local, silog, stats


def _add_consistency(terms, spec, pred: torch.Tensor, target, batch: dict, labeled, cfg):
    """``terms`` plus the weighted cross-task terms the task's spec names (``extras[
    "consistency"]``, weights in ``loss.consistency``) whose other task is in the batch: a
    per-pixel addition to its loss (the denominator stays the task's pixel count, so they are
    exact under DDP and accumulation like the rest); ``terms`` itself when none applies."""
    weights = getattr(cfg.loss, "consistency", None) or {}
    for name, (other, extra) in spec.extras.get("consistency", {}).items():
        if weights.get(name) and other in batch:
            both = labeled & labeled_mask(batch, other, pred.shape[0], pred.device)
            terms = terms + weights[name] * extra(pred, batch[other].to(pred.device), target, both)
    return terms


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
    for key, value in preds.items():
        if isinstance(value, torch.Tensor) and key != AUX:
            return value.device.type
    return "cpu"
