"""build_model(cfg): the only bridge from the config to model modules."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from cvmtl.config import Config
from cvmtl.models.arch import ArchModel, build_arch
from cvmtl.models.multitask import MultiTaskModel, SoftSharingModel
from cvmtl.serialization import load_weights_only
from cvmtl.tasks import TASKS

log = logging.getLogger(__name__)


def check_backbone_name(name: str) -> None:
    """ValueError for a name timm does not know, suggesting close matches."""
    if timm.is_model(name):
        return
    arch = name.split(".")[0]
    close = difflib.get_close_matches(arch, timm.list_models(), n=8, cutoff=0.6)
    close += [m for m in timm.list_models(f"*{arch}*")[:8] if m not in close]
    hint = f"close matches: {', '.join(close[:10])}" if close else "see timm.list_models()"
    raise ValueError(f"model.backbone: unknown timm model {name!r} ({hint})")


def build_model(
    cfg: Config, backbone_kwargs: dict[str, Any] | None = None
) -> MultiTaskModel | SoftSharingModel | ArchModel:
    """The model ``cfg.model`` describes for ``cfg.tasks``.

    Every ``model.arch`` comes from the registry :data:`cvmtl.models.arch.ARCHS`
    (``fpn``: a :class:`MultiTaskModel`, or a :class:`SoftSharingModel` with ``model.sharing:
    soft``). ``backbone_kwargs`` go to ``timm.create_model`` (e.g. a smaller
    depth in tests). With ``model.init_from`` the checkpoint's matching weights are loaded and
    the names of skipped ones are logged and kept in ``model.init_skipped``.
    """
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown or not cfg.tasks:
        raise ValueError(f"tasks: unknown {unknown or cfg.tasks} (available: {', '.join(TASKS)})")
    check_backbone_name(cfg.model.backbone)
    model = build_arch(cfg, backbone_kwargs)
    model.init_skipped = []
    if cfg.model.init_from:
        model.init_skipped = load_matching(model, cfg.model.init_from)
    return model


def _state_dict_from(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.init_from: no such file {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    ckpt = load_weights_only(path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        ckpt = ckpt["model"]
    if not isinstance(ckpt, dict):
        raise ValueError(f"model.init_from: {path} holds no state dict (got {type(ckpt).__name__})")
    return ckpt


def load_matching(model: nn.Module, path: str | Path) -> list[str]:
    """Load the weights of a cvmtl checkpoint (``{"model": state_dict}`` or a bare state dict)
    whose names and shapes match ``model``; return (and log) the names that were skipped.

    DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes are stripped first.
    """
    src = {}
    for k, v in _state_dict_from(path).items():
        for prefix in ("module.", "_orig_mod."):
            k = k.removeprefix(prefix)
        src[k] = v
    own = model.state_dict()
    loadable = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(loadable))
    unused = sorted(set(src) - set(loadable))
    model.load_state_dict(loadable, strict=False)
    log.info("init_from %s: loaded %d tensors", path, len(loadable))
    if skipped:
        log.warning("init_from %s: kept %d fresh tensors: %s", path, len(skipped), skipped)
    if unused:
        log.warning("init_from %s: ignored %d checkpoint tensors: %s", path, len(unused), unused)
    return skipped
