"""Segmentation class weights from the training split (``cvmtl class-weights``): counts read
back from the label PNGs, the weights against hand-computed values, and the printed line
accepted by the config as ``loss.seg_class_weights``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from enginekit import NUM_CLASSES, make_tiny_dataset, tiny_config, tiny_overrides
from PIL import Image

from cvmtl import cli
from cvmtl.config import load_config
from cvmtl.data.class_weights import frequency_weights, pixel_counts, training_pixel_counts


def test_pixel_counts_skip_unlabelled_pixels():
    a = np.array([[0, 1, 255], [1, 1, 2]])
    b = np.array([[2, 7, 255]])  # 7 is outside 3 classes
    assert pixel_counts([a, b], 3).tolist() == [1, 3, 2]


def test_inverse_frequency_weights_by_hand():
    # f = [.6, .3, .1]; power 1: w = 1 / (3 f), since sum_c f_c / f_c = 3
    w = frequency_weights(np.array([6, 3, 1]), power=1.0)
    assert w == pytest.approx([1 / 1.8, 1 / 0.9, 1 / 0.3])
    assert frequency_weights(np.array([6, 3, 1]), power=0.0) == pytest.approx([1.0, 1.0, 1.0])


def test_square_root_weights_keep_the_loss_scale_and_cover_absent_classes():
    counts = np.array([60, 30, 10, 0])
    w = frequency_weights(counts, power=0.5)
    root_sum = np.sqrt(0.6) + np.sqrt(0.3) + np.sqrt(0.1)
    assert w[:3] == pytest.approx([1 / np.sqrt(f) / root_sum for f in (0.6, 0.3, 0.1)])
    assert sum(c / 100 * x for c, x in zip(counts, w)) == pytest.approx(1.0)
    assert w[3] == max(w[:3])  # never seen: weighted as the rarest class


@pytest.mark.parametrize("counts, power", [([0, 0], 0.5), ([1, 2], -1.0)])
def test_bad_counts_or_power_are_errors(counts, power):
    with pytest.raises(ValueError, match="class weights"):
        frequency_weights(np.array(counts), power)


def _png_counts(root: Path, split: str) -> np.ndarray:
    ids = (root / "splits" / f"{split}.txt").read_text().split()
    labels = [np.array(Image.open(root / "segmentation" / f"{i}.png")) for i in ids]
    return pixel_counts(labels, NUM_CLASSES)


def test_training_counts_are_the_train_labels_only(tmp_path: Path):
    data = make_tiny_dataset(tmp_path / "data")
    counts = training_pixel_counts(tiny_config(data, tmp_path))
    assert counts.tolist() == _png_counts(data, "train").tolist()
    assert counts.sum() == 8 * 38 * 48  # 8 images, 2 unlabelled rows each
    # a validation carve out of train is not training data
    carved = training_pixel_counts(tiny_config(data, tmp_path, data__val_fraction=0.25))
    assert carved.sum() == 6 * 38 * 48


def test_the_command_prints_a_line_the_config_takes(tmp_path: Path, capsys):
    """Run on the demo config moved to 4-class data: the config's 13 weights do not stop it
    (they are what the command recomputes), and its line makes the config valid again."""
    data = make_tiny_dataset(tmp_path / "data")
    overrides = [o for o in tiny_overrides(data, tmp_path) if "seg_class_weights" not in o]
    with pytest.raises(ValueError, match="13 weights for data.num_classes 4"):
        load_config("synthetic_demo", overrides)
    argv = ["class-weights", "--config", "synthetic_demo", "--digits", "4", *overrides]
    assert cli.main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    key, value = re.fullmatch(r"(loss\.seg_class_weights): (\[.*\])", line).groups()
    cfg = load_config("synthetic_demo", [*overrides, f"{key}={value}"])
    expected = frequency_weights(_png_counts(data, "train"))
    assert cfg.loss.seg_class_weights == pytest.approx(expected, abs=5e-5)


def test_the_demo_configs_weights_are_those_of_the_demo_data(tmp_path: Path):
    """The shipped weights are what the command computes on the data `make demo` renders (the
    demo's 600 training rooms at its crop size and seed): a renderer change that moves the class
    frequencies fails here until the config's weights are recomputed."""
    from cvmtl.workflows.demo import DemoOptions, ensure_dataset

    cfg = load_config("synthetic_demo", [f"data.root={tmp_path / 'synthetic'}"])
    train = DemoOptions().counts["train"]
    ensure_dataset(cfg, DemoOptions(counts={"train": train}, workers=2))
    weights = frequency_weights(training_pixel_counts(cfg))
    assert cfg.loss.seg_class_weights == pytest.approx(weights, abs=5e-4)  # printed to 3 decimals
