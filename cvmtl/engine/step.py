"""One training step per kind of balancer, chosen once when training is built.

- :func:`loss_step`: loss-level balancers. Forward, losses, the balancer's total, backward,
  optimizer, as in torchvision's references; under DDP the model is wrapped in
  ``DistributedDataParallel``, whose bucketed all-reduce overlaps the backward pass.
- :func:`cvmtl.engine.grad_step.gradient_step`: gradient-level balancers (``features`` or
  ``params`` per-task gradients, exact under DDP without the wrapper: see
  :mod:`cvmtl.balancers.machinery`).

A step consumes the ``train.accumulate`` micro-batches of one optimizer update; every task loss
is a mean over the valid pixels of the whole step on all ranks (:mod:`cvmtl.engine.stepping`),
so for a loss-level balancer, k micro-batches on N ranks are one batch k * N times as large
(with BatchNorm, up to its per-micro-batch statistics). A step returns a
:class:`cvmtl.engine.stepping.StepResult`: the step's task losses, total, weights, gradient norm,
and why it was skipped (a :class:`~cvmtl.engine.stepping.SkipReason`, or None).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cvmtl.balancers import machinery as mach
from cvmtl.distributed import unwrap
from cvmtl.engine.buffers import buffers_kept
from cvmtl.engine.compiled import mark_step_begin
from cvmtl.engine.stepping import (
    Mark,
    SkipReason,
    StepRecord,
    StepResult,
    apply_update,
    ddp_sync,
    no_mark,
    prepare_step,
    world_share,
)

Step = Callable[..., StepResult]


def select_step(balancer, cfg, model: nn.Module | None = None) -> Step:
    """The step function for ``balancer`` (checked once here: a combination of balancer, model
    and gradient source that cannot be exact raises ValueError)."""
    if balancer.kind != "gradient":
        return loss_step
    mach.check_balancer(balancer, cfg, model=model)
    from cvmtl.engine.grad_step import gradient_step

    return gradient_step


class TrainStep:
    """The one step entry of fit, fine-tuning and the benchmark: the step function is chosen
    (and the balancer / model / gradient source checked) once, at construction; each call is one
    optimizer step on ``batches`` (one batch, or the step's micro-batches).

    ``step=False`` stops before the optimizer step and leaves the gradients in ``.grad``.
    ``mark(phase)``, when given, is called as each phase ends (``forward``, ``losses``,
    ``balancer``, ``backward``, ``optimizer``; see :mod:`cvmtl.workflows.bench.phases`).
    """

    def __init__(self, balancer, cfg, model: nn.Module | None = None) -> None:
        self.balancer, self.cfg = balancer, cfg
        self.fn = select_step(balancer, cfg, model)

    def __call__(
        self,
        model: nn.Module,
        batches: dict | list[dict],
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        *,
        step: bool = True,
        mark: Mark | None = None,
    ) -> StepResult:
        micro = [batches] if isinstance(batches, dict) else list(batches)
        mark_step_begin(self.cfg)  # CUDA graphs: a new step begins (no-op unless compiled)
        return self.fn(
            model, micro, self.balancer, optimizer, scaler, self.cfg,
            step=step, mark=mark or no_mark,
        )  # fmt: skip


def train_step(
    model: nn.Module,
    batches: dict | list[dict],
    balancer,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    cfg,
    *,
    step: bool = True,
    mark: Mark | None = None,
) -> StepResult:
    """One optimizer step, choosing the step function for this call only (a loop builds a
    :class:`TrainStep` once instead)."""
    return TrainStep(balancer, cfg, model)(model, batches, optimizer, scaler, step=step, mark=mark)


def loss_step(
    model: nn.Module,
    micro: list[dict],
    balancer,
    optimizer: torch.optim.Optimizer,
    scaler,
    cfg,
    *,
    step: bool = True,
    mark: Mark = no_mark,
) -> StepResult:
    """The loss-level step (see the module docstring)."""
    inputs = prepare_step(micro, model, scaler, cfg)
    net, record = unwrap(model), StepRecord(inputs, len(balancer.tasks))
    for j in inputs.nonempty():
        with ddp_sync(model, last=j == inputs.k - 1):
            with inputs.autocast:
                preds = model(inputs.image(micro[j]))
            mark("forward")
            losses = inputs.losses(preds, j, cfg, every_task=balancer.linear_in_losses)
            if bad := record.add_losses(losses):
                return record.skipped(SkipReason.NON_FINITE_LOSS, optimizer, step, bad)
            mark("losses")
            total = balancer(losses)
            mark("balancer")
            objective = total + world_share(net.regularization()) + _touch_absent(model, preds)
            (objective * inputs.mult).backward()
            mark("backward")
        record.add_total(total)
    if not record.losses:
        return record.skipped(SkipReason.NO_LABELED_TASK, optimizer, step)
    _settle_gradients(net, balancer, cfg, record)
    reg = net.regularization().detach()
    record.out.total, record.out.weights = record.total + reg, balancer.last_weights
    if step and apply_update(model, optimizer, scaler, cfg, record):
        mark("optimizer")
        _after_step(net, inputs, balancer, cfg, record.losses)
        mark("balancer")  # the after-step hooks belong to the balancer
    return record.out


def _touch_absent(model: nn.Module, preds: dict) -> torch.Tensor | float:
    """Under DDP every parameter must take part in each backward; a zero term reaches the heads
    of tasks without a loss (their gradients are dropped again by :func:`_clear_absent`)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return sum(0.0 * p.float().sum() for p in _tensors(preds))
    return 0.0


def _tensors(value) -> list[torch.Tensor]:
    """Every tensor of a model's output (deep-supervision outputs nest dicts and lists)."""
    if isinstance(value, torch.Tensor):
        return [value]
    items = value.values() if isinstance(value, dict) else value
    return [t for item in items for t in _tensors(item)]


def _clear_absent(net: nn.Module, cfg, absent: set[str]) -> None:
    """A task without a label in the whole step gets no gradient at all (``None``, so the
    optimizer leaves its head alone), as on a single process."""
    if cfg.model.sharing != "hard":
        return  # soft sharing: R(theta) reaches every branch; its heads keep their zeros
    for task in absent:
        for p in net.task_parameters(task):
            p.grad = None


def _settle_gradients(net: nn.Module, balancer, cfg, record: StepRecord) -> None:
    """What the micro-batches cannot know alone: tasks absent from the whole step lose their
    gradients (:func:`_clear_absent`), and the balancer's own parameters (UW's s_t) get theirs
    at the step's losses (each micro-batch gave them one at its own, and their terms, ``+ s_t``,
    are not pixel means)."""
    _clear_absent(net, cfg, set(balancer.tasks) - set(record.losses))
    params = [p for p in balancer.parameters() if p.requires_grad]
    if record.inputs.k == 1 or not params:
        return
    for p in params:
        p.grad = None
    losses = {t: v.detach() for t, v in record.losses.items()}
    (balancer(losses) * record.inputs.mult).backward(inputs=params)


def _after_step(net: nn.Module, inputs, balancer, cfg, totals: dict) -> None:
    if getattr(balancer, "needs_post_step_losses", False):
        # FAMO compares the losses of the same batch before and after the step; the official
        # trainer recomputes them with a second forward pass in train mode, as here (on the
        # step's last micro-batch), without letting it move the BatchNorm statistics again.
        j = max(i for i, p in enumerate(inputs.present) if p)
        with torch.no_grad(), buffers_kept(net), inputs.autocast:
            preds = net(inputs.image(inputs.batches[j]))
        totals = inputs.losses(preds, j, cfg)
    balancer.after_step({t: v.detach() for t, v in totals.items()})
