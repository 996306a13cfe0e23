"""Small datasets in each on-disk format whose splits hold DIFFERENT images: every image is one
constant grey level that names its split and index (``level(split, i)``), so a test can tell from
the pixels which folder / split file a sample was read from."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cvmtl.data.io import write_cvmtl_sample, write_dataset_yaml, write_split
from cvmtl.data.nyuv2 import NYU13_CLASSES

HW = (32, 40)
FORMAT_CLASSES = {"cvmtl": 13, "nyuv2_npy": 13, "nyud_mt": 40}
BASE = {"train": 10, "val": 120, "test": 200}  # grey levels; 12 train images stay below 120


def level(split: str, index: int) -> int:
    """The 8-bit grey level of image ``index`` of ``split``."""
    return BASE[split] + 5 * index


def _targets(index: int, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = HW
    seg = np.kron(np.arange(4).reshape(2, 2) + index, np.ones((h // 2, w // 2), int)) % classes
    depth = np.full((h, w), 1.0 + 0.25 * (index % 8), np.float32)
    normal = np.zeros((h, w, 3), np.float32)
    normal[..., 2] = -1.0
    return seg, depth, normal


def _npy_split(root: Path, folder: str, split: str, n: int) -> None:
    for i in range(n):
        seg, depth, normal = _targets(i, 13)
        image = np.full((*HW, 3), level(split, i) / 255.0, np.float32)
        arrays = {"image": image, "label": seg.astype(np.float32), "depth": depth[..., None]}
        arrays["normal"] = normal
        for kind, array in arrays.items():
            (root / folder / kind).mkdir(parents=True, exist_ok=True)
            np.save(root / folder / kind / f"{i}.npy", array)


def make_split_dataset(root: Path, format: str, train: int = 12, held: int = 4) -> dict:
    """Write ``train`` + held-out images in ``format``; return ``{split: {id: grey level}}``.

    ``cvmtl``: ids ``train_i`` / ``val_i`` / ``test_i`` in ``splits/{train,val,test}.txt``;
    ``nyuv2_npy``: ``train/`` and ``val/`` (= test) both numbered from 0, so the SAME ids name
    different images; ``nyud_mt``: ``gt_sets/{train,val}.txt`` (val = test), png images.
    """
    root.mkdir(parents=True, exist_ok=True)
    if format == "nyuv2_npy":
        _npy_split(root, "train", "train", train)
        _npy_split(root, "val", "test", held)
        return {
            "train": {str(i): level("train", i) for i in range(train)},
            "test": {str(i): level("test", i) for i in range(held)},
        }
    splits = {"train": train, "val": held, "test": held} if format == "cvmtl" else {}
    if format == "nyud_mt":
        splits = {"train": train, "test": held}
    out: dict[str, dict[str, int]] = {}
    for split, n in splits.items():
        out[split] = {}
        for i in range(n):
            sid = f"{split}_{i}"
            out[split][sid] = level(split, i)
            _write_sample(root, format, sid, level(split, i), i)
        name = "val" if format == "nyud_mt" and split == "test" else split
        if format == "cvmtl":
            write_split(root, name, list(out[split]))
        else:
            (root / "gt_sets").mkdir(exist_ok=True)
            (root / "gt_sets" / f"{name}.txt").write_text("\n".join(out[split]) + "\n")
    if format == "cvmtl":
        write_dataset_yaml(root, "splits", NYU13_CLASSES, [[i, i, i] for i in range(13)], None)
    return out


def _write_sample(root: Path, format: str, sid: str, grey: int, index: int) -> None:
    image = np.full((*HW, 3), grey, np.uint8)
    seg, depth, normal = _targets(index, FORMAT_CLASSES[format])
    if format == "cvmtl":
        write_cvmtl_sample(root, sid, image, seg.astype(np.uint8), depth, normal)
        return
    for folder in ("images", "segmentation", "depth", "normals"):
        (root / folder).mkdir(exist_ok=True)
    cv2.imwrite(str(root / "images" / f"{sid}.png"), image)
    cv2.imwrite(str(root / "segmentation" / f"{sid}.png"), (seg + 1).astype(np.uint8))
    np.save(root / "depth" / f"{sid}.npy", depth)
    np.save(root / "normals" / f"{sid}.npy", normal)
