"""Segmentation class weights from a training split's pixel frequencies.

``loss.seg_class_weights`` takes one weight per class (mmsegmentation's ``class_weight``);
``cvmtl class-weights`` computes them: with ``f_c`` the fraction of the labelled training pixels
of class ``c``, ``w_c = f_c ** -power`` scaled so that ``sum_c f_c w_c = 1``, i.e. the average
weight of a labelled pixel is 1 and the loss keeps its scale. ``power`` 1 is plain inverse
frequency (ENet-style balancing at its strongest), 0.5 (the default) its square root, which
lifts the rare classes without letting a handful of their pixels dominate a batch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import numpy as np


def pixel_counts(labels: Iterable[np.ndarray], num_classes: int) -> np.ndarray:
    """Pixels per class ``[num_classes]`` over HxW class-id maps (other values are unlabelled)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for label in labels:
        ids = np.asarray(label).ravel()
        ids = ids[(ids >= 0) & (ids < num_classes)]
        counts += np.bincount(ids.astype(np.int64), minlength=num_classes)
    return counts


def frequency_weights(counts: np.ndarray, power: float = 0.5) -> list[float]:
    """``w_c = f_c ** -power`` with ``sum_c f_c w_c = 1`` (see the module docstring).

    A class with no training pixel never meets its weight in the loss; it gets the largest
    weight of the others (it is the rarest), so the list stays usable on other data.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if power < 0:
        raise ValueError(f"class weights: power must be >= 0, got {power}")
    if counts.sum() <= 0:
        raise ValueError("class weights: no labelled pixel in the training split")
    freq = counts / counts.sum()
    present = freq > 0
    raw = np.zeros_like(freq)
    raw[present] = freq[present] ** -power
    weights = raw / float((freq * raw).sum())
    weights[~present] = weights[present].max()
    return [float(w) for w in weights]


def training_pixel_counts(cfg: Any) -> np.ndarray:
    """Pixels per class of the segmentation labels in ``cfg``'s training split (the train role:
    without the validation carve of ``data.val_fraction``), read raw, before augmentation."""
    from cvmtl.data.loader import build_datasets
    from cvmtl.tasks.seg import SEG  # the task that loss.seg_class_weights weighs

    cfg = copy.deepcopy(cfg)
    cfg.tasks = [SEG.name]
    dataset = build_datasets(cfg, ["train"])["train"]
    labels = (dataset.load_raw(i)[SEG.name] for i in range(len(dataset)))
    return pixel_counts(labels, cfg.data.num_classes)
