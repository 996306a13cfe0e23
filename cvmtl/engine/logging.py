"""Run logging: console progress (tqdm), TensorBoard scalars / images and ``metrics.jsonl``.

Only the main process writes; on other ranks every method is a no-op, so callers need no guards.
``metrics.jsonl`` holds one JSON object per line: ``step``, ``epoch``, ``split`` and flat keys
(``loss/<task>``, ``weight/<task>``, ``lr``, ``img_s``, ``<task>/<metric>``, ``delta_m``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cvmtl.tasks import get_task


def flat_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{task: {metric: value}}`` -> ``{"task/metric": value}`` (scalars only)."""
    flat = {}
    for task, metrics in results.items():
        for name, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                flat[f"{task}/{name}"] = float(value)
    return flat


def _json_value(v: Any) -> Any:
    # JSON has no NaN / inf; write them as strings a reader can still parse with float().
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class LossWindow:
    """Per-task loss sums over a logging window, kept on the device: the only host sync is in
    :meth:`values`, once per ``train.log_every`` steps."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.images, self.t0 = 0, 0, time.perf_counter()
        self.warmup: tuple[int, float] | None = None  # (images, t0) of a warm-up step

    def count(self, images: int, warmup: bool = False) -> None:
        """The images of one step. A warm-up step (a process's first: compilation, CUDA graph
        capture, kernel tuning) restarts the throughput clock instead, so ``img_s`` is the
        steady rate; a window that holds only warm-up reports its own rate."""
        if warmup:
            self.warmup = (self.images + images, self.t0)
            self.images, self.t0 = 0, time.perf_counter()
        else:
            self.images += images

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        for task, loss in losses.items():
            loss = loss.detach().float()
            self.sums[task] = self.sums[task] + loss if task in self.sums else loss
        self.steps += 1

    def values(self, tasks: list[str], weights: torch.Tensor | None, lr: float) -> dict:
        """``loss/<task>`` (window means), ``weight/<task>`` (last step), ``lr``, ``img_s``."""
        out = {f"loss/{t}": float(v) / max(1, self.steps) for t, v in self.sums.items()}
        if weights is not None:
            out.update({f"weight/{t}": w for t, w in zip(tasks, weights.float().cpu().tolist())})
        out["lr"] = lr
        images, t0 = (self.images, self.t0)
        if images == 0 and self.warmup is not None:
            images, t0 = self.warmup
        out["img_s"] = images / max(1e-9, time.perf_counter() - t0)
        return out


class RunLogger:
    """Writes ``metrics.jsonl`` and TensorBoard events into ``run_dir``; drives the progress bar.

    ``resume_step``: continue an earlier run; records after that step (written before a crash,
    and about to be redone) are dropped from ``metrics.jsonl`` and purged from TensorBoard.
    """

    def __init__(self, run_dir: str | Path, enabled: bool, resume_step: int | None = None):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self.bar: tqdm | None = None
        self.writer = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.jsonl_path.write_text("")
            for old in self.run_dir.glob("events.out.tfevents.*"):
                old.unlink()  # a fresh start: old curves of this run name would mislead
        else:
            self._truncate_after(resume_step)
        from torch.utils.tensorboard import SummaryWriter  # slow import; main process only

        self.writer = SummaryWriter(str(self.run_dir), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        if not self.jsonl_path.is_file():
            return
        keep = []
        for line in self.jsonl_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash
                continue
            if rec.get("step", 0) <= step:
                keep.append(line)
        self.jsonl_path.write_text("".join(line + "\n" for line in keep))

    # -- records -------------------------------------------------------------------------------
    def log(self, step: int, epoch: int, split: str, values: dict[str, float | str]) -> None:
        """Append one record to metrics.jsonl and its numbers to TensorBoard (``split/key``)."""
        if not self.enabled:
            return
        rec: dict[str, Any] = {"step": step, "epoch": epoch, "split": split}
        for key, value in values.items():
            rec[key] = value if isinstance(value, str) else _json_value(float(value))
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        for key, value in values.items():
            if not isinstance(value, str) and math.isfinite(value):
                self.writer.add_scalar(f"{split}/{key}", value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An HxWx3 uint8 image to TensorBoard."""
        if self.enabled:
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def flush(self) -> None:
        if self.enabled:
            self.writer.flush()

    # -- console -------------------------------------------------------------------------------
    def info(self, msg: str) -> None:
        """A console line that does not break the progress bar."""
        if self.enabled:
            tqdm.write(msg)

    def start_progress(self, total: int, initial: int = 0) -> None:
        if self.enabled:
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def postfix(self, values: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)

    def close_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.close_progress()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def task_info(task: str, cfg: Any) -> dict[str, Any]:
    """What ``spec.colorize`` / ``spec.encode`` of ``task`` need to know of the run: its class
    names and palette (the task's own classes, else the dataset's), and the depth range."""
    from cvmtl.tasks.colorize import default_palette

    spec = get_task(task)
    num = len(spec.classes) if spec.classes is not None else cfg.data.num_classes
    return {
        "palette": default_palette(num),
        "classes": list(spec.classes) if spec.classes is not None else None,
        "max_depth": cfg.model.max_depth,
    }


def prediction_panels(samples: list[dict], cfg: Any) -> list[np.ndarray]:
    """Image | prediction per task (``spec.colorize``), side by side (uint8 HxWx3), for
    TensorBoard."""
    if not samples:
        return []
    info = {task: task_info(task, cfg) for task in samples[0]["pred"]}
    mean = np.asarray(cfg.data.mean, dtype=np.float32)
    std = np.asarray(cfg.data.std, dtype=np.float32)
    panels = []
    for s in samples:
        img = s["image"].float().numpy().transpose(1, 2, 0) * std + mean
        row = [(np.clip(img, 0, 1) * 255).astype(np.uint8)]
        for task, pred in s["pred"].items():
            row.append(get_task(task).colorize(np.asarray(pred), info[task]))
        panels.append(np.concatenate(row, axis=1))
    return panels


def task_summary(results: dict[str, dict[str, Any]], per_task: int = 2) -> str:
    """One console line: each task's first ``per_task`` delta_m metrics, e.g.
    ``seg miou=41.2 pixel_acc=70.3 | depth abs_err=0.512 rel_err=0.187``."""
    parts = []
    for task, values in results.items():
        names = [m for m in get_task(task).delta_metrics if m in values][:per_task]
        shown = " ".join(f"{m}={float(values[m]):.4g}" for m in names)
        parts.append(f"{task} {shown}" if shown else task)
    return " | ".join(parts)
