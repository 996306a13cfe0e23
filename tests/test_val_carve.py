"""``data.val_fraction > 0``: the val role is a seeded carve of the TRAIN split, read from the
train files in every format; the test role is the held-out split and is read only by the final
test evaluation (issue 16, item 1). Which images are read is told by their pixels (formatkit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from enginekit import one_thread  # noqa: F401  (autouse fixture)
from formatkit import FORMAT_CLASSES, make_split_dataset

from cvmtl.config import load_config
from cvmtl.data.formats import DataError
from cvmtl.data.loader import build_datasets, build_loaders

REPO = Path(__file__).resolve().parents[1]
FORMATS = ("cvmtl", "nyuv2_npy", "nyud_mt")


def _overrides(root: Path, format: str, out: Path, **extra: object) -> list[str]:
    values = {
        "name": f"carve_{format}",
        "out_dir": str(out),
        "data.root": str(root),
        "data.format": format,
        "data.num_classes": FORMAT_CLASSES[format],
        "data.val_fraction": 0.25,
        "data.crop": "[32, 32]",
        "data.num_workers": 0,
        "data.eval_batch_size": 4,
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


def _grey(sample: dict) -> int:
    image = sample["image"]
    assert (image == image.flat[0]).all(), "a fixture image is one grey level"
    return int(image.flat[0])


@pytest.mark.parametrize("format", FORMATS)
def test_val_role_reads_a_carve_of_the_train_files(tmp_path, format):
    levels = make_split_dataset(tmp_path / "data", format)
    cfg = load_config(None, _overrides(tmp_path / "data", format, tmp_path / "runs"))
    ds = build_datasets(cfg)
    train, val, test = ds["train"], ds["val"], ds["test"]
    assert len(val) == 3 and len(train) == 9  # round(0.25 * 12) carved
    assert set(train.ids).isdisjoint(val.ids)
    assert set(train.ids) | set(val.ids) == set(levels["train"])
    assert (val.split, val.source_split) == ("val", "train")
    for dataset, split in ((train, "train"), (val, "train"), (test, "test")):
        for i, sid in enumerate(dataset.ids):
            raw = dataset.load_raw(i)
            assert _grey(raw) == levels[split][sid], (dataset.split, sid, raw["meta"]["path"])
    assert set(test.ids) == set(levels["test"])
    if format == "nyuv2_npy":
        # the carved ids also name files of val/ (the test split): their pixels must not be read
        assert set(val.ids) & set(levels["test"])
        assert all("/train/image/" in val.load_raw(i)["meta"]["path"] for i in range(len(val)))


@pytest.mark.parametrize("format", ("nyuv2_npy", "nyud_mt"))
def test_test_role_is_never_carved_even_when_named_like_val(tmp_path, format):
    # In nyuv2_npy / nyud_mt the held-out split is called "val": naming it so must not carve it.
    levels = make_split_dataset(tmp_path / "data", format)
    cfg = load_config(
        None, _overrides(tmp_path / "data", format, tmp_path / "runs", data__test_split="val")
    )
    ds = build_datasets(cfg, ["val", "test"])
    assert set(ds["test"].ids) == set(levels["test"])
    assert [_grey(ds["test"].load_raw(i)) for i in range(4)] == list(levels["test"].values())
    assert set(ds["val"].ids) < set(levels["train"])
    assert all(_grey(ds["val"].load_raw(i)) < 100 for i in range(len(ds["val"])))  # train greys


def test_baseline_configs_validate_on_the_same_carve(tmp_path):
    from cvmtl.workflows.baselines import baseline_config

    make_split_dataset(tmp_path / "data", "nyuv2_npy")
    cfg = load_config(None, _overrides(tmp_path / "data", "nyuv2_npy", tmp_path / "runs"))
    ours = build_datasets(cfg, ["val"])["val"]
    base = build_loaders(baseline_config(cfg, "depth", 2), False)["val"].dataset
    assert base.ids == ours.ids and base.source_split == "train"
    assert all(_grey(base.load_raw(i)) < 100 for i in range(len(base)))


def _track_reads(monkeypatch) -> list[tuple[str, int]]:
    """(phase, grey level) of every sample read; the phase is "train" except inside the
    trainer's validate (model selection) and test (the final test evaluation)."""
    import cvmtl.data.dataset as dataset
    from cvmtl.engine import trainer

    reads: list[tuple[str, int]] = []
    phase = ["train"]
    real_load = dataset.load_sample

    def load_sample(*args, **kwargs):
        sample = real_load(*args, **kwargs)
        reads.append((phase[0], _grey(sample)))
        return sample

    def in_phase(name, fn):
        def wrapped(*args, **kwargs):
            phase[0] = name
            try:
                return fn(*args, **kwargs)
            finally:
                phase[0] = "train"

        return wrapped

    monkeypatch.setattr(dataset, "load_sample", load_sample)
    monkeypatch.setattr(trainer, "validate", in_phase("val", trainer.validate))
    monkeypatch.setattr(trainer, "test", in_phase("test", trainer.test))
    return reads


@pytest.mark.parametrize("format", FORMATS)
def test_training_selects_on_the_carve_and_reads_test_only_at_the_end(
    tmp_path, monkeypatch, format
):
    """2 steps of fit(); nyuv2_npy runs the shipped configs/nyuv2_13_npy.yaml (12 train and 4
    val/ files, small-model overrides): it used to fail at the first validation."""
    from cvmtl.engine.trainer import fit

    levels = make_split_dataset(tmp_path / "data", format)
    small = {
        "model__backbone": "resnet18",
        "model__pretrained": "false",
        "model__neck_channels": 32,
        "model__head_channels": 16,
        "train__max_steps": 2,
        "train__batch_size": 2,
        "train__eval_every": 1,
        "train__amp": "none",
        "train__channels_last": "false",
        "train__device": "cpu",
        "train__num_vis": 1,
        "train__warmup_steps": 0,
    }
    config = REPO / "configs" / "nyuv2_13_npy.yaml" if format == "nyuv2_npy" else None
    overrides = _overrides(tmp_path / "data", format, tmp_path / "runs", **small)
    if config is None:
        overrides.append("train.best_metric=seg/miou")
    cfg = load_config(config, overrides)
    assert cfg.data.val_fraction > 0
    carved = set(build_datasets(cfg, ["val"])["val"].ids)
    reads = _track_reads(monkeypatch)
    summary = fit(cfg)
    assert summary["val"] is not None and summary["test"] is not None
    by_level = {grey: (split, sid) for split, ids in levels.items() for sid, grey in ids.items()}
    seen = {p: [by_level[g] for q, g in reads if q == p] for p in ("train", "val", "test")}
    assert seen["train"] and seen["val"] and seen["test"]
    assert all(split == "train" and sid not in carved for split, sid in seen["train"])
    assert sorted(sid for split, sid in seen["val"] if split == "train") == sorted(carved)
    assert all(split == "train" for split, _ in seen["val"])  # selection never sees test images
    assert sorted(seen["test"]) == sorted(("test", sid) for sid in levels["test"])
    assert (Path(summary["run_dir"]) / "best.pt").is_file()
    assert np.isfinite(summary["best"]["value"])


def test_carving_one_train_image_names_the_split(tmp_path):
    make_split_dataset(tmp_path / "data", "nyuv2_npy", train=1)
    cfg = load_config(None, _overrides(tmp_path / "data", "nyuv2_npy", tmp_path / "runs"))
    with pytest.raises(DataError, match=r"val_fraction=0.25: .* 1 id\(s\) of split 'train' in "):
        build_datasets(cfg, ["val"])
