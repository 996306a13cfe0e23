"""NYUv2 facts against the real .mat files, and the official .mat conversion on a tiny HDF5 file
written with MATLAB's reversed axes (proves that no transpose or flip slipped in)."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from cvmtl.data import nyuv2
from cvmtl.data.formats import list_ids, load_dataset_info, load_sample
from cvmtl.data.io import DataError

N, H, W = 5, 6, 8  # frames 1..5: splits.mat puts 1, 2 in test and 3, 4, 5 in train


def test_class_tables_match_the_mat_files(shared_nyuv2):
    m13 = scipy.io.loadmat(shared_nyuv2 / "class13Mapping.mat")["classMapping13"][0, 0]
    assert (m13["labels13"].ravel().astype(int) - 1).tolist() == nyuv2.MAP_40_TO_13
    assert [str(c[0]) for c in m13["classNames"].ravel()] == nyuv2.NYU13_CLASSES
    m40 = scipy.io.loadmat(shared_nyuv2 / "classMapping40.mat")
    assert [str(c[0]) for c in m40["className"].ravel()] == nyuv2.NYU40_CLASSES
    assert len(nyuv2.NYU13_PALETTE) == 13 and len(nyuv2.NYU40_PALETTE) == 40
    lut = nyuv2.label_lut(shared_nyuv2 / "classMapping40.mat", 13)
    assert lut[0] == 255 and len(lut) == 895 and lut[1:].max() == 12


def _frames():
    rng = np.random.default_rng(0)
    r, c = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    images = np.stack([np.stack([r * W + c, np.full((H, W), i), 255 - c], axis=2)
                       for i in range(N)]).astype(np.uint8)  # fmt: skip
    depths = (1 + r * 0.25 + c * 0.01 + np.arange(N)[:, None, None]).astype(np.float32)
    labels = rng.integers(0, 895, (N, H, W)).astype(np.uint16)
    return images, depths, labels


def _write_mat(path: Path, images, depths, labels, skip: str = "") -> None:
    with h5py.File(path, "w") as f:  # MATLAB v7.3: column-major, so h5py sees reversed axes
        if skip != "images":
            f["images"] = images.transpose(0, 3, 2, 1)  # (N, 3, W, H)
        f["depths"] = depths.transpose(0, 2, 1)  # (N, W, H)
        f["labels"] = labels.transpose(0, 2, 1)
        f["rawDepths"] = np.zeros_like(depths.transpose(0, 2, 1))


def test_convert_official(shared_nyuv2, tmp_path):
    images, depths, labels = _frames()
    _write_mat(tmp_path / "nyu.mat", images, depths, labels)
    out = tmp_path / "out"
    from cvmtl.commands.prepare_nyuv2 import main

    argv = ["--mat",
           str(tmp_path / "nyu.mat"), "--splits", str(shared_nyuv2 / "splits.mat"), "--mapping",
           str(shared_nyuv2 / "classMapping40.mat"), "--classes", "13", "--out", str(out),
           "--limit", str(N), "--val-fraction", "0.4"]  # fmt: skip
    assert main(argv) == 0
    assert list_ids(out, "cvmtl", "test") == ["0001", "0002"]
    assert list_ids(out, "cvmtl", "trainval") == ["0003", "0004", "0005"]
    train, val = list_ids(out, "cvmtl", "train"), list_ids(out, "cvmtl", "val")
    assert len(val) == 1 and sorted(train + val) == ["0003", "0004", "0005"]
    info = load_dataset_info(out, "cvmtl")
    assert info["classes"] == nyuv2.NYU13_CLASSES and info["depth_scale"] == 1000
    assert info["intrinsics"] == nyuv2.NYU_INTRINSICS and info["ignore_index"] == 255
    # Reference mapping computed independently from the .mat files.
    map40 = scipy.io.loadmat(shared_nyuv2 / "classMapping40.mat")["mapClass"].ravel()
    map13 = scipy.io.loadmat(shared_nyuv2 / "class13Mapping.mat")["classMapping13"][0, 0]
    labels13 = map13["labels13"].ravel()
    for i in range(N):
        s = load_sample(out, "cvmtl", "test", f"{i + 1:04d}")
        np.testing.assert_array_equal(s["image"], images[i])  # no transpose, flip or BGR swap
        np.testing.assert_allclose(s["depth"], depths[i], atol=5e-4)
        raw = labels[i].astype(int)
        expect = np.where(raw == 0, 255, labels13[map40[np.maximum(raw, 1) - 1] - 1] - 1)
        np.testing.assert_array_equal(s["seg"], expect)
        n = s["normal"]
        assert n[1:-1, 1:-1].any(axis=2).all()  # computed from depth where neighbours exist
        k = nyuv2.NYU_INTRINSICS
        v, u = np.mgrid[:H, :W]
        z = s["depth"]
        points = np.stack([(u - k["cx"]) / k["fx"] * z, (v - k["cy"]) / k["fy"] * z, z], axis=2)
        assert ((n * points).sum(axis=2) <= 0).all()  # facing the camera


def test_convert_with_normals_folder_and_errors(shared_nyuv2, tmp_path):
    images, depths, labels = _frames()
    _write_mat(tmp_path / "nyu.mat", images, depths, labels)
    normals = tmp_path / "normals"
    normals.mkdir()
    rng = np.random.default_rng(1)
    given = {}
    for i in range(1, N + 1):
        n = rng.normal(size=(H, W, 3)).astype(np.float32)
        given[i] = n / np.linalg.norm(n, axis=2, keepdims=True)
        np.save(normals / f"{i:04d}.npy", given[i])
    args = (tmp_path / "nyu.mat", shared_nyuv2 / "splits.mat", shared_nyuv2 / "classMapping40.mat")
    counts = nyuv2.convert_official(*args, tmp_path / "o40", 40, normals, limit=N)
    assert counts == {"train": 3, "test": 2}
    s = load_sample(tmp_path / "o40", "cvmtl", "train", "0004", num_classes=40)
    np.testing.assert_allclose(s["normal"], given[4], atol=1e-4)
    raw = labels[3].astype(int)
    map40 = scipy.io.loadmat(shared_nyuv2 / "classMapping40.mat")["mapClass"].ravel()
    np.testing.assert_array_equal(
        s["seg"], np.where(raw == 0, 255, map40[np.maximum(raw, 1) - 1] - 1)
    )
    _write_mat(tmp_path / "bad.mat", images, depths, labels, skip="images")
    with pytest.raises(DataError, match=r"bad\.mat: missing key 'images'"):
        nyuv2.convert_official(tmp_path / "bad.mat", *args[1:], tmp_path / "x", limit=N)
    with pytest.raises(DataError, match=r"classMapping40\.mat: missing key 'trainNdxs'"):
        nyuv2.convert_official(args[0], args[2], args[2], tmp_path / "x", limit=N)
    with pytest.raises(DataError, match=r"frame numbers outside 1\.\.5"):
        nyuv2.convert_official(*args, tmp_path / "x")  # 1449 frames listed, 5 in the file


def test_normals_from_depth_planes():
    h, w = 40, 60
    intr = {"fx": 50.0, "fy": 50.0, "cx": 30.0, "cy": 20.0}
    frontal = nyuv2.normals_from_depth(np.full((h, w), 2.0), intr)
    np.testing.assert_allclose(
        frontal[1:-1, 1:-1], np.broadcast_to([0, 0, -1], (h - 2, w - 2, 3)), atol=1e-5
    )
    # A floor 1.5 m below the camera (y down): y = 1.5, z = fy * 1.5 / (v - cy) for rows below cy.
    v = np.arange(h)[:, None] - intr["cy"]
    depth = np.where(v > 0, intr["fy"] * 1.5 / np.maximum(v, 1e-9), 0).repeat(w, axis=1)
    floor = nyuv2.normals_from_depth(depth, intr, smooth=1)
    ok = floor.any(axis=2)
    assert ok[25:-1, 1:-1].all() and not ok[:21].any()
    np.testing.assert_allclose(floor[ok], np.broadcast_to([0, -1, 0], floor[ok].shape), atol=1e-4)
