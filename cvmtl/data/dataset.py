"""DenseDataset: ids of a split + a format reader + a transform seeded by (seed, epoch, index)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from cvmtl.data.formats import DataError, list_ids, load_dataset_info, load_sample
from cvmtl.data.splits import carve_ids
from cvmtl.tasks.registry import DEFAULT_TASKS

__all__ = ["DenseDataset", "ROLES", "carve_ids", "resolve_role", "resolve_split_ids"]

log = logging.getLogger(__name__)

MAX_SKIPS = 100  # give up after this many consecutive bad samples: the dataset is broken
ROLES = ("train", "val", "test")


def resolve_split_ids(
    root: Path | str,
    format: str,
    split: str,
    val_fraction: float = 0.0,
    seed: int = 0,
    train_split: str = "train",
    val_split: str = "val",
) -> list[str]:
    """Ids of ``split``. With ``val_fraction > 0`` the ids of ``val_split`` are a seeded carve of
    ``train_split`` and ``train_split`` is what is left; any other name reads its own split
    (``test`` = the held-out test split of every format). Ids only: carved ids live in the
    TRAIN files, so read them with ``source_split=train_split`` (:func:`resolve_role` gives
    both and decides by role, not by name)."""
    if val_fraction <= 0:
        return list_ids(root, format, split)
    if split == train_split:
        return carve_ids(list_ids(root, format, train_split), val_fraction, seed)[0]
    if split == val_split:
        return carve_ids(list_ids(root, format, train_split), val_fraction, seed)[1]
    return list_ids(root, format, split)


def resolve_role(
    root: Path | str,
    format: str,
    role: str,
    names: Mapping[str, str],
    val_fraction: float = 0.0,
    seed: int = 0,
) -> tuple[str, list[str]]:
    """``(source split, ids)`` of the loader role ``role`` (train / val / test); ``names`` maps
    each role to its split name (``data.train_split`` / ``val_split`` / ``test_split``).

    With ``val_fraction > 0`` the val role is a seeded carve of the train split and is read from
    the train split's files (in ``nyuv2_npy`` that is ``train/``, never ``val/``, which is the
    test split); train keeps the rest. The test role is always its own split.
    """
    if role not in ROLES:
        raise ValueError(f"unknown split role {role!r} (expected one of {ROLES})")
    if val_fraction <= 0 or role == "test":
        return names[role], list_ids(root, format, names[role])
    ids = list_ids(root, format, names["train"])
    if len(ids) < 2:
        raise DataError(
            f"data.val_fraction={val_fraction}: cannot carve a validation split out of "
            f"{len(ids)} id(s) of split {names['train']!r} in {root}"
        )
    kept, carved = carve_ids(ids, val_fraction, seed)
    return names["train"], kept if role == "train" else carved


class DenseDataset(Dataset):
    """Samples of one split as dicts (the sample contract in docs/architecture.md).

    Augmentation randomness is a function of (``seed``, epoch, index): the index may be an int
    (the epoch then comes from :meth:`set_epoch`) or an ``(epoch, index)`` pair, which is what
    the loaders' samplers yield so that persistent workers never see a stale epoch.
    ``source_split`` (default ``split``) is the split whose files are read: a validation split
    carved out of train (``split="val", source_split="train"``) reads the train files.
    With ``skip_bad`` a sample that fails with :class:`DataError` is logged, recorded in
    ``bad_ids`` / ``bad_count`` (per process: workers keep their own copies) and the next index
    is returned instead.
    """

    def __init__(
        self,
        root: Path | str,
        split: str,
        format: str = "cvmtl",
        tasks: Sequence[str] = DEFAULT_TASKS,
        transform: Callable[..., dict[str, Any]] | None = None,
        num_classes: int | None = None,
        skip_bad: bool = False,
        ids: Sequence[str] | None = None,
        seed: int = 0,
        source_split: str | None = None,
    ) -> None:
        self.root, self.split, self.format = Path(root), split, format
        self.source_split = source_split or split
        self.tasks = list(tasks)
        self.transform = transform
        self.info = load_dataset_info(root, format, num_classes)
        self.num_classes = num_classes or len(self.info["classes"])
        self.skip_bad = skip_bad
        self.ids = list(ids) if ids is not None else list_ids(root, format, self.source_split)
        self.seed = int(seed)
        self.epoch = 0
        self.bad_ids: list[str] = []

    @property
    def bad_count(self) -> int:
        return len(self.bad_ids)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (samplers pass it explicitly instead)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def load_raw(self, index: int) -> dict[str, Any]:
        """The untransformed sample at ``index`` (raises DataError on bad data)."""
        return load_sample(
            self.root,
            self.format,
            self.source_split,
            self.ids[index],
            self.tasks,
            self.num_classes,
            self.info,
        )  # format: skip

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        if not 0 <= index < len(self.ids):
            raise IndexError(f"index {index} out of range for {len(self.ids)} samples")
        for attempt in range(MAX_SKIPS if self.skip_bad else 1):
            current = (index + attempt) % len(self.ids)
            try:
                sample = self.load_raw(current)
                break
            except DataError as err:
                if not self.skip_bad:
                    raise
                self.bad_ids.append(self.ids[current])
                log.warning("skipping bad sample (%d so far): %s", len(self.bad_ids), err)
        else:
            raise DataError(
                f"{MAX_SKIPS} bad samples in a row in {self.root} split {self.source_split}"
            )
        if self.transform is not None:
            # Seeded by the requested index, so a substitute is augmented like the original.
            sample = self.transform(sample, rng_seed=(self.seed, int(epoch), int(index)))
        return sample
