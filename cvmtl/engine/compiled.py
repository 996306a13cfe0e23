"""``train.compile``: torch.compile of the model's parts, and the step marks CUDA graphs need.

The model is compiled child by child (the training step calls ``forward_features`` /
``forward_heads``, which a compiled wrapper of the whole model would bypass); in place, so the
state_dict keeps the plain model's names. The modes ``reduce-overhead`` and ``max-autotune``
replay each part as a CUDA graph on a GPU (static shapes: the fixed train crop, ``drop_last``);
on a CPU they compile like ``default``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cvmtl.config import CUDA_GRAPH_MODES

__all__ = ["compile_children", "mark_step_begin"]


def compile_children(model: nn.Module, mode: str | bool = "default") -> None:
    """torch.compile each top-level submodule in place (train_step calls forward_features /
    forward_heads, which would bypass a compiled wrapper of the whole model). ``mode``: a
    ``train.compile`` value (True = ``default``)."""
    mode = "default" if mode is True else mode
    # A gradient balancer in features mode runs one backward per task with retain_graph=True
    # (cvmtl.balancers.machinery.features_task_grads); a compiled backward that donates its
    # buffers refuses that, so buffer donation is off (the switch its error message names).
    torch._functorch.config.donated_buffer = False
    for child in model.children():
        if isinstance(child, nn.ModuleDict | nn.ModuleList):
            compile_children(child, mode)
        else:
            child.compile(mode=mode)


def mark_step_begin(cfg: Any) -> None:
    """Tell CUDA graph trees that a new step (or evaluation batch) begins, so that the last
    one's graph outputs may be overwritten. Only for the ``train.compile`` modes with CUDA
    graphs: elsewhere it would import inductor for nothing."""
    if cfg.train.compile in CUDA_GRAPH_MODES:
        torch.compiler.cudagraph_mark_step_begin()
