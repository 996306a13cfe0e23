"""Small datasets in each on-disk format whose splits hold DIFFERENT images: every image is one
constant grey level that names its split and index (``level(split, i)``), so a test can tell from
the pixels which folder / split file a sample was read from."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

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


# ---- PASCAL_MT, Cityscapes (two layouts) and NYUD-MT edges, written from their definitions ----
SMALL = (16, 24)  # H, W of the fixture images below
PERSON, UNKNOWN, CAT = 284, 431, 65  # PASCAL-Context LabelMap ids: normals valid, not, valid


def _mat_struct(rows: list[tuple], fields: list[str]) -> np.ndarray:
    """A 1xN MATLAB struct array for scipy.io.savemat."""
    out = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        out[0, i] = row
    return out


def write_pascal_mt(root: Path) -> dict[str, str]:
    """PASCAL_MT with ids ``a`` (train; palette VOC12 semseg, a person with parts), ``b`` (train;
    semseg only under semseg/pascal-context, a cat and a person without parts) and ``c`` (val; no
    semseg, no person: its human_parts file holds a cat only). Every image: LabelMap left half
    PERSON, right half UNKNOWN; normals_distill (128, 128, 255); sal_distill 100 on the left
    half, 200 on the right. Returns {id: split}."""
    from PIL import Image
    from scipy.io import savemat

    h, w = SMALL
    splits = {"a": "train", "b": "train", "c": "val"}
    for sid in splits:
        image = np.full((h, w, 3), 90, np.uint8)
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "JPEGImages" / f"{sid}.jpg"), image)
        label_map = np.full((h, w), UNKNOWN, np.uint16)
        label_map[:, : w // 2] = PERSON
        (root / "pascal-context" / "trainval").mkdir(parents=True, exist_ok=True)
        savemat(root / "pascal-context" / "trainval" / f"{sid}.mat", {"LabelMap": label_map})
        normal = np.zeros((h, w, 3), np.uint8)
        normal[...] = (255, 128, 128)  # BGR on disk: RGB (128, 128, 255)
        (root / "normals_distill").mkdir(exist_ok=True)
        cv2.imwrite(str(root / "normals_distill" / f"{sid}.png"), normal)
        sal = np.full((h, w), 200, np.uint8)
        sal[:, : w // 2] = 100
        (root / "sal_distill").mkdir(exist_ok=True)
        cv2.imwrite(str(root / "sal_distill" / f"{sid}.png"), sal)
    seg = np.zeros((h, w), np.uint8)
    seg[:, : w // 2] = 15  # person
    seg[0, :] = 255  # a VOC boundary row
    voc = Image.fromarray(seg, mode="P")
    voc.putpalette([v for c in range(256) for v in (c, 255 - c, 7)])
    (root / "semseg" / "VOC12").mkdir(parents=True, exist_ok=True)
    voc.save(root / "semseg" / "VOC12" / "a.png")
    (root / "semseg" / "pascal-context").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "semseg" / "pascal-context" / "b.png"), np.full((h, w), 8, np.uint8))
    _write_parts(root)
    (root / "ImageSets" / "Context").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        ids = [s for s, sp in splits.items() if sp == split]
        (root / "ImageSets" / "Context" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return splits


def _write_parts(root: Path) -> None:
    """human_parts/a.mat: a person with head (rows 0-3), luarm (rows 4-7) and lfoot (rows 8-9,
    cols 0-3), then a cat; b.mat: a cat and a person without parts; c.mat: a cat, no person
    (every listed image has its .mat, as in the layout)."""
    from scipy.io import savemat

    h, w = SMALL
    mask = np.zeros((h, w), np.uint8)
    mask[:10, :4] = 1
    head, arm, foot = (np.zeros((h, w), np.uint8) for _ in range(3))
    head[0:4, 0:4], arm[4:8, 0:4], foot[8:10, 0:4] = 1, 1, 1
    parts = _mat_struct([("head", head), ("luarm", arm), ("lfoot", foot)], ["part_name", "mask"])
    fields = ["class", "class_ind", "mask", "parts"]
    cat = ("cat", 8, mask, np.zeros((0, 0)))
    (root / "human_parts").mkdir(exist_ok=True)
    a = {"imname": "a", "objects": _mat_struct([("person", 15, mask, parts), cat], fields)}
    savemat(root / "human_parts" / "a.mat", {"anno": a})
    b = {
        "imname": "b",
        "objects": _mat_struct([cat, ("person", 15, mask, np.zeros((0, 0)))], fields),
    }
    savemat(root / "human_parts" / "b.mat", {"anno": b})
    c = {"imname": "c", "objects": _mat_struct([cat], fields)}
    savemat(root / "human_parts" / "c.mat", {"anno": c})


def write_cityscapes_npy(root: Path, train: int = 3, val: int = 2) -> None:
    """mtan / LibMTL copy: ``{train,val}/{image,label_7,depth}/{i}.npy``; image i of a split is
    grey level(split, i); label: row 0 = -1 (ignore), the rest (i % 7); depth 0.1 * (i + 1) with
    column 0 = 0 (invalid)."""
    h, w = SMALL
    for split, n in (("train", train), ("val", val)):
        for i in range(n):
            grey = level("train" if split == "train" else "test", i) / 255.0
            label = np.full((h, w), i % 7, np.float32)
            label[0] = -1
            depth = np.full((h, w, 1), 0.1 * (i + 1), np.float32)
            depth[:, 0] = 0
            arrays = {"image": np.full((h, w, 3), grey, np.float32), "label_7": label}
            arrays["depth"] = depth
            for kind, array in arrays.items():
                (root / split / kind).mkdir(parents=True, exist_ok=True)
                np.save(root / split / kind / f"{i}.npy", array)


CITY_BASELINE, CITY_FX = 0.2, 2000.0


def write_cityscapes(root: Path) -> dict[str, list[str]]:
    """Official folders: train ``aachen_000000_000019``, ``aachen_000001_000019`` and val
    ``frankfurt_000000_000294``. labelIds: rows 0-3 road (7), 4-7 car (26), 8-11 parking (9:
    ignored), 12-15 unlabeled (0); disparity PNG value 1 + 256 * (4 + col % 3) (d = 4, 5, 6 px)
    with column 0 = 0 (invalid); camera baseline CITY_BASELINE, fx CITY_FX. The second train id
    has no disparity and no camera file."""
    h, w = SMALL
    ids = {"train": ["aachen_000000_000019", "aachen_000001_000019"]}
    ids["val"] = ["frankfurt_000000_000294"]
    label = np.zeros((h, w), np.uint8)
    label[0:4], label[4:8], label[8:12] = 7, 26, 9
    disparity = np.tile(1 + 256 * (4 + np.arange(w) % 3), (h, 1)).astype(np.uint16)
    disparity[:, 0] = 0
    camera = {"extrinsic": {"baseline": CITY_BASELINE}, "intrinsic": {"fx": CITY_FX, "fy": 1.0}}
    for split, names in ids.items():
        for n, sid in enumerate(names):

            def at(kind: str, suffix: str, split: str = split, sid: str = sid) -> Path:
                return _city_path(root, kind, split, sid, suffix)

            cv2.imwrite(str(at("leftImg8bit", "leftImg8bit.png")), np.full((h, w, 3), 50, np.uint8))
            cv2.imwrite(str(at("gtFine", "gtFine_labelIds.png")), label)
            if n == 0:
                cv2.imwrite(str(at("disparity", "disparity.png")), disparity)
                at("camera", "camera.json").write_text(json.dumps(camera))
    return ids


def _city_path(root: Path, kind: str, split: str, sid: str, suffix: str) -> Path:
    folder = root / kind / split / sid.split("_")[0]
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{sid}_{suffix}"


def write_nyud_edges(root: Path, ids: list[str]) -> None:
    """``edge/{id}.npy`` (float32 0 / 1, as Multi-Task-Learning-PyTorch's NYUD_MT) for ``ids``:
    a vertical edge at column 5."""
    h, w = HW
    (root / "edge").mkdir(exist_ok=True)
    for sid in ids:
        edge = np.zeros((h, w), np.float32)
        edge[:, 5] = 1
        np.save(root / "edge" / f"{sid}.npy", edge)


@contextlib.contextmanager
def label_tasks(kinds: dict[str, Any]):
    """Make sure the tasks ``kinds`` names ({name: LabelKind}) are registered while the block
    runs: a built-in one is used as it is; one that is not built in (yet) is registered as a
    plain spec with that label kind (the readers only ask ``spec.label``), and removed after."""
    from cvmtl.tasks import TASKS, register
    from cvmtl.tasks.registry import get_task

    added = []
    seg = get_task("seg")
    for name, kind in kinds.items():
        if name not in TASKS:
            register(dataclasses.replace(seg, name=name, label=kind, channels=1))
            added.append(name)
    try:
        yield
    finally:
        for name in added:
            TASKS.pop(name, None)
