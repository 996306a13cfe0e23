"""Edges of NYUD-MT (``edge/{id}.npy`` as Multi-Task-Learning-PyTorch stores them) and the cvmtl
format's files for tasks beyond seg / depth / normal: binary maps as 0 / 255 PNGs and any other
registered task as ``{task}/{id}.npy``."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from formatkit import HW, label_tasks, make_split_dataset, write_nyud_edges

from cvmtl.data.formats import DataError, load_sample
from cvmtl.data.io import write_cvmtl_sample, write_split
from cvmtl.tasks import TASKS, get_task, register
from cvmtl.tasks.spec import BINARY, THIN_BINARY, LabelKind


@pytest.fixture(autouse=True)
def _tasks():
    with label_tasks({"edge": THIN_BINARY, "saliency": BINARY}):
        yield


def test_nyud_edges(tmp_path):
    make_split_dataset(tmp_path, "nyud_mt", train=2, held=1)
    write_nyud_edges(tmp_path, ["train_0"])
    s = load_sample(tmp_path, "nyud_mt", "train", "train_0", ("seg", "edge"), 40)
    assert s["has"] == {"seg": True, "edge": True} and s["edge"].dtype == np.int64
    expected = np.zeros(HW, np.int64)
    expected[:, 5] = 1
    np.testing.assert_array_equal(s["edge"], expected)
    t = load_sample(tmp_path, "nyud_mt", "train", "train_1", ("edge",), 40)
    assert not t["has"]["edge"] and (t["edge"] == 255).all()
    np.save(tmp_path / "edge" / "train_1.npy", np.full(HW, 0.5, np.float32))
    with pytest.raises(
        DataError, match=r"non-integer values: .*edge.train_1\.npy \(id 'train_1'\)"
    ):
        load_sample(tmp_path, "nyud_mt", "train", "train_1", ("edge",), 40)
    np.save(tmp_path / "edge" / "train_1.npy", np.full(HW, 3.0, np.float32))
    with pytest.raises(DataError, match=r"0 / 1 .*edge.train_1\.npy"):
        load_sample(tmp_path, "nyud_mt", "train", "train_1", ("edge",), 40)
    with pytest.raises(ValueError, match="nyud_mt has no 'saliency' labels"):
        load_sample(tmp_path, "nyud_mt", "train", "train_0", ("saliency",), 40)


def test_cvmtl_binary_maps_from_png(tmp_path):
    image = np.full((*HW, 3), 60, np.uint8)
    edge = np.zeros(HW, np.uint8)
    edge[3] = 1
    write_cvmtl_sample(tmp_path, "x", image, masks={"edge": edge})
    write_cvmtl_sample(tmp_path, "y", image)
    write_split(tmp_path, "train", ["x", "y"])
    (tmp_path / "saliency").mkdir()
    grey = np.tile(np.arange(HW[1], dtype=np.uint8) * 6, (HW[0], 1))  # 0 .. 234
    cv2.imwrite(str(tmp_path / "saliency" / "x.png"), grey)
    s = load_sample(tmp_path, "cvmtl", "train", "x", ("seg", "edge", "saliency"), 13)
    assert s["has"] == {"seg": False, "edge": True, "saliency": True}
    np.testing.assert_array_equal(s["edge"], edge.astype(np.int64))
    np.testing.assert_array_equal(s["saliency"], (grey > 127).astype(np.int64))  # > 127 = 1
    y = load_sample(tmp_path, "cvmtl", "train", "y", ("edge", "saliency"), 13)
    assert y["has"] == {"edge": False, "saliency": False} and (y["edge"] == 255).all()


def test_cvmtl_reads_a_user_task_from_npy(tmp_path):
    flow_kind = LabelKind("flow", 2, 0.0, flip_sign=(-1.0, 1.0))
    register(dataclasses.replace(get_task("normal"), name="flow2d", label=flow_kind, channels=2))
    try:
        write_cvmtl_sample(tmp_path, "x", np.zeros((*HW, 3), np.uint8))
        write_split(tmp_path, "train", ["x"])
        (tmp_path / "flow2d").mkdir()
        flow = np.random.default_rng(0).normal(size=(*HW, 2)).astype(np.float32)
        flow[0, 0] = np.nan
        np.save(tmp_path / "flow2d" / "x.npy", flow)
        s = load_sample(tmp_path, "cvmtl", "train", "x", ("flow2d",), 13)
        assert s["has"]["flow2d"] and s["flow2d"].dtype == np.float32
        assert (s["flow2d"][0, 0] == 0).all()  # NaN -> the label's fill (invalid)
        np.testing.assert_array_equal(s["flow2d"][1:], flow[1:])
        np.save(tmp_path / "flow2d" / "x.npy", flow[..., :1])
        with pytest.raises(DataError, match=r"HxWx2: .*flow2d.x\.npy \(id 'x'\)"):
            load_sample(tmp_path, "cvmtl", "train", "x", ("flow2d",), 13)
        (tmp_path / "flow2d" / "x.npy").unlink()
        s = load_sample(tmp_path, "cvmtl", "train", "x", ("flow2d",), 13)
        assert not s["has"]["flow2d"] and s["flow2d"].shape == (*HW, 2)  # label.empty
    finally:
        TASKS.pop("flow2d", None)
