"""Architectures selected by ``model.arch``: name -> builder ``(cfg, backbone_kwargs) -> model``
(``fpn``, the default, builds :class:`cvmtl.models.MultiTaskModel` or, with ``model.sharing:
soft``, :class:`cvmtl.models.SoftSharingModel`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from cvmtl.models.arch.common import AUX, ArchModel, StrideHead
from cvmtl.models.arch.cross_stitch import CrossStitchModel
from cvmtl.models.arch.deeplab import DeepLabModel
from cvmtl.models.arch.fpn import build_fpn
from cvmtl.models.arch.mtan import MtanModel
from cvmtl.models.arch.mtinet import MtiNetModel
from cvmtl.models.arch.padnet import PadNetModel

ARCHS: dict[str, Callable[[Any, dict[str, Any] | None], nn.Module]] = {
    "fpn": build_fpn,
    "deeplab": DeepLabModel,
    "mtan": MtanModel,
    "cross_stitch": CrossStitchModel,
    "padnet": PadNetModel,
    "mtinet": MtiNetModel,
}
SOFT_SHARING = {"fpn"}  # the architectures with a model.sharing: soft variant


def build_arch(cfg: Any, backbone_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The ``cfg.model.arch`` model for ``cfg.tasks``."""
    arch = cfg.model.arch
    if arch not in ARCHS:
        raise ValueError(f"model.arch: expected {' | '.join(ARCHS)}, got {arch!r}")
    if cfg.model.sharing != "hard" and arch not in SOFT_SHARING:
        raise ValueError(
            f"model.sharing={cfg.model.sharing} is for model.arch=fpn only "
            f"(model.arch={arch} defines its own sharing)"
        )
    model = ARCHS[arch](cfg, backbone_kwargs)
    if cfg.model.norm == "syncbn":  # the backbone's own batch norms synchronize too
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


__all__ = ["ARCHS", "AUX", "ArchModel", "StrideHead", "build_arch"]
