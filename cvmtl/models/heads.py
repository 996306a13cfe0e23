"""Task heads on a stride-4 map: conv-norm-relu + 1x1 prediction, upsampled to the input.

A head built with a ``fusion`` (:class:`cvmtl.models.neck.LevelFusion`) takes the shared pyramid
levels and fuses them its own way first (``model.neck_sharing: pyramid``, the default network;
with ``none`` the head's ``fusion`` is a whole FPN over the backbone levels).

Each head upsamples its raw prediction 4x (bilinear) to the padded input size, crops it to the
original size, then applies its task's output map (identity / bounded depth / unit normals) in
float32, so activations are exact under bf16 autocast and losses get float32 inputs.

The regression heads (depth, normals: ``fp32_pred``) also run their prediction layer (the 1x1
conv and the upsampling) in float32 with autocast off: a bf16 value has 8 significant bits
(~0.4 % relative rounding), which the float32 activation after it cannot restore. The layer has
1-3 output channels, so this costs little (docs/benchmarks.md). Segmentation logits stay in the
autocast dtype (an argmax / cross-entropy input).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvmtl.models.neck import OUT_STRIDE, conv_norm_act
from cvmtl.tasks import TaskSpec, get_task


class DenseHead(nn.Module):
    """(``fusion``: pyramid levels -> stride-4 map) -> conv3x3-norm-relu -> conv1x1 to
    ``out_channels``; subclasses define :meth:`activate`."""

    fp32_pred = False  # run the prediction layer in float32 under autocast (regression heads)

    def __init__(
        self, in_channels: int, out_channels: int, hidden: int = 64, norm: str = "bn",
        fusion: nn.Module | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        # registered first: a one-task model then creates (and seeds) its modules in the same
        # order under every model.neck_sharing, so its single-task baseline is the same network
        self.fusion = fusion
        self.out_channels = out_channels
        self.block = conv_norm_act(in_channels, hidden, 3, norm)
        self.pred = nn.Conv2d(hidden, out_channels, 1)

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor | list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Stride-4 features (pyramid levels with a ``fusion``) -> prediction at ``size``:
        upsample 4x (to the padded input size), crop bottom/right by slicing (trace-friendly: no
        size is turned into a Python int)."""
        return self.decode(self.fuse(x), size)

    def fuse(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """The head's stride-4 input: its own fusion of pyramid levels, else ``x`` itself."""
        return x if self.fusion is None else self.fusion(x)

    def decode(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Stride-4 map -> prediction at ``size`` (everything after :meth:`fuse`)."""
        x = self.block(x)
        if self.fp32_pred and torch.is_autocast_enabled(x.device.type):
            # no autocast context without autocast: export and tracing see the plain graph
            with torch.autocast(x.device.type, enabled=False):
                return self._predict(x.float(), size)
        return self._predict(x, size)

    def _predict(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.pred(x)
        x = F.interpolate(x, scale_factor=float(OUT_STRIDE), mode="bilinear", align_corners=False)
        return self.activate(crop(x, size).float())


def crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x[..., :h, :w]``: a view, except while exporting, where it is a negative pad (a copy):
    torch.export would guard on the view's contiguity (whether anything is cropped), which ties
    the graph to the example's size; ONNX runs the pad as a crop."""
    if torch.compiler.is_exporting():
        return F.pad(x, (0, size[1] - x.shape[-1], 0, size[0] - x.shape[-2]))
    return x[:, :, : size[0], : size[1]]


class TaskHead(DenseHead):
    """A task's head: its spec gives the output channels and the output map."""

    def __init__(
        self, spec: TaskSpec, in_channels: int, out_channels: int, hidden: int, norm: str,
        model_cfg: Any = None, fusion: nn.Module | None = None,
    ) -> None:  # fmt: skip
        super().__init__(in_channels, out_channels, hidden, norm, fusion)
        self.spec, self.model_cfg = spec, model_cfg
        self.fp32_pred = spec.fp32_head

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        return self.spec.activate(x, self.model_cfg)


def build_head(
    task: str,
    in_channels: int,
    num_classes: int,
    hidden: int = 64,
    norm: str = "bn",
    model_cfg: Any = None,
    fusion: nn.Module | None = None,
) -> DenseHead:
    """The head of ``task`` (an unknown task is a ValueError listing the known ones); with a
    ``fusion`` it takes pyramid levels instead of one stride-4 map."""
    spec = get_task(task)
    out = spec.out_channels(num_classes)
    return TaskHead(spec, in_channels, out, hidden, norm, model_cfg, fusion)
