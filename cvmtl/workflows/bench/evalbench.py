"""Evaluation throughput: the prediction (``evaluator.predict``, then each task's ``decide``:
class labels) and the metric bookkeeping (``update`` of every task metric) timed separately,
interleaved, on one random batch: the same split of work as :func:`cvmtl.engine.evaluate`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cvmtl.engine.views import decide, predict
from cvmtl.metrics import build_metrics
from cvmtl.precision import autocast_context
from cvmtl.workflows.bench.timing import stats, time_interleaved


def eval_benchmark(
    model: nn.Module,
    cfg: Any,
    batch: dict[str, Any],
    iters: int,
    warmup: int,
    device: torch.device,
) -> dict[str, Any]:
    """``img_s`` (forward + metrics), ``step_s`` (the same per batch), ``forward_s`` (the
    prediction, class labels included), ``metrics_s`` and ``metrics_frac`` (the metrics' share
    of evaluation time, from medians), ``minor_faults`` (page faults per call of each part)."""
    tasks = list(cfg.tasks)
    image = batch["image"]
    size = tuple(image.shape[-2:])
    metrics = build_metrics(tasks, cfg.data.num_classes, cfg)
    preds: dict[str, torch.Tensor] = {}
    was_training = model.training
    model.eval()

    def forward() -> None:
        with torch.inference_mode(), autocast_context(cfg.train.amp, device):
            out = predict(model, image, size, tasks, cfg, cfg.data.num_classes)
            preds.update(decide(out))

    def update() -> None:
        with torch.inference_mode():
            for task in tasks:
                metrics[task].update(preds[task], batch[task])

    forward()  # the first forward fills preds for the first update
    faults: dict[str, float] = {}
    fns = {"forward": forward, "metrics": update}
    times = time_interleaved(fns, iters, warmup, device, faults)
    model.train(was_training)
    step = [f + m for f, m in zip(times["forward"], times["metrics"])]
    fwd, met = stats(times["forward"]), stats(times["metrics"])
    bs = image.shape[0]
    return {
        "img_s": bs / stats(step)["median"],
        "step_s": stats(step),
        "forward_s": fwd,
        "metrics_s": met,
        "metrics_frac": met["median"] / (fwd["median"] + met["median"]),
        "batch_size": bs,
        "minor_faults": faults,
    }
