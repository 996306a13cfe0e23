"""A model and its config from a checkpoint: the one way every command gets them.

A checkpoint carries its config, so the file alone is enough; ``key=value`` overrides (e.g.
``data.root=...`` on another machine) are applied on top of that config.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvmtl.config import Config, from_dict, parse_override
from cvmtl.precision import resolve_precision

# Prefixes that wrappers put in front of parameter names: DDP's module., torch.compile's
# _orig_mod. (anywhere: compiling a submodule puts it mid-name).
_WRAPPERS = ("module.", "_orig_mod.")


def config_from_checkpoint(ckpt: dict[str, Any], overrides: Sequence[str] = ()) -> Config:
    """The checkpoint's config with ``key=value`` overrides applied (validated)."""
    values = copy.deepcopy(ckpt.get("config") or {})
    if not isinstance(values, dict) or not values:
        raise ValueError("the checkpoint holds no config (was it written by tools/train.py?)")
    if isinstance(values.get("model"), dict):  # written before model.neck_sharing: all shared
        values["model"].setdefault("neck_sharing", "all")
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {text!r}: {key} is not a section")
        node[keys[-1]] = value
    return from_dict(values)


def build_from_weights(
    cfg: Config, weights: dict[str, torch.Tensor], device: torch.device | str, source: str = ""
) -> nn.Module:
    """``build_model(cfg)`` with ``weights`` loaded strictly, in eval mode on ``device``, in the
    memory layout ``train.channels_last`` resolves to there.

    Pretrained / ``init_from`` files are not read: the weights replace them anyway, and those
    files need not exist where a checkpoint is used. ``source`` names the file in errors.
    """
    from cvmtl.models.build import build_model

    cfg = copy.deepcopy(cfg)
    cfg.model.pretrained, cfg.model.pretrained_file, cfg.model.init_from = False, None, None
    model = build_model(cfg)
    state = {}
    for name, value in weights.items():
        name = name.removeprefix(_WRAPPERS[0]).replace(_WRAPPERS[1], "")
        state[name] = value
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        where = f"{source}: " if source else ""
        raise ValueError(f"{where}weights do not fit the config's model: {err}") from None
    model = model.to(device).eval()
    if resolve_precision(cfg, device).train.channels_last:  # auto -> this device's layout
        model = model.to(memory_format=torch.channels_last)
    return model


def load_model(
    checkpoint: str | Path, overrides: Sequence[str] = (), device: str | torch.device = "cpu"
) -> tuple[nn.Module, Config]:
    """(model in eval mode with the checkpoint's ``model`` weights, its Config)."""
    from cvmtl.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_checkpoint(ckpt, overrides)
    return build_from_weights(cfg, ckpt["model"], device, source=str(checkpoint)), cfg
