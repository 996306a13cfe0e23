"""Tiny cvmtl checkpoints (and datasets) for the predictor / infer / visualize / export tests."""

from __future__ import annotations

from pathlib import Path

import torch

import cvmtl
from cvmtl.config import Config, from_dict, to_dict
from cvmtl.engine.checkpoint import save_checkpoint

NUM_CLASSES = 13


def tiny_config(data_root: str | Path = "data/synthetic", **values: object) -> Config:
    """A tiny resnet18 config (crop 64x64, neck 32, CPU, fp32); ``values`` are dotted keys with
    ``__`` for dots, e.g. ``data__num_classes=4``."""
    base: dict = {
        "name": "tiny",
        "data": {"root": str(data_root), "num_classes": NUM_CLASSES, "crop": [64, 64]},
        "model": {"backbone": "resnet18", "neck_channels": 32, "head_channels": 16},
        "train": {"amp": "none", "channels_last": False, "device": "cpu"},
    }
    for key, value in values.items():
        *path, last = key.split("__")
        node = base
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return from_dict(base)


def make_checkpoint(path: str | Path, cfg: Config | None = None, seed: int = 0) -> Path:
    """Save a randomly initialized (BN in eval statistics) model of ``cfg`` as a cvmtl checkpoint.

    The BN running statistics are perturbed so that outputs are not trivially constant.
    """
    cfg = cfg or tiny_config()
    torch.manual_seed(seed)
    model = cvmtl.build_model(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = {
        "model": model.state_dict(),
        "step": 0,
        "epoch": 0,
        "config": to_dict(cfg),
        "versions": {"cvmtl": cvmtl.__version__, "torch": str(torch.__version__)},
    }
    return save_checkpoint(state, path)
