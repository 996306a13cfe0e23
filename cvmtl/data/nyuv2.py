"""NYUv2 facts (class names, palettes, 894 -> 40 -> 13 mappings, intrinsics), normals from depth
and the streaming conversion of the official ``nyu_depth_v2_labeled.mat`` into the cvmtl format.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from cvmtl.data.io import DataError, write_cvmtl_sample, write_dataset_yaml, write_split
from cvmtl.data.splits import carve_ids

log = logging.getLogger(__name__)

# The order of class13Mapping.mat (labels 1..13 there, 0..12 here).
NYU13_CLASSES = [
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
    "picture", "sofa", "table", "tv", "wall", "window",
]  # fmt: skip
# The order of classMapping40.mat ``className`` (labels 1..40 there, 0..39 here).
NYU40_CLASSES = [
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
]  # fmt: skip
# The widely used NYU-40 colours (as in ScanNet's benchmark scripts), one per class above.
NYU40_PALETTE = [
    [174, 199, 232], [152, 223, 138], [31, 119, 180], [255, 187, 120], [188, 189, 34],
    [140, 86, 75], [255, 152, 150], [214, 39, 40], [197, 176, 213], [148, 103, 189],
    [196, 156, 148], [23, 190, 207], [178, 76, 76], [247, 182, 210], [66, 188, 102],
    [219, 219, 141], [140, 57, 197], [202, 185, 52], [51, 176, 203], [200, 54, 131],
    [92, 193, 61], [78, 71, 183], [172, 114, 82], [255, 127, 14], [91, 163, 138],
    [153, 98, 156], [140, 153, 101], [158, 218, 229], [100, 125, 154], [178, 127, 135],
    [120, 185, 128], [146, 111, 194], [44, 160, 44], [112, 128, 144], [96, 207, 209],
    [227, 119, 194], [213, 92, 176], [94, 106, 211], [82, 84, 163], [100, 85, 144],
]  # fmt: skip
# 0-based 40-class label -> 0-based 13-class label (class13Mapping.mat ``labels13`` minus one).
MAP_40_TO_13 = [
    11, 4, 5, 0, 3, 8, 9, 11, 12, 5, 7, 5, 12, 9, 5, 12, 5, 6, 6, 4,
    6, 2, 1, 5, 10, 6, 6, 6, 6, 6, 6, 5, 6, 6, 6, 6, 6, 6, 5, 6,
]  # fmt: skip
# Each 13-class colour is the NYU-40 colour of its main member class (furniture = cabinet, ...).
NYU13_PALETTE = [
    NYU40_PALETTE[NYU40_CLASSES.index(name)]
    for name in ("bed", "books", "ceiling", "chair", "floor", "cabinet", "otherprop", "picture",
                 "sofa", "table", "television", "wall", "window")
]  # fmt: skip
NYU_INTRINSICS = {"fx": 518.8579, "fy": 519.4696, "cx": 325.5824, "cy": 253.7362}
IGNORE_INDEX = 255


def classes_and_palette(num_classes: int) -> tuple[list[str], list[list[int]]]:
    """The NYUv2 class names and palette for 13 or 40 classes."""
    if num_classes == 13:
        return list(NYU13_CLASSES), [list(c) for c in NYU13_PALETTE]
    if num_classes == 40:
        return list(NYU40_CLASSES), [list(c) for c in NYU40_PALETTE]
    raise ValueError(f"NYUv2 has 13 or 40 classes, got {num_classes}")


def normals_from_depth(
    depth: np.ndarray, intrinsics: dict[str, float] = NYU_INTRINSICS, smooth: int = 5
) -> np.ndarray:
    """Surface normals (HxWx3 float32, camera frame x right / y down / z forward, pointing toward
    the camera) from metric depth; 0 where depth or a neighbour is invalid.

    The point cloud is box-filtered over valid pixels (``smooth`` px) before central differences,
    since in-painted Kinect depth is quantized and per-pixel differences would be mostly noise.
    """
    import cv2

    depth = np.asarray(depth, dtype=np.float32)
    h, w = depth.shape
    valid = (np.isfinite(depth) & (depth > 0)).astype(np.float32)
    z = np.where(valid > 0, depth, 0).astype(np.float32)
    u, v = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    points = np.stack(
        [
            (u - intrinsics["cx"]) / intrinsics["fx"] * z,
            (v - intrinsics["cy"]) / intrinsics["fy"] * z,
            z,
        ],
        axis=2,
    )
    if smooth > 1:  # normalized convolution: average valid points only
        k = (smooth, smooth)
        weight = cv2.blur(valid, k, borderType=cv2.BORDER_REPLICATE)
        points = (
            cv2.blur(points, k, borderType=cv2.BORDER_REPLICATE)
            / np.maximum(weight, 1e-6)[..., None]
        )
    du = np.zeros_like(points)
    dv = np.zeros_like(points)
    du[:, 1:-1] = points[:, 2:] - points[:, :-2]
    dv[1:-1] = points[2:] - points[:-2]
    normal = np.cross(dv, du)  # for a frontal plane: (0, 0, -1), toward the camera
    ok = np.zeros((h, w), bool)
    ok[1:-1, 1:-1] = (
        valid[1:-1, 2:] * valid[1:-1, :-2] * valid[2:, 1:-1] * valid[:-2, 1:-1] * valid[1:-1, 1:-1]
    ) > 0
    norm = np.linalg.norm(normal, axis=2)
    ok &= norm > 1e-12
    normal = normal / np.maximum(norm, 1e-12)[..., None]
    # Orient toward the camera whatever the differences gave: n . p < 0.
    flip = (normal * points).sum(axis=2) > 0
    normal[flip] *= -1
    return np.where(ok[..., None], normal, 0).astype(np.float32)


def _mat_key(path: Path | str, key: str) -> np.ndarray:
    """A variable of a MATLAB v5 file (scipy); a missing file or key is a DataError."""
    import scipy.io

    try:
        data = scipy.io.loadmat(str(path))
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except Exception as err:  # scipy raises several types for non-.mat input
        raise DataError(f"{path}: not a readable MATLAB v5 file ({err})") from None
    if key not in data:
        found = sorted(k for k in data if not k.startswith("__"))
        raise DataError(f"{path}: missing key {key!r} (found: {', '.join(found)})")
    return np.asarray(data[key])


def label_lut(mapping_file: Path | str, num_classes: int) -> np.ndarray:
    """uint8 table raw label (0 = unlabeled, 1..894) -> class 0..C-1, 255 = ignore."""
    map40 = _mat_key(mapping_file, "mapClass").astype(np.int64).ravel()  # 894 -> 1..40
    if map40.min() < 1 or map40.max() > 40:
        raise DataError(f"{mapping_file}: mapClass values outside 1..40")
    lut = np.full(len(map40) + 1, IGNORE_INDEX, np.uint8)
    lut[1:] = map40 - 1
    if num_classes == 13:
        lut[1:] = np.asarray(MAP_40_TO_13, np.uint8)[lut[1:]]
    elif num_classes != 40:
        raise ValueError(f"classes must be 13 or 40, got {num_classes}")
    return lut


def _normal_files(folder: Path | str) -> dict[int, Path]:
    """Files of a --normals folder keyed by the 1-based frame number their stem spells."""
    files: dict[int, Path] = {}
    for path in Path(folder).iterdir():
        if path.suffix.lower() in (".png", ".npy") and path.stem.isdigit():
            files[int(path.stem)] = path
    if not files:
        raise DataError(f"{folder}: no normals files named <frame number>.png|.npy")
    return files


def read_normal_file(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A --normals file: .npy float HxWx3 in [-1, 1] or a 16/8-bit RGB PNG; all-zero = invalid."""
    from cvmtl.data.io import read_normal_png

    if path.suffix.lower() == ".npy":
        normal = np.load(path, allow_pickle=False)
        if normal.ndim != 3 or normal.shape[2] != 3 or normal.dtype.kind != "f":
            raise DataError(
                f"{path}: expected float HxWx3 normals, got {normal.dtype} {normal.shape}"
            )
        normal = np.nan_to_num(normal.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    else:
        normal = read_normal_png(path)
    if normal.shape[:2] != shape:
        raise DataError(f"{path}: normals are {normal.shape[:2]}, the frame is {shape}")
    return normal


def _open_mat(mat: Path | str) -> Any:
    """The labeled .mat opened read-only with h5py (it is MATLAB v7.3, i.e. HDF5)."""
    import h5py

    try:
        return h5py.File(str(mat), "r")
    except (FileNotFoundError, OSError) as err:
        raise DataError(f"{mat}: not a readable MATLAB v7.3 (HDF5) file ({err})") from None


def _official_arrays(mat: Path | str, f: Any) -> tuple[Any, Any, Any]:
    """The images, depths and labels datasets of the open .mat, their shapes checked."""
    for key in ("images", "depths", "labels"):
        if key not in f:
            raise DataError(f"{mat}: missing key {key!r} (found: {', '.join(sorted(f))})")
    images, depths, labels = f["images"], f["depths"], f["labels"]
    # MATLAB is column-major: h5py sees images as (N, 3, W, H) and maps as (N, W, H).
    n, _, w, h = images.shape
    if images.shape[1] != 3 or depths.shape != (n, w, h) or labels.shape != (n, w, h):
        raise DataError(
            f"{mat}: inconsistent shapes images {images.shape}, depths {depths.shape}, "
            f"labels {labels.shape} (expected (N, 3, W, H) and (N, W, H))"
        )
    return images, depths, labels


def _frames_to_convert(
    splits: Path | str, train: np.ndarray, test: np.ndarray, n: int, limit: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """The train / test frame numbers within 1..n (1..limit with ``limit``), checked."""
    n = min(n, limit) if limit else n
    for name, idx in (("trainNdxs", train), ("testNdxs", test)):
        # With a limit the split files legitimately name frames past it: they are dropped.
        if idx.min() < 1 or (not limit and idx.max() > n):
            raise DataError(f"{splits}: {name} holds frame numbers outside 1..{n}")
    return train[train <= n], test[test <= n]


def _read_frame(
    mat: Path | str, arrays: tuple[Any, Any, Any], i: int, lut: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame ``i`` (1-based) as row-major image [H, W, 3], class labels [H, W], depth [H, W]."""
    images, depths, labels = arrays
    image = np.ascontiguousarray(images[i - 1].transpose(2, 1, 0))  # -> H, W, 3
    depth = np.asarray(depths[i - 1], np.float32).T
    raw = np.asarray(labels[i - 1]).T.astype(np.int64)
    if raw.min() < 0 or raw.max() >= len(lut):
        raise DataError(f"{mat}: frame {i} has labels outside 0..{len(lut) - 1}")
    return image, lut[raw], depth


def _frame_normal(
    i: int,
    depth: np.ndarray,
    normal_files: dict[int, Path] | None,
    normals_dir: Path | str | None,
) -> np.ndarray:
    """Normals of frame ``i``: its --normals file when given, else estimated from the depth."""
    if normal_files is None:
        return normals_from_depth(depth)
    if i not in normal_files:
        raise DataError(f"{normals_dir}: no normals file for frame {i}")
    return read_normal_file(normal_files[i], depth.shape)


def _write_official_splits(
    out: Path, train: np.ndarray, test: np.ndarray, val_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Write the split lists (val carved out of train with ``val_fraction``); return the ids."""
    ids = {"train": [f"{i:04d}" for i in sorted(train)], "test": [f"{i:04d}" for i in sorted(test)]}
    if val_fraction > 0:
        ids["trainval"] = ids["train"]
        ids["train"], ids["val"] = carve_ids(ids["trainval"], val_fraction, seed)
    for split, split_ids in ids.items():
        write_split(out, split, split_ids)
    return ids


def convert_official(
    mat: Path | str,
    splits: Path | str,
    mapping: Path | str,
    out: Path | str,
    num_classes: int = 13,
    normals_dir: Path | str | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    limit: int | None = None,
) -> dict[str, int]:
    """Convert ``nyu_depth_v2_labeled.mat`` to the cvmtl format under ``out``, frame by frame.

    Ids are the 1-based frame numbers, zero-padded (``0001``). ``limit`` converts only frames
    1..limit (for tests). Returns the number of ids per split written.
    """
    from tqdm import tqdm

    lut = label_lut(mapping, num_classes)
    train = _mat_key(splits, "trainNdxs").astype(np.int64).ravel()
    test = _mat_key(splits, "testNdxs").astype(np.int64).ravel()
    normal_files = _normal_files(normals_dir) if normals_dir is not None else None
    out = Path(out)
    with _open_mat(mat) as f:
        arrays = _official_arrays(mat, f)
        train, test = _frames_to_convert(splits, train, test, arrays[0].shape[0], limit)
        for i in tqdm(sorted(set(train) | set(test)), desc="nyuv2", unit="frame"):
            image, seg, depth = _read_frame(mat, arrays, i, lut)
            normal = _frame_normal(i, depth, normal_files, normals_dir)
            write_cvmtl_sample(out, f"{i:04d}", image, seg, depth, normal)
    ids = _write_official_splits(out, train, test, val_fraction, seed)
    classes, palette = classes_and_palette(num_classes)
    write_dataset_yaml(out, f"nyuv2_{num_classes}", classes, palette, NYU_INTRINSICS)
    return {split: len(split_ids) for split, split_ids in ids.items()}
