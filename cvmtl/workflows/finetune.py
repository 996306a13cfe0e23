"""Task-specific fine-tuning, the last step of the multi-task workflow.

From the jointly trained checkpoint, each task of ``finetune.tasks`` (empty = all) gets its own
copy of the model in which only that task's path trains: its head, plus the neck
(``freeze: backbone``) or the neck and backbone (``freeze: none``); ``freeze: neck`` trains the
head alone. Everything else (the frozen shared parts and the other tasks' heads) keeps its
weights and BatchNorm statistics exactly (frozen modules stay in eval mode), so the saved
``runs/<name>/finetune/<task>.pt`` is a full model that eval / infer use like any checkpoint.

``runs/<name>/finetune.json``: ``{task: {"split", "joint": {...}, "finetuned": {...}}}``, the
task's metrics before and after, on the test split (the validation split when there is none).
``finetune.lr`` defaults to a tenth of ``train.lr`` (fine-tuning a trained model).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvmtl.config import Config, to_dict


def task_parts(model: nn.Module, task: str) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(backbone, neck, head) that ``task``'s prediction runs through (hard or soft sharing)."""
    branch = model.branches[task] if hasattr(model, "branches") else model
    if task not in branch.heads:
        raise ValueError(f"finetune: the model has no {task!r} head (tasks {list(branch.heads)})")
    return branch.backbone, branch.neck, branch.heads[task]


def trainable_modules(model: nn.Module, task: str, freeze: str) -> list[nn.Module]:
    """Set ``requires_grad`` for fine-tuning ``task``; return the modules that train."""
    backbone, neck, head = task_parts(model, task)
    train = {"backbone": [neck, head], "neck": [head], "none": [backbone, neck, head]}
    if freeze not in train:
        raise ValueError(f"finetune.freeze: expected backbone|neck|none, got {freeze!r}")
    model.requires_grad_(False)
    for module in train[freeze]:
        module.requires_grad_(True)
    return train[freeze]


def set_modes(model: nn.Module, trainable: list[nn.Module]) -> None:
    """Eval mode everywhere except the trainable modules (frozen BatchNorm keeps its stats)."""
    model.eval()
    for module in trainable:
        module.train()


def train_task(model: nn.Module, cfg: Config, task: str, loader: Any, device: torch.device) -> int:
    """Fine-tune ``model`` in place on ``task`` for ``cfg.finetune.epochs``; return the steps
    applied (skipped ones not counted). The epochs run through the engine's loop
    (:func:`cvmtl.engine.epoch.epoch_steps`, as in fit): ``train.accumulate`` micro-batches a
    step, a partial accumulation at an epoch end dropped, the schedule stepped every step."""
    from cvmtl.balancers import build_balancer
    from cvmtl.data.loader import batches_per_epoch
    from cvmtl.engine.buffers import BufferGuard
    from cvmtl.engine.epoch import StepParts, epoch_steps
    from cvmtl.engine.optim import build_optimizer, build_scheduler
    from cvmtl.engine.step import TrainStep
    from cvmtl.precision import make_scaler, resolve_precision

    ft = cfg.finetune
    tcfg = resolve_precision(cfg, device)  # a copy; train.amp / channels_last: auto -> concrete
    tcfg.tasks = [task]  # losses of this task only
    tcfg.train.lr = ft.lr if ft.lr is not None else cfg.train.lr * 0.1
    tcfg.train.warmup_steps = 0
    trainable = trainable_modules(model, task, ft.freeze)
    balancer = build_balancer("fixed", [task])
    optimizer = build_optimizer(model, tcfg.train)
    accumulate = tcfg.train.accumulate
    per_epoch = batches_per_epoch(loader) // accumulate
    scheduler = build_scheduler(optimizer, tcfg.train, max(1, ft.epochs * per_epoch))
    scaler = make_scaler(tcfg.train.amp, device)
    train_step = TrainStep(balancer, tcfg, model)
    parts = StepParts(train_step, model, optimizer, scaler, scheduler, BufferGuard(model))
    applied = 0
    for epoch in range(ft.epochs):
        set_modes(model, trainable)
        for _, out in epoch_steps(parts, loader, epoch, steps=per_epoch, accumulate=accumulate):
            applied += 0 if out.skipped else 1
    model.eval()
    return applied


def _tasks_to_finetune(cfg: Config, tasks: list[str] | None) -> list[str]:
    tasks = list(tasks or cfg.finetune.tasks or cfg.tasks)
    unknown = [t for t in tasks if t not in cfg.tasks]
    if unknown:
        raise ValueError(f"finetune.tasks: {unknown} not among the trained tasks {cfg.tasks}")
    if cfg.finetune.epochs <= 0:
        raise ValueError("finetune.epochs must be > 0 to fine-tune")
    return tasks


def _save_finetuned(
    model: nn.Module, cfg: Config, ckpt: dict, task: str, steps: int, source: str | Path
) -> None:
    """``finetune/<task>.pt``: a full checkpoint that eval / infer use like any other."""
    from cvmtl.engine.checkpoint import save_checkpoint

    meta = {
        "task": task,
        "freeze": cfg.finetune.freeze,
        "epochs": cfg.finetune.epochs,
        "steps": steps,
        "from": str(source),
    }
    state = {"model": model.state_dict(), "config": to_dict(cfg), "finetune": meta}
    state.update(step=int(ckpt.get("step", 0)), epoch=int(ckpt.get("epoch", 0)))
    save_checkpoint(state, cfg.run_dir / "finetune" / f"{task}.pt")


def finetune(cfg: Config, checkpoint: str | Path, tasks: list[str] | None = None) -> dict[str, Any]:
    """Fine-tune each task of ``tasks`` (default ``cfg.finetune.tasks`` or all) from
    ``checkpoint``; write ``finetune/<task>.pt`` and ``finetune.json`` into the run folder and
    return finetune.json's content."""
    from cvmtl.data.loader import build_loaders
    from cvmtl.engine.build import seed_everything
    from cvmtl.engine.checkpoint import load_checkpoint
    from cvmtl.engine.evaluator import evaluate
    from cvmtl.engine.restore import build_from_weights
    from cvmtl.precision import resolve_device
    from cvmtl.workflows.baselines import scalars

    tasks = _tasks_to_finetune(cfg, tasks)
    ckpt = load_checkpoint(checkpoint)
    device = resolve_device(cfg.train.device, "train.device")
    seed_everything(cfg.train.seed)
    loaders = build_loaders(cfg, False)
    role = "test" if loaders.get("test") is not None else "val"
    if loaders.get(role) is None:
        raise ValueError("finetune: no test or validation split to report on")
    split = getattr(cfg.data, f"{role}_split")
    joint = build_from_weights(cfg, ckpt["model"], device, str(checkpoint))
    report: dict[str, Any] = {}
    for task in tasks:
        before = evaluate(joint, loaders[role], [task], cfg, device=device, progress=False)
        model = copy.deepcopy(joint)
        seed_everything(cfg.train.seed)
        steps = train_task(model, cfg, task, loaders["train"], device)
        after = evaluate(model, loaders[role], [task], cfg, device=device, progress=False)
        _save_finetuned(model, cfg, ckpt, task, steps, checkpoint)
        report[task] = {
            "split": split,
            "steps": steps,
            "joint": scalars(before[task]),
            "finetuned": scalars(after[task]),
        }
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "finetune.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def finetune_after_fit(cfg: Config, result: dict[str, Any]) -> dict[str, Any] | None:
    """The hook after ``fit``: fine-tune from best.pt (else last.pt) when
    ``finetune.epochs > 0`` and the run was not interrupted; rank 0 only."""
    from cvmtl import distributed as du

    if cfg.finetune.epochs <= 0 or result.get("interrupted") or not du.is_main_process():
        return None
    best = cfg.run_dir / "best.pt"
    return finetune(cfg, best if best.is_file() else cfg.run_dir / "last.pt")
