"""Building a training run: seeding, model, balancer, optimizer, DDP, restored state, logs.

:func:`build_run` returns the :class:`cvmtl.engine.run.Run` that the loop in
:mod:`cvmtl.engine.trainer` drives; nothing here trains.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cvmtl import distributed as du
from cvmtl.config import Config, save_config, to_dict
from cvmtl.distributed import is_dist
from cvmtl.engine.best import BestTracker
from cvmtl.engine.checkpoint import load_checkpoint
from cvmtl.engine.compiled import compile_children
from cvmtl.engine.logging import RunLogger
from cvmtl.engine.optim import ModelEMA, build_optimizer, build_scheduler
from cvmtl.engine.run import Run, TrainState, config_changes, restore_state
from cvmtl.precision import describe_precision, make_scaler, resolve_precision

Roles = Sequence[str] | None  # which loaders a run builds (None: every split there is)


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


def build_run(
    cfg: Config, resume: Any, distributed: bool, device: torch.device, roles: Roles = None
) -> Run:
    """Everything a run needs, restored from its checkpoint when resuming. ``roles``: the
    loaders to build (default: train, plus val and test where they exist)."""
    # Imported here: they pull in timm / albumentations, and the modules stay importable alone.
    from cvmtl.balancers import build_balancer
    from cvmtl.data.loader import build_loaders
    from cvmtl.engine.step import TrainStep
    from cvmtl.models.build import build_model

    user_cfg, cfg = cfg, resolve_precision(cfg, device)  # auto -> what this device runs best
    if cfg.model.norm == "syncbn" and distributed and device.type != "cuda":
        raise ValueError(
            "model.norm=syncbn needs CUDA: torch's SyncBatchNorm does not run on CPU (gloo); "
            "use model.norm=gn (exact under DDP) or bn"
        )
    ckpt = read_checkpoint(cfg, resume)
    seed_everything(cfg.train.seed)
    loaders = build_loaders(cfg, distributed, splits=roles)
    model = build_model(cfg).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    broadcast_module(model)  # same start on every rank, whatever the init did
    balancer = build_balancer(cfg.loss.balancer, cfg.tasks, **cfg.loss.balancer_args)
    if isinstance(balancer, nn.Module):
        balancer.to(device)
    step_fn = TrainStep(balancer, cfg, model)  # refuses a combination that cannot be exact
    ema = ModelEMA(model, cfg.train.ema) if cfg.train.ema > 0 else None
    optimizer = build_optimizer(model, cfg.train, extra=balancer.parameters())
    steps_per_epoch, total_steps = _step_budget(cfg, loaders["train"])
    scheduler = build_scheduler(optimizer, cfg.train, total_steps)
    scaler = make_scaler(cfg.train.amp, device)
    best = BestTracker(cfg.train.best_metric, cfg.tasks, cfg.run_dir, cfg.data.val_split)
    state = TrainState()
    if ckpt is not None:
        restore_state(ckpt, state, model, ema, optimizer, scheduler, scaler, balancer, best)
    if cfg.train.compile:
        compile_children(model, cfg.train.compile)  # in place: state_dict names stay the same
    run = Run(
        cfg=cfg,
        saved_config=to_dict(user_cfg),
        device=device,
        model=model,
        train_model=_wrap_ddp(model, balancer, device) if distributed else model,
        step_fn=step_fn,
        ema=ema,
        balancer=balancer,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        loaders=loaders,
        logger=RunLogger(cfg.run_dir, du.is_main_process(), state.step if ckpt else None),
        best=best,
        state=state,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
    )
    _announce(run, user_cfg, ckpt, bool(resume))
    return run


def _step_budget(cfg: Config, train_loader: Any) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps): ``train.max_steps`` wins over epochs."""
    from cvmtl.data.loader import batches_per_epoch

    steps_per_epoch = batches_per_epoch(train_loader) // cfg.train.accumulate
    if steps_per_epoch == 0:
        raise ValueError(
            f"the train split gives {len(train_loader)} batches per epoch, fewer than "
            f"train.accumulate={cfg.train.accumulate}: use a smaller batch_size or accumulate"
        )
    return steps_per_epoch, cfg.train.max_steps or cfg.train.epochs * steps_per_epoch


def resume_path(cfg: Config, resume: Any) -> Path | None:
    """The checkpoint ``resume`` names, or None when there is none yet to continue.

    ``True`` means ``cfg.run_dir/last.pt`` and a folder its ``last.pt``: a run that has not saved
    yet (a preempted job restarted with ``--resume`` before its first checkpoint) starts fresh,
    as detectron2's ``resume_or_load``. A folder or file that does not exist is an error.
    """
    path = cfg.run_dir if resume is True else Path(resume)
    if resume is not True and not path.exists():
        raise FileNotFoundError(f"resume: no such run folder or checkpoint: {path}")
    if path.is_dir():
        path = path / "last.pt"
    return path if path.exists() else None


def read_checkpoint(cfg: Config, resume: Any) -> dict | None:
    """The checkpoint to resume from (see :func:`resume_path`), read by rank 0 and sent to every
    rank: the nodes of a multi-node run need no shared disk for it."""
    if not resume:
        return None
    ckpt = None
    if du.is_main_process():
        path = resume_path(cfg, resume)
        ckpt = load_checkpoint(path) if path is not None else None
    return du.broadcast_object(ckpt)


def _wrap_ddp(model: nn.Module, balancer, device: torch.device) -> nn.Module:
    """Loss-level balancers train through ``DistributedDataParallel`` (its bucketed all-reduce
    overlaps the backward pass); gradient-level ones reduce what they need themselves."""
    if balancer.kind == "gradient":
        return model
    with warnings.catch_warnings():
        # torch deprecates broadcast_buffers but says to keep it while rank-local buffers are
        # wanted: BatchNorm statistics stay per rank while training and are averaged before
        # every evaluation and save (Run.sync_buffers), instead of being overwritten by rank 0's.
        warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated")
        ddp = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
        )
    # Losses are global means, so the gradients SUM over ranks (DDP's default averages).
    ddp.register_comm_hook(None, du.sum_allreduce_hook)
    return ddp


def _announce(run: Run, user_cfg: Config, ckpt: dict | None, resume: bool) -> None:
    """Write config.yaml and log what this run is: precision, resume, warnings."""
    logger, run_dir = run.logger, run.cfg.run_dir
    if resume and ckpt is None:
        logger.info(f"resume: no checkpoint in {run_dir} yet; starting fresh")
    if du.is_main_process():
        if ckpt is None and (run_dir / "last.pt").is_file():
            logger.info(f"warning: {run_dir} holds an earlier run; starting over (see --resume)")
            (run_dir / "best.pt").unlink(missing_ok=True)  # a stale best.pt would be tested
        save_config(user_cfg, run_dir / "config.yaml")
    logger.info("precision: " + describe_precision(user_cfg, run.device))
    if ckpt is not None:
        changed = config_changes(ckpt.get("config", {}), run.saved_config)
        logger.info(
            f"resuming {run_dir} at step {run.state.step} (epoch {run.state.epoch}, "
            f"batch {run.state.batch}){'; config changes: ' + changed if changed else ''}"
        )
    if run.best.note:
        logger.info("warning: " + run.best.note)
    if getattr(run.model, "init_skipped", None):
        logger.info(f"init_from: kept fresh weights for {len(run.model.init_skipped)} tensors")
