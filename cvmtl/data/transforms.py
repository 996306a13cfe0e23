"""Joint train / eval transforms: raw numpy sample -> tensors of the sample contract
(docs/architecture.md).

Geometry (random scale, pad, crop, horizontal flip) is one inverse affine warp per array with
cv2: it resamples only the crop (cheap). Every label follows its task's
:class:`cvmtl.tasks.LabelKind` (any registered task present in the sample): resampled nearest
(labels stay integers, invalid pixels stay invalid), padded with ``label.fill`` (the image with
0; albumentations' PadIfNeeded has one ``fill_mask`` for all masks), multiplied by
``scale ** label.scale_power`` (depth divided by the zoom), multiplied channel-wise by
``label.flip_sign`` on a flip (normal x negated), renormalized when ``label.unit_vector`` and
thinned back to one pixel after a zoom in when ``label.thin`` (edges). Geometry stays ours rather
than albumentations' because the targets are not plain masks, which no albumentations transform
knows. Photometric augmentation is any albumentations pipeline on the image only: the
config's ``data.photometric`` (albumentations' own serialized form, one dict per transform), by
default a ``ColorJitter`` of strength ``data.color_jitter``; a transform that would move pixels
(and so desynchronize the labels) is refused.

Randomness: ``transform(sample, rng_seed=(seed, epoch, index))`` draws everything from
``np.random.default_rng(SeedSequence(rng_seed))`` (albumentations is re-seeded from it), so a
sample's augmentation depends on (seed, epoch, index) only: not on workers, order or history.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from cvmtl.scoring.thinning import thin
from cvmtl.tasks import TASKS, LabelKind


def label_keys(sample: dict[str, Any]) -> list[str]:
    """The keys of ``sample`` that are registered tasks (its labels)."""
    return [key for key in sample if key in TASKS]


def _rng(rng_seed: int | Sequence[int] | None) -> np.random.Generator:
    if rng_seed is None:
        return np.random.default_rng()
    return np.random.default_rng(np.random.SeedSequence(rng_seed))


def renormalize(normal: np.ndarray) -> np.ndarray:
    """Scale non-zero vectors (HxWxC) to unit length; zero (invalid) ones stay zero."""
    normal = normal.astype(np.float32, copy=False)
    sq = np.einsum("...c,...c->...", normal, normal)
    scale = np.float32(1.0) / np.sqrt(np.maximum(sq, np.float32(1e-12)))
    scale[sq < 1e-12] = 0
    return normal * scale[..., None]


def to_tensors(sample: dict[str, Any], mean: Sequence[float], std: Sequence[float]) -> dict:
    """uint8 image -> normalized float32 [3,H,W]; every label by its task's ``label.to_tensor``
    (class ids int64 [H,W], float labels [C,H,W]); other keys as they are."""
    scale = np.float32(1.0 / 255.0)
    image = (
        sample["image"].astype(np.float32) * scale - np.asarray(mean, np.float32)
    ) / np.asarray(std, np.float32)
    out: dict[str, Any] = {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    }
    for key in label_keys(sample):
        out[key] = TASKS[key].label.to_tensor(sample[key])
    for key in sample:
        if key not in out:
            out[key] = sample[key]  # has, meta and anything a caller added
    return out


def scale_crop_flip(
    sample: dict[str, Any], scale: float, crop: Sequence[int], offset: tuple[int, int], flip: bool
) -> dict[str, Any]:
    """Resize by ``scale``, take the ``crop`` (h, w) window at ``offset`` (y0, x0) of the resized
    image (negative or overhanging = padding with each label's ``fill``), then flip.

    Labels follow their :class:`LabelKind` (module docstring): depth is divided by ``scale``, a
    flip negates normal x, edges are thinned back to one pixel after a zoom in.
    """
    h, w = sample["image"].shape[:2]
    ch, cw = int(crop[0]), int(crop[1])
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    sy, sx = sh / h, sw / w
    y0, x0 = offset
    # Inverse map (output pixel centre -> input pixel centre) of resize + crop (+ mirror).
    if flip:
        ax, cx = -1.0 / sx, (cw - 1 + x0 + 0.5) / sx - 0.5
    else:
        ax, cx = 1.0 / sx, (x0 + 0.5) / sx - 0.5
    matrix = np.array([[ax, 0.0, cx], [0.0, 1.0 / sy, (y0 + 0.5) / sy - 0.5]], np.float64)
    # Output pixels that fall outside the resized image are padding.
    rows = np.arange(ch) + y0
    cols = np.arange(cw)[::-1] + x0 if flip else np.arange(cw) + x0
    inside = ((rows >= 0) & (rows < sh))[:, None] & ((cols >= 0) & (cols < sw))[None, :]
    outside = None if inside.all() else ~inside
    out = dict(sample)
    out["image"] = _warp(sample["image"], matrix, (ch, cw), cv2.INTER_LINEAR, outside, 0)
    for key in label_keys(sample):
        label = TASKS[key].label
        array = sample[key]
        if label.integer:  # cv2 cannot warp int64; labels are < 256 (255 = ignore) or < 65536
            array = array.astype(np.uint8 if array.max(initial=0) <= 255 else np.uint16)
        warped = _warp(array, matrix, (ch, cw), cv2.INTER_NEAREST, outside, label.fill)
        out[key] = _relabel(label, warped, scale, flip, zoomed=max(sy, sx) > 1.0)
    return out


def _warp(
    array: np.ndarray, matrix: np.ndarray, crop: tuple[int, int], interp: int, outside, fill
) -> np.ndarray:
    """``array`` through the inverse affine ``matrix`` into ``crop``; ``outside`` pixels (a bool
    mask, or None) set to ``fill``."""
    warped = cv2.warpAffine(
        array, matrix, (crop[1], crop[0]), flags=interp | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip
    if warped.ndim < array.ndim:  # cv2 drops a trailing axis of size 1
        warped = warped[..., None]
    if outside is not None:
        warped[outside] = fill
    return warped


def _relabel(
    label: LabelKind, warped: np.ndarray, scale: float, flip: bool, zoomed: bool
) -> np.ndarray:
    """A warped label's values after a zoom by ``scale`` and a flip (see :class:`LabelKind`)."""
    if label.integer:
        warped = warped.astype(np.int64)
        if label.thin and zoomed:  # a zoom in by s thickens 1-pixel lines to about s pixels
            positive = warped == 1
            warped[positive & ~thin(positive)] = 0  # unknown (255) stays where it was
        return warped
    # A nonzero fill (0 is kept by every step below) marks the same pixels afterwards.
    unknown = warped == label.fill if label.fill != 0 else None
    power = label.scale_power
    if power > 0:
        warped = warped * np.float32(scale**power)
    elif power < 0:  # divide: depth / scale exactly as before the specs
        warped = warped / np.float32(scale ** (-power))
    if flip and label.flip_sign is not None:
        warped = warped * np.asarray(label.flip_sign, np.float32)
    if label.unit_vector:
        warped = renormalize(warped)
    if unknown is not None:
        warped[unknown] = label.fill
    return warped


def photometric_pipeline(steps: list[dict[str, Any]] | None, color_jitter: float = 0.2) -> Any:
    """The image-only albumentations ``Compose(strict=True)``: ``steps`` in albumentations'
    serialized form (``{"__class_fullname__": "ColorJitter", "brightness": 0.2, ...}``), or
    without them a ColorJitter of strength ``color_jitter`` (None when that is 0)."""
    import albumentations as A

    if steps is None:
        if color_jitter <= 0:
            return None
        j = float(color_jitter)
        jitter = A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(j / 4, 0.5), p=0.8)
        return A.Compose([jitter], strict=True)
    spec = {"__class_fullname__": "Compose", "transforms": list(steps), "strict": True}
    try:
        pipeline = A.from_dict({"transform": spec})
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"data.photometric: not an albumentations pipeline ({err!r})") from None
    for leaf in _leaves(pipeline):
        if not isinstance(leaf, A.ImageOnlyTransform):
            raise ValueError(
                f"data.photometric: {type(leaf).__name__} is not a pixel-level (image-only) "
                "transform; geometry is data.scale_range / data.crop / data.hflip, which keep "
                "depth and normals consistent"
            )
    return pipeline


def _leaves(transform: Any) -> list[Any]:
    """The transforms inside nested compositions (Compose, OneOf, SomeOf, Sequential)."""
    children = getattr(transform, "transforms", None)
    if children is None:
        return [transform]
    return [leaf for child in children for leaf in _leaves(child)]


class TrainTransform:
    """Random scale in ``scale_range``, crop to ``crop`` (padding if needed), flip, photometric."""

    def __init__(
        self,
        crop: Sequence[int],
        scale_range: Sequence[float] = (1.0, 1.5),
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        hflip: bool = True,
        color_jitter: float = 0.2,
        photometric: list[dict[str, Any]] | None = None,
    ) -> None:
        if len(crop) != 2 or min(crop) <= 0:
            raise ValueError(f"crop must be [height, width] > 0, got {crop}")
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be [lo, hi] with 0 < lo <= hi, got {scale_range}")
        self.crop = (int(crop[0]), int(crop[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.mean, self.std = list(mean), list(std)
        self.hflip = hflip
        self.photometric = photometric_pipeline(photometric, color_jitter)

    def __call__(
        self, sample: dict[str, Any], rng_seed: int | Sequence[int] | None = None
    ) -> dict[str, Any]:
        rng = _rng(rng_seed)
        h, w = sample["image"].shape[:2]
        scale = float(rng.uniform(*self.scale_range))
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        # Window origin in the resized image: inside it when it is larger than the crop, else
        # the image lands at a random place inside the padded crop.
        (ch, cw) = self.crop
        y0 = int(rng.integers(min(0, sh - ch), max(0, sh - ch) + 1))
        x0 = int(rng.integers(min(0, sw - cw), max(0, sw - cw) + 1))
        flip = bool(self.hflip and rng.random() < 0.5)
        out = scale_crop_flip(sample, scale, self.crop, (y0, x0), flip)
        if self.photometric is not None:
            self.photometric.set_random_seed(int(rng.integers(2**31)))
            out["image"] = self.photometric(image=out["image"])["image"]
        return to_tensors(out, self.mean, self.std)


class EvalTransform:
    """No augmentation: normalize the image, keep the targets at their original resolution."""

    def __init__(
        self,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        self.mean, self.std = list(mean), list(std)

    def __call__(
        self, sample: dict[str, Any], rng_seed: int | Sequence[int] | None = None
    ) -> dict[str, Any]:
        return to_tensors(sample, self.mean, self.std)


def build_transforms(cfg: Any) -> tuple[TrainTransform, EvalTransform]:
    """(train, eval) transforms from ``cfg.data`` (crop, scale_range, hflip, color_jitter or
    photometric, mean, std)."""
    d = cfg.data
    train = TrainTransform(
        d.crop, d.scale_range, d.mean, d.std, d.hflip, d.color_jitter, d.photometric
    )
    return train, EvalTransform(d.mean, d.std)
