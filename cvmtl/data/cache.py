"""A split decoded once into compact tensors (``data.cache``), for the batch-side pipeline.

Every sample is read once (in ``data.num_workers`` processes) and stored compactly, by its
task's :class:`cvmtl.tasks.LabelKind`: the image uint8 [3, H, W]; class ids uint8 (int32 when a
value does not fit); unit vectors int16 (``round(v * 32767)``, within 1.6e-5 before the warp
renormalizes them); other float labels uint16 fixed point (``v * 1000``) when that is exact (depth
read from 16-bit PNGs at the default scale), else float16 (relative error <= 2**-11). NYUv2's 795
train images at 480x640 take about 0.73 GB of image, 0.24 GB of classes, 0.49 GB of depth and
1.47 GB of normals. Images of different sizes are padded to the largest; each keeps its own
size (the warp never reads the padding).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cvmtl.data.dataset import MAX_SKIPS
from cvmtl.data.formats import DataError
from cvmtl.tasks import LabelKind

log = logging.getLogger(__name__)

UNIT = 32767.0  # int16 step of unit-vector components
FIXED = 1000.0  # uint16 fixed point: value * FIXED (millimetres for depth in metres)
# Bytes per pixel of a stored label by codec (image: 3); channels multiply them.
CODEC_BYTES = {"uint8": 1, "int32": 4, "unit": 2, "fixed": 2, "half": 2}
CODEC_DTYPE = {
    "uint8": np.uint8, "int32": np.int32, "unit": np.int16, "fixed": np.uint16, "half": np.float16,
}  # fmt: skip


def encode(label: LabelKind, array: np.ndarray) -> tuple[str, np.ndarray]:
    """``(codec, compact [C, H, W] array)`` of one raw label (HxW or HxWxC)."""
    chw = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    if label.integer:
        fits = chw.size == 0 or (chw.min() >= 0 and chw.max() <= 255)
        codec = "uint8" if fits else "int32"
        return codec, np.ascontiguousarray(chw, CODEC_DTYPE[codec])
    chw = np.asarray(chw, np.float32)
    if label.unit_vector:
        return "unit", np.rint(np.clip(chw, -1.0, 1.0) * UNIT).astype(np.int16)
    fixed = np.rint(chw.astype(np.float64) * FIXED)
    if chw.size and fixed.min() >= 0 and fixed.max() <= 65535:
        exact = fixed.astype(np.float32) / np.float32(FIXED)
        if np.array_equal(exact, chw):
            return "fixed", fixed.astype(np.uint16)
    return "half", chw.astype(np.float16)


def decode(codec: str, stored: torch.Tensor) -> torch.Tensor:
    """Stored values -> int64 class ids or float32 values (the raw sample's, up to the codec)."""
    if codec in ("uint8", "int32"):
        return stored.long()
    if codec == "unit":
        return stored.float() / UNIT
    if codec == "fixed":
        return stored.float() / torch.tensor(FIXED, dtype=torch.float32, device=stored.device)
    return stored.float()


def _unify(codecs: set[str]) -> str:
    """One codec for a label whose samples chose different ones (the widest wins)."""
    for wide in ("int32", "half", "unit"):
        if wide in codecs:
            return wide
    return codecs.pop()


def memory_estimate(count: int, size: Sequence[int], labels: Mapping[str, LabelKind]) -> int:
    """Bytes a cache of ``count`` images of ``size`` (h, w) takes (float labels as 2 bytes)."""
    per_pixel = 3
    for label in labels.values():
        per_pixel += 1 if label.integer else 2 * label.channels
    return int(count) * int(size[0]) * int(size[1]) * per_pixel


@dataclass
class CachedSplit:
    """A decoded split: ``image`` uint8 [N, 3, H, W], ``labels`` compact [N, C, H, W] with their
    ``codecs``, ``sizes`` int64 [N, 2] (each image's own h, w), ``has`` bool [N] per task,
    ``meta`` per sample, and ``rows``: dataset index -> stored row (a bad sample skipped under
    ``data.skip_bad`` points at the next good one, as :class:`DenseDataset` substitutes it)."""

    image: torch.Tensor
    labels: dict[str, torch.Tensor]
    codecs: dict[str, str]
    sizes: torch.Tensor
    has: dict[str, torch.Tensor]
    meta: list[dict[str, Any]]
    rows: torch.Tensor
    kinds: dict[str, LabelKind] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        tensors = [self.image, *self.labels.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device | str, pin: bool = False) -> CachedSplit:
        """The arrays on ``device`` (or pinned host memory with ``pin``); the rest stays."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.pin_memory() if pin else t.to(device)

        labels = {k: move(v) for k, v in self.labels.items()}
        return CachedSplit(
            move(self.image), labels, self.codecs, self.sizes, self.has, self.meta, self.rows,
            self.kinds,
        )  # fmt: skip


class _Encoded(Dataset):
    """Dataset samples read and encoded (in the loader's workers); None for a bad one."""

    def __init__(self, dataset: Any, kinds: Mapping[str, LabelKind]) -> None:
        self.dataset, self.kinds = dataset, dict(kinds)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            raw = self.dataset.load_raw(index)
        except DataError as err:
            if not self.dataset.skip_bad:
                raise
            return {"bad": str(err)}
        labels = {task: encode(kind, raw[task]) for task, kind in self.kinds.items()}
        image = np.ascontiguousarray(raw["image"].transpose(2, 0, 1))
        return {"image": image, "labels": labels, "has": raw["has"], "meta": raw["meta"]}


def _keep(item: Any) -> Any:
    return item


def _read_all(dataset: Any, kinds: Mapping[str, LabelKind], workers: int) -> list[dict | None]:
    loader = DataLoader(
        _Encoded(dataset, kinds), batch_size=None, shuffle=False, num_workers=workers,
        collate_fn=_keep,
    )  # fmt: skip
    items: list[dict | None] = []
    for index, item in enumerate(loader):
        if "bad" in item:
            dataset.bad_ids.append(dataset.ids[index])
            log.warning(
                "cache: skipping bad sample (%d so far): %s", dataset.bad_count, item["bad"]
            )
            item = None
        items.append(item)
    return items


def _substitutes(good: list[bool], root: Any) -> list[int]:
    """Stored row of each index: itself, else the next good index (cyclic) within MAX_SKIPS."""
    stored = np.cumsum(good) - 1
    rows = []
    for index in range(len(good)):
        for attempt in range(MAX_SKIPS):
            current = (index + attempt) % len(good)
            if good[current]:
                rows.append(int(stored[current]))
                break
        else:
            raise DataError(f"{MAX_SKIPS} bad samples in a row in {root}")
    return rows


def build_cache(dataset: Any, kinds: Mapping[str, LabelKind], workers: int = 0) -> CachedSplit:
    """Read every sample of ``dataset`` (a :class:`DenseDataset`) once, in ``workers``
    processes, into a host :class:`CachedSplit` of the labels ``kinds`` (task -> LabelKind)."""
    items = _read_all(dataset, kinds, workers)
    good = [item is not None for item in items]
    rows = _substitutes(good, dataset.root)
    kept = [item for item in items if item is not None]
    del items
    height = max(item["image"].shape[1] for item in kept)
    width = max(item["image"].shape[2] for item in kept)
    codecs = {t: _unify({item["labels"][t][0] for item in kept}) for t in kinds}
    image = torch.zeros((len(kept), 3, height, width), dtype=torch.uint8)
    labels = {
        t: torch.zeros(
            (len(kept), max(1, kind.channels), height, width),
            dtype=_torch_dtype(codecs[t]),
        )
        for t, kind in kinds.items()
    }
    sizes = torch.zeros((len(kept), 2), dtype=torch.int64)
    has = {t: torch.zeros(len(kept), dtype=torch.bool) for t in kinds}
    meta = []
    for row, item in enumerate(kept):
        h, w = item["image"].shape[1:]
        sizes[row] = torch.tensor([h, w])
        image[row, :, :h, :w] = torch.from_numpy(item.pop("image"))
        for t, (codec, array) in item.pop("labels").items():
            labels[t][row, :, :h, :w] = _recode(codec, codecs[t], array)
            has[t][row] = bool(item["has"].get(t, False))
        meta.append(item["meta"])
        kept[row] = None  # free the sample as soon as it is copied
    cache = CachedSplit(image, labels, codecs, sizes, has, meta, torch.tensor(rows), dict(kinds))
    log.info(
        "cache: %d samples (%dx%d max) in %.1f MB (%s)", len(meta), height, width,
        cache.nbytes / 2**20, ", ".join(f"{t} {c}" for t, c in codecs.items()),
    )  # fmt: skip
    return cache


def _torch_dtype(codec: str) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, CODEC_DTYPE[codec])).dtype


def _recode(codec: str, target: str, array: np.ndarray) -> torch.Tensor:
    """A sample's compact array in the label's common codec (``fixed`` widens to ``half``)."""
    if codec == target:
        return torch.from_numpy(array)
    if target == "half" and codec == "fixed":
        return decode(codec, torch.from_numpy(array)).half()
    return torch.from_numpy(array.astype(CODEC_DTYPE[target]))
