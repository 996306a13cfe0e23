"""Models: timm backbone -> FPN -> task heads (or another ``model.arch``: :mod:`cvmtl.models.arch`);
:func:`build_model` builds them from a config."""

from cvmtl.models.arch import ARCHS, ArchModel, build_arch
from cvmtl.models.backbone import TimmBackbone
from cvmtl.models.build import build_model, load_matching
from cvmtl.models.heads import DenseHead, TaskHead, build_head
from cvmtl.models.multitask import MultiTaskModel, SoftSharingModel
from cvmtl.models.neck import FPN

__all__ = [
    "ARCHS",
    "ArchModel",
    "build_arch",
    "FPN",
    "DenseHead",
    "MultiTaskModel",
    "TaskHead",
    "SoftSharingModel",
    "TimmBackbone",
    "build_head",
    "build_model",
    "load_matching",
]
