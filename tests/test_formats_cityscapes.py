"""Cityscapes: the mtan / LibMTL npy copy and the official folders, decoded from fixture files
written from each layout's definition (values checked by hand)."""

from __future__ import annotations

import numpy as np
import pytest
from formatkit import (
    CITY_BASELINE,
    CITY_FX,
    SMALL,
    label_tasks,
    level,
    write_cityscapes,
    write_cityscapes_npy,
)

from cvmtl.data.dataset import resolve_role
from cvmtl.data.formats import DataError, list_ids, load_dataset_info, load_sample
from cvmtl.tasks.spec import DISPARITY

NAMES = {"train": "train", "val": "val", "test": "test"}


@pytest.fixture(autouse=True)
def _tasks():
    with label_tasks({"disparity": DISPARITY}):
        yield


def test_npy_copy_values_and_splits(tmp_path):
    write_cityscapes_npy(tmp_path)
    assert list_ids(tmp_path, "cityscapes_npy", "train") == ["0", "1", "2"]
    assert list_ids(tmp_path, "cityscapes_npy", "test") == ["0", "1"]  # val/ = the test split
    s = load_sample(tmp_path, "cityscapes_npy", "train", "2", ("seg", "disparity"), 7)
    assert s["has"] == {"seg": True, "disparity": True}
    assert (s["image"] == level("train", 2)).all()
    assert (s["seg"][0] == 255).all() and (s["seg"][1:] == 2).all()  # -1 -> 255; 2 % 7
    assert (s["disparity"][:, 0] == 0).all()
    np.testing.assert_allclose(s["disparity"][:, 1:], 0.3, rtol=1e-6)
    t = load_sample(tmp_path, "cityscapes_npy", "test", "1", ("seg",), 7)
    assert (t["image"] == level("test", 1)).all()  # the same id in val/ is another image
    info = load_dataset_info(tmp_path, "cityscapes_npy")
    assert info["classes"][0] == "flat" and len(info["palette"]) == 7


def test_npy_val_fraction_carves_train(tmp_path):
    write_cityscapes_npy(tmp_path, train=6)
    source, val = resolve_role(tmp_path, "cityscapes_npy", "val", NAMES, 1 / 3, seed=0)
    _, train = resolve_role(tmp_path, "cityscapes_npy", "train", NAMES, 1 / 3, seed=0)
    assert source == "train" and len(val) == 2 and sorted(val + train) == [str(i) for i in range(6)]
    s = load_sample(tmp_path, "cityscapes_npy", source, val[0], ("seg",), 7)
    assert (s["image"] == level("train", int(val[0]))).all()  # read from train/, never val/
    test_source, test = resolve_role(tmp_path, "cityscapes_npy", "test", NAMES, 1 / 3, seed=0)
    assert test == ["0", "1"] and test_source == "test"


def test_npy_label_folders_and_errors(tmp_path):
    write_cityscapes_npy(tmp_path)
    (tmp_path / "train" / "label_19").mkdir()
    label = np.full(SMALL, 18, np.float32)
    np.save(tmp_path / "train" / "label_19" / "0.npy", label)
    s = load_sample(tmp_path, "cityscapes_npy", "train", "0", ("seg",), 19)
    assert (s["seg"] == 18).all()  # label_19 for 19 classes
    np.save(tmp_path / "train" / "label_7" / "1.npy", np.full(SMALL, 7.0, np.float32))
    with pytest.raises(DataError, match=r"\[7\] outside 0..6.*label_7.1\.npy \(id '1'\)"):
        load_sample(tmp_path, "cityscapes_npy", "train", "1", ("seg",), 7)
    np.save(tmp_path / "train" / "depth" / "1.npy", np.zeros((*SMALL, 2), np.float32))
    with pytest.raises(DataError, match=r"depth.1\.npy \(id '1'\)"):
        load_sample(tmp_path, "cityscapes_npy", "train", "1", ("disparity",), 7)
    with pytest.raises(ValueError, match="inverse depth: ask 'disparity'"):
        load_sample(tmp_path, "cityscapes_npy", "train", "0", ("depth",), 7)
    with pytest.raises(DataError, match="split 'extra' not found"):
        list_ids(tmp_path, "cityscapes_npy", "extra")


def test_official_folders(tmp_path):
    ids = write_cityscapes(tmp_path)
    assert list_ids(tmp_path, "cityscapes", "train") == ids["train"]
    assert list_ids(tmp_path, "cityscapes", "test") == ids["val"]
    sid = ids["train"][0]
    tasks = ("seg", "disparity", "depth")
    s = load_sample(tmp_path, "cityscapes", "train", sid, tasks, 19)
    assert s["has"] == dict.fromkeys(tasks, True) and s["meta"]["id"] == sid
    seg = s["seg"]
    assert (seg[0:4] == 0).all() and (seg[4:8] == 13).all()  # road, car (trainIds)
    assert (seg[8:] == 255).all()  # parking and unlabeled are not evaluated
    d = np.array([4.0, 5.0, 6.0])[np.arange(SMALL[1]) % 3]
    d[0] = 0
    np.testing.assert_allclose(s["disparity"], np.tile(d, (SMALL[0], 1)))
    depth = np.where(d > 0, CITY_BASELINE * CITY_FX / np.maximum(d, 1), 0)  # 100, 80, 66.7 m
    np.testing.assert_allclose(s["depth"], np.tile(depth, (SMALL[0], 1)), rtol=1e-6)
    seven = load_sample(tmp_path, "cityscapes", "train", sid, ("seg",), 7)["seg"]
    assert (seven[0:4] == 0).all() and (seven[4:8] == 6).all() and (seven[8:] == 255).all()
    other = load_sample(tmp_path, "cityscapes", "train", ids["train"][1], tasks, 19)
    assert other["has"] == {"seg": True, "disparity": False, "depth": False}
    assert load_dataset_info(tmp_path, "cityscapes")["classes"][13] == "car"
    assert load_dataset_info(tmp_path, "cityscapes", num_classes=7)["classes"][6] == "vehicle"


def test_official_errors_name_the_file(tmp_path):
    ids = write_cityscapes(tmp_path)
    sid = ids["train"][0]
    camera = next((tmp_path / "camera").rglob(f"{sid}_camera.json"))
    camera.write_text('{"extrinsic": {}}')
    with pytest.raises(DataError, match=rf"baseline.*{sid}_camera\.json \(id '{sid}'\)"):
        load_sample(tmp_path, "cityscapes", "train", sid, ("depth",), 19)
    disparity = next((tmp_path / "disparity").rglob(f"{sid}_disparity.png"))
    disparity.write_bytes(disparity.read_bytes()[:40])
    with pytest.raises(DataError, match=rf"truncated PNG: .*{sid}_disparity\.png"):
        load_sample(tmp_path, "cityscapes", "train", sid, ("disparity",), 19)
    with pytest.raises(DataError, match=r"split 'extra' not found.*found: \['train', 'val'\]"):
        list_ids(tmp_path, "cityscapes", "extra")
