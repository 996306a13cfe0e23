"""What every kind of training step shares: its inputs and its optimizer step.

A step consumes the ``train.accumulate`` micro-batches of one optimizer update. Before any forward
pass, :func:`prepare_step` adds up the loss denominators (valid pixels per task) of all of them
on all ranks, in one all-reduce and one host read: every task loss of the step is then a mean
over the pixels of the whole step, exactly as for one k-times bigger batch on one process.

:func:`finish_step` is the single optimizer step: all-reduce what is not reduced yet, unscale,
the finiteness test (one host read, with the deferred loss test), clipping, step, zero_grad.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cvmtl.distributed import all_reduce_coalesced, all_reduce_sum, get_world_size, unwrap
from cvmtl.losses import compute_losses, pixel_counts
from cvmtl.precision import autocast_context

Mark = Callable[[str], None]


def no_mark(phase: str) -> None:
    """The default phase hook: training does not time its phases."""


@dataclass
class StepInputs:
    """The step's micro-batches with their global loss denominators.

    ``present[j]``: the tasks with a valid pixel in micro-batch ``j`` on some rank (they agree
    on all ranks); ``denominators``: ``{task: global count over the step}`` of the tasks present
    in any micro-batch. ``mult`` is the GradScaler's scale (a tensor: reading it costs no sync).
    """

    batches: list[dict]
    present: list[list[str]]
    denominators: dict[str, torch.Tensor]
    device: torch.device
    mult: torch.Tensor
    use_scaler: bool
    autocast: contextlib.AbstractContextManager
    channels_last: bool

    @property
    def k(self) -> int:
        return len(self.batches)

    def nonempty(self) -> list[int]:
        """The micro-batches with a label for some task (the others contribute nothing)."""
        return [j for j, tasks in enumerate(self.present) if tasks]

    def image(self, batch: dict) -> torch.Tensor:
        image = batch["image"].to(self.device, non_blocking=True)
        if self.channels_last and image.dim() == 4:
            image = image.contiguous(memory_format=torch.channels_last)
        return image

    def losses(self, preds: dict, j: int, cfg, every_task: bool = False) -> dict[str, torch.Tensor]:
        """Micro-batch ``j``'s task losses: each carries the gradient of its share of the step
        loss (local sum / global step count); its value is k times that share, the micro-batch's
        estimate of the step loss, so that balancers see losses at the scale of the step.
        ``every_task``: all tasks of the step, not only those present in micro-batch ``j``."""
        names = self.denominators if every_task else self.present[j]
        denominators = {t: self.denominators[t] for t in names}
        losses = compute_losses(preds, self.batches[j], cfg, denominators, cfg.train.compile)
        if self.k == 1:
            return losses
        return {t: v + ((self.k - 1) * v).detach() for t, v in losses.items()}


def prepare_step(micro: list[dict], model: nn.Module, scaler, cfg) -> StepInputs:
    """The :class:`StepInputs` of ``micro`` (one all-reduce, one host read)."""
    device = next(unwrap(model).parameters()).device
    counts = torch.stack([pixel_counts(b, cfg, device) for b in micro])  # [k, T]
    all_reduce_sum(counts)
    flags = (counts > 0).tolist()
    present = [[t for t, ok in zip(cfg.tasks, row) if ok] for row in flags]
    total = counts.sum(dim=0)
    seen = {t for row in present for t in row}
    denominators = {t: total[i] for i, t in enumerate(cfg.tasks) if t in seen}
    use_scaler = scaler is not None and scaler.is_enabled()
    one = torch.ones((), device=device)
    return StepInputs(
        batches=micro,
        present=present,
        denominators=denominators,
        device=device,
        mult=scaler.scale(one) if use_scaler else one,
        use_scaler=use_scaler,
        autocast=autocast_context(cfg.train.amp, device),
        channels_last=cfg.train.channels_last is True,  # a resolved config: auto is not True
    )


def ddp_sync(model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """DDP reduces gradients on the step's last micro-batch only (``no_sync`` before it)."""
    if isinstance(model, DistributedDataParallel) and not last:
        return model.no_sync()
    return contextlib.nullcontext()


def first_bad(names: list[str], flags: list[bool]) -> str:
    """The names whose flag is False, comma-separated ("" when all are good)."""
    return ", ".join(t for t, good in zip(names, flags) if not good)


class SkipReason(enum.Enum):
    """Why a step applied no update."""

    NON_FINITE_LOSS = "non-finite loss"
    NON_FINITE_GRADIENT = "non-finite gradient"
    FP16_OVERFLOW = "fp16 overflow"  # the GradScaler calibrating itself: not a bad step
    NO_LABELED_TASK = "no labeled task"


@dataclass
class StepResult:
    """What one optimizer step did (tensors: reading them is the caller's host sync).

    ``losses``: the step's task losses (detached float32 scalars of the present tasks, the sum
    of the micro-batches' shares); ``total`` the balanced objective; ``weights`` ``[T]`` in the
    balancer's task order (absent tasks 0); ``grad_norm`` the pre-clip global norm (or None);
    ``skip`` why nothing was applied (None: applied), ``detail`` naming the task(s) or the cause.
    """

    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    total: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    grad_norm: torch.Tensor | None = None
    skip: SkipReason | None = None
    detail: str = ""

    @property
    def skipped(self) -> bool:
        return self.skip is not None

    @property
    def reason(self) -> str | None:
        """The skip as one line for the log, e.g. ``non-finite loss: depth``."""
        if self.skip is None:
            return None
        return f"{self.skip.value}: {self.detail}" if self.detail else self.skip.value


class StepRecord:
    """What a step's micro-batches produced, gathered into its :class:`StepResult` (``out``).

    The finiteness of every loss is kept on the device and read once, at the optimizer step (see
    :meth:`deferred`), except with fp16, where the GradScaler must not mistake a bad loss for an
    overflow: :meth:`add_losses` then tests it at once.
    """

    def __init__(self, inputs: StepInputs, num_tasks: int) -> None:
        self.inputs, self.num_tasks = inputs, num_tasks
        self.names: list[str] = []
        self.flags: list[torch.Tensor] = []
        self.total = torch.zeros((), device=inputs.device)
        self.out = StepResult()

    @property
    def losses(self) -> dict[str, torch.Tensor]:
        return self.out.losses

    def add_losses(self, losses: dict[str, torch.Tensor], tested: bool = False) -> str:
        """Record a micro-batch's losses (at step scale); returns the names of non-finite ones
        when they must be known now (fp16), else "". ``tested``: the caller has read their
        finiteness already (the gradient steps read it with the per-task gradients')."""
        k = self.inputs.k
        for t, v in losses.items():
            share = v.detach() / k
            self.losses[t] = self.losses[t] + share if t in self.losses else share
        if tested:
            return ""
        self.names += list(losses)
        self.flags.append(torch.isfinite(torch.stack([v.detach() for v in losses.values()])))
        return first_bad(list(losses), self.flags[-1].tolist()) if self.inputs.use_scaler else ""

    def add_total(self, total: torch.Tensor) -> None:
        self.total = self.total + total.detach() / self.inputs.k

    def deferred(self) -> tuple[list[str], torch.Tensor] | None:
        """The loss test still to read (None when it was read already)."""
        if self.inputs.use_scaler or not self.flags:
            return None
        return self.names, torch.cat(self.flags)

    def skipped(
        self, skip: SkipReason, optimizer, step: bool = True, detail: str = ""
    ) -> StepResult:
        """The result of a step that applies nothing (never a partial accumulation)."""
        device = self.inputs.device
        self.out.skip, self.out.detail = skip, detail
        self.out.total = torch.zeros((), device=device)
        self.out.weights = torch.zeros(self.num_tasks, device=device)
        self.out.grad_norm = None
        if step:
            optimizer.zero_grad(set_to_none=True)
        return self.out


def apply_update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler,
    cfg,
    record: StepRecord,
    reduced: set[int] | None = None,
) -> bool:
    """:func:`finish_step` for ``record``'s step; False (and ``record.out`` says why) when
    nothing was applied."""
    out = record.out
    found = finish_step(model, optimizer, scaler, cfg, reduced or set(), out, record.deferred())
    if found is None and out.skip is None:
        return True
    if found is not None and found[0] is SkipReason.NON_FINITE_LOSS:
        record.skipped(found[0], optimizer, step=False, detail=found[1])
    elif out.skip is None:  # else an earlier reason (a non-finite task gradient) names the task
        out.skip, out.detail = found
    return False


def finish_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler,
    cfg,
    reduced: set[int],
    out: StepResult,
    deferred: tuple[list[str], torch.Tensor] | None = None,
) -> tuple[SkipReason, str] | None:
    """All-reduce, unscale, check, clip, step, zero_grad; returns why nothing was applied, as
    (reason, detail): a non-finite loss named in ``deferred`` = (names, flags), or a non-finite
    gradient; None when the update was applied.

    One host read: the finiteness of the global gradient norm, with the deferred loss flags.
    """
    use_scaler = scaler is not None and scaler.is_enabled()
    if not isinstance(model, DistributedDataParallel):
        # Balancer parameters (UW's s_t) are not in the model: they see the global loss values
        # on every rank, so their gradients are already identical everywhere.
        all_reduce_coalesced(
            [p.grad for p in model.parameters() if p.grad is not None and id(p) not in reduced]
        )
    if use_scaler:
        scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else None
    checks = [] if norm is None else [torch.isfinite(norm).view(1)]
    checks += [] if deferred is None else [deferred[1]]
    flags = torch.cat(checks).tolist() if checks else []
    loss_ok = flags[1:] if norm is not None else flags
    bad_loss = first_bad(deferred[0], loss_ok) if deferred is not None else ""
    grad_ok = norm is None or flags[0]
    out.grad_norm = norm
    if bad_loss:  # nothing is applied, and the scaler does not mistake it for an overflow
        optimizer.zero_grad(set_to_none=True)
        if use_scaler:
            scaler.update()
        return SkipReason.NON_FINITE_LOSS, bad_loss
    if cfg.train.grad_clip > 0 and params and grad_ok:
        torch.nn.utils.clip_grads_with_norm_(params, cfg.train.grad_clip, norm)
    if use_scaler:
        scaler.step(optimizer)  # skips the update itself when unscale_ found an inf
        scaler.update()
    elif grad_ok:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if grad_ok:
        return None
    if use_scaler:
        return SkipReason.FP16_OVERFLOW, "non-finite gradient"
    return SkipReason.NON_FINITE_GRADIENT, ""


def world_share(reg: torch.Tensor) -> torch.Tensor:
    """``R(theta)`` is identical on every rank; the SUM all-reduce would count it world times."""
    return reg / get_world_size()
