"""One epoch of optimizer steps: the loop that fit and fine-tuning share.

:func:`epoch_steps` sets the loader's epoch (and mid-epoch start), groups its batches into the
``accumulate`` micro-batches of each optimizer step, runs the step entry
(:class:`cvmtl.engine.step.TrainStep`), undoes the BatchNorm statistics of a non-finite step and
advances the schedule, and yields each step's ``(micro_batches, StepResult)`` to the caller, who
does the rest: fit (:func:`cvmtl.engine.trainer.train_one_epoch`) counts, logs, saves and stops
there; fine-tuning (:func:`cvmtl.workflows.finetune.train_task`) only counts the applied steps.
Micro-batches left over at the end of an epoch (fewer than ``accumulate``) are dropped, and a
skipped step still advances the schedule, so a step's learning rate depends on its index only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cvmtl.engine.buffers import BufferGuard
from cvmtl.engine.checkpoint import preserved_rng
from cvmtl.engine.signals import GracefulStop
from cvmtl.engine.stepping import SkipReason, StepResult


@dataclass
class StepParts:
    """What one optimizer step runs and updates."""

    step_fn: Callable[..., StepResult]  # a TrainStep, chosen once
    model: nn.Module  # the module the step runs (fit: the DDP wrapper under torchrun)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    scheduler: torch.optim.lr_scheduler.LRScheduler
    buffers: BufferGuard  # the model's BatchNorm statistics, restored after a non-finite step

    def step(self, micro: list) -> StepResult:
        """One optimizer step on ``micro``, then one step of the schedule."""
        self.buffers.snapshot()
        out = self.step_fn(self.model, micro, self.optimizer, self.scaler)
        if out.skipped and out.skip is not SkipReason.FP16_OVERFLOW:
            self.buffers.restore()  # a NaN batch must not leave its BatchNorm statistics behind
        with warnings.catch_warnings():
            # a skipped step (e.g. an fp16 overflow) still advances the schedule; torch warns
            # that the optimizer did not step first, which is intended here
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler")
            self.scheduler.step()
        return out


def epoch_steps(
    parts: StepParts,
    loader: Any,
    epoch: int,
    *,
    steps: int,
    accumulate: int,
    start: int = 0,
    stop: GracefulStop | None = None,
) -> Iterator[tuple[list, StepResult]]:
    """The optimizer steps of epoch ``epoch`` from micro-batch ``start`` on: ``steps`` per full
    epoch, each on ``accumulate`` micro-batches of ``loader``.

    Yields ``(micro_batches, result)`` after each step (and its scheduler step); the caller may
    stop early by breaking out. Ends early, without an error, when ``stop`` was requested while
    the loader raised (Ctrl-C also reaches the workers).
    """
    from cvmtl.data.loader import set_epoch

    total = steps * accumulate  # micro-batches this epoch uses
    set_epoch({"train": loader}, epoch, start)
    with preserved_rng():  # a loader without its own generator seeds workers from the global RNG
        batches = iter(loader)
    position = start
    while position < total:
        micro = _next_micro_batches(batches, accumulate, position, total, stop)
        if micro is None:
            return  # stopped by a signal while the loader was interrupted
        position += accumulate
        yield micro, parts.step(micro)


def _next_micro_batches(
    batches: Iterator, accumulate: int, position: int, total: int, stop: GracefulStop | None
) -> list | None:
    """The next optimizer step's ``accumulate`` batches (None: a signal interrupted the loader)."""
    micro = []
    for _ in range(accumulate):
        try:
            micro.append(next(batches))
        except StopIteration:
            raise RuntimeError(
                f"the train loader ended after {position + len(micro)} of {total} batches"
            ) from None
        except Exception:
            if stop is not None and stop.requested:  # stop at this step boundary
                return None
            raise
    return micro
