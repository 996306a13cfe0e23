"""Task relatedness: which tasks to share, and where a branch would pay.

Two measures, both averaged over batches:

- **Gradient cosine per stage.** For every stage of the shared trunk (each backbone feature level,
  then the FPN neck) the T x T cosine similarity between the task-loss gradients w.r.t. that
  stage's output features (``source="features"``, cheap) or its parameters (``source="params"``).
  The gradient at a stage output is the total derivative, so it is what the layers *before* it
  receive from each task: a negative cosine there says the tasks pull those layers apart.
- **Lookahead inter-task affinity** (Fifty et al., NeurIPS 2021, "Efficiently Identifying Task
  Groupings for Multi-Task Learning"): ``Z[i][j] = 1 - L_j(theta_s - lr * g_i) / L_j(theta_s)``
  with ``g_i`` task i's gradient w.r.t. the shared parameters (one SGD lookahead step, heads
  fixed, same batch). Positive: a step on task i alone lowers task j's loss.

The model must provide ``backbone`` (image -> list of feature maps), ``neck`` (list -> map),
``forward_heads``, ``shared_parameters`` and ``size_divisor`` (:class:`MultiTaskModel` does).
Nothing is changed: parameters are never written (the lookahead runs through
``torch.func.functional_call``) and buffers (BN running statistics) are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from cvmtl.models.multitask import as_features, pad_to_multiple

LossFn = Callable[[dict[str, torch.Tensor], dict], dict[str, torch.Tensor]]
_EPS = 1e-12


@dataclass
class AffinityResult:
    """Averaged affinities; ``cosine[stage][i][j]``, ``lookahead[i][j]`` = Z_{i->j}.

    ``grad_norm[stage][i]`` is the mean norm of task i's gradient at that stage; a pair or task
    missing from every batch (no labels) is NaN.
    """

    tasks: list[str]
    stages: list[str]
    cosine: dict[str, list[list[float]]]
    grad_norm: dict[str, list[float]]
    lookahead: list[list[float]]
    batches: int
    lookahead_lr: float
    source: str
    mode: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stage_names(model: nn.Module, levels: int | None = None) -> list[str]:
    """``s4, s8, ...`` (one per backbone level, by stride; ``level0, ...`` without strides),
    then ``neck``."""
    strides = getattr(model.backbone, "strides", None)
    if strides is None:
        if levels is None:
            raise ValueError("the backbone has no .strides: pass the number of levels")
        return [f"level{k}" for k in range(levels)] + ["neck"]
    return [f"s{s}" for s in strides] + ["neck"]


def stage_parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Shared parameters grouped by stage (as :func:`stage_names`); the stem goes with the first.

    A timm ``FeatureListNet`` body is split at the modules that emit each kept level; any other
    backbone is one group ``backbone``. Stages without trainable parameters are left out.
    """
    backbone, groups = model.backbone, {}
    body = getattr(backbone, "body", None)
    info = getattr(body, "feature_info", None)
    if info is not None and getattr(backbone, "pyramid", None) is None and hasattr(body, "items"):
        ends = [info.module_name()[k].replace(".", "_") for k in backbone.keep]
        names = stage_names(model)[:-1]
        current: list[nn.Parameter] = []
        level = 0
        for child_name, child in body.items():
            current += list(child.parameters())
            if level < len(ends) and child_name == ends[level]:
                groups[names[level]], current, level = current, [], level + 1
        if level != len(ends):
            raise ValueError("could not map the backbone's modules to its feature levels")
        groups[names[-1]] += current  # anything after the last level (rare)
    else:
        groups["backbone"] = list(backbone.parameters())
    groups["neck"] = list(model.neck.parameters())
    return {k: [p for p in v if p.requires_grad] for k, v in groups.items() if v}


def staged_forward(
    model: nn.Module, image: torch.Tensor
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """The stage outputs (backbone levels, then the neck map) and the predictions."""
    feats = list(model.backbone(pad_to_multiple(image, model.size_divisor)))
    z = as_features(model.neck(feats))
    return [*feats, z], model.forward_heads(z, image.shape[-2:])


class _Mean:
    """Elementwise mean of T x T (or T) tensors that may hold NaN (= missing this batch)."""

    def __init__(self, shape: tuple[int, ...]):
        self.sum, self.n = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape)

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double().cpu()
        ok = ~torch.isnan(x)
        self.sum += torch.where(ok, x, 0.0)
        self.n += ok.float()

    def value(self) -> list:
        return torch.where(self.n > 0, self.sum / self.n.clamp_min(1), float("nan")).tolist()


def _cosine_matrix(vectors: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine matrix and norms of T vectors (None = task absent -> NaN row / column)."""
    t = len(vectors)
    cos = torch.full((t, t), float("nan"), dtype=torch.float64)
    norms = torch.full((t,), float("nan"), dtype=torch.float64)
    idx = [i for i, v in enumerate(vectors) if v is not None]
    if not idx:
        return cos, norms
    stack = torch.stack([vectors[i].detach().double() for i in idx])
    gram = stack @ stack.T
    n = gram.diagonal().sqrt()
    sub = gram / (n[:, None] * n[None, :]).clamp_min(_EPS)
    sub.fill_diagonal_(1.0)  # a zero gradient still has cosine 1 with itself, by convention
    for a, i in enumerate(idx):
        norms[i] = n[a]
        for b, j in enumerate(idx):
            cos[i, j] = sub[a, b]
    return cos, norms


@torch.no_grad()
def _lookahead_losses(
    model: nn.Module,
    image: torch.Tensor,
    batch: dict,
    loss_fn: LossFn,
    named_shared: list[tuple[str, nn.Parameter]],
    grads: list[torch.Tensor],
    lr: float,
) -> dict[str, torch.Tensor]:
    """The task losses with shared params ``theta_s - lr * grads`` (the model is not written)."""
    params = {name: p - lr * g for (name, p), g in zip(named_shared, grads)}
    return loss_fn(functional_call(model, params, (image,), strict=False), batch)


def compute_affinity(
    model: nn.Module,
    batches: Iterable[dict],
    loss_fn: LossFn,
    tasks: list[str],
    lookahead_lr: float,
    source: str = "features",
    mode: str = "train",
) -> AffinityResult:
    """Gradient cosines per stage and the lookahead affinity, averaged over ``batches``.

    ``loss_fn(preds, batch) -> {task: loss}`` may leave out a task (no labels in the batch).
    ``mode`` sets train (batch statistics, as during training) or eval (running statistics).
    """
    _check_options(source, mode, lookahead_lr, getattr(model, "arch", None))
    shared = _named_shared_parameters(model)
    groups = stage_parameter_groups(model) if source == "params" else None
    t = len(tasks)
    stages: list[str] = list(groups) if groups is not None else []
    cos_avg: dict[str, _Mean] = {}
    norm_avg: dict[str, _Mean] = {}
    look_avg = _Mean((t, t))
    device = shared[0][1].device
    count = 0
    with _state_restored(model, train=mode == "train"):
        for batch in batches:
            image = batch["image"].to(device)
            outs, preds = staged_forward(model, image)
            if not stages:
                stages = stage_names(model, len(outs) - 1)
            losses = loss_fn(preds, batch)
            vecs, grads = _task_gradients(losses, tasks, outs, shared, groups, stages)
            for s in stages:
                cos, norms = _cosine_matrix(vecs[s])
                cos_avg.setdefault(s, _Mean((t, t))).add(cos)
                norm_avg.setdefault(s, _Mean((t,))).add(norms)
            del outs, preds, vecs
            z = _lookahead_batch(
                model, image, batch, loss_fn, tasks, losses, shared, grads, lookahead_lr
            )
            look_avg.add(z)
            count += 1
    if count == 0:
        raise ValueError("no batch to compute affinities on")
    return AffinityResult(
        tasks=list(tasks),
        stages=stages,
        cosine={s: cos_avg[s].value() for s in stages},
        grad_norm={s: norm_avg[s].value() for s in stages},
        lookahead=look_avg.value(),
        batches=count,
        lookahead_lr=float(lookahead_lr),
        source=source,
        mode=mode,
    )


def _check_options(source: str, mode: str, lookahead_lr: float, arch: str | None) -> None:
    """Reject an unknown gradient source or mode, a non-positive lookahead step and a model
    without the backbone levels -> one FPN map stages measured here."""
    if arch not in (None, "fpn"):
        raise ValueError(
            f"affinity: model.arch={arch} has no backbone -> neck stages to measure; "
            "run it on model.arch=fpn (task relatedness is a property of the tasks and data)"
        )
    if source not in ("features", "params"):
        raise ValueError(f"source: expected features | params, got {source!r}")
    if mode not in ("train", "eval"):
        raise ValueError(f"mode: expected train | eval, got {mode!r}")
    if not lookahead_lr > 0:
        raise ValueError(f"lookahead_lr must be > 0, got {lookahead_lr}")


def _named_shared_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable shared parameters with their names (functional_call replaces them by name)."""
    names_by_id = {id(p): n for n, p in model.named_parameters()}
    shared = [(names_by_id[id(p)], p) for p in model.shared_parameters() if p.requires_grad]
    if not shared:
        raise ValueError("the model shares no trainable parameter (model.sharing=soft?)")
    return shared


@contextmanager
def _state_restored(model: nn.Module, train: bool) -> Iterator[None]:
    """Run in train or eval mode; afterwards the mode and every buffer are as they were."""
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    was_training = model.training
    model.train(train)
    try:
        yield
    finally:
        model.train(was_training)
        with torch.no_grad():  # BN running statistics (and any other state) as they were
            for k, v in model.named_buffers():
                v.copy_(buffers[k])


def _task_gradients(losses, tasks, outs, shared, groups, stages):
    """Per stage, each task's gradient as a flat vector (None: task absent), and each task's
    gradients w.r.t. the shared parameters (for the lookahead)."""
    vecs: dict[str, list[torch.Tensor | None]] = {s: [None] * len(tasks) for s in stages}
    grads: list[list[torch.Tensor] | None] = [None] * len(tasks)
    params = [p for _, p in shared]
    for i, task in enumerate(tasks):
        if task not in losses:
            continue
        feats = outs if groups is None else []
        g = torch.autograd.grad(losses[task], feats + params, retain_graph=True, allow_unused=True)
        # an unused parameter (or stage) gets no gradient from this task: zero, not missing
        grads[i] = [
            torch.zeros_like(p) if x is None else x for x, p in zip(g[len(feats) :], params)
        ]
        if groups is None:
            for s, x, f in zip(stages, g[: len(feats)], feats):
                vecs[s][i] = (torch.zeros_like(f) if x is None else x).flatten()
        else:
            by_id = {id(p): x for p, x in zip(params, grads[i])}
            for s, ps in groups.items():
                vecs[s][i] = torch.cat([by_id[id(p)].flatten() for p in ps])
    return vecs, grads


def _lookahead_batch(
    model, image, batch, loss_fn, tasks, losses, shared, grads, lr
) -> torch.Tensor:
    """One batch's Z[i][j]; NaN where task i had no gradient or task j no (non-zero) loss."""
    t = len(tasks)
    z = torch.full((t, t), float("nan"), dtype=torch.float64)
    base = {k: float(v.detach()) for k, v in losses.items()}
    for i, g in enumerate(grads):
        if g is None:
            continue
        after = _lookahead_losses(model, image, batch, loss_fn, shared, g, lr)
        for j, task in enumerate(tasks):
            if task in after and abs(base.get(task, 0.0)) > _EPS:
                z[i, j] = 1.0 - float(after[task]) / base[task]
    return z
