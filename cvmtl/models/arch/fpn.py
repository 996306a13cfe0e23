"""``model.arch: fpn``, the default network: a timm backbone, an FPN, a head per task.

``model.sharing: hard`` gives one :class:`MultiTaskModel` whose ``model.neck_sharing`` says what
of the FPN the heads share; ``soft`` gives a :class:`SoftSharingModel` with one single-task
branch per task, tied by a penalty.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cvmtl.models.arch.common import make_backbone
from cvmtl.models.exchange import TaskExchange
from cvmtl.models.heads import build_head
from cvmtl.models.multitask import MultiTaskModel, SoftSharingModel
from cvmtl.models.neck import FPN, LevelFusion, Levels, SharedConvs, TaskNormFPN


def build_branch(
    cfg: Any,
    tasks: list[str],
    backbone_kwargs: dict[str, Any] | None = None,
    neck_sharing: str | None = None,
) -> MultiTaskModel:
    """One backbone + a neck + a head for each of ``tasks``; ``neck_sharing`` (default
    ``model.neck_sharing``) says what of the FPN the heads share (see :class:`MultiTaskModel`)."""
    m = cfg.model
    sharing = neck_sharing or m.neck_sharing
    if sharing == "convs" and len(tasks) == 1:
        # one task's own norms are the pyramid's: build that very network (same modules,
        # order and names), so the single-task baseline is the one of every other value
        sharing = "pyramid"
    backbone = make_backbone(cfg, backbone_kwargs)
    chans, strides, width = backbone.channels, backbone.strides, m.neck_channels
    if sharing == "none":
        neck: FPN | Levels = Levels(chans, strides)
    elif sharing == "convs":
        neck = SharedConvs(chans, strides, width)
    else:
        neck = FPN(chans, strides, width, m.norm, sharing == "all", m.level_attention)
    heads = {}
    for t in tasks:  # each head's own neck part is created just before it (see DenseHead)
        own: nn.Module | None = None
        if sharing == "pyramid":
            own = LevelFusion(strides, width, m.norm, m.level_attention)
        elif sharing == "none":
            own = FPN(chans, strides, width, m.norm, attention=m.level_attention)
        elif sharing == "convs":
            assert isinstance(neck, SharedConvs)
            own = TaskNormFPN(neck, width, m.norm, m.level_attention)
        heads[t] = build_head(t, width, cfg.data.num_classes, m.head_channels, m.norm, m, own)
    exchange = TaskExchange(tasks, width) if m.task_exchange and len(tasks) > 1 else None
    return MultiTaskModel(backbone, neck, heads, cfg.data.num_classes, exchange)


def build_fpn(
    cfg: Any, backbone_kwargs: dict[str, Any] | None = None
) -> MultiTaskModel | SoftSharingModel:
    """The ``fpn`` model of ``cfg.tasks`` under ``model.sharing`` (hard | soft)."""
    if cfg.model.sharing == "hard":
        return build_branch(cfg, cfg.tasks, backbone_kwargs)
    if cfg.model.sharing != "soft":
        raise ValueError(f"model.sharing: expected hard | soft, got {cfg.model.sharing!r}")
    # one task per branch: the fusion sits in the neck, so soft_weight ties it too
    branches = {t: build_branch(cfg, [t], backbone_kwargs, "all") for t in cfg.tasks}
    if not cfg.model.pretrained:  # start the copies equal, as pretrained copies are
        first = branches[cfg.tasks[0]]
        for branch in branches.values():
            branch.backbone.load_state_dict(first.backbone.state_dict())
            branch.neck.load_state_dict(first.neck.state_dict())
    return SoftSharingModel(branches, cfg.model.soft_weight)
