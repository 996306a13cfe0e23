"""Readers of the supported on-disk formats -> raw numpy samples (see data/README.md).

A raw sample: ``image`` uint8 HxWx3 RGB, one label per asked task shaped as its
:class:`~cvmtl.tasks.spec.LabelKind` says (``seg`` int64 HxW, 255 = ignore; ``depth`` float32
HxW metres, 0 = invalid; ``normal`` float32 HxWx3, all-zero = invalid; ``edge`` / ``saliency``
int64 0 / 1; ...), ``has`` {task: bool} and ``meta`` {id, size [H, W], path}. A missing label
file gives ``has[task] = False`` and the task's empty label (``get_task(t).label.empty``);
anything malformed raises :class:`DataError` naming the file and the id.

Formats and the tasks they have labels for (the files: ``format_readers.py``, ``pascal_mt.py``,
``cityscapes.py``): ``cvmtl`` any registered task; ``nyuv2_npy`` seg, depth, normal; ``nyud_mt``
seg, depth, normal, edge; ``pascal_mt`` seg, parts, saliency, normal, edge; ``cityscapes_npy``
seg, disparity; ``cityscapes`` seg, disparity, depth.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from cvmtl.data import cityscapes, io, pascal_mt
from cvmtl.data.format_readers import read_cvmtl, read_nyud_mt, read_nyuv2_npy
from cvmtl.data.io import DataError
from cvmtl.data.nyuv2 import IGNORE_INDEX, NYU_INTRINSICS, classes_and_palette
from cvmtl.tasks.registry import DEFAULT_TASKS, get_task

log = logging.getLogger(__name__)

FORMATS = ("cvmtl", "nyuv2_npy", "nyud_mt", "pascal_mt", "cityscapes_npy", "cityscapes")
TASKS = DEFAULT_TASKS
# The tasks each format has labels for (None: any registered task).
FORMAT_TASKS: dict[str, tuple[str, ...] | None] = {
    "cvmtl": None,
    "nyuv2_npy": ("seg", "depth", "normal"),
    "nyud_mt": ("seg", "depth", "normal", "edge"),
    "pascal_mt": pascal_mt.TASKS,
    "cityscapes_npy": cityscapes.NPY_TASKS,
    "cityscapes": cityscapes.TASKS,
}
DEFAULT_CLASSES = {
    "cvmtl": 13, "nyuv2_npy": 13, "nyud_mt": 40, "pascal_mt": 21, "cityscapes_npy": 7,
    "cityscapes": 19,
}  # fmt: skip
_HINTS = {("cityscapes_npy", "depth"): " (its depth/ folder holds inverse depth: ask 'disparity')"}
NUMBERED = ("nyuv2_npy", "cityscapes_npy")  # {split}/image/{i}.npy folders, ids 0, 1, ...

__all__ = [
    "DataError", "FORMATS", "FORMAT_TASKS", "list_ids", "load_dataset_info", "load_sample",
    "split_source",
]  # fmt: skip


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"unknown data format {format!r} (available: {', '.join(FORMATS)})")


def _classes(format: str, num_classes: int | None) -> tuple[list[str], list[list[int]]]:
    n = num_classes or DEFAULT_CLASSES[format]
    if format == "pascal_mt":
        return list(pascal_mt.VOC_CLASSES), pascal_mt.voc_palette(21)
    if format.startswith("cityscapes"):
        return cityscapes.classes_and_palette(n if n in (7, 19) else DEFAULT_CLASSES[format])
    return classes_and_palette(DEFAULT_CLASSES[format])


def load_dataset_info(
    root: Path | str, format: str, num_classes: int | None = None
) -> dict[str, Any]:
    """name, classes, palette, ignore_index, depth_scale, intrinsics of a dataset.

    ``cvmtl`` reads ``root/dataset.yaml`` (NYU-13 defaults where it is absent); ``nyuv2_npy`` is
    NYU-13 and ``nyud_mt`` NYU-40, both at the NYU intrinsics (of the 480x640 frames);
    ``pascal_mt`` the 21 VOC classes; Cityscapes 7 categories (``cityscapes_npy``) or 19 classes
    (``cityscapes``) unless ``num_classes`` picks the other set; no intrinsics (they vary by city).
    """
    _check_format(format)
    classes, palette = _classes(format, num_classes)
    nyu = format in ("cvmtl", "nyud_mt")  # nyuv2_npy is 288x384: not the 480x640 intrinsics
    info: dict[str, Any] = {
        "name": Path(root).name,
        "classes": classes,
        "palette": palette,
        "ignore_index": IGNORE_INDEX,
        "depth_scale": io.DEPTH_SCALE,
        "intrinsics": dict(NYU_INTRINSICS) if nyu else None,
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
    """The file or folder that defines ``split`` (``test`` is ``val`` where the format's val is
    the standard test split: nyuv2_npy, nyud_mt without a test list, pascal_mt, Cityscapes)."""
    _check_format(format)
    root = Path(root)
    if format == "cvmtl":
        return root / "splits" / f"{split}.txt"
    if format in NUMBERED:
        return root / ("val" if split == "test" else split)
    if format == "pascal_mt":
        return pascal_mt.split_file(root, split)
    if format == "cityscapes":
        return root / "leftImg8bit" / cityscapes.split_folder(split)
    path = root / "gt_sets" / f"{split}.txt"
    if split == "test" and not path.is_file():
        return root / "gt_sets" / "val.txt"  # nyud_mt's val is the standard test split
    return path


def list_ids(root: Path | str, format: str, split: str) -> list[str]:
    """The ids of ``split``; a missing split is a DataError listing the splits that exist."""
    source = split_source(root, format, split)
    if format == "cityscapes":
        return cityscapes.list_official_ids(Path(root), split)
    if format in NUMBERED:
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


def _read(root: Path, format: str, split: str, sid: str, tasks: Sequence[str], n: int, info):
    if format == "cvmtl":
        return read_cvmtl(root, sid, tasks, n, info or {})
    if format == "nyuv2_npy":
        return read_nyuv2_npy(split_source(root, format, split), sid, tasks, n)
    if format == "nyud_mt":
        return read_nyud_mt(root, sid, tasks, n)
    if format == "pascal_mt":
        return pascal_mt.read_pascal_mt(root, sid, tasks, n)
    if format == "cityscapes_npy":
        return cityscapes.read_cityscapes_npy(split_source(root, format, split), sid, tasks, n)
    return cityscapes.read_cityscapes(root, split, sid, tasks, n)


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
    specs = {task: get_task(task) for task in tasks}  # an unknown task is a ValueError
    provided = FORMAT_TASKS[format]
    for task in tasks:
        if provided is not None and task not in provided:
            raise ValueError(
                f"data.format {format} has no {task!r} labels{_HINTS.get((format, task), '')} "
                f"(it has: {', '.join(provided)})"
            )
    num_classes = num_classes or DEFAULT_CLASSES[format]
    raw = _read(Path(root), format, split, sample_id, tasks, num_classes, info)
    image = raw["image"]
    h, w = image.shape[:2]
    sample: dict[str, Any] = {"image": image}
    has = {}
    for task, spec in specs.items():
        has[task] = task in raw
        if has[task] and raw[task].shape[:2] != (h, w):
            raise DataError(
                f"{task} is {raw[task].shape[0]}x{raw[task].shape[1]}, the image {h}x{w}: "
                f"{raw[f'_{task}_path']} (id {sample_id!r})"
            )
        sample[task] = raw[task] if has[task] else spec.label.empty(h, w)
    sample["has"] = has
    sample["meta"] = {"id": str(sample_id), "size": [int(h), int(w)], "path": str(raw["_path"])}
    return sample
