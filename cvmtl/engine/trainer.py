"""fit(): the training loop. Read top to bottom: set-up, train_one_epoch, validate, test.

Optimizer steps are the unit of everything (schedule, logging, ``max_steps``, ``save_every``);
with ``train.accumulate = k`` one step consumes k micro-batches, and micro-batches left over at
the end of an epoch (fewer than k) are dropped. Checkpoints are written only at step boundaries;
their ``position`` (epoch, micro-batches consumed) lets a resumed run continue mid-epoch with
exactly the batches, augmentations and random numbers an uninterrupted run would have used.

Exit paths: ``fit`` returns normally (``result["interrupted"]`` is None), returns after SIGINT /
SIGTERM once ``last.pt`` is saved (``result["interrupted"]`` = the signal number; tools/train.py
exits with 128 + signum: 130 / 143), or raises :class:`TrainingAborted` (a RuntimeError) after
``train.max_bad_steps`` consecutive non-finite steps (the previous ``last.pt`` is kept).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvmtl.config import Config, save_config, to_dict
from cvmtl.engine import distributed as du
from cvmtl.engine.checkpoint import load_checkpoint, preserved_rng
from cvmtl.engine.logging import LossWindow, RunLogger, flat_metrics, prediction_panels
from cvmtl.engine.optim import ModelEMA, build_optimizer, build_scheduler
from cvmtl.engine.resume import Run, TrainState, config_changes, restore_state
from cvmtl.engine.runstate import (
    BestTracker,
    BufferGuard,
    base_lr,
    broadcast_module,
    check_amp,
    compile_children,
    seed_everything,
    stop_agreed,
)


def fit(cfg: Config, *, resume: bool | str | Path | None = None) -> dict[str, Any]:
    """Train ``cfg`` into ``cfg.run_dir``; return a summary dict.

    ``resume``: True continues ``cfg.run_dir/last.pt``; a path continues that checkpoint (or that
    run folder's ``last.pt``). Under torchrun every rank calls ``fit``; only rank 0 writes files.
    Summary keys: run_dir, step, epoch, best ({metric, value, step}), val and test
    ({task: {metric: value}} of the last validation / the final test evaluation, or None),
    skipped_steps, interrupted (signal number or None).
    """
    # The process group stays up after fit (a caller may train again, e.g. the baselines);
    # tools/train.py tears it down.
    distributed, device = du.init_distributed(cfg.train.device)
    return _fit(cfg, resume, distributed, device)


def _fit(cfg: Config, resume: Any, distributed: bool, device: torch.device) -> dict[str, Any]:
    # Imported here: they pull in timm / albumentations, and the modules stay importable alone.
    from cvmtl.balancers import build_balancer
    from cvmtl.data.loader import batches_per_epoch, build_loaders
    from cvmtl.models.build import build_model

    main = du.is_main_process()
    run_dir = cfg.run_dir
    check_amp(cfg.train.amp, device)
    if cfg.model.norm == "syncbn" and distributed and device.type != "cuda":
        raise ValueError(
            "model.norm=syncbn needs CUDA: torch's SyncBatchNorm does not run on CPU (gloo); "
            "use model.norm=gn (exact under DDP) or bn"
        )
    ckpt = None
    if resume:
        path = run_dir / "last.pt" if resume is True else Path(resume)
        ckpt = load_checkpoint(path / "last.pt" if path.is_dir() else path)

    seed_everything(cfg.train.seed)
    loaders = build_loaders(cfg, distributed)
    model = build_model(cfg).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    broadcast_module(model)  # same start on every rank, whatever the init did
    balancer = build_balancer(cfg.loss.balancer, cfg.tasks, **cfg.loss.balancer_args)
    if isinstance(balancer, nn.Module):
        balancer.to(device)
    ema = ModelEMA(model, cfg.train.ema) if cfg.train.ema > 0 else None
    optimizer = build_optimizer(model, cfg.train, extra=balancer.parameters())

    accumulate = cfg.train.accumulate
    steps_per_epoch = batches_per_epoch(loaders["train"]) // accumulate
    if steps_per_epoch == 0:
        raise ValueError(
            f"the train split gives {len(loaders['train'])} batches per epoch, fewer than "
            f"train.accumulate={accumulate}: use a smaller batch_size or accumulate"
        )
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, cfg.train, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    best = BestTracker(cfg.train.best_metric, cfg.tasks, run_dir, cfg.data.val_split)
    state = TrainState()
    if ckpt is not None:
        restore_state(ckpt, state, model, ema, optimizer, scheduler, scaler, balancer, best)
    if cfg.train.compile:
        compile_children(model)  # in place: state_dict names stay those of the plain model

    logger = RunLogger(run_dir, main, resume_step=state.step if ckpt is not None else None)
    if main:
        if ckpt is None and (run_dir / "last.pt").is_file():
            logger.info(f"warning: {run_dir} holds an earlier run; starting over (see --resume)")
            (run_dir / "best.pt").unlink(missing_ok=True)  # a stale best.pt would be tested
        save_config(cfg, run_dir / "config.yaml")
    if ckpt is not None:
        changed = config_changes(ckpt.get("config", {}), to_dict(cfg))
        logger.info(
            f"resuming {run_dir} at step {state.step} (epoch {state.epoch}, "
            f"batch {state.batch}){'; config changes: ' + changed if changed else ''}"
        )
    if best.note:
        logger.info("warning: " + best.note)
    if getattr(model, "init_skipped", None):
        logger.info(f"init_from: kept fresh weights for {len(model.init_skipped)} tensors")

    run = Run(
        cfg=cfg,
        device=device,
        model=model,
        ema=ema,
        balancer=balancer,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        loaders=loaders,
        logger=logger,
        best=best,
        state=state,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
    )
    val_results = test_results = None
    try:
        logger.start_progress(total_steps, initial=state.step)
        while state.step < total_steps:
            finished_epoch = train_one_epoch(run)
            if run.stop.requested and not finished_epoch:
                run.save()
                logger.info(
                    f"stopped by signal {run.stop.signum} at step {state.step}; "
                    f"last.pt saved (continue with --resume)"
                )
                return run.summary(val_results, test_results, interrupted=run.stop.signum)
            epoch_done = state.epoch
            if finished_epoch:
                balancer.epoch_end()
                state.epoch, state.batch = state.epoch + 1, 0
            done = state.step >= total_steps
            every = cfg.train.eval_every
            is_best = False
            has_val = loaders.get("val") is not None
            if has_val and every > 0 and ((finished_epoch and state.epoch % every == 0) or done):
                val_results, is_best = validate(run, epoch_done)
            run.save(best=is_best)
            if stop_agreed(run.stop, run.device):
                logger.info(f"stopped by signal {run.stop.signum} at step {state.step}")
                return run.summary(val_results, test_results, interrupted=run.stop.signum)
        logger.close_progress()
        test_results = test(run)
        return run.summary(val_results, test_results, interrupted=None)
    finally:
        run.stop.restore()
        logger.close()


def train_one_epoch(run: Run) -> bool:
    """Train from the saved position to the end of the epoch, ``total_steps`` or a stop signal.

    Returns True when the epoch's last step was taken.
    """
    from cvmtl.data.loader import set_epoch
    from cvmtl.engine.step import train_step

    cfg, state, logger = run.cfg, run.state, run.logger
    accumulate, log_every = cfg.train.accumulate, max(1, cfg.train.log_every)
    per_epoch = run.steps_per_epoch * accumulate  # micro-batches this epoch will use
    loader = run.loaders["train"]
    set_epoch({"train": loader}, state.epoch, state.batch)
    with preserved_rng():  # a loader without its own generator seeds workers from the global RNG
        batches = iter(loader)
    model, balancer, optimizer = run.model, run.balancer, run.optimizer
    model.train()
    window = LossWindow()
    buffers = BufferGuard(run.model)
    while state.batch < per_epoch:
        try:
            batch = next(batches)
        except StopIteration:
            raise RuntimeError(
                f"the train loader ended after {state.batch} of {per_epoch} batches"
            ) from None
        except Exception:
            if run.stop.requested:  # Ctrl-C also reaches the workers; stop at this boundary
                return False
            raise
        state.batch += 1
        do_step = state.batch % accumulate == 0
        buffers.snapshot()
        out = train_step(model, batch, balancer, optimizer, run.scaler, cfg, step=do_step)
        window.images += batch["image"].shape[0] * run.world
        if out["skipped"] and "fp16 overflow" not in (out["reason"] or ""):
            buffers.restore()  # a NaN batch must not leave its BatchNorm statistics behind
        if not do_step:
            if out["skipped"]:
                logger.info(f"step {state.step + 1}: a micro-batch was left out ({out['reason']})")
            continue
        state.step += 1
        with warnings.catch_warnings():
            # a skipped step (e.g. an fp16 overflow) still advances the schedule; torch warns
            # that the optimizer did not step first, which is intended here
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler")
            run.scheduler.step()
        logger.advance()
        if out["skipped"]:
            _skipped_step(run, out)
        else:
            state.bad_steps = 0
            window.add(out["losses"])
            if run.ema is not None:
                run.ema.update(model)
        if state.step % log_every == 0 or state.step == run.total_steps:
            _log_train(run, window, out)
            window = LossWindow()
        save_every = cfg.train.save_every
        if save_every > 0 and state.step % save_every == 0 and state.batch < per_epoch:
            run.save()  # at an epoch end the caller saves (after validation)
        if stop_agreed(run.stop, run.device) or state.step >= run.total_steps:
            break
    return state.batch >= per_epoch


class TrainingAborted(RuntimeError):
    """Too many consecutive non-finite steps (``train.max_bad_steps``); last.pt is intact."""


def _skipped_step(run: Run, out: dict) -> None:
    """Count and log a skipped step; abort after ``max_bad_steps`` bad ones in a row. An fp16
    overflow is the GradScaler calibrating itself, not a bad step: it is only counted."""
    state = run.state
    state.skipped_steps += 1
    reason = out.get("reason") or "non-finite loss"
    if "fp16 overflow" in reason:
        return
    state.bad_steps += 1
    run.logger.info(f"step {state.step}: skipped ({reason}); {state.bad_steps} in a row")
    record = {"skipped": reason, "skipped_steps": state.skipped_steps}
    run.logger.log(state.step, state.epoch, "train", record)
    if state.bad_steps >= run.cfg.train.max_bad_steps:
        raise TrainingAborted(
            f"training aborted at step {state.step}: {state.bad_steps} consecutive steps skipped "
            f"(train.max_bad_steps={run.cfg.train.max_bad_steps}; last: {reason}). The last saved "
            "last.pt is intact; lower train.lr, set train.grad_clip, or check the data"
        )


def _log_train(run: Run, window: LossWindow, out: dict) -> None:
    values = window.values(run.balancer.tasks, out.get("weights"), base_lr(run.optimizer))
    run.logger.log(run.state.step, run.state.epoch, "train", values)
    short = {k.removeprefix("loss/"): v for k, v in values.items() if k.startswith("loss/")}
    run.logger.postfix({**short, "lr": values["lr"], "img/s": values["img_s"]})


def validate(run: Run, epoch: int) -> tuple[dict, bool]:
    """Evaluate on the validation split, log, pick best; returns (results, is_best)."""
    from cvmtl.engine.evaluator import evaluate

    cfg, state = run.cfg, run.state
    samples: list = []
    num_vis = cfg.train.num_vis if du.is_main_process() else 0
    with preserved_rng():  # evaluation must not move the training random streams
        results = evaluate(
            run.eval_model, run.loaders["val"], cfg.tasks, cfg,
            device=run.device, collect=num_vis, samples=samples,
        )  # fmt: skip
    dm = run.best.delta_m(results)
    values = flat_metrics(results)
    if dm is not None:
        values["delta_m"] = float(dm["overall"])
    run.logger.log(state.step, epoch, "val", values)
    for i, panel in enumerate(prediction_panels(samples, cfg)):
        run.logger.image(f"val/pred_{i}", panel, state.step)
    value = run.best.value_of(results, dm)
    is_best = run.best.update(value, state.step)
    run.logger.info(
        f"val @ step {state.step}: {run.best.metric}={value:.4g}"
        + (" (best)" if is_best else f" (best {run.best.value:.4g} @ {run.best.step})")
    )
    run.logger.flush()
    return results, is_best


def test(run: Run) -> dict | None:
    """Evaluate best.pt (else the final weights) on the test split; log split "test"."""
    from cvmtl.engine.evaluator import evaluate

    loader = run.loaders.get("test")
    if loader is None:
        return None
    best_path = run.cfg.run_dir / "best.pt"
    model = run.eval_model
    which = "final weights"
    if best_path.is_file():
        model.load_state_dict(load_checkpoint(best_path)["model"])
        which = "best.pt"
    with preserved_rng():
        results = evaluate(model, loader, run.cfg.tasks, run.cfg, device=run.device)
    values = flat_metrics(results)
    dm = run.best.delta_m(results, split=run.cfg.data.test_split)  # the test split's baselines
    if dm is not None:
        values["delta_m"] = float(dm["overall"])
    run.logger.log(run.state.step, run.state.epoch, "test", values)
    run.logger.info(f"test ({which}): " + ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
    return results
