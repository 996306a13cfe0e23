"""build_loaders(cfg, distributed) -> {"train", "val", "test"} DataLoaders, with samplers whose
order depends only on (seed, epoch) and that can start mid-epoch (exact resume).

The engine calls ``set_epoch(loaders, epoch, start_batch)`` before iterating an epoch: it sets the
sampler's epoch (shuffle order, and the epoch that seeds each sample's augmentation, passed to
the dataset with every index) and the batch to start from.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from cvmtl.data.dataset import ROLES, DenseDataset, resolve_role
from cvmtl.data.formats import DataError, load_dataset_info, split_source
from cvmtl.data.transforms import build_transforms

log = logging.getLogger(__name__)


class SeededSampler(Sampler):
    """Single-process sampler: a permutation seeded by (seed, epoch), yielding (epoch, index)."""

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle = size, int(seed), shuffle
        self.epoch, self.start_index = 0, 0

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        self.epoch, self.start_index = int(epoch), int(start_index)

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        return np.random.default_rng((self.seed, self.epoch)).permutation(self.size).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.order()[self.start_index :]:
            yield self.epoch, index

    def __len__(self) -> int:
        return max(0, self.size - self.start_index)


class DistributedEpochSampler(DistributedSampler):
    """torch's DistributedSampler (order seeded by seed + epoch, padded to equal shards) that
    yields (epoch, index) and can start at ``start_index`` of this rank's shard."""

    start_index = 0

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        super().set_epoch(epoch)
        self.start_index = int(start_index)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in list(super().__iter__())[self.start_index :]:
            yield self.epoch, index

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start_index)


class ShardSampler(Sampler):
    """Evaluation under DDP: rank r takes indices r, r + W, ... with no padding, so every sample
    is counted exactly once (shards differ by at most one sample; metrics all-reduce at the end)."""

    def __init__(self, size: int, num_replicas: int, rank: int) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.indices = list(range(rank, size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_datasets(cfg: Any, splits: Sequence[str] | None = None) -> dict[str, DenseDataset]:
    """Datasets of the roles ``splits`` (default: train, plus val and test where they exist).

    With ``data.val_fraction > 0`` val is a seeded carve of the train split, read from the train
    files, and train excludes it; test is the held-out split (see :func:`resolve_role`). A role
    asked for explicitly (and always train) that does not exist is a DataError.
    """
    d = cfg.data
    info = load_dataset_info(d.root, d.format, d.num_classes)
    if len(info["classes"]) != d.num_classes and (d.format != "cvmtl" or _has_yaml(d.root)):
        raise ValueError(
            f"data.num_classes is {d.num_classes} but {d.root} ({d.format}) has "
            f"{len(info['classes'])} classes"
        )
    train_tf, eval_tf = build_transforms(cfg)
    names = {"train": d.train_split, "val": d.val_split, "test": d.test_split}
    out: dict[str, DenseDataset] = {}
    for role in splits or ROLES:
        if role not in names:
            raise ValueError(f"unknown split role {role!r} (expected one of {ROLES})")
        try:
            source, ids = resolve_role(d.root, d.format, role, names, d.val_fraction, d.split_seed)
        except DataError:
            if splits is not None or role == "train":
                raise
            log.info("no %s split (%s) in %s: no %s loader", role, names[role], d.root, role)
            continue
        out[role] = DenseDataset(
            d.root, names[role], d.format, cfg.tasks, train_tf if role == "train" else eval_tf,
            d.num_classes, d.skip_bad, ids=ids, seed=cfg.train.seed, source_split=source,
        )  # fmt: skip
    if "val" in out and "test" in out and d.val_fraction == 0:
        same = split_source(d.root, d.format, d.val_split) == split_source(
            d.root, d.format, d.test_split
        )
        if same:
            log.warning(
                "val and test are the same split (%s): checkpoints would be selected on the test "
                "split; set data.val_fraction to carve a validation split out of train",
                names["val"],
            )
    return out


def _has_yaml(root: str) -> bool:
    return (Path(root) / "dataset.yaml").is_file()


def build_loaders(
    cfg: Any,
    distributed: bool = False,
    splits: Sequence[str] | None = None,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> dict[str, DataLoader]:
    """DataLoaders keyed by role (train / val / test, see :func:`build_datasets`).

    Train shuffles with a (seed, epoch) order and drops the last incomplete batch (unless that
    leaves none); eval loaders keep the order and use ``data.eval_batch_size`` (0 = train's).
    Under DDP (``num_replicas`` / ``rank`` default to the process group) train uses
    :class:`DistributedEpochSampler` and eval :class:`ShardSampler`; ``batch_size`` is per process.
    """
    if distributed:
        import torch.distributed as dist

        num_replicas = num_replicas if num_replicas is not None else dist.get_world_size()
        rank = rank if rank is not None else dist.get_rank()
    d, seed = cfg.data, cfg.train.seed
    pin = torch.cuda.is_available() and cfg.train.device != "cpu"
    loaders: dict[str, DataLoader] = {}
    for role, dataset in build_datasets(cfg, splits).items():
        train = role == "train"
        batch = cfg.train.batch_size if train or d.eval_batch_size <= 0 else d.eval_batch_size
        if train and distributed:
            sampler: Sampler = DistributedEpochSampler(
                dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed
            )
        elif train:
            sampler = SeededSampler(len(dataset), seed, shuffle=True)
        elif distributed:
            sampler = ShardSampler(len(dataset), num_replicas, rank)
        else:
            sampler = SeededSampler(len(dataset), seed, shuffle=False)
        drop_last = train and len(sampler) >= batch  # never an epoch without a batch
        if train and d.cache != "none":
            # data.cache: the split decoded once, batches augmented on the device (same contract)
            from cvmtl.data.cached_loader import cached_train_loader

            loaders[role] = cached_train_loader(cfg, dataset, sampler, batch, drop_last)
            continue
        loaders[role] = DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            num_workers=d.num_workers,
            pin_memory=pin,
            drop_last=drop_last,
            # No cv2.setNumThreads in workers: in a forked child it waits forever on the parent's
            # thread pool (seen with OpenCV's pthreads backend).
            persistent_workers=d.num_workers > 0,
            # An own generator: iter(loader) must not draw from the global torch RNG (resume).
            generator=torch.Generator().manual_seed(seed),
        )
    return loaders


def set_epoch(loaders: dict[str, DataLoader], epoch: int, start_batch: int = 0) -> None:
    """Set the epoch of every loader's sampler and dataset; the train loader starts at batch
    ``start_batch`` of that epoch (mid-epoch resume). Call before iterating an epoch."""
    for role, loader in loaders.items():
        start = start_batch * loader.batch_size if role == "train" else 0
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch, start)
        elif start:
            raise ValueError(f"the {role} loader's sampler cannot start mid-epoch")
        loader.dataset.set_epoch(epoch)


def batches_per_epoch(loader: DataLoader) -> int:
    """Full-epoch batch count of a loader (independent of a mid-epoch start)."""
    sampler = loader.sampler
    size = getattr(sampler, "num_samples", getattr(sampler, "size", len(sampler)))
    return size // loader.batch_size if loader.drop_last else math.ceil(size / loader.batch_size)


def measure_loader_throughput(
    cfg: Any, num_workers: int, batches: int = 20, warmup: int = 2
) -> dict[str, float]:
    """Train-loader samples/s with ``num_workers`` workers (after ``warmup`` batches), and per
    worker. Run: ``python -m cvmtl.data.loader --config C.yaml --workers N [key=value ...]``."""
    cfg.data.num_workers = num_workers
    loader = build_loaders(cfg, splits=["train"])["train"]
    set_epoch({"train": loader}, 0)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            count += len(next(it)["image"])
        except StopIteration:
            set_epoch({"train": loader}, 1)
            it = iter(loader)
    elapsed = time.perf_counter() - start
    rate = count / elapsed
    return {
        "samples_s": rate,
        "samples_s_per_worker": rate / max(1, num_workers),
        "seconds": elapsed,
    }


if __name__ == "__main__":
    import argparse
    import json

    from cvmtl.config import load_config

    parser = argparse.ArgumentParser(description="Measure the train loader's throughput.")
    parser.add_argument("--config", default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    result = measure_loader_throughput(
        load_config(args.config, args.overrides), args.workers, args.batches
    )
    print(json.dumps(result))
