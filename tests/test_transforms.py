"""Joint transforms: exact flip (normal x negated), depth / scale, invalid preserved, seeding."""

import numpy as np
import pytest
import torch

from cvmtl.data.transforms import EvalTransform, TrainTransform, scale_crop_flip

H, W = 12, 16
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def _sample() -> dict:
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(H, W, 3))
    normal /= np.linalg.norm(normal, axis=2, keepdims=True)
    normal[:, : W // 4] = 0  # an invalid band on the left: asymmetric
    seg = rng.integers(0, 13, (H, W))
    seg[:2] = 255
    depth = rng.uniform(1, 5, (H, W)).astype(np.float32)
    depth[-3:, -5:] = 0
    return {
        "image": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
        "seg": seg,
        "depth": depth,
        "normal": normal.astype(np.float32),
        "has": {"seg": True, "depth": True, "normal": True},
        "meta": {"id": "x", "size": [H, W], "path": "x.png"},
    }


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    x = (image.astype(np.float32) / 255 - np.float32(MEAN)) / np.float32(STD)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


def test_flip_is_exact_mirror_with_normal_x_negated():
    s = _sample()
    out = scale_crop_flip(s, 1.0, (H, W), (0, 0), flip=True)
    np.testing.assert_array_equal(out["image"], s["image"][:, ::-1])
    np.testing.assert_array_equal(out["seg"], s["seg"][:, ::-1])
    np.testing.assert_array_equal(out["depth"], s["depth"][:, ::-1])
    expect = s["normal"][:, ::-1] * np.float32([-1, 1, 1])
    np.testing.assert_allclose(out["normal"], expect, atol=1e-6)
    assert (out["normal"][:, -W // 4 :] == 0).all()  # the invalid band moved right
    same = scale_crop_flip(s, 1.0, (H, W), (0, 0), flip=False)
    np.testing.assert_array_equal(same["image"], s["image"])
    np.testing.assert_allclose(same["normal"], s["normal"], atol=1e-6)


def test_train_transform_flips_or_not_and_nothing_else():
    s = _sample()
    t = TrainTransform((H, W), (1.0, 1.0), MEAN, STD, hflip=True, color_jitter=0.0)
    flips = 0
    for index in range(12):
        out = t(s, rng_seed=(0, 0, index))
        flipped = bool(out["normal"][0, 0, -1] == 0)  # the invalid band is on the right
        flips += flipped
        ref = scale_crop_flip(s, 1.0, (H, W), (0, 0), flipped)
        torch.testing.assert_close(out["image"], _image_tensor(ref["image"]))
        assert torch.equal(out["seg"], torch.from_numpy(ref["seg"]))
        assert torch.equal(out["depth"][0], torch.from_numpy(ref["depth"]))
        torch.testing.assert_close(
            out["normal"], torch.from_numpy(ref["normal"].transpose(2, 0, 1))
        )
        if flipped:
            mirrored_x = torch.from_numpy(s["normal"][:, ::-1, 0].copy())
            torch.testing.assert_close(out["normal"][0], -mirrored_x, atol=1e-6, rtol=0)
    assert 0 < flips < 12


def test_scale_divides_depth_and_resamples_targets_nearest():
    s = _sample()
    out = scale_crop_flip(s, 2.0, (H, W), (0, 0), flip=False)
    up = np.repeat(np.repeat(s["seg"], 2, 0), 2, 1)[:H, :W]
    np.testing.assert_array_equal(out["seg"], up)
    up_depth = np.repeat(np.repeat(s["depth"], 2, 0), 2, 1)[:H, :W]
    np.testing.assert_allclose(out["depth"], up_depth / 2, rtol=1e-6)


def test_invalid_preserved_padding_and_unit_normals():
    s = _sample()
    t = TrainTransform((H + 6, W + 8), (0.7, 1.4), MEAN, STD, color_jitter=0.3)
    depths = set(np.round(s["depth"].ravel(), 5))
    for index in range(8):
        out = t(s, rng_seed=(1, 2, index))
        assert out["image"].shape == (3, H + 6, W + 8) and out["image"].dtype == torch.float32
        assert out["seg"].dtype == torch.int64 and out["depth"].shape == (1, H + 6, W + 8)
        assert set(out["seg"].unique().tolist()) <= set(range(13)) | {255}
        assert (out["seg"] == 255).any()  # ignore rows and padding
        norms = out["normal"].norm(dim=0)
        valid = norms > 0
        torch.testing.assert_close(norms[valid], torch.ones_like(norms[valid]))
        # 1.4 * 12 < 18 rows: always padded, and padding is invalid in every target.
        pad = (out["seg"] == 255) & (out["depth"][0] == 0) & ~valid
        assert pad.any()
        # Every valid depth is an original depth divided by one common scale factor.
        d = out["depth"][0][out["depth"][0] > 0].numpy().astype(np.float64)
        orig = np.array(sorted(depths))
        candidates = orig[orig > 0] / d[0]
        assert any((np.abs(orig[None] - (d * c)[:, None]).min(1) < 1e-4).all() for c in candidates)


def test_depth_scaling_in_train_transform():
    s = _sample()
    s["depth"] = np.where(s["depth"] > 0, 3.0, 0).astype(np.float32)
    t = TrainTransform((H, W), (1.2, 1.9), MEAN, STD, color_jitter=0.0)
    values = set()
    for index in range(6):
        d = t(s, rng_seed=(0, 0, index))["depth"]
        nz = d[d > 0].unique()
        assert len(nz) == 1  # one scale per sample, no interpolation across invalid pixels
        assert 3.0 / 1.9 - 1e-5 <= float(nz) <= 3.0 / 1.2 + 1e-5
        values.add(round(float(nz), 5))
    assert len(values) == 6


def test_deterministic_in_seed_epoch_index_only():
    s = _sample()
    t = TrainTransform((8, 10), (1.0, 1.5), MEAN, STD, color_jitter=0.4)
    a = t(s, rng_seed=(3, 1, 5))
    t(s, rng_seed=(3, 1, 6))  # history does not matter
    b = TrainTransform((8, 10), (1.0, 1.5), MEAN, STD, color_jitter=0.4)(s, rng_seed=(3, 1, 5))
    for key in ("image", "seg", "depth", "normal"):
        assert torch.equal(a[key], b[key])
    for other in ((3, 2, 5), (4, 1, 5), (3, 1, 4)):
        assert not torch.equal(a["image"], t(s, rng_seed=other)["image"])


def test_eval_transform_keeps_resolution():
    s = _sample()
    out = EvalTransform(MEAN, STD)(s)
    torch.testing.assert_close(out["image"], _image_tensor(s["image"]))
    assert torch.equal(out["seg"], torch.from_numpy(s["seg"]))
    assert out["depth"].shape == (1, H, W) and out["normal"].shape == (3, H, W)
    assert out["has"] == s["has"] and out["meta"] == s["meta"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="crop"):
        TrainTransform((0, 4))
    with pytest.raises(ValueError, match="scale_range"):
        TrainTransform((4, 4), (1.5, 1.0))


def test_padding_uses_each_targets_invalid_value():
    s = _sample()
    out = scale_crop_flip(s, 1.0, (H + 2, W), (-2, 0), flip=False)
    assert (out["image"][:2] == 0).all() and (out["seg"][:2] == 255).all()
    assert (out["depth"][:2] == 0).all() and (out["normal"][:2] == 0).all()
    np.testing.assert_array_equal(out["image"][2:], s["image"])
    np.testing.assert_array_equal(out["seg"][2:], s["seg"])
    np.testing.assert_array_equal(out["depth"][2:], s["depth"])


def test_photometric_pipeline_from_the_config_acts_on_the_image_only(tmp_path):
    from cvmtl.config import load_config
    from cvmtl.data.transforms import build_transforms

    path = tmp_path / "c.yaml"
    path.write_text(
        f"data:\n  crop: [12, 16]\n  scale_range: [1.2, 1.6]\n  mean: {MEAN}\n  std: {STD}\n"
        "  photometric:\n    - {__class_fullname__: ToGray, p: 1.0}\n"
    )
    train, _ = build_transforms(load_config(path))
    plain = TrainTransform((H, W), (1.2, 1.6), MEAN, STD, color_jitter=0.0)
    s = _sample()
    got, ref = train(s, rng_seed=(1, 2, 3)), plain(s, rng_seed=(1, 2, 3))
    for key in ("seg", "depth", "normal"):  # same geometry, targets untouched
        torch.testing.assert_close(got[key], ref[key], rtol=0, atol=0)
    rgb = got["image"] * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    assert torch.allclose(rgb[0], rgb[1], atol=1e-5) and torch.allclose(rgb[1], rgb[2], atol=1e-5)
    assert not torch.allclose(ref["image"][0], ref["image"][1])  # the photo was not grey


@pytest.mark.parametrize(
    "steps,words",
    [
        ([{"__class_fullname__": "HorizontalFlip", "p": 1.0}], ["HorizontalFlip", "image-only"]),
        ([{"__class_fullname__": "NoSuchTransform"}], ["not an albumentations pipeline"]),
        ([{"__class_fullname__": "ColorJitter", "brightnes": 0.2}], ["brightnes"]),
    ],
)
def test_photometric_refuses_geometry_and_bad_transforms(steps, words):
    with pytest.raises(ValueError, match="data.photometric") as err:
        TrainTransform((H, W), photometric=steps)
    assert all(w in str(err.value) for w in words), str(err.value)
