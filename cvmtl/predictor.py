"""Predictor: a trained checkpoint applied to plain images, results at the input's exact size.

    from cvmtl import Predictor
    p = Predictor.from_checkpoint("runs/synthetic_demo/best.pt")
    out = p.predict("photo.jpg")   # {task: numpy array at the photo's size}

Each task's result is its ``TaskSpec.predict`` as numpy: class ids (int64 HxW) for class maps,
a probability map (float32 HxW) for binary maps, the value per pixel (float32 HxW, e.g. metres)
for scalar maps and HxWxC vectors (float32, unit length where the label is) for vector maps.

Resizing (``max_size``): an image whose longer side exceeds ``max_size`` is resized by
``s = max_size / max(H, W)`` for the forward pass and the outputs are resized back. Per the
sample contract (docs/architecture.md) a model sees depth / s in an image resized by s, so the
depth predicted on the small image is multiplied by s on the way back (the evaluator's rule, by
the label kind's ``scale_power``); unit vectors are renormalized.

Precision (``amp``): default the checkpoint's ``train.amp``; ``auto`` (there or here) resolves for
this device through :mod:`cvmtl.precision` (bf16 only where the hardware has it), as does
``train.channels_last``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cvmtl.config import Config, to_dict
from cvmtl.engine.restore import load_model  # public here too
from cvmtl.precision import AMP_CHOICES, autocast_context, resolve_device, resolve_precision
from cvmtl.tasks import get_task

log = logging.getLogger(__name__)

ImageLike = np.ndarray | str | Path
AMP = AMP_CHOICES  # auto | none | bf16 | fp16 (cvmtl.precision)


def load_image(path: str | Path) -> np.ndarray:
    """RGB uint8 HxWx3 from any file PIL reads: EXIF orientation applied, grey / palette /
    16-bit expanded, alpha dropped. Unreadable or truncated files raise ValueError."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grey
                return as_rgb_uint8(np.asarray(im))
            return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image file PIL can decode") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated, bad header, ...
        raise ValueError(f"{path}: unreadable image ({err})") from None


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """HxW grey, HxWx1, HxWx3 RGB or HxWx4 RGBA (alpha dropped) -> RGB uint8 HxWx3.

    uint8 is taken as is, uint16 as 0..65535, float as 0..1 (as nyuv2_npy stores images).
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or min(a.shape[:2]) < 1:
        raise ValueError(f"image must be HxW, HxWx3 or HxWx4, got shape {a.shape}")
    a = a[:, :, :3] if a.shape[2] == 4 else a
    a = np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.uint16:
        return (a.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    if a.dtype.kind in "iu" and a.max(initial=0) > 255:
        a = a.astype(np.float32) / 65535.0
    elif a.dtype.kind in "iu" or a.dtype == bool:
        return a.astype(np.uint8)
    a = np.nan_to_num(a.astype(np.float32))
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _numpy(x: torch.Tensor) -> np.ndarray:
    """A batch of per-image predictions as numpy: floats as float32, integers as int64."""
    x = x.detach().cpu()
    return (x.float() if x.is_floating_point() else x.long()).numpy()


def class_info(cfg: Config) -> tuple[list[str], list[list[int]]]:
    """(class names, palette) from the dataset the run used; NYU / generic ones if it is gone."""
    from cvmtl.data.formats import load_dataset_info
    from cvmtl.tasks.colorize import default_palette

    n = cfg.data.num_classes
    if Path(cfg.data.root).is_dir():
        with contextlib.suppress(Exception):
            info = load_dataset_info(cfg.data.root, cfg.data.format, cfg.data.num_classes)
            if len(info["classes"]) == n:
                return list(info["classes"]), [list(c) for c in info["palette"]]
    if n in (13, 40):
        from cvmtl.data.nyuv2 import classes_and_palette

        return classes_and_palette(n)
    return [f"class {i}" for i in range(n)], default_palette(n)


class Predictor:
    """Run a cvmtl model on images; see the module docstring for the resizing rule."""

    def __init__(
        self,
        model: nn.Module,
        cfg: Config,
        device: str | torch.device = "auto",
        amp: str | None = None,
        max_size: int | None = None,
    ):
        if amp is not None and amp not in AMP:
            raise ValueError(f"amp must be one of {'|'.join(AMP)}, got {amp!r}")
        if max_size is not None and max_size < 1:
            raise ValueError(f"max_size must be a positive number of pixels, got {max_size}")
        self.device = resolve_device(device)
        # ``amp`` replaces the config's train.amp (None keeps it); auto values resolve for this
        # device (cvmtl.precision), once, here
        cfg = copy.deepcopy(cfg)
        cfg.train.amp = cfg.train.amp if amp is None else amp
        self.cfg = resolve_precision(cfg, self.device)
        self.amp, self.max_size = self.cfg.train.amp, max_size
        self.model = model.to(self.device).eval()
        if self.cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.tasks: list[str] = list(cfg.tasks)
        self.classes, self.palette = class_info(cfg)
        self._mean = torch.tensor(cfg.data.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg.data.std, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "auto",
        amp: str | None = None,
        max_size: int | None = None,
        overrides: Sequence[str] = (),
    ) -> Predictor:
        """Load ``path`` (a cvmtl checkpoint or a run folder: its last.pt). ``overrides`` are
        ``key=value`` config changes, e.g. ``eval.tta=true`` for flip test-time augmentation."""
        model, cfg = load_model(path, overrides, "cpu")
        return cls(model, cfg, device=device, amp=amp, max_size=max_size)

    @property
    def config(self) -> dict[str, Any]:
        return to_dict(self.cfg)

    def predict(self, image: ImageLike) -> dict[str, np.ndarray]:
        """``{task: array}`` at the image's exact size (see the module docstring: class ids,
        probabilities, values or vectors per pixel). ``image``: a path or an array
        (HxW grey, HxWx3 RGB, HxWx4 RGBA; uint8, uint16 or float in [0, 1])."""
        return self.predict_batch([image])[0]

    def predict_batch(
        self, images: Sequence[ImageLike], batch_size: int = 8
    ) -> list[dict[str, np.ndarray]]:
        """:meth:`predict` for many images: equal sizes run together (up to ``batch_size``)."""
        rgb = [load_image(im) if isinstance(im, str | Path) else as_rgb_uint8(im) for im in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, a in enumerate(rgb):
            groups.setdefault(a.shape[:2], []).append(i)
        out: list[dict[str, np.ndarray] | None] = [None] * len(rgb)
        for idx in groups.values():
            for start in range(0, len(idx), max(1, batch_size)):
                chunk = idx[start : start + max(1, batch_size)]
                for i, pred in zip(chunk, self.predict_arrays(np.stack([rgb[i] for i in chunk]))):
                    out[i] = pred
        return out  # type: ignore[return-value]

    def predict_arrays(self, batch: np.ndarray) -> list[dict[str, np.ndarray]]:
        """RGB uint8 [B, H, W, 3] of one size -> one result dict per image."""
        preds = self.predict_tensor(self.preprocess(batch))
        arrays = {task: _numpy(get_task(task).predict(p)) for task, p in preds.items()}
        return [{task: a[i] for task, a in arrays.items()} for i in range(batch.shape[0])]

    def preprocess(self, batch: np.ndarray) -> torch.Tensor:
        """RGB uint8 [B, H, W, 3] -> normalized float32 [B, 3, H, W] on the device."""
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self._mean) / self._std

    @torch.inference_mode()
    def predict_tensor(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalized [B, 3, H, W] -> ``{task: model output at (H, W)}`` (logits or probabilities
        of class / binary maps, values, unit vectors renormalized), resized for the forward pass
        when ``max_size`` asks for it."""
        from cvmtl.engine.evaluator import predict

        size = tuple(image.shape[-2:])
        x = image
        if self.max_size is not None and max(size) > self.max_size:
            s = self.max_size / max(size)
            hw = (max(1, round(size[0] * s)), max(1, round(size[1] * s)))
            x = F.interpolate(image, size=hw, mode="bilinear", align_corners=False, antialias=True)
        with autocast_context(self.amp, self.device):
            # evaluator.predict resizes back to ``size`` and multiplies depth by the scale
            out = predict(self.model, x, size, self.tasks, self.cfg, self.cfg.data.num_classes)
        for task in out:
            if get_task(task).label.unit_vector:
                out[task] = F.normalize(out[task].float(), dim=1)
        return out
