"""The single-task segmentation model against segmentation_models_pytorch's FPN.

What a segmentation user would pick instead of cvmtl's seg-only model: smp's ``FPN`` on the same
timm backbone (``tu-<backbone>``), at the config's neck / head widths, trained in a plain loop
on the same data pipeline (cvmtl's loaders: same crops, augmentations and batch order), with the
same loss (cvmtl's seg cross-entropy with the config's class weights and label smoothing: the
comparison is of the networks), the same optimizer (AdamW, ``train.lr``,
``train.weight_decay``), steps, warm-up and schedule (cvmtl's ``lr_factor``), the best epoch
picked on validation mIoU as cvmtl's baselines are, and scored on the test split by cvmtl's
evaluator. smp is a test-only extra (``pip install -e .[dev]``), never needed at run time.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvmtl.config import Config
from cvmtl.models.multitask import pad_to_multiple

SMP_VERSION = "0.6.0"  # the version the comparison in docs/results.md used


def segmentation_task(cfg: Config) -> str:
    """The config's first task scored by mIoU (the semantic segmentation task)."""
    from cvmtl.tasks import get_task

    for task in cfg.tasks:
        if "miou" in get_task(task).delta_metrics:
            return task
    raise ValueError(f"tasks: the smp comparison needs a task scored by mIoU, got {cfg.tasks}")


class SmpSeg(nn.Module):
    """smp's FPN as a cvmtl model: ``forward(image) -> {task: logits}``."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.task = segmentation_task(cfg)
        try:
            import segmentation_models_pytorch as smp
        except ImportError as err:  # a test-only extra
            raise ImportError(
                "the smp comparison needs segmentation_models_pytorch: "
                f"pip install segmentation-models-pytorch=={SMP_VERSION}"
            ) from err
        m = cfg.model
        self.net = smp.FPN(
            encoder_name=f"tu-{m.backbone}",
            encoder_weights=None,
            decoder_pyramid_channels=m.neck_channels,
            decoder_segmentation_channels=m.head_channels,
            classes=cfg.data.num_classes,
        )
        self.divisor = 32  # smp's FPN needs sides divisible by the encoder's output stride

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = image.shape[-2:]
        return {self.task: self.net(pad_to_multiple(image, self.divisor))[:, :, :h, :w]}


def seg_loss(cfg: Config) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The plain loop's loss: the seg task's own per-pixel terms (``loss_terms.seg_terms``, with
    ``cfg``'s class weights and label smoothing), summed over their denominators."""
    from cvmtl.loss_terms import class_weights, seg_terms

    weights, smoothing = class_weights(cfg, torch.device("cpu")), cfg.loss.seg_label_smoothing

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labeled = torch.ones(target.shape[0], dtype=torch.bool, device=target.device)
        terms, denom = seg_terms(logits, target, labeled, weights, smoothing)
        return terms.sum() / denom.sum()

    return loss


def train_smp(cfg: Config, seed: int) -> dict[str, Any]:
    """Train smp's FPN on ``cfg``'s segmentation task alone with ``seed``; its val-best test
    metrics."""
    from cvmtl.data.loader import build_loaders, set_epoch
    from cvmtl.engine.evaluator import evaluate
    from cvmtl.engine.optim import build_scheduler

    cfg = copy.deepcopy(cfg)
    task = segmentation_task(cfg)
    cfg.tasks, cfg.train.seed = [task], seed
    torch.manual_seed(seed)
    model = SmpSeg(cfg)
    loaders = build_loaders(cfg, False)
    t = cfg.train
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = build_scheduler(optimizer, t, t.max_steps)
    loss_fn = seg_loss(cfg)
    step, epoch, best, best_state = 0, 0, -1.0, None
    start = time.perf_counter()
    while step < t.max_steps:
        set_epoch(loaders, epoch)
        model.train()
        for batch in loaders["train"]:
            logits = model(batch["image"])[task]
            loss = loss_fn(logits, batch[task])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step >= t.max_steps:
                break
        epoch += 1
        model.eval()
        miou = evaluate(model, loaders["val"], [task], cfg, progress=False)[task]["miou"]
        if miou > best:
            best, best_state = miou, copy.deepcopy(model.state_dict())
    seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    model.eval()
    test = evaluate(model, loaders["test"], [task], cfg, progress=False)[task]
    flops = _forward_flops(model, cfg)
    scalars = {k: float(v) for k, v in test.items() if isinstance(v, float | int)}
    return {"seed": seed, "test": scalars, "val_miou": best, "seconds": seconds, "flops": flops}


def _forward_flops(model: nn.Module, cfg: Config) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    # two images: smp's group norm of a 1x1 level needs more than one value per group
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 3, *cfg.data.crop))
    return int(counter.get_total_flops()) // 2


def compare_smp(cfg: Config, seeds: list[int], out: Path) -> dict[str, Any]:
    """smp's FPN over ``seeds``; appended to ``out/smp.json`` as each seed ends (resumable)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "smp.json"
    done: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    for seed in seeds:
        if str(seed) in done:
            continue
        done[str(seed)] = train_smp(cfg, seed)
        path.write_text(json.dumps(done, indent=2) + "\n")
        print(f"smp seed {seed}: test mIoU {done[str(seed)]['test']['miou']:.2f}", flush=True)
    return done
