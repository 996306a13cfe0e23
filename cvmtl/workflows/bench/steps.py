"""The steps the benchmark times and what they run on: random batches in the batch contract, the
engine's ``train_step`` as ``step(model, batch, optimizer)``, a plain-loss step, the plain fp32 /
NCHW / eager variant, a ``key=value`` variant of a config, FLOPs of one forward pass."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvmtl.config import Config, ConfigError, from_dict, parse_override, to_dict
from cvmtl.engine.step import TrainStep as EngineTrainStep
from cvmtl.models import build_model
from cvmtl.precision import (
    autocast_context,
    describe_precision,
    make_scaler,
    precision_info,
    resolve_precision,
)
from cvmtl.tasks import TaskSpec, get_task

TrainStep = Callable[[nn.Module, dict[str, Any], torch.optim.Optimizer], Any]


def random_label(spec: TaskSpec, cfg: Config, n: int, h: int, w: int, g: torch.Generator):
    """A random label batch of ``spec``'s kind in the batch contract: class ids below the head's
    channel count, 0/1 binary maps, positive values up to ``model.max_depth`` for scalars,
    unit (or Gaussian) vectors."""
    label = spec.label
    if label.integer:
        classes = 2 if spec.channels == 1 else spec.out_channels(cfg.data.num_classes)
        return torch.randint(0, classes, (n, h, w), generator=g)
    if label.channels == 1:
        return torch.rand(n, 1, h, w, generator=g) * float(getattr(cfg.model, "max_depth", 1.0))
    v = torch.randn(n, label.channels, h, w, generator=g)
    return F.normalize(v, dim=1) if label.unit_vector else v


def random_batch(cfg: Config, batch_size: int, device: torch.device) -> dict[str, Any]:
    """A batch in the batch contract with random values at ``data.crop``."""
    h, w = cfg.data.crop
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(batch_size, 3, h, w, generator=g)}
    for task in cfg.tasks:
        batch[task] = random_label(get_task(task), cfg, batch_size, h, w, g)
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["has"] = {t: torch.ones(batch_size, dtype=torch.bool, device=device) for t in cfg.tasks}
    return batch


def simple_losses(
    preds: dict[str, torch.Tensor], batch: dict[str, Any], cfg: Config
) -> dict[str, torch.Tensor]:
    """Plain per-task losses: each task's own ``spec.loss`` terms over their weights (in float32,
    every image labelled), without the engine's balancer, accumulation or DDP reductions."""
    losses = {}
    for task in cfg.tasks:  # not preds: a model may add outputs of its own (deep supervision)
        spec = get_task(task)
        target, labeled = batch[task], batch["has"][task]
        terms, weights = spec.loss(preds[task].float(), target, labeled, cfg)
        losses[task] = terms.sum() / weights.sum().clamp_min(1e-12)
    return losses


def simple_train_step(cfg: Config, device: torch.device) -> TrainStep:
    """Sum of :func:`simple_losses` (+ the soft-sharing penalty), backward, optimizer step."""
    cfg = resolve_precision(cfg, device)  # train.amp / channels_last: auto -> concrete

    def step(model: nn.Module, batch: dict[str, Any], optimizer: torch.optim.Optimizer) -> Any:
        optimizer.zero_grad(set_to_none=True)
        image = batch["image"]
        if cfg.train.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with autocast_context(cfg.train.amp, device):
            preds = model(image)
        loss = sum(simple_losses(preds, batch, cfg).values()) + model.regularization()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


class EngineStep:
    """The engine's step (:class:`~cvmtl.engine.step.TrainStep`) with its balancer and scaler, as
    ``step(model, batch, opt)``."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        from cvmtl.balancers import build_balancer

        self.cfg = cfg = resolve_precision(cfg, device)  # as the trainer: auto -> concrete
        self.balancer = build_balancer(cfg.loss.balancer, cfg.tasks, **cfg.loss.balancer_args)
        if isinstance(self.balancer, nn.Module):
            self.balancer = self.balancer.to(device)
        self.scaler = make_scaler(cfg.train.amp, device)
        self.step = EngineTrainStep(self.balancer, cfg)  # the trainer's one step entry

    def __call__(self, model: nn.Module, batch: dict[str, Any], optimizer: Any) -> Any:
        out = self.step(model, batch, optimizer, self.scaler)
        if out.skipped:
            raise RuntimeError(f"benchmark: the training step was skipped ({out.reason})")
        return out


def engine_train_step(cfg: Config, device: torch.device) -> EngineStep:
    """The engine's ``train_step(model, batch, balancer, optimizer, scaler, cfg)`` as a step."""
    return EngineStep(cfg, device)


def count_flops(model: nn.Module, cfg: Config, device: torch.device) -> int:
    """Forward FLOPs of one image at ``data.crop`` (FlopCounterMode: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    image = torch.randn(1, 3, *cfg.data.crop, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(image)
    model.train(was_training)
    return int(counter.get_total_flops())


def eager_fp32_config(cfg: Config) -> Config:
    """The plain loop: fp32, NCHW, no torch.compile (everything else as ``cfg``)."""
    base = copy.deepcopy(cfg)
    base.train.amp, base.train.channels_last, base.train.compile = "none", False, False
    return base


def prepare(cfg: Config, dev: torch.device, model: nn.Module | None = None) -> tuple:
    """(model, optimizer) as the trainer sets them up: channels_last, compile, param groups."""
    from cvmtl.engine.compiled import compile_children
    from cvmtl.engine.optim import build_optimizer

    model = (model or build_model(cfg)).to(dev)
    if resolve_precision(cfg, dev).train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        compile_children(model, cfg.train.compile)
    return model, build_optimizer(model, cfg.train)


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """A validated copy of ``cfg`` with dotted ``values`` set."""
    data = to_dict(cfg)
    for key, value in values.items():
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        if last not in node:
            raise ConfigError(f"{key}: unknown config key")
        node[last] = value
    return from_dict(data)


def variant_step(requested: Config, overrides, dev, model, train_step) -> dict[str, Any]:
    """The ``compare`` variant: ``requested`` with ``overrides``, resolved for ``dev``, from a
    copy of ``model`` (same initial weights), set up as the trainer does; ``run`` times one step."""
    if train_step is not None:
        raise ValueError("benchmark: compare works with the engine's step (not --step simple)")
    values = {}
    for text in overrides:
        keys, value = parse_override(text)
        values[".".join(keys)] = value
    vcfg = with_values(requested, values)
    info = precision_info(vcfg, dev)
    vcfg = resolve_precision(vcfg, dev)
    vmodel, vopt = prepare(vcfg, dev, copy.deepcopy(model))
    vmodel.train()
    vstep = engine_train_step(vcfg, dev)
    vbatch = random_batch(vcfg, vcfg.train.batch_size, dev)
    return {
        "run": lambda: vstep(vmodel, vbatch, vopt),
        "overrides": list(overrides),
        "batch_size": vcfg.train.batch_size,
        "amp_resolved": info["amp_resolved"],
        "channels_last_resolved": info["channels_last_resolved"],
        "precision": describe_precision(vcfg, dev),
    }
