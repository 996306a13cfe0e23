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

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from cvmtl import distributed as du
from cvmtl.config import Config
from cvmtl.engine.buffers import BufferGuard
from cvmtl.engine.build import broadcast_module, build_run
from cvmtl.engine.checkpoint import load_checkpoint, preserved_rng
from cvmtl.engine.epoch import StepParts, epoch_steps
from cvmtl.engine.logging import LossWindow, flat_metrics, prediction_panels, task_summary
from cvmtl.engine.optim import base_lr
from cvmtl.engine.run import Run
from cvmtl.engine.signals import stop_agreed
from cvmtl.engine.stepping import SkipReason, StepResult

# on_validate(step, values): values = the validation's logged metrics ("task/metric", "delta_m")
ValidateHook = Callable[[int, dict[str, float]], None]


def fit(
    cfg: Config,
    *,
    resume: bool | str | Path | None = None,
    on_validate: ValidateHook | None = None,
    test: bool = True,
) -> dict[str, Any]:
    """Train ``cfg`` into ``cfg.run_dir``; return a summary dict.

    ``resume``: True continues ``cfg.run_dir/last.pt``; a path continues that checkpoint (or that
    run folder's ``last.pt``); with no ``last.pt`` there yet the run starts fresh (logged), and a
    path that does not exist is an error. Under torchrun every rank calls ``fit``; only rank 0
    writes files.
    Summary keys: run_dir, step, epoch, best ({metric, value, step}), val and test
    ({task: {metric: value}} of the last validation / the final test evaluation, or None),
    skipped_steps, interrupted (signal number or None).

    ``on_validate(step, values)`` is called on every rank after each validation, once its
    ``last.pt`` / ``best.pt`` are saved; an exception it raises (a sweep's pruned trial) ends
    ``fit`` with the logs closed. ``test=False`` builds no test loader: the test split is never
    read (the summary's test is None) and a missing validation split is an error.
    """
    # The process group stays up after fit (a caller may train again, e.g. the baselines);
    # tools/train.py tears it down.
    distributed, device = du.init_distributed(cfg.train.device)
    run = build_run(cfg, resume, distributed, device, roles=None if test else ("train", "val"))
    try:
        return _loop(run, on_validate)
    finally:
        run.stop.restore()
        run.logger.close()
        run.release()


def _loop(run: Run, on_validate: ValidateHook | None = None) -> dict[str, Any]:
    """Epochs until ``total_steps``: train, validate, save (then ``on_validate``); then test
    best.pt."""
    state, logger = run.state, run.logger
    val_results = None
    logger.start_progress(run.total_steps, initial=state.step)
    while state.step < run.total_steps:
        finished_epoch = train_one_epoch(run)
        if run.stop.requested and not finished_epoch:
            run.save()
            logger.info(
                f"stopped by signal {run.stop.signum} at step {state.step}; "
                f"last.pt saved (continue with --resume)"
            )
            return run.summary(val_results, None, interrupted=run.stop.signum)
        epoch_done = state.epoch
        if finished_epoch:
            run.balancer.epoch_end()
            state.epoch, state.batch = state.epoch + 1, 0
        is_best, validated = False, _validation_due(run, finished_epoch)
        if validated:
            val_results, is_best = validate(run, epoch_done)
        run.save(best=is_best)
        if validated and on_validate is not None:
            on_validate(state.step, validation_values(run, val_results))
        if stop_agreed(run.stop, run.device):
            logger.info(f"stopped by signal {run.stop.signum} at step {state.step}")
            return run.summary(val_results, None, interrupted=run.stop.signum)
    logger.close_progress()
    return run.summary(val_results, test(run), interrupted=None)


def _validation_due(run: Run, finished_epoch: bool) -> bool:
    every = run.cfg.train.eval_every
    if run.loaders.get("val") is None or every <= 0:
        return False
    done = run.state.step >= run.total_steps
    return (finished_epoch and run.state.epoch % every == 0) or done


def train_one_epoch(run: Run) -> bool:
    """Train from the saved position to the end of the epoch, ``total_steps`` or a stop signal
    (the steps themselves: :func:`cvmtl.engine.epoch.epoch_steps`, shared with fine-tuning).

    Returns True when the epoch's last step was taken.
    """
    cfg, state, logger = run.cfg, run.state, run.logger
    accumulate, log_every = cfg.train.accumulate, max(1, cfg.train.log_every)
    per_epoch = run.steps_per_epoch * accumulate  # micro-batches this epoch will use
    parts = StepParts(
        run.step_fn, run.train_model, run.optimizer, run.scaler, run.scheduler,
        BufferGuard(run.model),
    )  # fmt: skip
    run.train_model.train()
    window = LossWindow()
    steps = epoch_steps(
        parts, run.loaders["train"], state.epoch,
        steps=run.steps_per_epoch, accumulate=accumulate, start=state.batch, stop=run.stop,
    )  # fmt: skip
    for micro, out in steps:
        state.batch += accumulate
        window.count(sum(b["image"].shape[0] for b in micro) * run.world, warmup=not run.warm)
        run.warm = True
        state.step += 1
        logger.advance()
        if out.skipped:
            _skipped_step(run, out)
        else:
            state.bad_steps = 0
            window.add(out.losses)
            if run.ema is not None:
                run.ema.update(run.model)
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


def _skipped_step(run: Run, out: StepResult) -> None:
    """Count and log a skipped step; abort after ``max_bad_steps`` bad ones in a row. An fp16
    overflow is the GradScaler calibrating itself, not a bad step: it is only counted."""
    state = run.state
    state.skipped_steps += 1
    if out.skip is SkipReason.FP16_OVERFLOW:
        return
    reason = out.reason
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


def _log_train(run: Run, window: LossWindow, out: StepResult) -> None:
    values = window.values(run.balancer.tasks, out.weights, base_lr(run.optimizer))
    run.logger.log(run.state.step, run.state.epoch, "train", values)
    short = {k.removeprefix("loss/"): v for k, v in values.items() if k.startswith("loss/")}
    run.logger.postfix({**short, "lr": values["lr"], "img/s": values["img_s"]})


def validate(run: Run, epoch: int) -> tuple[dict, bool]:
    """Evaluate on the validation split, log, pick best; returns (results, is_best)."""
    from cvmtl.engine.evaluator import evaluate

    cfg, state = run.cfg, run.state
    run.sync_buffers()  # every rank evaluates (and then saves) the same model
    samples: list = []
    num_vis = cfg.train.num_vis if du.is_main_process() else 0
    fast = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, edge_exact=False))
    with preserved_rng():  # evaluation must not move the training random streams
        results = evaluate(
            run.eval_model, run.loaders["val"], cfg.tasks, fast,
            device=run.device, collect=num_vis, samples=samples,
        )  # fmt: skip
    dm = run.best.delta_m(results)
    values = validation_values(run, results, dm)
    run.logger.log(state.step, epoch, "val", values)
    for i, panel in enumerate(prediction_panels(samples, cfg)):
        run.logger.image(f"val/pred_{i}", panel, state.step)
    value = run.best.value_of(results, dm)
    is_best = run.best.update(value, state.step)
    run.logger.info(
        f"val @ step {state.step}: {run.best.metric}={value:.4g}"
        + (" (best)" if is_best else f" (best {run.best.value:.4g} @ {run.best.step})")
        + f"; {task_summary(results)}"
    )
    run.logger.flush()
    return results, is_best


def validation_values(run: Run, results: dict, dm: dict | None = None) -> dict[str, float]:
    """The logged values of a validation: ``task/metric`` scalars, and ``delta_m`` (overall)
    when the run has validation baselines."""
    dm = run.best.delta_m(results) if dm is None else dm
    values = flat_metrics(results)
    if dm is not None:
        values["delta_m"] = float(dm["overall"])
    return values


def load_best_everywhere(model: nn.Module, best_path: Path) -> bool:
    """Rank 0 reads ``best_path`` and sends the weights: every rank then holds the same model, and
    the nodes of a multi-node run need no shared disk. False (model unchanged) without the file
    on rank 0."""
    found = du.broadcast_object(du.is_main_process() and best_path.is_file())
    if found:
        if du.is_main_process():
            model.load_state_dict(load_checkpoint(best_path)["model"])
        broadcast_module(model)
    return bool(found)


def test(run: Run) -> dict | None:
    """Evaluate best.pt (else the final weights) on the test split; log split "test"."""
    from cvmtl.engine.evaluator import evaluate

    loader = run.loaders.get("test")
    if loader is None:
        return None
    model = run.eval_model
    found = load_best_everywhere(model, run.cfg.run_dir / "best.pt")
    which = "best.pt" if found else "final weights"
    with preserved_rng():
        results = evaluate(model, loader, run.cfg.tasks, run.cfg, device=run.device)
    values = flat_metrics(results)
    dm = run.best.delta_m(results, split=run.cfg.data.test_split)  # the test split's baselines
    if dm is not None:
        values["delta_m"] = float(dm["overall"])
    run.logger.log(run.state.step, run.state.epoch, "test", values)
    run.logger.info(f"test ({which}): " + ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
    return results
