"""Readers of the supported on-disk formats -> raw numpy samples (see data/README.md).

A raw sample: ``image`` uint8 HxWx3 RGB, ``seg`` int64 HxW (255 = ignore), ``depth`` float32 HxW
metres (0 = invalid), ``normal`` float32 HxWx3 (all-zero = invalid), ``has`` {task: bool} and
``meta`` {id, size [H, W], path}. A missing label file gives ``has[task] = False`` and a filled
target; anything malformed raises :class:`DataError` naming the file and the id.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cvmtl.data import io
from cvmtl.data.io import DataError
from cvmtl.data.nyuv2 import IGNORE_INDEX, NYU_INTRINSICS, classes_and_palette

log = logging.getLogger(__name__)

FORMATS = ("cvmtl", "nyuv2_npy", "nyud_mt")
TASKS = ("seg", "depth", "normal")
DEFAULT_CLASSES = {"cvmtl": 13, "nyuv2_npy": 13, "nyud_mt": 40}

__all__ = ["DataError", "FORMATS", "list_ids", "load_dataset_info", "load_sample", "split_source"]


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"unknown data format {format!r} (available: {', '.join(FORMATS)})")


def load_dataset_info(root: Path | str, format: str) -> dict[str, Any]:
    """name, classes, palette, ignore_index, depth_scale, intrinsics of a dataset.

    ``cvmtl`` reads ``root/dataset.yaml`` (NYU-13 defaults where it is absent); ``nyuv2_npy`` is
    NYU-13 and ``nyud_mt`` NYU-40, both at the NYU intrinsics (of the 480x640 frames).
    """
    _check_format(format)
    classes, palette = classes_and_palette(DEFAULT_CLASSES[format])
    info: dict[str, Any] = {
        "name": Path(root).name,
        "classes": classes,
        "palette": palette,
        "ignore_index": IGNORE_INDEX,
        "depth_scale": io.DEPTH_SCALE,
        "intrinsics": None if format == "nyuv2_npy" else dict(NYU_INTRINSICS),  # npy is 288x384
    }
    path = Path(root) / "dataset.yaml"
    if format != "cvmtl":
        return info
    if not path.is_file():
        log.warning("%s not found: assuming the NYUv2 13 classes", path)
        return info
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML ({err})".replace("\n", " ")) from None
    if not isinstance(values, dict):
        raise DataError(f"{path}: expected a mapping")
    info.update(values)
    if "classes" in values and "palette" not in values:
        info["palette"] = [palette[i % len(palette)] for i in range(len(values["classes"]))]
    if len(info["palette"]) != len(info["classes"]):
        raise DataError(
            f"{path}: {len(info['palette'])} palette colours, {len(info['classes'])} classes"
        )
    return info


def split_source(root: Path | str, format: str, split: str) -> Path:
    """The file (cvmtl, nyud_mt) or folder (nyuv2_npy) that defines ``split``."""
    _check_format(format)
    root = Path(root)
    if format == "cvmtl":
        return root / "splits" / f"{split}.txt"
    if format == "nyuv2_npy":
        return root / ("val" if split == "test" else split)
    path = root / "gt_sets" / f"{split}.txt"
    if split == "test" and not path.is_file():
        return root / "gt_sets" / "val.txt"  # nyud_mt's val is the standard test split
    return path


def list_ids(root: Path | str, format: str, split: str) -> list[str]:
    """The ids of ``split``; a missing split is a DataError listing the splits that exist."""
    source = split_source(root, format, split)
    if format == "nyuv2_npy":
        folder = source / "image"
        if not folder.is_dir():
            raise DataError(f"split {split!r} not found: {folder} is missing (splits: train, val)")
        stems = [p.stem for p in folder.glob("*.npy")]
        return sorted(stems, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    if not source.is_file():
        found = sorted(p.stem for p in source.parent.glob("*.txt"))
        raise DataError(f"split {split!r} not found: {source} is missing (found: {found})")
    ids = io.read_split(source)
    if not ids:
        raise DataError(f"split {split!r} is empty: {source}")
    return ids


def _check_seg(seg: np.ndarray, num_classes: int, path: Path, sid: str) -> np.ndarray:
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


def _clean_depth(depth: np.ndarray) -> np.ndarray:
    # NaN / inf / negative depth means "no measurement": 0 is the invalid value everywhere.
    depth = depth.astype(np.float32, copy=False)
    return np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(0))


def _clean_normal(normal: np.ndarray) -> np.ndarray:
    normal = normal.astype(np.float32, copy=False)
    finite = np.isfinite(normal).all(axis=2, keepdims=True)
    return np.where(finite, normal, np.float32(0))


def _load_npy(path: Path, sid: str, what: str, kinds: str, shapes: Sequence[int]) -> np.ndarray:
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


def _read_cvmtl(root: Path, sid: str, tasks: Sequence[str], num_classes: int, info: dict) -> dict:
    image_path = root / "images" / f"{sid}.png"
    if not image_path.is_file() and (root / "images" / f"{sid}.jpg").is_file():
        image_path = root / "images" / f"{sid}.jpg"
    sample: dict[str, Any] = {"image": io.read_image(image_path, sid), "_path": image_path}
    files = {
        "seg": root / "segmentation" / f"{sid}.png",
        "depth": root / "depth" / f"{sid}.png",
        "normal": root / "normals" / f"{sid}.png",
    }
    for task in tasks:
        path = files[task]
        if not path.is_file():
            continue
        if task == "seg":
            sample[task] = _check_seg(io.read_seg_png(path, sid), num_classes, path, sid)
        elif task == "depth":
            sample[task] = io.read_depth_png(path, sid, float(info.get("depth_scale", 1000.0)))
        else:
            sample[task] = io.read_normal_png(path, sid)
        sample[f"_{task}_path"] = path
    return sample


def _read_nyuv2_npy(root: Path, sid: str, tasks: Sequence[str], num_classes: int) -> dict:
    def path(kind: str) -> Path:
        return root / kind / f"{sid}.npy"

    image = _load_npy(path("image"), sid, "image", "f", (3,))
    if image.shape[2] != 3:
        raise DataError(
            f"image has shape {image.shape}, expected HxWx3: {path('image')} (id {sid!r})"
        )
    if np.nanmin(image) < -1e-3 or np.nanmax(image) > 1 + 1e-3:
        raise DataError(f"image values outside [0, 1]: {path('image')} (id {sid!r})")
    image = np.round(np.clip(np.nan_to_num(image), 0, 1) * 255).astype(np.uint8)
    sample: dict[str, Any] = {"image": image, "_path": path("image")}
    folders = {"seg": "label", "depth": "depth", "normal": "normal"}
    for task in tasks:
        p = path(folders[task])
        if not p.is_file():
            continue
        if task == "seg":
            label = _load_npy(p, sid, "label", "fiu", (2,))
            if not np.array_equal(label, np.round(label)):
                raise DataError(f"label has non-integer values: {p} (id {sid!r})")
            seg = np.where(label == -1, IGNORE_INDEX, label).astype(np.int64)
            sample[task] = _check_seg(seg, num_classes, p, sid)
        elif task == "depth":
            depth = _load_npy(p, sid, "depth", "f", (2, 3))
            if depth.ndim == 3 and depth.shape[2] != 1:
                raise DataError(
                    f"depth has shape {depth.shape}, expected HxW[x1]: {p} (id {sid!r})"
                )
            sample[task] = _clean_depth(depth.reshape(depth.shape[:2]))
        else:
            normal = _load_npy(p, sid, "normal", "f", (3,))
            if normal.shape[2] != 3:
                raise DataError(
                    f"normal has shape {normal.shape}, expected HxWx3: {p} (id {sid!r})"
                )
            sample[task] = _clean_normal(normal)
        sample[f"_{task}_path"] = p
    return sample


def _read_nyud_mt(root: Path, sid: str, tasks: Sequence[str], num_classes: int) -> dict:
    image_path = root / "images" / f"{sid}.jpg"
    if not image_path.is_file() and (root / "images" / f"{sid}.png").is_file():
        image_path = root / "images" / f"{sid}.png"
    sample: dict[str, Any] = {"image": io.read_image(image_path, sid), "_path": image_path}
    for task in tasks:
        if task == "seg":
            p = root / "segmentation" / f"{sid}.png"
            if p.is_file():
                raw = io.read_seg_png(p, sid)  # 0 = void, 1..40 -> 0..39
                sample[task] = _check_seg(
                    np.where(raw == 0, IGNORE_INDEX + 1, raw) - 1, num_classes, p, sid
                )
        elif task == "depth":
            p = root / "depth" / f"{sid}.npy"
            if p.is_file():
                depth = _load_npy(p, sid, "depth", "f", (2, 3))
                if depth.ndim == 3 and depth.shape[2] != 1:
                    raise DataError(f"depth has shape {depth.shape}: {p} (id {sid!r})")
                sample[task] = _clean_depth(depth.reshape(depth.shape[:2]))
        else:
            p = root / "normals" / f"{sid}.npy"
            if p.is_file():
                normal = _load_npy(p, sid, "normals", "f", (3,))
                if normal.shape[2] != 3:
                    raise DataError(f"normals have shape {normal.shape}: {p} (id {sid!r})")
                sample[task] = _clean_normal(normal)
            elif (p := p.with_suffix(".png")).is_file():
                sample[task] = io.read_normal_png(p, sid)  # 8-bit: n = 2 v / 255 - 1
        if task in sample:
            sample[f"_{task}_path"] = p
    return sample


def load_sample(
    root: Path | str,
    format: str,
    split: str,
    sample_id: str,
    tasks: Sequence[str] = TASKS,
    num_classes: int | None = None,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read one raw sample of ``tasks``; missing labels are filled and flagged in ``has``."""
    _check_format(format)
    root = Path(root)
    num_classes = num_classes or DEFAULT_CLASSES[format]
    if format == "cvmtl":
        raw = _read_cvmtl(root, sample_id, tasks, num_classes, info or {})
    elif format == "nyuv2_npy":
        raw = _read_nyuv2_npy(split_source(root, format, split), sample_id, tasks, num_classes)
    else:
        raw = _read_nyud_mt(root, sample_id, tasks, num_classes)
    image = raw["image"]
    h, w = image.shape[:2]
    sample: dict[str, Any] = {"image": image}
    fills = {
        "seg": lambda: np.full((h, w), IGNORE_INDEX, np.int64),
        "depth": lambda: np.zeros((h, w), np.float32),
        "normal": lambda: np.zeros((h, w, 3), np.float32),
    }  # format: skip
    has = {}
    for task in tasks:
        if task not in fills:
            raise ValueError(f"unknown task {task!r} (available: {', '.join(TASKS)})")
        has[task] = task in raw
        if has[task] and raw[task].shape[:2] != (h, w):
            raise DataError(
                f"{task} is {raw[task].shape[0]}x{raw[task].shape[1]}, the image {h}x{w}: "
                f"{raw[f'_{task}_path']} (id {sample_id!r})"
            )
        sample[task] = raw[task] if has[task] else fills[task]()
    sample["has"] = has
    sample["meta"] = {"id": str(sample_id), "size": [int(h), int(w)], "path": str(raw["_path"])}
    return sample
