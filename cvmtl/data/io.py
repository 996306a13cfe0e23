"""Readers and writers of the ``cvmtl`` on-disk encoding (PNG files, split lists, dataset.yaml).

Encoding (see data/README.md): images 8-bit RGB PNG/JPEG; segmentation 8-bit PNG, 255 = ignore;
depth 16-bit PNG in ``depth_scale`` units per metre (default 1000 = millimetres), 0 = invalid;
normals 16-bit RGB PNG, value = (n + 1) / 2 * 65535 per axis, all-zero = invalid; binary maps
(edges, saliency masks) 8-bit PNG of 0 and 255 (read as > 127 = 1). The depth and normal values
are :mod:`cvmtl.png_codec`'s (shared with the depth / normal task specs' prediction files).
cv2 stores colour as BGR: every function here takes and returns RGB.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import yaml

from cvmtl.png_codec import DEPTH_SCALE, decode_normals, encode_depth, encode_normals

PNG_END = b"IEND\xaeB`\x82"


class DataError(ValueError):
    """A bad sample or dataset file; the message names the file (and the sample id)."""


def _where(path: Path | str, sample_id: str | None) -> str:
    return f"{path}" if sample_id is None else f"{path} (id {sample_id!r})"


def read_bytes(path: Path | str, sample_id: str | None, what: str) -> bytes:
    """The file's bytes; a missing or unreadable file is a one-line DataError naming it."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what} missing: {_where(path, sample_id)}") from None
    except OSError as err:
        raise DataError(f"{what} unreadable: {_where(path, sample_id)}: {err}") from None


def check_complete(data: bytes, path: Path | str, sample_id: str | None) -> None:
    """Raise a DataError naming ``path`` when the PNG / JPEG ``data`` lacks its end marker."""
    # cv2 decodes a truncated PNG/JPEG to a partly grey image with only a warning on stderr;
    # checking the end marker catches the common case of an interrupted copy or download.
    if data.startswith(b"\x89PNG") and PNG_END not in data[-64:]:
        raise DataError(f"truncated PNG: {_where(path, sample_id)}")
    if data.startswith(b"\xff\xd8") and b"\xff\xd9" not in data[-1024:]:
        raise DataError(f"truncated JPEG: {_where(path, sample_id)}")


def decode(path: Path | str, sample_id: str | None = None, what: str = "file") -> np.ndarray:
    """Decode an image file unchanged (bit depth and channels kept; colour stays BGR)."""
    data = read_bytes(path, sample_id, what)
    check_complete(data, path, sample_id)
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DataError(f"{what} unreadable (not a PNG/JPEG image): {_where(path, sample_id)}")
    return array


def read_image(path: Path | str, sample_id: str | None = None) -> np.ndarray:
    """RGB uint8 HxWx3 (grey images are expanded, alpha is dropped)."""
    array = decode(path, sample_id, "image")
    if array.dtype != np.uint8:
        raise DataError(f"image must be 8-bit, got {array.dtype}: {_where(path, sample_id)}")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise DataError(f"image has shape {array.shape}: {_where(path, sample_id)}")
    return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB if array.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def read_seg_png(path: Path | str, sample_id: str | None = None) -> np.ndarray:
    """Class-index map int64 HxW (values as stored; range checks are the reader's job)."""
    array = decode(path, sample_id, "segmentation")
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise DataError(
            f"segmentation must be a single-channel 8/16-bit PNG, got {array.dtype} "
            f"shape {array.shape}: {_where(path, sample_id)}"
        )
    return array.astype(np.int64)


def read_depth_png(
    path: Path | str, sample_id: str | None = None, depth_scale: float = DEPTH_SCALE
) -> np.ndarray:
    """Depth float32 HxW in metres from a 16-bit PNG; 0 = invalid."""
    array = decode(path, sample_id, "depth")
    if array.ndim != 2 or array.dtype != np.uint16:
        raise DataError(
            f"depth must be a single-channel 16-bit PNG, got {array.dtype} shape {array.shape}: "
            f"{_where(path, sample_id)}"
        )
    return array.astype(np.float32) / np.float32(depth_scale)


def read_normal_png(path: Path | str, sample_id: str | None = None) -> np.ndarray:
    """Normals float32 HxWx3 (RGB = xyz) from a 16-bit or 8-bit RGB PNG; all-zero = invalid."""
    array = decode(path, sample_id, "normals")
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype not in (np.uint8, np.uint16):
        raise DataError(
            f"normals must be a 3-channel 8/16-bit PNG, got {array.dtype} shape {array.shape}: "
            f"{_where(path, sample_id)}"
        )
    rgb = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    if array.dtype == np.uint16:
        return decode_normals(rgb, 65535.0, renormalize=False)
    return decode_normals(rgb, 255.0)


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def write_image_png(path: Path | str, image: np.ndarray) -> None:
    """Write an RGB uint8 HxWx3 image."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 HxWx3, got {image.dtype} {image.shape}")
    _write_png(Path(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def write_seg_png(path: Path | str, seg: np.ndarray) -> None:
    """Write a class-index map (values 0..254, 255 = ignore) as an 8-bit PNG."""
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.min(initial=0) < 0 or seg.max(initial=0) > 255:
        raise ValueError(f"segmentation must be HxW with values in 0..255, got {seg.shape}")
    _write_png(Path(path), seg.astype(np.uint8))


def write_depth_png(path: Path | str, depth: np.ndarray, depth_scale: float = DEPTH_SCALE) -> None:
    """Write metric depth (HxW metres, 0 = invalid) as a 16-bit PNG."""
    if np.ndim(depth) != 2:
        raise ValueError(f"depth must be HxW, got shape {np.shape(depth)}")
    _write_png(Path(path), encode_depth(depth, depth_scale))


def write_normal_png(path: Path | str, normal: np.ndarray) -> None:
    """Write unit normals (HxWx3, xyz, all-zero = invalid) as a 16-bit RGB PNG."""
    if np.ndim(normal) != 3 or np.shape(normal)[2] != 3:
        raise ValueError(f"normals must be HxWx3, got shape {np.shape(normal)}")
    _write_png(Path(path), cv2.cvtColor(encode_normals(normal), cv2.COLOR_RGB2BGR))


def write_mask_png(path: Path | str, mask: np.ndarray) -> None:
    """Write a binary map (HxW, nonzero / True = 1) as an 8-bit PNG of 0 and 255."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"binary map must be HxW, got shape {mask.shape}")
    _write_png(Path(path), np.where(mask != 0, 255, 0).astype(np.uint8))


def write_cvmtl_sample(
    root: Path | str,
    sample_id: str,
    image: np.ndarray,
    seg: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    normal: np.ndarray | None = None,
    depth_scale: float = DEPTH_SCALE,
    masks: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write one sample in the ``cvmtl`` layout; a ``None`` target is simply not written.

    ``masks`` maps a folder name to a binary map, written 0 / 255 at ``root/{name}/{id}.png``.
    """
    root = Path(root)
    write_image_png(root / "images" / f"{sample_id}.png", image)
    shape = image.shape[:2]
    masks = dict(masks or {})
    for name, target in (("seg", seg), ("depth", depth), ("normal", normal), *masks.items()):
        if target is not None and tuple(np.shape(target)[:2]) != shape:
            raise ValueError(f"{name} of {sample_id!r} has shape {np.shape(target)}, image {shape}")
    for name, mask in masks.items():
        write_mask_png(root / name / f"{sample_id}.png", mask)
    if seg is not None:
        write_seg_png(root / "segmentation" / f"{sample_id}.png", seg)
    if depth is not None:
        write_depth_png(root / "depth" / f"{sample_id}.png", depth, depth_scale)
    if normal is not None:
        write_normal_png(root / "normals" / f"{sample_id}.png", normal)


def write_split(root: Path | str, split: str, ids: Sequence[str]) -> Path:
    """Write ``root/splits/{split}.txt`` (one id per line)."""
    path = Path(root) / "splits" / f"{split}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))
    return path


def read_split(path: Path | str) -> list[str]:
    """Ids of a split file: one per line, blank lines and ``#`` comments skipped."""
    lines = Path(path).read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


def write_dataset_yaml(
    root: Path | str,
    name: str,
    classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    intrinsics: dict[str, float] | None,
    depth_scale: float = DEPTH_SCALE,
    ignore_index: int = 255,
) -> Path:
    """Write ``root/dataset.yaml`` (classes, palette, ignore_index, depth_scale, intrinsics)."""
    if len(palette) != len(classes):
        raise ValueError(f"palette has {len(palette)} colours for {len(classes)} classes")
    info = {
        "name": name,
        "classes": [str(c) for c in classes],
        "palette": [[int(v) for v in rgb] for rgb in palette],
        "ignore_index": int(ignore_index),
        "depth_scale": float(depth_scale),
        "intrinsics": None if intrinsics is None else {k: float(v) for k, v in intrinsics.items()},
    }
    path = Path(root) / "dataset.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(info, sort_keys=False, default_flow_style=None))
    return path
