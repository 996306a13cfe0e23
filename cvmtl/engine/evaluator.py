"""evaluate(): run a model over a split at the targets' resolution and compute every metric.

Predictions are resized to the targets' size and rescaled as the sample contract says (an image
resized by s yields labels times ``s ** label.scale_power``, e.g. depth / s, so a prediction made
on it is multiplied by ``s ** -scale_power``). Optional flip TTA (``label.flip_sign``: normal x)
and multi-scale inference (``cfg.eval.tta``, ``cfg.eval.scales``); every task is read from its
:class:`cvmtl.tasks.TaskSpec`.

Under DDP each rank evaluates its shard and the metrics are all-reduced. A DistributedSampler
pads the split with duplicates so that every rank gets as many samples; ``evaluate`` recognizes
that padding (plain ``DistributedSampler``, ``drop_last=False``) and leaves it out, so the numbers
equal a single-process run. Other samplers are taken as they come.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DistributedSampler

from cvmtl.distributed import is_main_process, unwrap
from cvmtl.engine.compiled import mark_step_begin
from cvmtl.engine.views import decide, predict
from cvmtl.metrics import build_metrics
from cvmtl.precision import AMP_DTYPES, autocast_context, resolve_precision
from cvmtl.tasks import get_task

Tensor = torch.Tensor

# re-exported: AMP_DTYPES from cvmtl.precision, predict from cvmtl.engine.views
__all__ = ["AMP_DTYPES", "evaluate", "predict"]


def evaluate(
    model: nn.Module,
    loader: Iterable[dict[str, Any]] | None,
    tasks: list[str],
    cfg: Any,
    *,
    device: torch.device | str | None = None,
    amp: str | None = None,
    progress: bool = True,
    max_batches: int | None = None,
    collect: int = 0,
    samples: list[dict[str, Any]] | None = None,
    evaluators: Iterable[Any] = (),
) -> dict[str, dict[str, Any]]:
    """Metrics ``{task: {metric: value}}`` of ``model`` over ``loader`` (all ranks, reduced).

    ``evaluators``: extra statistics fed the same predictions, detectron2-style: each gets
    ``update(preds, targets)`` per batch (e.g. the report's histograms,
    :class:`cvmtl.workflows.eval_stats.ReportStats`); the caller reads its results.

    ``cfg`` is the run Config (uses ``eval``, ``data.num_classes``, ``train.amp``,
    ``train.channels_last``). ``amp``: ``auto | none | bf16 | fp16`` (default ``cfg.train.amp``);
    ``auto`` values are resolved for ``device`` by :func:`cvmtl.precision.resolve_precision`.
    ``device``: default the model's. ``max_batches`` stops early (per rank). With ``collect=N``
    the first N samples of this rank are appended to the list ``samples`` as dicts of CPU
    tensors ``{"image", "meta", "has", "target": {task}, "pred": {task}}``: targets as collated,
    predictions by ``spec.predict`` (class ids / probabilities / metres [H,W], normals [H,W,3]).
    """
    _check_arguments(loader, collect, samples, amp)
    tasks = list(tasks)
    net = unwrap(model)
    device = torch.device(device) if device is not None else _device_of(net)
    cfg = _resolved(cfg, amp, device)
    amp, num_classes = cfg.train.amp, cfg.data.num_classes
    metrics = build_metrics(tasks, num_classes, cfg)
    skip_padding = _padding_filter(loader)

    seen = 0
    with _eval_mode(net), _progress(loader, max_batches, progress) as bar:
        for i, batch in enumerate(bar):
            if max_batches is not None and i >= max_batches:
                break
            image = batch["image"].to(device, non_blocking=True)
            targets = _targets(batch, tasks, device, skip_padding, seen)
            size = next(iter(targets.values())).shape[-2:]
            mark_step_begin(cfg)
            with autocast_context(amp, device):
                preds = predict(net, image, size, tasks, cfg, num_classes, first=(i == 0))
            for task, scored in decide(preds).items():  # class tasks: labels
                metrics[task].update(scored, targets[task])
            for extra in evaluators:
                extra.update(preds, targets)
            if samples is not None and len(samples) < collect:
                _collect(samples, collect, batch, targets, preds)
            seen += image.shape[0]
    if seen == 0:
        raise ValueError("evaluate: the split is empty (the loader yielded no batches)")
    return {task: metrics[task].compute() for task in tasks}


def _device_of(net: nn.Module) -> torch.device:
    param = next(net.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _check_arguments(loader: Any, collect: int, samples: Any, amp: str | None) -> None:
    if loader is None:
        raise ValueError("evaluate: no data loader for this split (is the split missing?)")
    if collect > 0 and samples is None:
        raise ValueError("evaluate: collect > 0 needs a list passed as samples= to fill")
    if amp is not None and amp not in ("auto", "none", *AMP_DTYPES):
        raise ValueError(f"evaluate: amp must be auto|none|bf16|fp16, got {amp!r}")


def _resolved(cfg: Any, amp: str | None, device: torch.device) -> Any:
    """``cfg`` with ``amp`` (when given) and concrete precision for ``device``."""
    if amp is not None and amp != cfg.train.amp:
        cfg = copy.copy(cfg)
        cfg.train = copy.copy(cfg.train)
        cfg.train.amp = amp
    return resolve_precision(cfg, device)


def _targets(
    batch: dict[str, Any], tasks: list[str], device: torch.device, skip: Any, seen: int
) -> dict[str, torch.Tensor]:
    """Targets on ``device`` with unlabeled (``has`` False) and padding samples made invalid."""
    bsz = batch["image"].shape[0]
    keep = skip(seen, bsz) if skip is not None else None
    has = batch.get("has", {})
    out = {}
    for task in tasks:
        if task not in batch:
            raise ValueError(
                f"evaluate: the dataset gives no {task!r} labels (batch keys: "
                f"{sorted(k for k in batch if k not in ('image', 'meta', 'has'))})"
            )
        t = batch[task].to(device, non_blocking=True)
        # Collation already fills missing labels with invalid values; masking again guards
        # against a dataset that does not. Decided on the CPU copy of ``has``: no device sync.
        mask = torch.as_tensor(has[task]).cpu().bool() if task in has else None
        if keep is not None:
            mask = keep if mask is None else mask & keep
        if mask is not None and not bool(mask.all()):
            fill = get_task(task).label.fill
            m = mask.to(device).view(-1, *[1] * (t.dim() - 1))
            t = torch.where(m, t, torch.full_like(t, fill))
        out[task] = t
    return out


def _padding_filter(loader: Any) -> Any:
    """For a DistributedSampler (drop_last=False): a function (seen, batch_size) -> CPU bool
    [B] that is False on the duplicates the sampler appended. Rank r's i-th sample sits at
    position r + i * world in the padded index list; positions >= len(dataset) are padding."""
    sampler = getattr(loader, "sampler", None)
    if type(sampler) is not DistributedSampler or sampler.drop_last:
        return None
    if getattr(loader, "batch_size", None) is None:
        return None  # custom batch sampler: positions unknown
    n, world, rank = len(sampler.dataset), sampler.num_replicas, sampler.rank

    def keep(seen: int, bsz: int) -> torch.Tensor:
        pos = rank + (seen + torch.arange(bsz)) * world
        return pos < n

    return keep


@contextlib.contextmanager
def _eval_mode(net: nn.Module) -> Iterator[None]:
    """Eval mode and inference mode; each module's own mode comes back afterwards (a frozen
    BatchNorm stays in eval mode during fine-tuning)."""
    modes = {m: m.training for m in net.modules()}
    net.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for m, mode in modes.items():
            m.training = mode


@contextlib.contextmanager
def _progress(loader: Any, max_batches: int | None, enabled: bool) -> Iterator[Any]:
    """``loader``, behind a progress bar on the main process."""
    if not (enabled and is_main_process()):
        yield loader
        return
    from tqdm.auto import tqdm

    total = len(loader) if hasattr(loader, "__len__") else None
    if max_batches is not None and total is not None:
        total = min(total, max_batches)
    bar = tqdm(loader, total=total, desc="eval", leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def _collect(samples: list, collect: int, batch: dict, targets: dict, preds: dict) -> None:
    meta = batch.get("meta", {})
    has = batch.get("has", {})
    for i in range(batch["image"].shape[0]):
        if len(samples) >= collect:
            return
        pred = {task: _predicted(task, p[i : i + 1]) for task, p in preds.items()}
        samples.append(
            {
                "image": batch["image"][i].cpu(),
                "meta": _meta_item(meta, i),
                "has": {t: bool(v[i]) for t, v in has.items()},
                "target": {t: v[i].cpu() for t, v in targets.items()},
                "pred": pred,
            }
        )


def _predicted(task: str, p: Tensor) -> Tensor:
    """``spec.predict`` of one sample's output [1, C, H, W], on the CPU (floats as float32)."""
    pred = get_task(task).predict(p)[0].cpu()
    return pred.float() if pred.is_floating_point() else pred


def _meta_item(meta: Any, i: int) -> Any:
    """Sample i of a collated meta (dict of lists / tensors), or of a list of dicts."""
    if isinstance(meta, dict):
        return {k: _meta_item(v, i) for k, v in meta.items()}
    if isinstance(meta, (list, tuple)) or torch.is_tensor(meta):
        return meta[i] if len(meta) > i else None
    return meta
