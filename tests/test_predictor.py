"""Predictor: any image type in, results at the input's exact size; batching; max_size rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _ckpt import make_checkpoint, tiny_config
from PIL import Image

from cvmtl import Predictor
from cvmtl.predictor import as_rgb_uint8, load_image


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    ckpt = make_checkpoint(tmp_path_factory.mktemp("pred") / "best.pt")
    return Predictor.from_checkpoint(ckpt, device="cpu")


def _check(out: dict, h: int, w: int) -> None:
    assert set(out) == {"seg", "depth", "normal"}
    assert out["seg"].shape == (h, w) and out["seg"].dtype == np.int64
    assert out["seg"].min() >= 0 and out["seg"].max() < 13
    assert out["depth"].shape == (h, w) and out["depth"].dtype == np.float32
    assert (out["depth"] > 0).all()
    assert out["normal"].shape == (h, w, 3) and out["normal"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out["normal"], axis=2), 1.0, atol=1e-4)


def test_predict_array_kinds(predictor: Predictor) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    _check(predictor.predict(rgb), 37, 53)
    _check(predictor.predict(rgb[..., 0]), 37, 53)  # grey
    rgba = np.concatenate([rgb, np.full((37, 53, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(predictor.predict(rgba)["seg"], predictor.predict(rgb)["seg"])
    as_float = predictor.predict(rgb.astype(np.float32) / 255.0)
    np.testing.assert_allclose(as_float["depth"], predictor.predict(rgb)["depth"], atol=1e-5)


def test_image_conversion() -> None:
    assert as_rgb_uint8(np.zeros((4, 5))).shape == (4, 5, 3)
    assert as_rgb_uint8(np.full((2, 2), 65535, np.uint16)).max() == 255
    assert as_rgb_uint8(np.ones((2, 2, 3), np.float32)).max() == 255
    with pytest.raises(ValueError, match="HxW"):
        as_rgb_uint8(np.zeros((2, 2, 2)))


def test_path_exif_orientation(predictor: Predictor, tmp_path) -> None:
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    im = Image.fromarray(array)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    loaded = load_image(tmp_path / "rot.jpg")
    assert loaded.shape == (50, 30, 3)
    _check(predictor.predict(tmp_path / "rot.jpg"), 50, 30)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="bad.png"):
        predictor.predict(str(tmp_path / "bad.png"))


def test_predict_batch_matches_single(predictor: Predictor) -> None:
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in [(32, 40), (20, 24)] * 2]
    batch = predictor.predict_batch(images, batch_size=2)
    for image, got in zip(images, batch):
        want = predictor.predict(image)
        assert got["seg"].shape == image.shape[:2]
        np.testing.assert_allclose(got["depth"], want["depth"], rtol=1e-4, atol=1e-5)


class _ConstantDepth(torch.nn.Module):
    """Depth 1 m everywhere, at the input's size (to see the max_size depth rule)."""

    tasks = ["depth"]

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"depth": torch.ones_like(x[:, :1]) + self.w}


def test_max_size_rescales_depth() -> None:
    cfg = tiny_config(tasks=["depth"])
    predictor = Predictor(_ConstantDepth(), cfg, device="cpu", max_size=40)
    out = predictor.predict(np.zeros((60, 80, 3), np.uint8))
    assert out["depth"].shape == (60, 80)
    # resized by s = 40 / 80: what the model saw as 1 m is s metres at full size
    np.testing.assert_allclose(out["depth"], 0.5, rtol=1e-5)
    full = Predictor(_ConstantDepth(), cfg, device="cpu").predict(np.zeros((60, 80, 3), np.uint8))
    np.testing.assert_allclose(full["depth"], 1.0)
