"""The gradient-level step: per-task gradients, the balancer's combination, one update.

``loss.grad_source=features``: T cheap backward passes through the heads give each task's gradient
w.r.t. the shared FPN map; the balancer combines them (from their Gram matrix, global under DDP)
and the combination goes through backbone + FPN once. ``params``: one backward pass per task
through the whole network gives the gradients w.r.t. the shared parameters (all-reduced before
combining). Head parameters always receive their own task's gradient.

With ``train.accumulate = k`` each micro-batch is balanced on its own: the balancer sees its
per-task gradients and losses at the scale of the step (k times its share, see
:meth:`cvmtl.engine.stepping.StepInputs.losses`), and the update is the mean of the k combined
gradients (for fixed weights: exactly the big batch's). Stateful methods advance per
micro-batch; ``after_step`` sees the step's losses once.
"""

from __future__ import annotations

import torch
from torch import nn

from cvmtl.balancers import machinery as mach
from cvmtl.distributed import all_reduce_coalesced
from cvmtl.engine.stepping import (
    Mark,
    SkipReason,
    StepInputs,
    StepRecord,
    StepResult,
    apply_update,
    first_bad,
    no_mark,
    prepare_step,
)


def gradient_step(
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
    """One optimizer step of a gradient-level balancer (see the module docstring)."""
    inputs = prepare_step(micro, model, scaler, cfg)
    tasks = list(balancer.tasks)
    record = StepRecord(inputs, len(tasks))
    weights = torch.zeros(len(tasks), device=inputs.device)
    reduced: set[int] = set()
    for j in inputs.nonempty():
        part = _micro_step(model, inputs, j, balancer, cfg, mark)
        if part["bad_loss"]:
            return record.skipped(SkipReason.NON_FINITE_LOSS, optimizer, step, part["bad_loss"])
        reduced |= part["reduced"]
        if part["bad_rows"]:  # the update is skipped, as for an overflow (see poison_grads)
            rows, out = part["bad_rows"], record.out
            if inputs.use_scaler:
                out.skip, out.detail = SkipReason.FP16_OVERFLOW, f"non-finite gradient: {rows}"
            else:
                out.skip, out.detail = SkipReason.NON_FINITE_GRADIENT, rows
            break
        record.add_losses(part["losses"], tested=True)
        record.add_total(part["total"])
        weights += part["weights"] / inputs.k
    if not record.losses and record.out.skip is None:
        return record.skipped(SkipReason.NO_LABELED_TASK, optimizer, step)
    bad = record.out.skip is not None
    record.out.weights, record.out.total = weights * (not bad), record.total
    if step and apply_update(model, optimizer, scaler, cfg, record, reduced):
        mark("optimizer")
        active = [i for i, t in enumerate(tasks) if t in record.losses]
        balancer.after_step(torch.stack([record.losses[tasks[i]] for i in active]))
        mark("balancer")
    return record.out


def _micro_step(model, inputs: StepInputs, j: int, balancer, cfg, mark: Mark) -> dict:
    """Forward, losses, per-task gradients and their combination for micro-batch ``j``."""
    tasks, k = list(balancer.tasks), inputs.k
    features = cfg.loss.grad_source == "features"
    image = inputs.image(inputs.batches[j])
    if features:
        z, zd, preds = mach.features_forward(model, image, inputs.autocast)
    else:
        with inputs.autocast:
            preds = model(image)
    mark("forward")
    losses = inputs.losses(preds, j, cfg)
    names = list(losses)
    flags = torch.isfinite(torch.stack([v.detach() for v in losses.values()]))
    mark("losses")
    reduced: set[int] = set()
    own, gram, shared = model.task_parameters, None, None
    if features:
        active, grads = mach.features_task_grads([zd], losses, tasks, own, inputs.mult)
        gram = mach.feature_gram(grads)  # global under DDP: the finiteness test agrees
        row_ok = torch.isfinite(gram.diagonal())
    else:
        shared = mach.trainable(model.shared_parameters())
        active, grads = mach.params_task_grads(shared, losses, tasks, own, inputs.mult)
        all_reduce_coalesced([grads])
        reduced = {id(p) for p in shared}
        row_ok = torch.isfinite(grads).all(dim=1)
    # one host read for the rows and the losses: the balancer must not see NaN
    ok = torch.cat([row_ok, flags]).tolist()
    bad_rows = [tasks[active[r]] for r, good in enumerate(ok[: len(active)]) if not good]
    part = {"bad_loss": first_bad(names, ok[len(active) :]), "reduced": reduced}
    part["bad_rows"] = ", ".join(bad_rows)
    task_losses = torch.stack([losses[tasks[i]].detach() for i in active])
    if part["bad_loss"]:
        return part
    if bad_rows:
        mach.poison_grads(model.parameters())  # the optimizer step below is then skipped
        return part
    # the balancer sees the micro-batch's gradients at the step's scale (k times its share)
    mach.apply_combination(
        balancer, grads, task_losses, active, mult=inputs.mult, k=k,
        features=[z] if features else None, gram=gram, shared=shared, mark=mark,
    )  # fmt: skip
    mark("backward")
    weights = balancer.last_weights.to(inputs.device)
    part.update(losses=losses, weights=weights, total=(weights[active] * task_losses).sum())
    return part
