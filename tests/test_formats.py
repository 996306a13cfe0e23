"""Readers of every on-disk format, on small fixtures written here, including every bad input."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from cvmtl.data.formats import DataError, list_ids, load_dataset_info, load_sample
from cvmtl.data.io import write_cvmtl_sample, write_dataset_yaml, write_split
from cvmtl.data.nyuv2 import NYU13_CLASSES, NYU40_CLASSES, NYU40_PALETTE

H, W = 6, 8


def _sample(seed: int, classes: int = 13) -> dict:
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(H, W, 3))
    normal /= np.linalg.norm(normal, axis=2, keepdims=True)
    normal[0, 0] = 0  # invalid
    seg = rng.integers(0, classes, (H, W))
    seg[1, 1] = 255
    depth = rng.uniform(0.5, 9.0, (H, W)).astype(np.float32)
    depth[2, 2] = 0
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return {"image": image, "seg": seg, "depth": depth, "normal": normal.astype(np.float32)}


@pytest.fixture
def cvmtl_root(tmp_path: Path) -> tuple[Path, dict]:
    samples = {f"s{i}": _sample(i) for i in range(3)}
    for sid, s in samples.items():
        write_cvmtl_sample(tmp_path, sid, s["image"], s["seg"], s["depth"], s["normal"])
    write_split(tmp_path, "train", ["s0", "s1"])
    write_split(tmp_path, "test", ["s2"])
    write_dataset_yaml(tmp_path, "tiny", NYU13_CLASSES, [[i, i, i] for i in range(13)], None)
    return tmp_path, samples


def test_cvmtl_round_trip(cvmtl_root):
    root, samples = cvmtl_root
    assert list_ids(root, "cvmtl", "train") == ["s0", "s1"]
    got = load_sample(root, "cvmtl", "train", "s1")
    ref = samples["s1"]
    np.testing.assert_array_equal(got["image"], ref["image"])  # RGB order kept
    assert got["seg"].dtype == np.int64
    np.testing.assert_array_equal(got["seg"], ref["seg"])
    assert got["depth"].dtype == np.float32
    np.testing.assert_allclose(got["depth"], ref["depth"], atol=5e-4)
    assert got["depth"][2, 2] == 0
    np.testing.assert_allclose(got["normal"], ref["normal"], atol=1e-4)
    assert not got["normal"][0, 0].any()
    assert got["has"] == {"seg": True, "depth": True, "normal": True}
    assert got["meta"] == {"id": "s1", "size": [H, W], "path": str(root / "images" / "s1.png")}


def test_cvmtl_partial_labels_and_task_subset(cvmtl_root):
    root, _ = cvmtl_root
    (root / "depth" / "s0.png").unlink()
    (root / "segmentation" / "s0.png").unlink()
    got = load_sample(root, "cvmtl", "train", "s0")
    assert got["has"] == {"seg": False, "depth": False, "normal": True}
    assert (got["seg"] == 255).all() and got["seg"].shape == (H, W)
    assert (got["depth"] == 0).all() and got["depth"].shape == (H, W)
    only = load_sample(root, "cvmtl", "train", "s1", tasks=["normal"])
    assert set(only) == {"image", "normal", "has", "meta"} and only["has"] == {"normal": True}


def test_dataset_info(cvmtl_root, tmp_path):
    root, _ = cvmtl_root
    info = load_dataset_info(root, "cvmtl")
    assert info["classes"] == NYU13_CLASSES and info["palette"][3] == [3, 3, 3]
    assert info["ignore_index"] == 255 and info["depth_scale"] == 1000
    nyud = load_dataset_info(tmp_path, "nyud_mt")
    assert nyud["classes"] == NYU40_CLASSES and nyud["palette"] == NYU40_PALETTE
    assert nyud["intrinsics"]["fx"] == pytest.approx(518.8579)
    assert load_dataset_info(tmp_path, "nyuv2_npy")["classes"] == NYU13_CLASSES


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def test_cvmtl_bad_inputs(cvmtl_root):
    root, _ = cvmtl_root
    with pytest.raises(DataError, match=r"split 'val' not found.*val\.txt"):
        list_ids(root, "cvmtl", "val")
    write_split(root, "broken", ["s0", "ghost"])
    with pytest.raises(DataError, match=r"image missing.*ghost\.png.*'ghost'"):
        load_sample(root, "cvmtl", "broken", "ghost")
    data = (root / "images" / "s0.png").read_bytes()
    (root / "images" / "s0.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"truncated PNG.*s0\.png.*'s0'"):
        load_sample(root, "cvmtl", "train", "s0")
    (root / "images" / "s0.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"image unreadable.*s0\.png"):
        load_sample(root, "cvmtl", "train", "s0")
    _png(root / "depth" / "s1.png", np.zeros((H + 1, W), np.uint16))
    with pytest.raises(DataError, match=r"depth is 7x8, the image 6x8.*s1\.png.*'s1'"):
        load_sample(root, "cvmtl", "train", "s1")
    _png(root / "depth" / "s1.png", np.zeros((H, W), np.uint8))
    with pytest.raises(DataError, match=r"depth must be a single-channel 16-bit.*s1\.png"):
        load_sample(root, "cvmtl", "train", "s1")
    seg = np.zeros((H, W), np.uint8)
    seg[0, 0] = 13  # 13 classes: 0..12 and 255 only
    _png(root / "segmentation" / "s2.png", seg)
    with pytest.raises(DataError, match=r"labels \[13\] outside 0\.\.12.*s2\.png.*'s2'"):
        load_sample(root, "cvmtl", "test", "s2")
    # A label that fits a larger class count is fine: the range follows num_classes.
    assert load_sample(root, "cvmtl", "test", "s2", num_classes=40)["seg"][0, 0] == 13


@pytest.fixture
def npy_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            d = tmp_path / split
            for k in ("image", "label", "depth", "normal"):
                (d / k).mkdir(parents=True, exist_ok=True)
            np.save(d / "image" / f"{i}.npy", rng.uniform(0, 1, (H, W, 3)).astype(np.float32))
            label = rng.integers(0, 13, (H, W)).astype(np.float32)
            label[0, :] = -1
            np.save(d / "label" / f"{i}.npy", label)
            depth = rng.uniform(1, 5, (H, W, 1)).astype(np.float32)
            depth[0, 0, 0], depth[0, 1, 0], depth[0, 2, 0] = np.nan, np.inf, -1
            np.save(d / "depth" / f"{i}.npy", depth)
            np.save(d / "normal" / f"{i}.npy", rng.uniform(-1, 1, (H, W, 3)).astype(np.float32))
    np.save(tmp_path / "train" / "image" / "10.npy", np.zeros((H, W, 3), np.float32))
    return tmp_path


def test_nyuv2_npy(npy_root):
    assert list_ids(npy_root, "nyuv2_npy", "train") == ["0", "1", "2", "10"]  # numeric order
    assert list_ids(npy_root, "nyuv2_npy", "test") == list_ids(npy_root, "nyuv2_npy", "val")
    s = load_sample(npy_root, "nyuv2_npy", "test", "1")
    image = np.load(npy_root / "val" / "image" / "1.npy")
    np.testing.assert_array_equal(s["image"], np.round(image * 255).astype(np.uint8))
    label = np.load(npy_root / "val" / "label" / "1.npy")
    assert (s["seg"][0] == 255).all() and s["seg"].dtype == np.int64
    np.testing.assert_array_equal(s["seg"][1:], label[1:])
    assert s["depth"].shape == (H, W) and (s["depth"][0, :3] == 0).all()
    assert np.isfinite(s["depth"]).all()
    # "10" has only an image: every label is missing, not an error.
    s10 = load_sample(npy_root, "nyuv2_npy", "train", "10")
    assert s10["has"] == {"seg": False, "depth": False, "normal": False}


@pytest.mark.parametrize(
    ("kind", "array", "message"),
    [
        ("image", np.zeros((H, W, 3), np.uint8), r"image has dtype uint8"),
        ("image", np.full((H, W, 3), 2.0, np.float32), r"image values outside \[0, 1\]"),
        ("normal", np.zeros((H, W, 2), np.float32), r"normal has shape \(6, 8, 2\)"),
        ("depth", np.zeros((H, W, 2), np.float32), r"depth has shape \(6, 8, 2\)"),
        ("depth", np.zeros((H, W), np.int32), r"depth has dtype int32"),
        ("label", np.full((H, W), 13.0, np.float32), r"labels \[13\] outside 0\.\.12"),
        ("label", np.full((H, W), 0.5, np.float32), r"non-integer"),
        ("label", np.zeros((H + 1, W), np.float32), r"seg is 7x8, the image 6x8"),
    ],
)
def test_nyuv2_npy_bad_inputs(npy_root, kind, array, message):
    path = npy_root / "train" / kind / "1.npy"
    np.save(path, array)
    with pytest.raises(DataError, match=message) as err:
        load_sample(npy_root, "nyuv2_npy", "train", "1")
    assert str(path) in str(err.value) and "'1'" in str(err.value)


def test_nyuv2_npy_unreadable_and_missing(npy_root):
    (npy_root / "train" / "depth" / "0.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"depth unreadable.*0\.npy"):
        load_sample(npy_root, "nyuv2_npy", "train", "0")
    with pytest.raises(DataError, match=r"split 'extra' not found"):
        list_ids(npy_root, "nyuv2_npy", "extra")


def _nyud(root: Path, png_variant: bool = False) -> dict:
    rng = np.random.default_rng(1)
    ref = {}
    for sid in ("a", "b"):
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        seg = rng.integers(0, 41, (H, W)).astype(np.uint8)  # 0 = void, 1..40
        depth = rng.uniform(0.5, 5, (H, W)).astype(np.float32)
        normal8 = rng.integers(1, 256, (H, W, 3), dtype=np.uint8)
        normal8[0, 0] = 0
        ext = "png" if png_variant else "jpg"
        _png(root / "images" / f"{sid}.{ext}", image[..., ::-1])
        _png(root / "segmentation" / f"{sid}.png", seg)
        (root / "depth").mkdir(exist_ok=True)
        np.save(root / "depth" / f"{sid}.npy", depth)
        if png_variant:
            _png(root / "normals" / f"{sid}.png", normal8[..., ::-1])
        else:
            (root / "normals").mkdir(exist_ok=True)
            n = np.where(normal8.any(axis=2, keepdims=True), normal8 / 127.5 - 1, 0)
            np.save(root / "normals" / f"{sid}.npy", n.astype(np.float32))
        ref[sid] = {"image": image, "seg": seg, "depth": depth, "normal8": normal8}
    (root / "gt_sets").mkdir()
    (root / "gt_sets" / "train.txt").write_text("a\n")
    (root / "gt_sets" / "val.txt").write_text("b\n")
    return ref


@pytest.mark.parametrize("png_variant", [False, True])
def test_nyud_mt(tmp_path, png_variant):
    ref = _nyud(tmp_path, png_variant)
    assert list_ids(tmp_path, "nyud_mt", "test") == ["b"] == list_ids(tmp_path, "nyud_mt", "val")
    s = load_sample(tmp_path, "nyud_mt", "val", "b")
    r = ref["b"]
    if png_variant:
        np.testing.assert_array_equal(s["image"], r["image"])
    else:
        assert s["image"].shape == (H, W, 3) and s["image"].dtype == np.uint8
    np.testing.assert_array_equal(s["seg"], np.where(r["seg"] == 0, 255, r["seg"].astype(int) - 1))
    np.testing.assert_allclose(s["depth"], r["depth"])
    n = r["normal8"] / 127.5 - 1
    valid = r["normal8"].any(axis=2)
    assert not s["normal"][~valid].any()
    expect = n / np.linalg.norm(n, axis=2, keepdims=True) if png_variant else n
    np.testing.assert_allclose(s["normal"][valid], expect[valid], atol=1e-5)
    seg = r["seg"].copy()
    seg[0, 0] = 41
    _png(tmp_path / "segmentation" / "b.png", seg)
    with pytest.raises(DataError, match=r"labels \[40\] outside 0\.\.39.*b\.png.*'b'"):
        load_sample(tmp_path, "nyud_mt", "val", "b")
