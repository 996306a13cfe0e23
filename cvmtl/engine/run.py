"""The state of a training run: what a checkpoint holds about it and how it is put back."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cvmtl import distributed as du
from cvmtl.config import Config, to_dict
from cvmtl.engine.best import BestTracker
from cvmtl.engine.checkpoint import (
    get_rng_state,
    link_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from cvmtl.engine.logging import RunLogger
from cvmtl.engine.optim import ModelEMA
from cvmtl.engine.signals import GracefulStop


@dataclass
class TrainState:
    """Loop counters. ``batch`` = micro-batches of epoch ``epoch`` already consumed."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    bad_steps: int = 0  # consecutive skipped steps
    skipped_steps: int = 0  # all skipped steps


@dataclass
class Run:
    """Everything the loop touches, in one place (no behaviour beyond saving and summarizing)."""

    cfg: Config  # as it runs here: train.amp / channels_last resolved for the device
    saved_config: dict[str, Any]  # as the user gave it (auto kept): what checkpoints store
    device: torch.device
    model: nn.Module
    train_model: nn.Module  # the model, or its DistributedDataParallel wrapper
    step_fn: Any  # a cvmtl.engine.step.TrainStep, chosen once
    ema: ModelEMA | None
    balancer: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loaders: dict[str, Any]
    logger: RunLogger
    best: BestTracker
    state: TrainState
    total_steps: int
    steps_per_epoch: int
    stop: GracefulStop = field(default_factory=GracefulStop)
    world: int = field(default_factory=du.get_world_size)
    warm: bool = False  # a step ran in this process (the first compiles and tunes kernels)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def release(self) -> None:
        """Free the DistributedDataParallel wrapper now, while the process group is alive: its
        reducer's threads, freed later at interpreter exit after the group is destroyed, can
        abort the process ("terminate called without an active exception")."""
        if self.train_model is not self.model:
            self.train_model = self.model
            gc.collect()  # the wrapper sits in reference cycles (hooks)

    def sync_buffers(self) -> None:
        """Average the BatchNorm statistics over ranks (they drift apart while training, each
        rank normalizing its own batch), so that every rank holds the same model."""
        du.average_buffers(self.model)
        if self.ema is not None:
            du.average_buffers(self.ema.module)

    def save(self, best: bool = False) -> None:
        """last.pt (and best.pt) from rank 0; every rank waits so that no one races ahead."""
        self.sync_buffers()  # the checkpoint holds what every rank holds
        if du.is_main_process():
            ckpt = checkpoint_state(self)
            # best.pt first: a process killed between the two writes resumes from the previous
            # last.pt and redoes this step, saving best.pt again (last first would leave a stale
            # best.pt behind a last.pt that already counts it)
            if best:
                best_path = save_checkpoint(ckpt, self.cfg.run_dir / "best.pt")
                link_checkpoint(best_path, self.cfg.run_dir / "last.pt")
            else:
                save_checkpoint(ckpt, self.cfg.run_dir / "last.pt")
        du.barrier()

    def summary(self, val: Any, test: Any, interrupted: int | None) -> dict[str, Any]:
        s = self.state
        return {
            "run_dir": str(self.cfg.run_dir),
            "step": s.step,
            "epoch": s.epoch,
            "best": self.best.state_dict(),
            "val": val,
            "test": test,
            "skipped_steps": s.skipped_steps,
            "interrupted": interrupted,
        }


def checkpoint_state(run: Run) -> dict[str, Any]:
    """The checkpoint dict of a run (see :mod:`cvmtl.engine.checkpoint` for the keys)."""
    import cvmtl

    s: TrainState = run.state
    raw = run.model.state_dict()
    ckpt: dict[str, Any] = {"model": raw if run.ema is None else run.ema.module.state_dict()}
    if run.ema is not None:
        ckpt["model_raw"] = raw
        ckpt["ema"] = run.ema.state_dict()
    ckpt.update(
        optimizer=run.optimizer.state_dict(),
        scheduler=run.scheduler.state_dict(),
        scaler=run.scaler.state_dict(),
        balancer=run.balancer.state_dict(),
        rng=get_rng_state(),
        step=s.step,
        epoch=s.epoch,
        position={"epoch": s.epoch, "batch": s.batch},
        best=run.best.state_dict(),
        bad_steps=s.bad_steps,
        skipped_steps=s.skipped_steps,
        config=run.saved_config,
        precision={"amp": run.cfg.train.amp, "channels_last": bool(run.cfg.train.channels_last)},
        versions={"cvmtl": cvmtl.__version__, "torch": str(torch.__version__)},
    )
    return ckpt


def restore_state(
    ckpt: dict[str, Any],
    state: TrainState,
    model: nn.Module,
    ema: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    balancer: Any,
    best: Any,
) -> None:
    """Put every piece of a run back as it was when ``ckpt`` was saved."""
    raw = ckpt.get("model_raw", ckpt["model"])  # training continues from the raw weights
    model.load_state_dict(raw)
    if ema is not None:
        ema.module.load_state_dict(ckpt["model"])
        if "ema" in ckpt:
            ema.load_state_dict(ckpt["ema"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler.is_enabled() and ckpt.get("scaler"):  # a disabled scaler saves {}
        scaler.load_state_dict(ckpt["scaler"])
    balancer.load_state_dict(ckpt["balancer"])
    best.load_state_dict(ckpt.get("best", {}))
    set_rng_state(ckpt["rng"])
    state.step = int(ckpt["step"])
    state.epoch = int(ckpt["position"]["epoch"])
    state.batch = int(ckpt["position"]["batch"])
    state.bad_steps = int(ckpt.get("bad_steps", 0))
    state.skipped_steps = int(ckpt.get("skipped_steps", 0))


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``"a.b: x -> y, ..."`` for keys whose value differs (for the resume log line)."""

    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict) and k != "balancer_args":
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(old), flat(new)
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(b) if a.get(k) != b[k])


def prior_run(cfg: Config, total: int) -> dict[str, Any] | None:
    """What a rerun of ``cfg`` finds in ``cfg.run_dir``: None unless ``last.pt`` is a checkpoint
    written by exactly ``cfg``; else ``{"step", "best", "finished"}``, where ``finished`` means it
    reached ``total`` steps and has its ``best.pt`` (reuse it), and an unfinished one with
    ``step < total`` is resumable."""
    last = cfg.run_dir / "last.pt"
    if not last.is_file():
        return None
    try:
        ckpt = load_checkpoint(last)
    except ValueError:
        return None
    if config_changes(ckpt.get("config", {}), to_dict(cfg)):
        return None
    step = int(ckpt.get("step", 0))
    finished = step >= total and (cfg.run_dir / "best.pt").is_file()
    return {"step": step, "best": ckpt.get("best"), "finished": finished}


def resume_flag(prior: dict[str, Any] | None, total: int) -> bool | None:
    """``fit``'s ``resume`` for a run with :func:`prior_run` ``prior``: True when it stopped
    before ``total`` steps (continue it), None otherwise (start over)."""
    return True if prior is not None and prior["step"] < total else None
