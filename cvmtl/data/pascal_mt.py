"""PASCAL-Context multi-task (``data.format: pascal_mt``): the ``PASCAL_MT`` folder of
Multi-Task-Learning-PyTorch (Vandenhende et al.; ``data/pascal_context.py``), also used by InvPT.

Layout read (``root`` = the PASCAL_MT folder), per id:

- image ``JPEGImages/{id}.jpg``; splits ``ImageSets/Context/{train,val}.txt`` (4,998 / 5,105 ids;
  ``val`` is the test split, also reachable as ``test``)
- ``seg``: ``semseg/VOC12/{id}.png``, else ``semseg/pascal-context/{id}.png``: 21 classes
  (0 = background, the 20 VOC classes), 255 = ignore; grey or palette PNG
- ``edge``: ``thin(|Laplacian(LabelMap)| > 0)`` of ``pascal-context/trainval/{id}.mat``
  (``LabelMap``: the 459-class PASCAL-Context label of every pixel); 0 / 1
- ``parts``: ``human_parts/{id}.mat`` (PASCAL-Part ``anno``: objects of ``class_ind`` 15 =
  person, their ``parts`` named masks mapped to 6 parts, 0 = background); an image whose
  objects hold no person, or whose persons give no part pixel, has no parts label (``has``
  False), as Multi-Task-Learning-PyTorch ignores an all-background parts map. Every listed id
  has its ``.mat`` (Multi-Task-Learning-PyTorch asserts it): a missing one is a broken copy and
  a one-line DataError naming the file, not "no person"
- ``normal``: ``normals_distill/{id}.png`` as 2 v / 255 - 1, kept only where ``LabelMap`` is one
  of :data:`NORMALS_VALID_CONTEXT_IDS` (0 elsewhere: invalid)
- ``saliency``: ``sal_distill/{id}.png`` / 255 > 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cvmtl.data import io
from cvmtl.data.format_readers import check_seg, read_binary_png, read_label_png
from cvmtl.data.io import DataError
from cvmtl.scoring.thinning import thin

TASKS = ("seg", "parts", "saliency", "normal", "edge")
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip
PERSON = 15  # PASCAL-Part class_ind of a person
# PASCAL-Part part names -> the 6 human parts (1 head, 2 torso, 3 upper arms, 4 lower arms and
# hands, 5 upper legs, 6 lower legs and feet), Multi-Task-Learning-PyTorch's HUMAN_PART[6].
HUMAN_PARTS_6 = {
    **dict.fromkeys(("hair", "head", "lear", "lebrow", "leye", "mouth", "nose", "rear", "rebrow",
                     "reye"), 1),
    "neck": 2, "torso": 2, "luarm": 3, "ruarm": 3,
    **dict.fromkeys(("lhand", "llarm", "rhand", "rlarm"), 4),
    "luleg": 5, "ruleg": 5,
    **dict.fromkeys(("lfoot", "llleg", "rfoot", "rlleg"), 6),
}  # fmt: skip
# The PASCAL-Context (459-class LabelMap) ids whose class name is also an NYUv2 class name (less
# "unknown"), plus tvmonitor: Multi-Task-Learning-PyTorch's normals_valid_classes, derived from its
# data/db_info/{nyu,context}_classes.json. 170 ids; distilled normals are kept only on these.
NORMALS_VALID_CONTEXT_IDS = frozenset([
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49,
    50, 51, 53, 55, 56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101,
    104, 105, 107, 111, 113, 115, 122, 124, 135, 141, 142, 143, 146, 150, 154, 157, 158, 159,
    165, 172, 174, 181, 183, 184, 191, 193, 195, 197, 199, 202, 213, 215, 216, 219, 220, 223,
    225, 228, 230, 232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255, 260, 261, 263, 269,
    272, 273, 275, 281, 283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304, 307, 309,
    310, 314, 315, 319, 323, 329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355, 357, 368,
    370, 371, 374, 379, 380, 383, 384, 397, 401, 403, 405, 407, 408, 411, 412, 413, 414, 417,
    419, 421, 423, 427, 429, 430, 432, 440, 441, 442, 443, 444, 446, 454, 457,
])  # fmt: skip


def voc_palette(n: int = 21) -> list[list[int]]:
    """The PASCAL VOC colour map (bits of the class id spread over R, G, B from the top bit)."""
    palette = []
    for c in range(n):
        r = g = b = 0
        for bit in range(8):
            r |= (c >> (3 * bit) & 1) << (7 - bit)
            g |= (c >> (3 * bit + 1) & 1) << (7 - bit)
            b |= (c >> (3 * bit + 2) & 1) << (7 - bit)
        palette.append([r, g, b])
    return palette


def split_file(root: Path, split: str) -> Path:
    return root / "ImageSets" / "Context" / f"{'val' if split == 'test' else split}.txt"


def _loadmat(path: Path, sid: str, what: str) -> dict:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    if not path.is_file():  # what cvmtl.data.io.read_bytes says of any missing label file
        raise DataError(f"{what} missing: {path} (id {sid!r})")
    try:
        return loadmat(path)
    except (MatReadError, Exception) as err:  # scipy raises many kinds on a corrupt file
        raise DataError(
            f"{what} unreadable (not a MATLAB file): {path} (id {sid!r}): {err}"
        ) from None


def read_label_map(path: Path, sid: str) -> np.ndarray:
    """The ``LabelMap`` (HxW PASCAL-Context class ids) of a ``pascal-context/trainval`` .mat."""
    label_map = _loadmat(path, sid, "PASCAL-Context labels").get("LabelMap")
    if (
        not isinstance(label_map, np.ndarray)
        or label_map.ndim != 2
        or label_map.dtype.kind not in "iuf"
    ):
        raise DataError(f"no 2-D numeric 'LabelMap' in {path} (id {sid!r})")
    return label_map


def edges_from_label_map(label_map: np.ndarray) -> np.ndarray:
    """0 / 1 int64 edges: class boundaries (nonzero 3x3 Laplacian, reflected border), thinned."""
    laplacian = cv2.Laplacian(label_map.astype(np.float64), cv2.CV_64F)
    return thin(np.abs(laplacian) > 0).astype(np.int64)


def read_human_parts(path: Path, sid: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The 0..6 parts map of ``human_parts/{id}.mat``; None when no person part is annotated.

    Read by position like Multi-Task-Learning-PyTorch: ``anno[0][0][1][0]`` are the objects, each
    (class, class_ind, mask, parts), each part (part_name, mask); later parts overwrite earlier.
    """
    mat = _loadmat(path, sid, "human parts")
    target = np.zeros(shape, np.int64)
    try:
        objects = mat["anno"][0][0][1][0]
        for obj in objects:
            if int(np.asarray(obj[1]).ravel()[0]) != PERSON or len(obj[3]) == 0:
                continue
            for part in obj[3][0]:
                name = str(np.asarray(part[0]).ravel()[0])
                mask = np.asarray(part[1]).astype(bool)
                if mask.shape != shape:
                    raise DataError(
                        f"part mask {name!r} is {mask.shape[0]}x{mask.shape[1]}, the image "
                        f"{shape[0]}x{shape[1]}: {path} (id {sid!r})"
                    )
                if name not in HUMAN_PARTS_6:
                    raise DataError(f"unknown human part {name!r}: {path} (id {sid!r})")
                target[mask] = HUMAN_PARTS_6[name]
    except DataError:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise DataError(f"not a PASCAL-Part 'anno' struct ({err}): {path} (id {sid!r})") from None
    return target if target.any() else None


def read_pascal_mt(root: Path, sid: str, tasks: Sequence[str], num_classes: int) -> dict:
    """Raw arrays of one PASCAL_MT id (see the module docstring for the files)."""
    image_path = root / "JPEGImages" / f"{sid}.jpg"
    image = io.read_image(image_path, sid)
    sample: dict[str, Any] = {"image": image, "_path": image_path}
    mat = root / "pascal-context" / "trainval" / f"{sid}.mat"
    label_map = None
    if {"edge", "normal"} & set(tasks) and mat.is_file():
        label_map = read_label_map(mat, sid)
    for task in tasks:
        path = mat
        if task == "seg":
            path = root / "semseg" / "VOC12" / f"{sid}.png"
            if not path.is_file():
                path = root / "semseg" / "pascal-context" / f"{sid}.png"
            if not path.is_file():
                continue
            sample[task] = check_seg(read_label_png(path, sid), num_classes, path, sid)
        elif task == "edge" and label_map is not None:
            sample[task] = edges_from_label_map(label_map)
        elif task == "parts":
            path = root / "human_parts" / f"{sid}.mat"
            parts = read_human_parts(path, sid, image.shape[:2])
            if parts is None:
                continue
            sample[task] = parts
        elif task == "normal" and label_map is not None:
            path = root / "normals_distill" / f"{sid}.png"
            if not path.is_file():
                continue
            normal = io.read_normal_png(path, sid)
            if label_map.shape != normal.shape[:2]:
                raise DataError(f"LabelMap is {label_map.shape}, normals {normal.shape}: {mat}")
            keep = np.isin(label_map, list(NORMALS_VALID_CONTEXT_IDS))
            sample[task] = np.where(keep[..., None], normal, np.float32(0))
        elif task == "saliency" and (path := root / "sal_distill" / f"{sid}.png").is_file():
            sample[task] = read_binary_png(path, sid)
        else:
            continue
        sample[f"_{task}_path"] = path
    return sample
