"""Loaders: batches, val carve, missing splits, DDP shards, (seed, epoch) order, mid-epoch start."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from cvmtl.config import load_config
from cvmtl.data.dataset import DenseDataset, resolve_split_ids
from cvmtl.data.formats import DataError
from cvmtl.data.io import write_cvmtl_sample, write_split
from cvmtl.data.loader import batches_per_epoch, build_loaders, set_epoch

H, W = 24, 32


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cvmtl")
    rng = np.random.default_rng(0)
    ids = [f"{i:03d}" for i in range(14)]
    for i, sid in enumerate(ids):
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        normal = np.zeros((H, W, 3), np.float32)
        normal[..., 2] = -1
        seg = rng.integers(0, 13, (H, W))
        depth = rng.uniform(1, 4, (H, W))
        # Partial labels: sample 1 has no depth.
        write_cvmtl_sample(root, sid, image, seg, None if i == 1 else depth, normal)
    write_split(root, "train", ids[:11])
    write_split(root, "test", ids[11:])
    return root


def _cfg(root: Path, *extra: str):
    return load_config(
        None, [f"data.root={root}", "data.num_workers=0", "data.crop=[16,16]",
               "train.batch_size=4", *extra],
    )  # fmt: skip


def _ids(loader) -> list[str]:
    return [sid for batch in loader for sid in batch["meta"]["id"]]


def test_batches_and_missing_val(root):
    loaders = build_loaders(_cfg(root), distributed=False)
    assert set(loaders) == {"train", "test"}  # no val split on disk, none asked for
    batch = next(iter(loaders["train"]))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["seg"].shape == (4, 16, 16) and batch["seg"].dtype == torch.int64
    assert batch["depth"].shape == (4, 1, 16, 16) and batch["normal"].shape == (4, 3, 16, 16)
    assert batch["has"]["depth"].dtype == torch.bool and batch["has"]["seg"].all()
    assert len(batch["meta"]["id"]) == 4 and isinstance(batch["meta"]["path"][0], str)
    test = next(iter(loaders["test"]))
    assert test["image"].shape == (3, 3, H, W)  # eval: full resolution, all 3 in one batch
    ds = loaders["train"].dataset
    partial = default_collate([ds[0], ds[1]])  # sample 1 has no depth file
    assert partial["has"]["depth"].tolist() == [True, False] and (partial["depth"][1] == 0).all()
    assert len(loaders["train"]) == 2 and loaders["train"].drop_last  # 11 // 4
    with pytest.raises(DataError, match=r"split 'val' not found"):
        build_loaders(_cfg(root), splits=["val"])


def test_val_carve_disjoint_and_seeded(root):
    cfg = _cfg(root, "data.val_fraction=0.3")
    loaders = build_loaders(cfg)
    train, val = loaders["train"].dataset.ids, loaders["val"].dataset.ids
    assert len(val) == 3 and not set(train) & set(val)
    assert sorted(train + val) == [f"{i:03d}" for i in range(11)]
    assert loaders["test"].dataset.ids == ["011", "012", "013"]
    again = resolve_split_ids(root, "cvmtl", "val", 0.3, seed=0)
    assert again == val  # seeded by data.split_seed, not by train.seed
    assert (
        build_loaders(_cfg(root, "data.val_fraction=0.3", "train.seed=5"))["val"].dataset.ids == val
    )
    other = [resolve_split_ids(root, "cvmtl", "val", 0.3, seed=s) for s in range(1, 6)]
    assert any(o != val for o in other)


def test_order_depends_on_seed_and_epoch_only(root):
    cfg = _cfg(root)
    a, b = build_loaders(cfg)["train"], build_loaders(cfg)["train"]
    set_epoch({"train": a}, 3)
    set_epoch({"train": b}, 3)
    first = [x["image"] for x in a]
    assert all(torch.equal(x, y["image"]) for x, y in zip(first, b))
    set_epoch({"train": a}, 4)
    assert _ids(a) != _ids(b)  # epoch changes the order
    seeded = build_loaders(_cfg(root, "train.seed=1"))["train"]
    set_epoch({"train": seeded}, 3)
    assert _ids(seeded) != _ids(b)


def test_mid_epoch_start_matches_full_epoch(root):
    loader = build_loaders(_cfg(root, "train.batch_size=2"))["train"]
    set_epoch({"train": loader}, 2)
    full = list(loader)
    assert len(full) == batches_per_epoch(loader) == 5
    set_epoch({"train": loader}, 2, start_batch=3)
    rest = list(loader)
    assert len(rest) == 2 == len(loader)
    for x, y in zip(full[3:], rest):
        assert x["meta"]["id"] == y["meta"]["id"]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["depth"], y["depth"])


def test_persistent_workers_see_the_epoch(root):
    cfg = _cfg(root, "data.num_workers=1")
    loader = build_loaders(cfg, splits=["train"])["train"]
    reference = build_loaders(_cfg(root), splits=["train"])["train"]
    for epoch in (0, 1):
        set_epoch({"train": loader}, epoch)
        set_epoch({"train": reference}, epoch)
        for x, y in zip(loader, reference):
            assert torch.equal(x["image"], y["image"])


def test_distributed_samplers(root):
    cfg = _cfg(root, "train.batch_size=2")
    ranks = [build_loaders(cfg, distributed=True, num_replicas=2, rank=r) for r in (0, 1)]
    for loaders in ranks:
        set_epoch(loaders, 1)
    train = [_ids(r["train"]) for r in ranks]
    assert len(train[0]) == len(train[1]) == 6  # 11 padded to 12, 3 full batches each
    assert set(train[0] + train[1]) == {f"{i:03d}" for i in range(11)}
    test = [_ids(r["test"]) for r in ranks]
    assert sorted(test[0] + test[1]) == ["011", "012", "013"]  # each sample exactly once
    set_epoch(ranks[0], 1, start_batch=1)
    assert len(list(ranks[0]["train"])) == len(ranks[0]["train"]) == 2


def test_skip_bad(root, tmp_path):
    import shutil

    shutil.copytree(root, tmp_path / "ds")
    (tmp_path / "ds" / "images" / "002.png").write_bytes(b"broken")
    ds = DenseDataset(tmp_path / "ds", "train", skip_bad=True)
    sample = ds[2]
    assert sample["meta"]["id"] == "003" and ds.bad_ids == ["002"] and ds.bad_count == 1
    with pytest.raises(DataError, match=r"002\.png.*'002'"):
        DenseDataset(tmp_path / "ds", "train")[2]
