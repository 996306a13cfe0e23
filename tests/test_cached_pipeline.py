"""data.cache: the split decoded once and augmented on whole batches equals the CPU transforms
(labels exactly, the image within a grey level), draws with TrainTransform's distribution,
shards under DDP like the worker loader, and runs on CUDA (``-m gpu``)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from cvmtl.config import load_config
from cvmtl.data import batch_augment as ba
from cvmtl.data.batch_jitter import color_jitter, draw_jitter
from cvmtl.data.cache import decode, encode
from cvmtl.data.cached_loader import CachedLoader
from cvmtl.data.io import write_cvmtl_sample, write_split
from cvmtl.data.loader import build_loaders, set_epoch
from cvmtl.data.transforms import photometric_pipeline, scale_crop_flip
from cvmtl.tasks import get_task
from cvmtl.tasks.registry import DEFAULT_TASKS

TASKS = list(DEFAULT_TASKS)  # class ids, depth (scale power -1), normals (flip sign, unit)
KINDS = {t: get_task(t).label for t in TASKS}
CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA")],
)


def _raw(rng: np.random.Generator, h: int, w: int) -> dict:
    """A raw sample: random image, ids with the ignore value, mm depth with holes, unit normals
    with invalid zeros, the labels smooth enough to be seen moving."""
    out = {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8)}
    for task, kind in KINDS.items():
        if kind.integer:
            label = rng.integers(0, 14, (h, w))
            label[label == 13] = int(kind.fill)
        elif kind.channels == 1:
            label = (rng.integers(0, 8000, (h, w)) * (rng.random((h, w)) > 0.1)) / 1000.0
            label = label.astype(np.float32)
        else:
            label = rng.normal(size=(h, w, kind.channels)).astype(np.float32)
            label /= np.linalg.norm(label, axis=2, keepdims=True)
            label[rng.random((h, w)) < 0.1] = 0
        out[task] = label
    return out


def _decoded(raw: dict) -> tuple[dict, dict, dict]:
    """(stored compact arrays, their codecs, the raw sample as the cache gives it back)."""
    stored, codecs, back = {}, {}, {"image": raw["image"]}
    for task, kind in KINDS.items():
        codecs[task], stored[task] = encode(kind, raw[task])
        values = decode(codecs[task], torch.from_numpy(stored[task])).numpy()
        back[task] = values[0] if values.shape[0] == 1 else values.transpose(1, 2, 0)
    return stored, codecs, back


def test_codecs():
    rng = np.random.default_rng(0)
    raw = _raw(rng, 6, 7)
    stored, codecs, back = _decoded(raw)
    assert [codecs[t] for t in TASKS] == ["uint8", "fixed", "unit"]
    for task, kind in KINDS.items():
        if kind.channels < 3:  # class ids and millimetre depth: exact
            np.testing.assert_array_equal(back[task], raw[task])
        else:
            np.testing.assert_allclose(back[task], raw[task], atol=1.6e-5)
    depth = next(t for t, k in KINDS.items() if k.channels == 1)
    codec, half = encode(KINDS[depth], raw[depth] + np.float32(1e-4))  # not millimetres
    assert codec == "half"
    np.testing.assert_allclose(decode(codec, torch.from_numpy(half))[0].numpy(),
                               raw[depth] + np.float32(1e-4), rtol=2**-11)  # fmt: skip
    ids = next(t for t, k in KINDS.items() if k.integer)
    assert encode(KINDS[ids], np.full((2, 2), 300))[0] == "int32"


# (scale, (y0, x0), flip): zoom in / out, padding on every side, odd sizes, exact fit.
CASES = [
    (1.0, (0, 0), False), (1.37, (3, 5), True), (0.61, (-4, -2), False), (0.61, (-7, -9), True),
    (1.9, (20, 31), False), (2.43, (0, 17), True), (1.0, (-1, 2), True), (0.83, (2, -6), False),
]  # fmt: skip


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_deterministic_parts_equal_scale_crop_flip(device):
    rng = np.random.default_rng(1)
    crop = (17, 23)
    sizes = [(19, 26), (24, 31), (15, 20), (21, 29)] * 2
    samples = [_decoded(_raw(rng, h, w)) for h, w in sizes]
    hm, wm = max(h for h, _ in sizes), max(w for _, w in sizes)
    image = torch.zeros((len(sizes), 3, hm, wm), dtype=torch.uint8)
    for i, (h, w) in enumerate(sizes):  # mixed sizes, padded to the largest as the cache does
        image[i, :, :h, :w] = torch.from_numpy(samples[i][2]["image"].transpose(2, 0, 1))
    geo = ba.plan(sizes, CASES, crop).to(device)
    warped = ba.warp_image(image.to(device), geo).cpu()
    for task, kind in KINDS.items():
        stored = torch.zeros((len(sizes), max(1, kind.channels), hm, wm),
                             dtype=torch.from_numpy(samples[0][0][task]).dtype)  # fmt: skip
        for i, (h, w) in enumerate(sizes):
            stored[i, :, :h, :w] = torch.from_numpy(samples[i][0][task])
        codec = samples[0][1][task]
        out = ba.relabel(kind, decode(codec, ba.warp_label(stored.to(device), geo)), geo).cpu()
        for i, (scale, offset, flip) in enumerate(CASES):
            ref = kind.to_tensor(scale_crop_flip(samples[i][2], scale, crop, offset, flip)[task])
            assert out[i].dtype == ref.dtype and out[i].shape == ref.shape
            assert torch.equal(out[i], ref), f"{task} case {i}"
    for i, (scale, offset, flip) in enumerate(CASES):
        ref = scale_crop_flip(samples[i][2], scale, crop, offset, flip)["image"]
        diff = (warped[i] - torch.from_numpy(ref.transpose(2, 0, 1)).float()).abs()
        assert diff.max() <= 1 and diff.mean() < 0.05, f"image case {i}"


def test_draws_follow_the_configured_distribution():
    scales, flips, ys, xs = [], [], [], []
    for index in range(3000):
        rng = np.random.default_rng(np.random.SeedSequence((0, 0, index)))
        scale, (y0, x0), flip = ba.draw_geometry(rng, (40, 60), (50, 50), (0.75, 1.5), True)
        scales.append(scale), flips.append(flip), ys.append(y0), xs.append(x0)
    scales = np.array(scales)
    assert 0.75 <= scales.min() < 0.76 and 1.49 < scales.max() <= 1.5
    assert abs(scales.mean() - 1.125) < 0.015 and abs(np.mean(scales < 1.125) - 0.5) < 0.04
    assert abs(np.mean(flips) - 0.5) < 0.04
    # 40 x 60 becomes 30..60 x 45..90: a 50 x 50 crop pads (offset <= 0) or cuts (>= 0).
    assert (min(ys), max(ys), min(xs)) == (-20, 10, -5) and max(xs) >= 38
    rng = np.random.default_rng(0)
    never = [ba.draw_geometry(rng, (40, 60), (20, 20), (1.0, 1.0), False) for _ in range(50)]
    assert all(s == 1.0 and not f for s, _, f in never)


def _image(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)


def test_color_jitter_operations_equal_albumentations():
    from albumentations.augmentations.pixel import functional as fp

    rng = np.random.default_rng(2)
    image = _image(rng)
    ops = [fp.adjust_brightness_torchvision, fp.adjust_contrast_torchvision,
           fp.adjust_saturation_torchvision, fp.adjust_hue_torchvision]  # fmt: skip
    for op, factor in [(0, 1.17), (1, 0.83), (2, 1.2), (3, 0.04), (3, -0.05)]:
        params = np.array([[1.0, 1.0, 1.0, 1.0, 0.0, op, *[j for j in range(4) if j != op]]])
        params[0, 1 + op] = factor
        torch_image = torch.from_numpy(image.transpose(2, 0, 1))[None].float()
        ours = color_jitter(torch_image, params)[0].numpy().transpose(1, 2, 0)
        ref = ops[op](image, factor).astype(np.float32)
        diff = np.abs(ours - ref)
        # albumentations rounds to uint8; its hue is uint8 OpenCV HSV (2-degree steps, the
        # shift truncated): a step moves a saturated colour by up to ~8 grey levels
        assert diff.max() <= (9.0 if op == 3 else 1.0) and diff.mean() < 2.0, (op, factor)


def test_color_jitter_distribution_matches_albumentations():
    rng = np.random.default_rng(3)
    image = _image(rng)
    album = photometric_pipeline(None, 0.2)
    ref, ours = [], []
    torch_image = torch.from_numpy(image.transpose(2, 0, 1))[None].float()
    params = np.stack([draw_jitter(np.random.default_rng(i), 0.2) for i in range(600)])
    out = color_jitter(torch_image.expand(600, -1, -1, -1), params)
    for i in range(600):
        album.set_random_seed(i)
        ref.append(album(image=image)["image"].astype(np.float32))
        ours.append(out[i].numpy().transpose(1, 2, 0))
    for stat in (lambda x: x.mean(), lambda x: x.std(axis=2).mean(), lambda x: x[..., 0].mean()):
        a, b = np.array([stat(x) for x in ref]), np.array([stat(x) for x in ours])
        assert abs(a.mean() - b.mean()) < 0.04 * a.std() + 1 and abs(a.std() / b.std() - 1) < 0.12
    unchanged = np.mean([np.array_equal(x, image) for x in ref])
    assert abs(unchanged - 0.2) < 0.06 and abs(np.mean(params[:, 0] == 0) - 0.2) < 0.06


H, W = 24, 32


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cached")
    rng = np.random.default_rng(4)
    ids = [f"{i:03d}" for i in range(11)]
    names = list(KINDS)
    for i, sid in enumerate(ids):
        raw = _raw(rng, H, W)
        labels = [None if (i == 1 and KINDS[t].channels == 1) else raw[t] for t in names]
        write_cvmtl_sample(root, sid, raw["image"], *labels)  # sample 1: no depth
    write_split(root, "train", ids)
    return root


def _cfg(root: Path, cache: str, *extra: str):
    return load_config(None, [
        f"data.root={root}", "data.num_workers=0", "data.crop=[20,28]", "train.batch_size=4",
        "data.scale_range=[0.6,1.6]", f"data.cache={cache}", "train.device=cpu", *extra,
    ])  # fmt: skip


def _epochs(cfg, epochs=(0, 1), **kw):
    loader = build_loaders(cfg, splits=["train"], **kw)["train"]
    out = []
    for epoch in epochs:
        set_epoch({"train": loader}, epoch)
        out.extend(loader)
    return loader, out


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_cached_loader_equals_worker_loader(root, device):
    """Without jitter the cached batches are the worker loader's: same order, same geometry per
    (seed, epoch, index), labels exactly (normals to the int16 step), image within a level."""
    cfg = _cfg(root, "none", "data.color_jitter=0")
    _, ref = _epochs(cfg)
    for cache in ("host", "device"):
        loader, ours = _epochs(_cfg(root, cache, "data.color_jitter=0", f"train.device={device}"))
        assert isinstance(loader, CachedLoader) and len(ours) == len(ref) == 4  # 11 // 4, x2
        for a, b in zip(ref, ours, strict=True):
            assert a["meta"]["id"] == b["meta"]["id"]
            assert torch.equal(a["meta"]["size"][0], b["meta"]["size"][0])
            step = 1.0 / 255 / min(cfg.data.std) + 1e-5
            assert (a["image"] - b["image"].cpu()).abs().max() <= step
            for task, kind in KINDS.items():
                assert torch.equal(a["has"][task], b["has"][task])
                assert b[task].device.type == device and b[task].dtype == a[task].dtype
                if kind.unit_vector:
                    torch.testing.assert_close(b[task].cpu(), a[task], atol=1e-4, rtol=0)
                else:
                    assert torch.equal(b[task].cpu(), a[task]), task
    assert any(not b["has"][t].all() for b in ours for t in TASKS)  # sample 1 has no depth


def test_jitter_and_mid_epoch_start(root):
    loader, full = _epochs(_cfg(root, "host"), epochs=(3,))
    assert all(b["image"].shape == (4, 3, 20, 28) for b in full)
    set_epoch({"train": loader}, 3, start_batch=1)  # exact resume: the same later batches
    rest = list(loader)
    assert len(rest) == 1 and torch.equal(rest[0]["image"], full[1]["image"])
    _, worker = _epochs(_cfg(root, "none"), epochs=(3,))
    assert worker[0]["meta"]["id"] == full[0]["meta"]["id"]
    assert not torch.equal(worker[0]["image"], full[0]["image"])  # jittered (differently)


def test_ddp_shards_like_the_distributed_sampler(root):
    for rank in range(2):
        kw = {"distributed": True, "num_replicas": 2, "rank": rank}
        _, ref = _epochs(_cfg(root, "none", "data.color_jitter=0"), epochs=(2,), **kw)
        _, ours = _epochs(_cfg(root, "host", "data.color_jitter=0"), epochs=(2,), **kw)
        assert [b["meta"]["id"] for b in ours] == [b["meta"]["id"] for b in ref]
        for a, b in zip(ref, ours, strict=True):
            assert all(torch.equal(a[t], b[t]) for t, k in KINDS.items() if k.channels < 3)


def test_refuses_what_it_cannot_run(root):
    steps = "data.photometric=[{__class_fullname__: ColorJitter, brightness: 0.3, p: 0.8}]"
    with pytest.raises(ValueError, match="data.photometric"):
        build_loaders(_cfg(root, "host", steps), splits=["train"])
    with pytest.raises(Exception, match="data.cache"):
        _cfg(root, "gpu")


def test_prefetched_keeps_order_raises_errors_and_stops_when_left():
    """On the CPU the cached loader makes batches one step ahead in a thread."""
    import threading

    from cvmtl.data.cached_loader import prefetched

    made = []

    def items(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise OSError(f"cache row {i} unreadable")
            made.append(i)
            yield {"i": i, "threads": torch.get_num_threads()}

    threads = torch.get_num_threads()
    got = list(prefetched(items(7)))
    assert torch.get_num_threads() == threads
    assert [b["i"] for b in got] == list(range(7))
    assert {b["threads"] for b in got} == {1}  # one intra-op thread there, the caller's intact
    with pytest.raises(OSError, match="cache row 3 unreadable"):
        list(prefetched(items(7, fail_at=3)))
    made.clear()
    it = prefetched(items(1000), depth=2)
    assert next(it)["i"] == 0
    it.close()  # leaving the loop: the thread stops after at most a few more items
    assert len(made) <= 5
    assert not any(t.name == "cvmtl-cached-batches" for t in threading.enumerate())
