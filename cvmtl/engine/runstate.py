"""Training-run helpers: seeding, device checks, graceful stop on signals, best selection."""

from __future__ import annotations

import json
import random
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cvmtl.distributed import all_reduce_sum, is_dist
from cvmtl.engine.selection import BestSoFar
from cvmtl.metrics import delta_m as delta_m_of
from cvmtl.tasks import TASKS, get_task


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices). Every rank uses the same seed: the model must
    start identical everywhere, and random loss weights (RLW) must agree across ranks."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def broadcast_module(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (a no-op without DDP)."""
    if is_dist():
        for t in list(model.parameters()) + list(model.buffers()):
            torch.distributed.broadcast(t.data, src=0)


def compile_children(model: nn.Module) -> None:
    """torch.compile each top-level submodule in place (train_step calls forward_features /
    forward_heads, which would bypass a compiled wrapper of the whole model)."""
    for child in model.children():
        if isinstance(child, nn.ModuleDict | nn.ModuleList):
            compile_children(child)
        else:
            child.compile()


class GracefulStop:
    """SIGINT / SIGTERM set a flag that the loop checks at each optimizer-step boundary, so the run
    can save ``last.pt`` and exit cleanly. A second SIGINT stops at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def stop_agreed(stop: GracefulStop, device: torch.device) -> bool:
    """Whether to stop now; under DDP all ranks agree (a signal may reach them at different
    steps, and a rank that stops alone would hang the others in the next all-reduce).

    Under DDP: one tiny all-reduce and one host read per call (the training loop calls it once
    per optimizer step, which already ends with a host read of the gradient norm, so the device
    queue is empty by then and the read costs one all-reduce latency)."""
    if not is_dist():
        return stop.requested
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=device)
    all_reduce_sum(flag)
    agreed = flag.item() > 0
    if agreed and stop.signum is None:
        stop.signum = 15  # another rank got the signal; stop with it
    return agreed


class BufferGuard:
    """A copy of the model's buffers (BatchNorm running statistics) taken before each batch, so
    that a skipped (non-finite) batch can be undone: its statistics would poison evaluation."""

    def __init__(self, model: nn.Module) -> None:
        self.buffers = list(model.buffers())
        self.saved = [b.detach().clone() for b in self.buffers]

    def snapshot(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)

    def restore(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.saved)


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The lr of the non-backbone parameters (the one ``train.lr`` names)."""
    for group in optimizer.param_groups:
        if group.get("name") == "rest":
            return float(group["lr"])
    return float(optimizer.param_groups[0]["lr"])


def _zero_baselines(baselines: dict | None) -> list[str]:
    """Names of delta_m metrics whose baseline is 0 (delta_m divides by the baseline)."""
    if not baselines:
        return []
    return [
        f"{task}/{metric}"
        for task, values in baselines.items()
        if task in TASKS
        for metric in get_task(task).delta_metrics
        if values.get(metric) == 0
    ]


class BestTracker(BestSoFar):
    """Chooses ``best.pt`` on the validation split by ``train.best_metric``.

    The rule is :class:`cvmtl.engine.selection.BestSoFar` (as :func:`select_best` offline); this
    adds the run folder's baselines and the checkpoint state. ``task/metric`` uses that metric's
    direction from :mod:`cvmtl.tasks`. ``delta_m`` needs ``baselines.json`` in the run folder;
    without it selection falls back to the first task's first delta_m metric (``seg/miou`` for
    the default tasks), and :attr:`note` says so.
    """

    key = "train.best_metric"

    def __init__(self, best_metric: str, tasks: list[str], run_dir: Path, val_split: str):
        self.path = run_dir / "baselines.json"
        baselines = load_baselines(self.path, val_split, tasks)
        self.note = ""
        zero = _zero_baselines(baselines)
        if best_metric == "delta_m" and (baselines is None or zero):
            task = tasks[0]
            metric = next(iter(get_task(task).delta_metrics))
            why = f"has 0 for {zero} (relative change undefined)" if zero else "has no"
            self.note = (
                f"train.best_metric=delta_m but {self.path} {why} "
                f"'{val_split}' baselines for {tasks}: choosing best.pt by {task}/{metric}"
            )
            baselines = None
            best_metric = f"{task}/{metric}"
        task = best_metric.split("/", 1)[0]
        if best_metric != "delta_m" and task not in tasks:
            raise ValueError(f"train.best_metric={best_metric}: task {task!r} not trained")
        super().__init__(best_metric, tasks, baselines)

    def delta_m(self, results: dict, split: str | None = None) -> dict | None:
        """delta_m of ``results`` against the baselines of ``split`` (default: validation);
        None without baselines for that split."""
        base = self.baselines if split is None else load_baselines(self.path, split, self.tasks)
        if base is None:
            return None
        if _zero_baselines(base):
            return None  # a zero baseline makes the relative change undefined
        return delta_m_of(results, base, self.tasks)

    def state_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if state.get("metric") == self.metric:  # a changed best_metric starts a fresh search
            self.value, self.step = state.get("value"), state.get("step")


def load_baselines(path: Path, split: str, tasks: list[str]) -> dict | None:
    """``{task: {metric: value}}`` for ``split`` from baselines.json, or None if unusable."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    per_split = data.get(split)
    if not isinstance(per_split, dict) or any(t not in per_split for t in tasks):
        return None
    return per_split
