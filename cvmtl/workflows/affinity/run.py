"""The logic of ``tools/affinity.py``: a model (from a checkpoint or a fresh one from a config)
and the first N batches of a split, through
:func:`~cvmtl.workflows.affinity.compute.compute_affinity`."""

from __future__ import annotations

import itertools
from functools import partial
from pathlib import Path

import torch
from torch import nn

from cvmtl.config import Config, load_config
from cvmtl.losses import compute_losses
from cvmtl.workflows.affinity.compute import AffinityResult, compute_affinity


def load_for_affinity(
    checkpoint: str | Path | None = None,
    config: str | Path | None = None,
    overrides: list[str] | tuple = (),
) -> tuple[nn.Module, Config, torch.device]:
    """The checkpoint's model and config, or a freshly built model for ``config``."""
    from cvmtl.engine.restore import build_from_weights, config_from_checkpoint
    from cvmtl.precision import resolve_device

    if (checkpoint is None) == (config is None):
        raise ValueError("pass exactly one of checkpoint or config")
    if checkpoint is not None:
        from cvmtl.engine.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint)
        cfg = config_from_checkpoint(ckpt, list(overrides))
        device = resolve_device(cfg.train.device, "train.device")
        return build_from_weights(cfg, ckpt["model"], device, str(checkpoint)), cfg, device
    from cvmtl.models.build import build_model

    cfg = load_config(config, list(overrides))
    device = resolve_device(cfg.train.device, "train.device")
    torch.manual_seed(cfg.train.seed)  # a fresh model is reproducible from the config
    return build_model(cfg).to(device), cfg, device


def run_affinity(
    checkpoint: str | Path | None = None,
    config: str | Path | None = None,
    overrides: list[str] | tuple = (),
    batches: int = 8,
    split: str = "train",
    lookahead_lr: float | None = None,
    source: str = "features",
    mode: str = "train",
    out: str | Path | None = None,
) -> tuple[AffinityResult, Path]:
    """Affinities over the first ``batches`` batches of ``split``; returns them and the output
    folder (``out``, default ``runs/<name>/affinity``). The lookahead lr defaults to train.lr."""
    from cvmtl.data.loader import build_loaders

    model, cfg, _ = load_for_affinity(checkpoint, config, overrides)
    if cfg.model.sharing != "hard":
        raise ValueError("affinity needs model.sharing=hard (soft sharing shares nothing)")
    loader = build_loaders(cfg, distributed=False, splits=[split])[split]
    lr = cfg.train.lr if lookahead_lr is None else lookahead_lr
    result = compute_affinity(
        model,
        itertools.islice(loader, batches),
        partial(compute_losses, cfg=cfg),
        list(cfg.tasks),
        lr,
        source=source,
        mode=mode,
    )
    result.meta = {
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "config": None if config is None else str(config),
        "name": cfg.name,
        "backbone": cfg.model.backbone,
        "split": split,
        "batch_size": cfg.train.batch_size,
        "crop": list(cfg.data.crop),
    }
    return result, Path(out) if out is not None else cfg.run_dir / "affinity"
