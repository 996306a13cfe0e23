"""Task heads on the fused stride-4 map: conv-norm-relu + 1x1 prediction, upsampled to the input.

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
    """conv3x3-norm-relu -> conv1x1 to ``out_channels``; subclasses define :meth:`activate`."""

    fp32_pred = False  # run the prediction layer in float32 under autocast (regression heads)

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, norm: str = "bn"):
        super().__init__()
        self.out_channels = out_channels
        self.block = conv_norm_act(in_channels, hidden, 3, norm)
        self.pred = nn.Conv2d(hidden, out_channels, 1)

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Stride-4 features -> prediction at ``size``: upsample 4x (to the padded input size),
        crop bottom/right by slicing (trace-friendly: no size is turned into a Python int)."""
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
        model_cfg: Any = None,
    ) -> None:  # fmt: skip
        super().__init__(in_channels, out_channels, hidden, norm)
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
) -> DenseHead:
    """The head of ``task`` (an unknown task is a ValueError listing the known ones)."""
    spec = get_task(task)
    return TaskHead(spec, in_channels, spec.out_channels(num_classes), hidden, norm, model_cfg)
