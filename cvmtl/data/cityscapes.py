"""Cityscapes in two layouts.

``cityscapes_npy``: the preprocessed 128x256 copy of mtan / LibMTL / Nash-MTL / FAMO
("cityscapes2"):
``root/{train,val}/image/{i}.npy`` (HxWx3 float in [0, 1]), ``label_7/{i}.npy`` or
``label_19/{i}.npy`` (older mtan copies; picked by ``data.num_classes``) else ``label/{i}.npy``
(LibMTL: 7 classes) as HxW float with -1 = ignore, ``depth/{i}.npy`` (HxWx1, 0 = invalid). Their
"depth" is inverse depth, so it is read as the ``disparity`` task (values as stored); there is
no metric ``depth``. ``val`` is the standard test split (also reachable as ``test``).

``cityscapes``: the official folders (cityscapesScripts), id = ``{city}_{seq}_{frame}``:
``leftImg8bit/{split}/{city}/{id}_leftImg8bit.png``; ``seg`` from
``gtFine/{split}/{city}/{id}_gtFine_labelIds.png`` mapped to the 19 trainIds (or to their 7
categories with ``data.num_classes: 7``), else ``..._gtFine_labelTrainIds.png``; ``disparity`` in
pixels from ``disparity/{split}/{city}/{id}_disparity.png`` (uint16 v, d = (v - 1) / 256, v = 0
invalid); ``depth`` in metres = baseline * fx / d with ``camera/{split}/{city}/{id}_camera.json``
(``extrinsic.baseline``, ``intrinsic.fx``). The official test labels are withheld, so ``test``
reads ``val`` (as every multi-task paper evaluates).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvmtl.data import io
from cvmtl.data.format_readers import (
    IGNORE_INDEX,
    check_seg,
    clean_positive,
    integer_labels,
    load_npy,
    load_plane,
    npy_image,
)
from cvmtl.data.io import DataError

NPY_TASKS = ("seg", "disparity")
TASKS = ("seg", "disparity", "depth")
# cityscapesScripts labels.py: the 19 evaluated classes (trainId order) and their colours.
CLASSES_19 = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
]  # fmt: skip
PALETTE_19 = [
    [128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
    [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
    [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
    [0, 80, 100], [0, 0, 230], [119, 11, 32],
]  # fmt: skip
# labels.py id -> trainId of the 19 classes (every other id, void included, is ignored).
LABEL_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
# The 7 categories of labels.py (catId 1..7 -> 0..6; void ignored) per trainId: mtan's 7 classes.
CLASSES_7 = ["flat", "construction", "object", "nature", "sky", "human", "vehicle"]
TRAIN_TO_CATEGORY = [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6]
PALETTE_7 = [PALETTE_19[i] for i in (0, 2, 7, 8, 10, 11, 13)]  # a member class's colour


def classes_and_palette(num_classes: int) -> tuple[list[str], list[list[int]]]:
    if num_classes == 19:
        return list(CLASSES_19), [list(c) for c in PALETTE_19]
    if num_classes == 7:
        return list(CLASSES_7), [list(c) for c in PALETTE_7]
    raise ValueError(f"Cityscapes has 19 classes or 7 categories, got {num_classes}")


def _lookup(table: dict[int, int], size: int = 256) -> np.ndarray:
    lut = np.full(size, IGNORE_INDEX, np.int64)
    for key, value in table.items():
        lut[key] = value
    return lut


ID_TO_TRAIN = _lookup(LABEL_TO_TRAIN)
TRAIN_TO_7 = _lookup(dict(enumerate(TRAIN_TO_CATEGORY)))


def split_folder(split: str) -> str:
    return "val" if split == "test" else split


def list_official_ids(root: Path, split: str) -> list[str]:
    """Ids ``{city}_{seq}_{frame}`` of ``leftImg8bit/{split}`` (sorted)."""
    folder = root / "leftImg8bit" / split_folder(split)
    if not folder.is_dir():
        found = sorted(p.name for p in (root / "leftImg8bit").glob("*") if p.is_dir())
        raise DataError(f"split {split!r} not found: {folder} is missing (found: {found})")
    suffix = "_leftImg8bit.png"
    ids = sorted(p.name[: -len(suffix)] for p in folder.glob(f"*/*{suffix}"))
    if not ids:
        raise DataError(f"split {split!r} is empty: no */*{suffix} in {folder}")
    return ids


def read_cityscapes_npy(root: Path, sid: str, tasks: Sequence[str], num_classes: int) -> dict:
    """One id of the mtan / LibMTL copy; ``root`` is the split folder."""
    image_path = root / "image" / f"{sid}.npy"
    sample: dict[str, Any] = {"image": npy_image(image_path, sid), "_path": image_path}
    for task in tasks:
        if task == "seg":
            folder = root / f"label_{num_classes}"
            path = (folder if folder.is_dir() else root / "label") / f"{sid}.npy"
            if not path.is_file():
                continue
            label = integer_labels(load_npy(path, sid, "label", "fiu", (2,)), path, sid, "label")
            sample[task] = check_seg(
                np.where(label == -1, IGNORE_INDEX, label), num_classes, path, sid
            )
        elif task == "disparity" and (path := root / "depth" / f"{sid}.npy").is_file():
            sample[task] = clean_positive(load_plane(path, sid, "depth (disparity)"))
        else:
            continue
        sample[f"_{task}_path"] = path
    return sample


def _read_disparity(path: Path, sid: str) -> np.ndarray:
    raw = io.decode(path, sid, "disparity")
    if raw.ndim != 2 or raw.dtype != np.uint16:
        raise DataError(
            f"disparity must be a 16-bit grey PNG, got {raw.dtype} shape {raw.shape}: "
            f"{path} (id {sid!r})"
        )
    return clean_positive((raw.astype(np.float32) - 1) / 256)  # v = 0 -> negative -> invalid


def _read_camera(path: Path, sid: str) -> float:
    """baseline (m) * fx (px) of a camera JSON."""
    try:
        camera = json.loads(path.read_text())
        value = float(camera["extrinsic"]["baseline"]) * float(camera["intrinsic"]["fx"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"camera file without extrinsic.baseline / intrinsic.fx ({err}): {path} (id {sid!r})"
        ) from None
    if not np.isfinite(value) or value <= 0:
        raise DataError(f"camera baseline * fx = {value}: {path} (id {sid!r})")
    return value


def _read_seg(gt: Path, sid: str, num_classes: int) -> tuple[np.ndarray, Path] | None:
    path = gt / f"{sid}_gtFine_labelIds.png"
    if path.is_file():
        train = ID_TO_TRAIN[np.clip(io.read_seg_png(path, sid), 0, 255)]
    elif (path := gt / f"{sid}_gtFine_labelTrainIds.png").is_file():
        train = check_seg(io.read_seg_png(path, sid), 19, path, sid)
    else:
        return None
    if num_classes == 7:
        return TRAIN_TO_7[train], path
    if num_classes != 19:
        raise ValueError(f"Cityscapes has 19 classes or 7 categories, got {num_classes}")
    return train, path


def read_cityscapes(
    root: Path, split: str, sid: str, tasks: Sequence[str], num_classes: int
) -> dict:
    """One id of the official folders (see the module docstring)."""
    city, folder = sid.rsplit("_", 2)[0], split_folder(split)

    def where(kind: str) -> Path:
        return root / kind / folder / city

    image_path = where("leftImg8bit") / f"{sid}_leftImg8bit.png"
    sample: dict[str, Any] = {"image": io.read_image(image_path, sid), "_path": image_path}
    disparity_path = where("disparity") / f"{sid}_disparity.png"
    for task in tasks:
        path = disparity_path
        if task == "seg" and (found := _read_seg(where("gtFine"), sid, num_classes)):
            sample[task], path = found
        elif task == "disparity" and path.is_file():
            sample[task] = _read_disparity(path, sid)
        elif task == "depth" and path.is_file():
            camera = where("camera") / f"{sid}_camera.json"
            if not camera.is_file():
                continue
            disparity = _read_disparity(path, sid)
            scale = _read_camera(camera, sid)
            with np.errstate(divide="ignore"):
                sample[task] = np.where(disparity > 0, scale / disparity, 0).astype(np.float32)
        else:
            continue
        sample[f"_{task}_path"] = path
    return sample
