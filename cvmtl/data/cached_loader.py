"""The cached train loader (``data.cache: host | device``): the split decoded once
(:mod:`cvmtl.data.cache`), batches augmented whole on the training device
(:mod:`cvmtl.data.batch_augment`, :mod:`cvmtl.data.batch_jitter`).

It replaces the train DataLoader with the same contract: ``batch_size``, ``drop_last``,
``sampler`` (the one the DataLoader would get: its (epoch, index) order, DDP shard and
mid-epoch start), ``dataset`` (for ``set_epoch``), and batches ``{"image", task..., "has",
"meta"}`` as ``default_collate`` makes them. A sample's draws come from
``np.random.default_rng(SeedSequence((seed, epoch, index)))`` in ``TrainTransform``'s order, so
the geometry equals the worker loader's for the same sample. ``host`` keeps the arrays in
(pinned, when training on CUDA) host memory and moves each batch's raw samples to the device;
``device`` keeps them on the device. The worker loader (``data.cache: none``) stays for data
that does not fit, and for ``data.photometric`` pipelines, which only albumentations runs.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler, default_collate

from cvmtl.data import batch_augment as ba
from cvmtl.data.batch_jitter import color_jitter, draw_jitter
from cvmtl.data.cache import CachedSplit, build_cache, decode, memory_estimate
from cvmtl.tasks import LabelKind, get_task

log = logging.getLogger(__name__)


def train_device(cfg: Any) -> torch.device:
    """The device batches are made on: the training device (the current CUDA device under
    ``auto`` / ``cuda`` when there is one, as the engine picks it), else the CPU."""
    if cfg.train.device != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class BatchAugment:
    """``TrainTransform`` for batches: crop, scale range, flip, colour jitter, mean / std."""

    def __init__(self, cfg: Any, kinds: dict[str, LabelKind]) -> None:
        d = cfg.data
        if d.photometric is not None:
            raise ValueError(
                "data.cache runs the built-in colour jitter (data.color_jitter) on batches; "
                "data.photometric pipelines run per sample in albumentations: set data.cache=none"
            )
        self.crop = (int(d.crop[0]), int(d.crop[1]))
        self.scale_range = (float(d.scale_range[0]), float(d.scale_range[1]))
        self.hflip, self.jitter = bool(d.hflip), float(d.color_jitter)
        self.mean, self.std = list(d.mean), list(d.std)
        self.kinds = kinds

    def draw(self, seed: tuple[int, int, int], size: Any) -> tuple[tuple, np.ndarray | None]:
        """One sample's (geometry, jitter) draws from its (seed, epoch, index) generator."""
        rng = np.random.default_rng(np.random.SeedSequence(seed))
        geometry = ba.draw_geometry(rng, size, self.crop, self.scale_range, self.hflip)
        return geometry, draw_jitter(rng, self.jitter) if self.jitter > 0 else None

    def __call__(
        self, image: torch.Tensor, labels: dict[str, torch.Tensor], codecs: dict[str, str],
        sizes: list, seeds: list[tuple[int, int, int]], samples: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """Raw uint8 images and stored labels of a batch (on the device; with ``samples``, the
        whole cache and the batch's rows of it) -> augmented tensors."""
        draws = [self.draw(seed, size) for seed, size in zip(seeds, sizes, strict=True)]
        geo = ba.plan(sizes, [d[0] for d in draws], self.crop).to(image.device)
        pixels = ba.warp_image(image, geo, samples)
        if self.jitter > 0:
            pixels = color_jitter(pixels, np.stack([d[1] for d in draws]))
        out = {"image": ba.normalize(pixels, self.mean, self.std)}
        for task, kind in self.kinds.items():
            values = decode(codecs[task], ba.warp_label(labels[task], geo, samples))
            out[task] = ba.relabel(kind, values, geo)
        return out


class CachedLoader:
    """Batches of a :class:`CachedSplit` in the order of ``sampler`` (see the module doc)."""

    def __init__(
        self, dataset: Any, sampler: Sampler, batch_size: int, drop_last: bool,
        cache: CachedSplit, augment: BatchAugment, device: torch.device,
    ) -> None:  # fmt: skip
        self.dataset, self.sampler = dataset, sampler
        self.batch_size, self.drop_last = int(batch_size), bool(drop_last)
        self.cache, self.augment, self.device = cache, augment, device

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.device.type == "cpu":  # made ahead, beside the training step
            return prefetched(self._batches())
        return self._batches()  # CUDA: the kernels queue up asynchronously already

    def _batches(self) -> Iterator[dict[str, Any]]:
        batch: list[tuple[int, int]] = []
        for epoch, index in self.sampler:
            batch.append((int(epoch), int(index)))
            if len(batch) == self.batch_size:
                yield self.make_batch(batch)
                batch = []
        if batch and not self.drop_last:
            yield self.make_batch(batch)

    def make_batch(self, items: list[tuple[int, int]]) -> dict[str, Any]:
        """The batch of the (epoch, index) pairs ``items``."""
        if self.device.type != "cpu":
            return self._batch(items)
        # One intra-op thread on the CPU: the ops are small and memory-bound, and OpenMP
        # threads that share 2 busy cores wait on each other (10x slower batches, measured).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._batch(items)
        finally:
            torch.set_num_threads(threads)

    def _batch(self, items: list[tuple[int, int]]) -> dict[str, Any]:
        cache = self.cache
        rows = cache.rows[[index for _, index in items]]
        sizes = cache.sizes[rows].tolist()
        # Seeded by the requested index, so a substitute is augmented like the original.
        seeds = [(self.dataset.seed, epoch, index) for epoch, index in items]
        if cache.image.device == self.device:  # crop straight out of the cache
            samples = rows.to(self.device)
            out = self.augment(cache.image, cache.labels, cache.codecs, sizes, seeds, samples)
        else:  # host cache, CUDA training: the batch's raw samples go over, then augment
            image = _take(cache.image, rows, self.device)
            labels = {t: _take(cache.labels[t], rows, self.device) for t in self.augment.kinds}
            out = self.augment(image, labels, cache.codecs, sizes, seeds)
        out["has"] = {t: has[rows] for t, has in cache.has.items()}
        out["meta"] = default_collate([cache.meta[r] for r in rows.tolist()])
        return out


def prefetched(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """``items`` made ahead in a background thread (at most ``depth`` waiting), so that making
    the next batch overlaps the training step, as a DataLoader's worker processes do; the
    cache is shared, not copied into workers. Torch ops release the GIL; the thread runs them
    on one intra-op thread (``torch.set_num_threads`` is per thread under OpenMP). An error
    while making an item is raised here; leaving the loop early stops the thread."""
    waiting: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                waiting.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        torch.set_num_threads(1)
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as err:  # handed to the consumer, which raises it
            put(("error", err))

    thread = threading.Thread(target=produce, name="cvmtl-cached-batches", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = waiting.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def _take(stored: torch.Tensor, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows of a host cache on the CUDA ``device``, through pinned memory (the copy overlaps
    the previous step)."""
    picked = torch.empty((len(rows), *stored.shape[1:]), dtype=stored.dtype, pin_memory=True)
    torch.index_select(stored, 0, rows, out=picked)  # straight into pinned memory
    return picked.to(device, non_blocking=True)


def label_kinds(tasks: list[str]) -> dict[str, LabelKind]:
    """Task -> LabelKind of the configured tasks (asked of their specs)."""
    return {task: get_task(task).label for task in tasks}


def cached_train_loader(
    cfg: Any, dataset: Any, sampler: Sampler, batch_size: int, drop_last: bool
) -> CachedLoader:
    """The train loader of ``data.cache`` (host / device) over ``dataset``: decodes the split
    once with ``data.num_workers`` workers."""
    kinds = label_kinds(list(cfg.tasks))
    augment = BatchAugment(cfg, kinds)  # refuses what it cannot run before the long decode
    device = train_device(cfg)
    start = time.perf_counter()
    cache = build_cache(dataset, kinds, cfg.data.num_workers)
    h, w = cache.image.shape[2:]
    log.info(
        "data.cache=%s: %d samples decoded in %.1f s, %.1f MB (estimate %.1f MB), on %s",
        cfg.data.cache, len(cache.meta), time.perf_counter() - start, cache.nbytes / 2**20,
        memory_estimate(len(cache.meta), (h, w), kinds) / 2**20, device,
    )  # fmt: skip
    if cfg.data.cache == "device":
        cache = cache.to(device)
    return CachedLoader(dataset, sampler, batch_size, drop_last, cache, augment, device)
