"""TimmBackbone: any timm ``features_only`` model as a list of NCHW maps with known strides.

CNNs (resnet, convnext, efficientnet, regnet, mobilenetv3, ...) give a pyramid directly; Swin
gives NHWC maps (permuted here); a plain ViT gives one stride-16 map from which a ViTDet-style
simple pyramid builds strides 4/8/16/32. Levels finer than stride 4 (the stride-2 stem of
resnet / efficientnet / mobilenet) are dropped: the neck fuses at stride 4.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

log = logging.getLogger(__name__)

MIN_STRIDE = 4


def _hub_reachable(timeout: float = 2.0) -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline_if_unreachable() -> Iterator[None]:
    """Force huggingface_hub offline when the hub cannot be reached.

    Without this, ``pretrained=True`` on a machine without network retries for ~45 s before
    failing; offline mode still loads weights that are already in the local cache.
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # timm then downloads through torch.hub, which fails fast
        yield
        return
    old = constants.HF_HUB_OFFLINE
    if not old and not _hub_reachable():
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def create_timm_features(
    name: str,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    img_size: tuple[int, int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model(name, features_only=True)`` with cvmtl's pretrained-weight rules."""
    kwargs = dict(kwargs)
    if pretrained_file is not None:
        if not pretrained:
            raise ValueError("model.pretrained_file is set but model.pretrained is false")
        if not Path(pretrained_file).is_file():
            raise FileNotFoundError(f"model.pretrained_file: no such file {pretrained_file}")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained_file))
    # Transformers need img_size (Swin) and dynamic sizes (ViT, Swin); CNNs reject these
    # keywords with a TypeError at once, so try the richest set first.
    attempts: list[dict[str, Any]] = [{}]
    if img_size is not None:
        size = tuple(int(s) for s in img_size)
        attempts = [dict(img_size=size, dynamic_img_size=True), dict(img_size=size), {}]
    err: Exception | None = None
    for extra in attempts:
        try:
            guard = pretrained and not pretrained_file
            with _offline_if_unreachable() if guard else contextlib.nullcontext():
                return timm.create_model(
                    name, pretrained=pretrained, features_only=True, **kwargs, **extra
                )
        except TypeError as e:  # an unsupported keyword: try the next set
            err = e
        except (OSError, RuntimeError, ValueError) as e:
            if pretrained and not pretrained_file:
                offline = os.environ.get("HF_HUB_OFFLINE", "")
                raise RuntimeError(
                    f"could not load pretrained weights for backbone {name!r} "
                    f"({type(e).__name__}: {e}; HF_HUB_OFFLINE={offline!r}). Without a network, "
                    f"set model.pretrained_file=PATH to a local .pth/.safetensors file "
                    f"(or model.pretrained=false)."
                ) from e
            raise
    assert err is not None
    raise err


def _norm(channels: int) -> nn.Module:
    # LayerNorm over channels of an NCHW map, as in ViTDet's simple feature pyramid.
    return nn.GroupNorm(1, channels)


class SimplePyramid(nn.Module):
    """ViTDet's simple feature pyramid: one map at stride ``s`` -> maps at strides 4..32.

    Finer levels come from stride-2 transposed convs, coarser ones from 2x max pooling.
    """

    def __init__(self, channels: int, stride: int, out_strides: tuple[int, ...] = (4, 8, 16, 32)):
        super().__init__()
        if stride & (stride - 1):
            raise ValueError(f"a plain ViT backbone needs a power-of-two patch size, got {stride}")
        self.levels = nn.ModuleList()
        self.channels: list[int] = []
        for s in out_strides:
            layers: list[nn.Module] = []
            ch = channels
            for _ in range(int(math.log2(stride / s)) if s < stride else 0):
                out = max(ch // 2, 16)
                layers += [nn.ConvTranspose2d(ch, out, 2, stride=2), _norm(out), nn.GELU()]
                ch = out
            if layers:  # the last activation is followed by the FPN's lateral conv
                layers = layers[:-2]
            for _ in range(int(math.log2(s / stride)) if s > stride else 0):
                layers.append(nn.MaxPool2d(2))
            self.levels.append(nn.Sequential(*layers))
            self.channels.append(ch)
        self.strides = list(out_strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [level(x) for level in self.levels]


class TimmBackbone(nn.Module):
    """A timm feature extractor returning NCHW maps at strides ``self.strides`` (>= 4).

    ``channels`` and ``strides`` come from timm's ``feature_info``; ``size_divisor`` is the
    multiple the input must be padded to.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        img_size: tuple[int, int] | None = None,
        drop_path: float = 0.0,
        **timm_kwargs: Any,
    ):
        super().__init__()
        if drop_path > 0:
            timm_kwargs["drop_path_rate"] = drop_path
        self.name = name
        self.body = create_timm_features(
            name, pretrained, pretrained_file, img_size=img_size, **timm_kwargs
        )
        info = self.body.feature_info
        chans, strides = list(info.channels()), list(info.reduction())
        self.nhwc = str(getattr(self.body, "output_fmt", "NCHW")) in ("NHWC", "Format.NHWC")
        self.pyramid: SimplePyramid | None = None
        if len(set(strides)) == 1:  # plain ViT: one resolution, use the last block
            self.keep = [len(strides) - 1]
            self.pyramid = SimplePyramid(chans[-1], strides[-1])
            self.channels, self.strides = self.pyramid.channels, self.pyramid.strides
            self.size_divisor = max(max(self.strides), strides[-1])
        else:
            self.keep = [i for i, s in enumerate(strides) if s >= MIN_STRIDE]
            self.channels = [chans[i] for i in self.keep]
            self.strides = [strides[i] for i in self.keep]
            self.size_divisor = max(strides)
        if not self.keep:
            raise ValueError(f"backbone {name!r} has no feature level at stride >= {MIN_STRIDE}")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(x)
        feats = [feats[i] for i in self.keep]
        if self.nhwc:
            # permute gives a channels_last-strided NCHW view: no copy needed
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        if self.pyramid is not None:
            feats = self.pyramid(feats[-1])
        return feats
