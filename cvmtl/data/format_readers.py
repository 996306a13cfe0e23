"""Shared checks of the format readers and the readers of the NYU layouts (``cvmtl``,
``nyuv2_npy``, ``nyud_mt``); PASCAL_MT and Cityscapes live in ``pascal_mt.py`` / ``cityscapes.py``.

A reader returns the raw arrays it found: ``image`` (uint8 HxWx3 RGB), one array per task it has
a label for, ``_path`` (the image file) and ``_{task}_path``; :func:`cvmtl.data.formats.load_sample`
fills what is missing. ``cvmtl`` format files per task:

- ``seg``: ``segmentation/{id}.png`` (8/16-bit class index, 255 = ignore)
- ``depth``: ``depth/{id}.png`` (16-bit, ``depth_scale`` units per metre, 0 = invalid)
- ``normal``: ``normals/{id}.png`` (16-bit or 8-bit RGB, n = 2 v / max - 1, all-zero = invalid)
- any task with a binary label (``edge``, ``saliency``): ``{task}/{id}.png``, 8-bit grey, > 127 = 1
  (0 / 255 as ``io.write_mask_png`` writes them), or ``{task}/{id}.npy`` as below
- any other registered task (a user's own): ``{task}/{id}.npy``, HxW for class / binary labels
  (integers, 255 = ignore) and one-channel labels, HxWxC for C-channel labels; NaN = invalid.
"""

from __future__ import annotations

import io as bytes_io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvmtl.data import io
from cvmtl.data.io import DataError
from cvmtl.tasks.registry import get_task

IGNORE_INDEX = 255
BINARY_KINDS = ("binary", "thin_binary")  # LabelKind names of 0 / 1 maps (255 = unknown)


def check_seg(seg: np.ndarray, num_classes: int, path: Path, sid: str) -> np.ndarray:
    """int64 class ids; values outside 0..num_classes-1 other than 255 are a DataError."""
    if seg.min(initial=0) >= 0 and seg.max(initial=0) < num_classes:  # the common case, cheap
        return seg.astype(np.int64, copy=False)
    bad = (seg != IGNORE_INDEX) & ((seg < 0) | (seg >= num_classes))
    if bad.any():
        values = np.unique(seg[bad])[:5].tolist()
        raise DataError(
            f"segmentation labels {values} outside 0..{num_classes - 1} (255 = ignore): "
            f"{path} (id {sid!r})"
        )
    return seg.astype(np.int64, copy=False)


def clean_positive(values: np.ndarray) -> np.ndarray:
    """float32 with NaN / inf / non-positive set to 0, the invalid value of depth and disparity."""
    values = values.astype(np.float32, copy=False)
    return np.where(np.isfinite(values) & (values > 0), values, np.float32(0))


def clean_normal(normal: np.ndarray) -> np.ndarray:
    normal = normal.astype(np.float32, copy=False)
    finite = np.isfinite(normal).all(axis=2, keepdims=True)
    return np.where(finite, normal, np.float32(0))


def load_npy(path: Path, sid: str, what: str, kinds: str, shapes: Sequence[int]) -> np.ndarray:
    """np.load with checks: dtype kind in ``kinds``, ndim in ``shapes``."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{what} missing: {path} (id {sid!r})") from None
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{what} unreadable: {path} (id {sid!r}): {err}") from None
    if (
        not isinstance(array, np.ndarray)
        or array.dtype.kind not in kinds
        or array.ndim not in shapes
    ):
        raise DataError(
            f"{what} has dtype {getattr(array, 'dtype', '?')} shape {getattr(array, 'shape', '?')}"
            f" (expected {'float' if kinds == 'f' else 'numeric'} with {shapes} dims): "
            f"{path} (id {sid!r})"
        )
    return array


def load_plane(path: Path, sid: str, what: str) -> np.ndarray:
    """A float HxW or HxWx1 .npy as HxW (depth, disparity)."""
    array = load_npy(path, sid, what, "f", (2, 3))
    if array.ndim == 3 and array.shape[2] != 1:
        raise DataError(f"{what} has shape {array.shape}, expected HxW[x1]: {path} (id {sid!r})")
    return array.reshape(array.shape[:2])


def integer_labels(array: np.ndarray, path: Path, sid: str, what: str) -> np.ndarray:
    """Integer-valued HxW labels as int64 (float files must hold whole numbers)."""
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise DataError(f"{what} has non-integer values: {path} (id {sid!r})")
    return array.astype(np.int64)


def npy_image(path: Path, sid: str) -> np.ndarray:
    """An HxWx3 float image in [0, 1] (mtan / LibMTL copies) as uint8."""
    image = load_npy(path, sid, "image", "f", (3,))
    if image.shape[2] != 3:
        raise DataError(f"image has shape {image.shape}, expected HxWx3: {path} (id {sid!r})")
    if np.nanmin(image) < -1e-3 or np.nanmax(image) > 1 + 1e-3:
        raise DataError(f"image values outside [0, 1]: {path} (id {sid!r})")
    return np.round(np.clip(np.nan_to_num(image), 0, 1) * 255).astype(np.uint8)


def binary_labels(array: np.ndarray, path: Path, sid: str, what: str) -> np.ndarray:
    """A 0 / 1 map (255 = unknown) from an HxW[x1] numeric array; other values are an error."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    labels = integer_labels(array, path, sid, what)
    bad = (labels != 0) & (labels != 1) & (labels != IGNORE_INDEX)
    if labels.ndim != 2 or bad.any():
        raise DataError(f"{what} must be an HxW map of 0 / 1 (255 = unknown): {path} (id {sid!r})")
    return labels


def read_label_png(path: Path, sid: str) -> np.ndarray:
    """Class ids int64 HxW from a grey or a palette PNG (PASCAL VOC stores palette PNGs, which
    cv2 would expand to colours: their indices are read with Pillow)."""
    data = io.read_bytes(path, sid, "label")
    if not (data.startswith(b"\x89PNG") and len(data) > 25 and data[25] == 3):  # IHDR colour type
        return io.read_seg_png(path, sid)
    io.check_complete(data, path, sid)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(bytes_io.BytesIO(data)) as image:
            return np.asarray(image, dtype=np.int64)
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"label unreadable: {path} (id {sid!r}): {err}") from None


def read_binary_png(path: Path, sid: str) -> np.ndarray:
    """A 0 / 1 int64 map from an 8-bit grey PNG (> 127 = 1; a colour PNG's first channel)."""
    array = io.decode(path, sid, "mask")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        array = array[..., 0]
    if array.ndim != 2 or array.dtype != np.uint8:
        raise DataError(
            f"mask must be an 8-bit grey PNG, got {array.dtype} shape {array.shape}: "
            f"{path} (id {sid!r})"
        )
    return (array > 127).astype(np.int64)


def read_task_npy(path: Path, sid: str, task: str) -> np.ndarray:
    """``{task}/{id}.npy`` of any registered task, shaped as its label (see the module doc)."""
    label = get_task(task).label
    if label.integer:
        array = load_npy(path, sid, task, "biuf", (2,))
        return integer_labels(np.nan_to_num(array, nan=label.fill), path, sid, task)
    if label.channels == 1:
        array = load_plane(path, sid, task)
    else:
        array = load_npy(path, sid, task, "f", (3,))
        if array.shape[2] != label.channels:
            raise DataError(
                f"{task} has shape {array.shape}, expected HxWx{label.channels}: "
                f"{path} (id {sid!r})"
            )
    return np.nan_to_num(array.astype(np.float32), nan=label.fill, posinf=label.fill)


def read_cvmtl(root: Path, sid: str, tasks: Sequence[str], num_classes: int, info: dict) -> dict:
    image_path = root / "images" / f"{sid}.png"
    if not image_path.is_file() and (root / "images" / f"{sid}.jpg").is_file():
        image_path = root / "images" / f"{sid}.jpg"
    sample: dict[str, Any] = {"image": io.read_image(image_path, sid), "_path": image_path}
    native = {"seg": "segmentation", "depth": "depth", "normal": "normals"}
    for task in tasks:
        png = root / native.get(task, task) / f"{sid}.png"
        if task == "seg" and png.is_file():
            sample[task] = check_seg(io.read_seg_png(png, sid), num_classes, png, sid)
        elif task == "depth" and png.is_file():
            sample[task] = io.read_depth_png(png, sid, float(info.get("depth_scale", 1000.0)))
        elif task == "normal" and png.is_file():
            sample[task] = io.read_normal_png(png, sid)
        elif task in native:
            continue
        elif get_task(task).label.name in BINARY_KINDS and png.is_file():
            sample[task] = read_binary_png(png, sid)
        elif (npy := png.with_suffix(".npy")).is_file():
            sample[task], png = read_task_npy(npy, sid, task), npy
        else:
            continue
        sample[f"_{task}_path"] = png
    return sample


def read_nyuv2_npy(root: Path, sid: str, tasks: Sequence[str], num_classes: int) -> dict:
    """``{split}/{image,label,depth,normal}/{id}.npy`` (label -1 = ignore)."""

    def path(kind: str) -> Path:
        return root / kind / f"{sid}.npy"

    sample: dict[str, Any] = {"image": npy_image(path("image"), sid), "_path": path("image")}
    folders = {"seg": "label", "depth": "depth", "normal": "normal"}
    for task in tasks:
        p = path(folders[task])
        if not p.is_file():
            continue
        if task == "seg":
            label = integer_labels(load_npy(p, sid, "label", "fiu", (2,)), p, sid, "label")
            sample[task] = check_seg(
                np.where(label == -1, IGNORE_INDEX, label), num_classes, p, sid
            )
        elif task == "depth":
            sample[task] = clean_positive(load_plane(p, sid, "depth"))
        else:
            normal = load_npy(p, sid, "normal", "f", (3,))
            if normal.shape[2] != 3:
                raise DataError(
                    f"normal has shape {normal.shape}, expected HxWx3: {p} (id {sid!r})"
                )
            sample[task] = clean_normal(normal)
        sample[f"_{task}_path"] = p
    return sample


def read_nyud_mt(root: Path, sid: str, tasks: Sequence[str], num_classes: int) -> dict:
    """Multi-Task-Learning-PyTorch's NYUD_MT: images/{id}.jpg, segmentation/{id}.png (0 = void),
    depth/{id}.npy, normals/{id}.npy (or 8-bit .png), edge/{id}.npy (float 0 / 1)."""
    image_path = root / "images" / f"{sid}.jpg"
    if not image_path.is_file() and (root / "images" / f"{sid}.png").is_file():
        image_path = root / "images" / f"{sid}.png"
    sample: dict[str, Any] = {"image": io.read_image(image_path, sid), "_path": image_path}
    for task in tasks:
        if task == "seg" and (p := root / "segmentation" / f"{sid}.png").is_file():
            raw = io.read_seg_png(p, sid)  # 0 = void, 1..40 -> 0..39
            sample[task] = check_seg(
                np.where(raw == 0, IGNORE_INDEX + 1, raw) - 1, num_classes, p, sid
            )
        elif task == "depth" and (p := root / "depth" / f"{sid}.npy").is_file():
            sample[task] = clean_positive(load_plane(p, sid, "depth"))
        elif task == "normal" and (p := root / "normals" / f"{sid}.npy").is_file():
            normal = load_npy(p, sid, "normals", "f", (3,))
            if normal.shape[2] != 3:
                raise DataError(f"normals have shape {normal.shape}: {p} (id {sid!r})")
            sample[task] = clean_normal(normal)
        elif task == "normal" and (p := root / "normals" / f"{sid}.png").is_file():
            sample[task] = io.read_normal_png(p, sid)  # 8-bit: n = 2 v / 255 - 1
        elif task == "edge" and (p := root / "edge" / f"{sid}.npy").is_file():
            sample[task] = binary_labels(load_npy(p, sid, "edge", "biuf", (2, 3)), p, sid, "edge")
        else:
            continue
        sample[f"_{task}_path"] = p
    return sample
