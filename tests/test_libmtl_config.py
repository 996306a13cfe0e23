"""configs/nyuv2_13_libmtl.yaml: LibMTL's NYUv2 protocol (examples/nyu of
median-research-group/LibMTL). It loads, every setting names its source, its values are the
protocol's, its training data reach the model exactly as stored (LibMTL's documented command
has no --aug and no ImageNet normalization), and its deeplab model builds and predicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cvmtl.config import load_config
from cvmtl.configs import find_config
from cvmtl.data.loader import build_datasets
from cvmtl.models import build_model
from cvmtl.models.arch.deeplab import DeepLabModel

NAME = "nyuv2_13_libmtl"
# The protocol, value by value (the YAML comments say which LibMTL file / argument each is).
PROTOCOL = {
    "tasks": ["seg", "depth", "normal"],
    "data.format": "nyuv2_npy",
    "data.num_classes": 13,
    "data.crop": [288, 384],
    "data.mean": [0.0, 0.0, 0.0],  # images fed in [0, 1], not ImageNet-normalized
    "data.std": [1.0, 1.0, 1.0],
    "data.scale_range": [1.0, 1.0],  # --aug is off in the documented command
    "data.hflip": False,
    "data.color_jitter": 0.0,
    "data.eval_batch_size": 8,  # --test_bs
    "model.arch": "deeplab",
    "model.backbone": "resnet50.tv_in1k",  # torchvision's ImageNet ResNet-50
    "model.pretrained": True,
    "model.neck_channels": 256,  # ASPP width
    "model.head_channels": 256,  # DeepLabHead's 3x3 conv
    "model.norm": "bn",
    "loss.balancer": "fixed",  # EW
    "loss.balancer_args": {},
    "loss.grad_source": "params",  # --rep_grad off
    "loss.depth": "l1",
    "loss.normal": "cosine",
    "train.epochs": 200,
    "train.batch_size": 8,
    "train.optimizer": "adam",  # torch.optim.Adam, weight decay as L2
    "train.lr": 1.0e-4,
    "train.weight_decay": 1.0e-5,
    "train.scheduler": "step",  # StepLR(100, 0.5) over 200 epochs
    "train.step_at": [0.5],
    "train.step_gamma": 0.5,
    "train.warmup_steps": 0,
    "train.amp": "auto",  # LibMTL: float32 (amp=none); auto follows the device
    "train.seed": 0,
    "train.eval_every": 1,
}


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def test_settings_are_the_protocol_values():
    cfg = load_config(NAME)
    got = {key: _get(cfg, key) for key in PROTOCOL}
    assert got == PROTOCOL
    assert cfg.data.val_fraction > 0  # selection on a train carve, never on the test split


def test_every_setting_names_its_source():
    """Each ``key: value`` line carries a comment, or follows a comment block that explains it."""
    lines = find_config(NAME).read_text().splitlines()
    bare = []
    for i, line in enumerate(lines):
        text = line.split("#", 1)[0].rstrip()
        key, _, value = text.strip().partition(":")
        if not text or not value.strip() or key == "name":  # section headers, the run name
            continue
        if "#" not in line and not lines[i - 1].lstrip().startswith("#"):
            bare.append(line.strip())
    assert bare == []


def _write_npy_copy(root: Path, n: int, hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """An mtan / LibMTL-style copy: train/{image,label,depth,normal}/{i}.npy, random content
    (no symmetry: a flip or a zoom would show)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for i in range(n):
        normal = rng.normal(size=(*hw, 3)).astype(np.float32)
        sample = {
            "image": rng.random((*hw, 3), dtype=np.float32),
            "label": rng.integers(-1, 13, hw).astype(np.float32),
            "depth": rng.uniform(0.5, 9.5, (*hw, 1)).astype(np.float32),
            "normal": normal / np.linalg.norm(normal, axis=-1, keepdims=True),
        }
        for kind, array in sample.items():
            (root / "train" / kind).mkdir(parents=True, exist_ok=True)
            np.save(root / "train" / kind / f"{i}.npy", array)
            arrays[f"{kind}{i}"] = array
    return arrays


def test_training_samples_are_the_stored_arrays(tmp_path):
    cfg = load_config(NAME, [f"data.root={tmp_path}"])
    stored = _write_npy_copy(tmp_path, 10, tuple(cfg.data.crop))
    train = build_datasets(cfg, ["train"])["train"]
    assert len(train) == 9  # one of 10 carved for validation
    for index, sid in enumerate(train.ids):
        sample = train[(3, index)]  # any epoch: no augmentation at all
        image = np.round(stored[f"image{sid}"] * 255) / 255  # the uint8 round trip
        np.testing.assert_allclose(sample["image"].numpy().transpose(1, 2, 0), image, atol=1e-6)
        label = stored[f"label{sid}"].astype(np.int64)
        assert torch.equal(sample["seg"], torch.from_numpy(np.where(label == -1, 255, label)))
        np.testing.assert_array_equal(sample["depth"][0].numpy(), stored[f"depth{sid}"][..., 0])
        normal = sample["normal"].numpy().transpose(1, 2, 0)
        np.testing.assert_allclose(normal, stored[f"normal{sid}"], atol=1e-6)


def test_deeplab_model_builds_and_predicts_every_task():
    torch.manual_seed(0)
    cfg = load_config(NAME, ["model.pretrained=false", "data.crop=[32,48]"])
    model = build_model(cfg, {"layers": [1, 1, 1, 1]}).eval()  # one block per stage: fast
    assert isinstance(model, DeepLabModel)
    assert model.backbone.strides[-1] == 8 and model.backbone.channels[-1] == 2048
    aspp = model.heads["seg"].pre
    assert aspp.project[0].out_channels == 256 and model.heads["seg"].block[0].out_channels == 256
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 48))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "seg": (2, 13, 32, 48),
        "depth": (2, 1, 32, 48),
        "normal": (2, 3, 32, 48),
    }
    assert torch.allclose(out["normal"].norm(dim=1), torch.ones(2, 32, 48), atol=1e-4)
