"""Architectures selected by ``model.arch`` (``fpn``, the default, is
:class:`cvmtl.models.MultiTaskModel`, built in :mod:`cvmtl.models.build`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from cvmtl.models.arch.common import AUX, ArchModel, StrideHead
from cvmtl.models.arch.cross_stitch import CrossStitchModel
from cvmtl.models.arch.deeplab import DeepLabModel
from cvmtl.models.arch.mtan import MtanModel
from cvmtl.models.arch.mtinet import MtiNetModel
from cvmtl.models.arch.padnet import PadNetModel

ARCHS: dict[str, type[ArchModel]] = {
    "deeplab": DeepLabModel,
    "mtan": MtanModel,
    "cross_stitch": CrossStitchModel,
    "padnet": PadNetModel,
    "mtinet": MtiNetModel,
}


def build_arch(cfg: Any, backbone_kwargs: dict[str, Any] | None = None) -> ArchModel:
    """The ``cfg.model.arch`` model (not ``fpn``) for ``cfg.tasks``."""
    arch = cfg.model.arch
    if arch not in ARCHS:
        raise ValueError(f"model.arch: expected fpn | {' | '.join(ARCHS)}, got {arch!r}")
    if cfg.model.sharing != "hard":
        raise ValueError(
            f"model.sharing={cfg.model.sharing} is for model.arch=fpn only "
            f"(model.arch={arch} defines its own sharing)"
        )
    model = ARCHS[arch](cfg, backbone_kwargs)
    if cfg.model.norm == "syncbn":  # the backbone's own batch norms synchronize too
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


__all__ = ["ARCHS", "AUX", "ArchModel", "StrideHead", "build_arch"]
