"""tools/infer.py: mixed sizes, grey, RGBA, EXIF rotation, a corrupt file, --recursive, and the
files decode to what the Predictor returns."""

from __future__ import annotations

import importlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from _ckpt import make_checkpoint
from PIL import Image

from cvmtl import Predictor
from cvmtl.inference import collect_inputs, output_stems


def _tool(name: str):
    return importlib.import_module(f"cvmtl.commands.{name}")


# name -> (H, W) of the output (the EXIF-rotated JPEG is stored 30x60, shown 60x30)
EXPECTED = {"a": (50, 70), "b": (50, 70), "gray": (33, 41), "rgba": (40, 30)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("infer")
    ckpt = make_checkpoint(root / "ck.pt")
    src = root / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), np.uint8)).save(src / "a.png")
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), np.uint8)).save(src / "b.png")
    Image.fromarray(rng.integers(0, 256, (33, 41), np.uint8)).save(src / "gray.png")
    Image.fromarray(rng.integers(0, 256, (40, 30, 4), np.uint8), "RGBA").save(src / "rgba.png")
    im = Image.fromarray(rng.integers(0, 256, (30, 60, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise on display
    im.save(src / "sub" / "rot.jpg", exif=exif)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (src / "notes.txt").write_text("not an image, ignored by extension")
    return ckpt, src


def _size(path: Path) -> tuple[int, int]:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2]


def test_infer_folder_recursive(setup, tmp_path, capsys) -> None:
    ckpt, src = setup
    out = tmp_path / "out"
    argv = ["--checkpoint", str(ckpt), "--input", str(src), "--out", str(out), "--recursive"]
    rc = _tool("infer").main([*argv, "--batch-size", "2", "--npz", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 1  # the corrupt file fails the run, after the others were written
    assert "5 ok, 1 failed" in captured.out
    assert sum("broken.jpg" in line for line in captured.err.splitlines()) == 1
    expected = {**EXPECTED, "sub/rot": (60, 30)}  # the mirrored tree, the rotated size
    for stem, hw in expected.items():
        for kind in ("seg", "seg_color", "depth", "depth_color", "normal", "normal_color"):
            assert _size(out / f"{stem}_{kind}.png") == hw, (stem, kind)
        assert (out / f"{stem}.npz").is_file()
    assert cv2.imread(str(out / "a_seg.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint8
    assert cv2.imread(str(out / "a_depth.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert cv2.imread(str(out / "a_normal.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert not list(out.glob("broken*"))

    # the files hold what the Predictor returns (within the PNG quantization)
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    for stem, name in [("a", "a.png"), ("sub/rot", "sub/rot.jpg"), ("rgba", "rgba.png")]:
        want = predictor.predict(src / name)
        seg = cv2.imread(str(out / f"{stem}_seg.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(seg, want["seg"])
        depth = cv2.imread(str(out / f"{stem}_depth.png"), cv2.IMREAD_UNCHANGED) / 1000.0
        np.testing.assert_allclose(depth, want["depth"], atol=0.5e-3 + 1e-5)
        raw = cv2.imread(str(out / f"{stem}_normal.png"), cv2.IMREAD_UNCHANGED)[..., ::-1]
        normal = raw.astype(np.float64) / 65535.0 * 2.0 - 1.0
        np.testing.assert_allclose(normal, want["normal"], atol=2.0 / 65535 + 1e-6)
        npz = np.load(out / f"{stem}.npz")
        np.testing.assert_allclose(npz["depth"], want["depth"], rtol=1e-5, atol=1e-6)


def test_infer_not_recursive_and_glob(setup, tmp_path, capsys) -> None:
    ckpt, src = setup
    out = tmp_path / "flat"
    rc = _tool("infer").main(
        ["--checkpoint", str(ckpt), "--input", str(src / "*.png"), "--out", str(out), "--quiet"]
    )
    assert rc == 0
    assert "4 ok, 0 failed" in capsys.readouterr().out
    assert {p.name for p in out.glob("*_seg.png")} == {f"{s}_seg.png" for s in EXPECTED}
    assert not (out / "sub").exists()


def test_collect_inputs(setup, tmp_path) -> None:
    _, src = setup
    flat = {str(rel) for _, rel in collect_inputs(src)}
    assert flat == {"a.png", "b.png", "gray.png", "rgba.png", "broken.jpg"}
    deep = {str(rel) for _, rel in collect_inputs(src, recursive=True)}
    assert deep == flat | {"sub/rot.jpg"}
    pairs = [(Path("x/a.png"), Path("a.png")), (Path("x/a.jpg"), Path("a.jpg"))]
    assert [str(s) for s in output_stems(pairs)] == ["a_png", "a_jpg"]
    with pytest.raises(FileNotFoundError):
        collect_inputs(tmp_path / "missing")
