"""Models: backbones of every family, padding/cropping, sharing, local weights, init_from."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import timm
import torch

from cvmtl.config import Config, load_config
from cvmtl.models import MultiTaskModel, SoftSharingModel, TimmBackbone, build_model

SMALL = ["model.neck_channels=32", "model.head_channels=16"]

# (backbone, timm kwargs shrinking it for speed): every family the toolkit claims to support
BACKBONES = [
    pytest.param("resnet18", {}, id="resnet18"),
    pytest.param("convnext_atto", {}, id="convnext_atto"),
    pytest.param("efficientnet_b0", {}, id="efficientnet_b0"),
    pytest.param("mobilenetv3_small_100", {}, id="mobilenetv3_small"),
    pytest.param("regnetx_002", {}, id="regnetx_002"),
    pytest.param("swin_tiny_patch4_window7_224", {}, id="swin_tiny"),
    pytest.param("vit_tiny_patch16_224", {"depth": 3}, id="vit_tiny"),
]


def make_cfg(*overrides: str, crop: tuple[int, int] = (96, 128)) -> Config:
    return load_config(None, [*SMALL, f"data.crop=[{crop[0]},{crop[1]}]", *overrides])


def check_outputs(out: dict[str, torch.Tensor], batch: int, size: tuple[int, int], cfg: Config):
    assert set(out) == set(cfg.tasks)
    assert out["seg"].shape == (batch, cfg.data.num_classes, *size)
    assert out["depth"].shape == (batch, 1, *size)
    assert out["normal"].shape == (batch, 3, *size)
    assert torch.all(out["depth"] > 0) and torch.all(out["depth"] <= cfg.model.max_depth)
    norms = out["normal"].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)


@pytest.mark.parametrize("name,kwargs", BACKBONES)
def test_backbone_families(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    cfg = make_cfg(f"model.backbone={name}")
    model = build_model(cfg, kwargs)
    # channels / strides come from timm's feature_info; the neck fuses at stride 4
    assert len(model.backbone.channels) == len(model.backbone.strides) >= 3
    assert min(model.backbone.strides) == 4 and model.size_divisor % 32 == 0

    image = torch.randn(2, 3, 96, 128)
    out = model(image)
    check_outputs(out, 2, (96, 128), cfg)
    loss = sum(o.float().square().mean() for o in out.values())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:10]}"

    # channels_last gives the same predictions (eval mode: batch-norm statistics are fixed)
    model.eval()
    with torch.no_grad():
        ref = model(image)
        model_cl = model.to(memory_format=torch.channels_last)
        got = model_cl(image.contiguous(memory_format=torch.channels_last))
    for task in cfg.tasks:
        torch.testing.assert_close(got[task], ref[task], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name,kwargs", [BACKBONES[0], BACKBONES[-1]])
@pytest.mark.parametrize("neck_sharing", ["pyramid", "all"])
def test_odd_input_size_is_padded_and_cropped(name: str, kwargs: dict, neck_sharing: str) -> None:
    cfg = make_cfg(f"model.backbone={name}", f"model.neck_sharing={neck_sharing}")
    model = build_model(cfg, kwargs).eval()
    image = torch.randn(1, 3, 90, 123)
    with torch.no_grad():
        out = model(image)
        feats = model.forward_features(image)
        split = model.forward_heads(feats, image.shape[-2:])
    check_outputs(out, 1, (90, 123), cfg)
    # the shared representation comes from the image padded to 96x128: the pyramid levels
    # (flattened) or their fused stride-4 map
    c, pixels = cfg.model.neck_channels, (96 // 4) * (128 // 4)
    if neck_sharing == "all":
        assert feats.shape == (1, c, 96 // 4, 128 // 4)
    else:
        strides = model.backbone.strides
        assert feats.shape == (1, sum(c * pixels * 16 // s**2 for s in strides))
    for task in cfg.tasks:
        torch.testing.assert_close(split[task], out[task])


def test_channels_follow_feature_info() -> None:
    backbone = TimmBackbone("efficientnet_b0")
    info = timm.create_model("efficientnet_b0", features_only=True).feature_info
    # the stride-2 level is dropped; the rest are timm's own numbers
    kept = [(c, s) for c, s in zip(info.channels(), info.reduction()) if s >= 4]
    assert list(zip(backbone.channels, backbone.strides)) == kept
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == backbone.channels
    assert [64 // f.shape[-1] for f in feats] == backbone.strides


@pytest.mark.parametrize("norm", ["gn", "syncbn"])
def test_norm_choices(norm: str) -> None:
    cfg = make_cfg(f"model.norm={norm}", "model.neck_channels=24")
    model = build_model(cfg)
    kinds = {type(m).__name__ for m in model.neck.modules()}
    assert ("GroupNorm" if norm == "gn" else "SyncBatchNorm") in kinds
    check_outputs(model(torch.randn(2, 3, 64, 64)), 2, (64, 64), cfg)


def test_hard_sharing_interfaces() -> None:
    model = build_model(make_cfg())
    assert isinstance(model, MultiTaskModel)
    assert model.tasks == ["seg", "depth", "normal"] and model.num_classes == 13
    shared = {id(p) for p in model.shared_parameters()}
    per_task = [{id(p) for p in model.task_parameters(t)} for t in model.tasks]
    everything = {id(p) for p in model.parameters()}
    assert shared.isdisjoint(set().union(*per_task))
    assert shared | set().union(*per_task) == everything
    assert float(model.regularization()) == 0.0
    with pytest.raises(ValueError, match="unknown task"):
        model.task_parameters("edge")


def test_single_task_model() -> None:
    cfg = make_cfg("tasks=[depth]")
    model = build_model(cfg)
    out = model(torch.randn(1, 3, 64, 64))
    assert list(out) == ["depth"] and model.tasks == ["depth"]


def test_soft_sharing_regularization() -> None:
    cfg = make_cfg("model.sharing=soft", "model.soft_weight=0.5", "tasks=[seg,depth]")
    model = build_model(cfg)
    assert isinstance(model, SoftSharingModel)
    out = model(torch.randn(1, 3, 64, 64))
    assert set(out) == {"seg", "depth"}
    assert list(model.shared_parameters()) == []
    with pytest.raises(ValueError, match="sharing=hard"):
        model.forward_features(torch.randn(1, 3, 64, 64))
    # copies start equal: R = 0
    assert model.regularization().item() == 0.0

    seg_bb, depth_bb = model.branches["seg"].backbone, model.branches["depth"].backbone
    with torch.no_grad():
        for p in depth_bb.parameters():
            p.add_(0.01 * torch.randn_like(p))

    def distance() -> float:
        pairs = zip(seg_bb.parameters(), depth_bb.parameters())
        return sum(float((a - b).detach().square().sum()) for a, b in pairs)

    before, reg = distance(), model.regularization()
    # two copies: sum_t ||theta_t - mean||^2 = ||a - b||^2 / 2, times soft_weight
    assert reg.item() == pytest.approx(0.5 * before / 2, rel=1e-4)
    reg.backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt.step()
    assert distance() < before


def test_unknown_backbone_suggests_names() -> None:
    with pytest.raises(ValueError, match="resnet18") as info:
        build_model(make_cfg("model.backbone=resnet81"))
    assert "close matches" in str(info.value)


def test_unknown_task_is_value_error() -> None:
    cfg = make_cfg()
    cfg.tasks = ["seg", "optical_flow"]  # past config validation, as a caller could
    with pytest.raises(ValueError, match="available: seg, depth, normal"):
        build_model(cfg)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_file(tmp_path, suffix: str) -> None:
    torch.manual_seed(1)
    saved = timm.create_model("resnet18").state_dict()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(saved, path)
    else:
        from safetensors.torch import save_file

        save_file(saved, str(path))
    model = build_model(make_cfg("model.pretrained=true", f"model.pretrained_file={path}"))
    loaded = model.backbone.body.state_dict()
    assert loaded  # the classifier (fc) is not part of a features_only model
    for name, value in loaded.items():
        torch.testing.assert_close(value, saved[name], msg=name)


def test_pretrained_without_network_fails_fast(tmp_path, monkeypatch) -> None:
    # offline, with an empty cache: the error must point at model.pretrained_file
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    with pytest.raises(RuntimeError, match="model.pretrained_file"):
        build_model(make_cfg("model.pretrained=true"))


def test_init_from_other_class_count(tmp_path) -> None:
    torch.manual_seed(2)
    src = build_model(make_cfg("data.num_classes=13"))
    sd = src.state_dict()
    torch.save({"model": sd, "step": 5}, tmp_path / "ckpt.pt")
    torch.save(sd, tmp_path / "bare.pt")
    for name in ("ckpt.pt", "bare.pt"):
        cfg = make_cfg("data.num_classes=5", f"model.init_from={tmp_path / name}")
        model = build_model(cfg)
        assert model.init_skipped == ["heads.seg.pred.bias", "heads.seg.pred.weight"]
        for key, value in model.state_dict().items():
            if key not in model.init_skipped:
                torch.testing.assert_close(value, sd[key], msg=key)
        assert model.heads["seg"].pred.weight.shape[0] == 5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name,kwargs", [BACKBONES[0], BACKBONES[5], BACKBONES[-1]])
def test_cuda_bf16_channels_last(name: str, kwargs: dict) -> None:
    cfg = make_cfg(f"model.backbone={name}")
    model = build_model(cfg, kwargs).cuda().to(memory_format=torch.channels_last)
    image = torch.randn(2, 3, 90, 123, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(image)
    check_outputs(out, 2, (90, 123), cfg)
    assert all(o.dtype == torch.float32 for o in out.values())
    sum(o.square().mean() for o in out.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
