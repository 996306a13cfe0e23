"""model.arch: every architecture builds, predicts every task at the input size, trains its
parameters, splits them right into shared / per-task, and (where it has one) exposes a shared
representation whose gradient path equals the full model's."""

from __future__ import annotations

import pytest
import torch
from test_models import BACKBONES

from cvmtl.config import Config, load_config
from cvmtl.losses import AUX as LOSS_AUX
from cvmtl.losses import compute_losses
from cvmtl.models import build_model, load_matching
from cvmtl.models.arch import AUX, ArchModel
from cvmtl.tasks import get_task

ARCHS = ["deeplab", "mtan", "cross_stitch", "padnet", "mtinet"]
WITH_FEATURES = ["deeplab", "mtan", "padnet", "mtinet"]
DEEP = {"padnet": 1, "mtinet": 4}  # auxiliary predictions per task (resnet18: 4 FPN levels)
SIZE = (32, 48)
SHALLOW = {"layers": [1, 1, 1, 1]}  # resnet18 with one block per stage: same stages, half the time


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_cfg(arch: str, *overrides: str) -> Config:
    small = ["model.neck_channels=16", "model.head_channels=8", f"data.crop=[{SIZE[0]},{SIZE[1]}]"]
    return load_config(None, [*small, f"model.arch={arch}", *overrides])


def build(arch: str, *overrides: str) -> ArchModel:
    torch.manual_seed(0)
    return build_model(make_cfg(arch, *overrides), SHALLOW)


def aux_list(out: dict, task: str) -> list[torch.Tensor]:
    extra = out.get(AUX, {}).get(task, [])
    return list(extra) if isinstance(extra, (list, tuple)) else [extra]


def batch_for(cfg: Config, n: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    h, w = SIZE
    batch = {
        "image": torch.randn(n, 3, h, w, generator=g),
        "seg": torch.randint(0, cfg.data.num_classes, (n, h, w), generator=g),
        "depth": torch.rand(n, 1, h, w, generator=g) * 5 + 0.5,
        "normal": torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=g), dim=1),
    }
    batch["has"] = {t: torch.ones(n, dtype=torch.bool) for t in cfg.tasks}
    return batch


@pytest.mark.parametrize("arch", ARCHS)
def test_arch_shapes_aux_and_gradients(arch: str) -> None:
    model = build(arch)
    assert isinstance(model, ArchModel) and model.tasks == ["seg", "depth", "normal"]
    image = torch.randn(2, 3, 30, 45)  # not a stride multiple: padded, then cropped back
    out = model.train()(image)
    for task in model.tasks:
        channels = get_task(task).out_channels(model.num_classes)
        assert out[task].shape == (2, channels, 30, 45)
        assert out[task].dtype == torch.float32
        aux = aux_list(out, task)
        assert len(aux) == DEEP.get(arch, 0)
        assert all(a.shape == out[task].shape for a in aux)
    assert (AUX in out) == (arch in DEEP)
    loss = sum(out[t].square().mean() + sum(a.square().mean() for a in aux_list(out, t))
               for t in model.tasks)  # fmt: skip
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:10]
    with torch.no_grad():
        assert set(model.eval()(image)) == set(model.tasks)  # eval / export: final ones only


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_and_task_parameters(arch: str) -> None:
    """A task's loss reaches only the shared parameters and that task's own."""
    model = build(arch, "tasks=[seg,depth]")
    shared = {id(p) for p in model.shared_parameters()}
    own = {t: {id(p) for p in model.task_parameters(t)} for t in model.tasks}
    assert shared.isdisjoint(own["seg"] | own["depth"]) and own["seg"].isdisjoint(own["depth"])
    assert shared | own["seg"] | own["depth"] == {id(p) for p in model.parameters()}
    out = model.train()(torch.randn(2, 3, *SIZE))
    (out["seg"].mean() + sum(a.mean() for a in aux_list(out, "seg"))).backward()
    reached = {id(p) for p in model.parameters() if p.grad is not None}
    assert reached <= shared | own["seg"] and own["seg"] <= reached
    assert float(model.regularization()) == 0.0


@pytest.mark.parametrize("arch", WITH_FEATURES)
def test_features_mode_gradients_equal_the_full_model(arch: str) -> None:
    """``forward_heads(forward_features(x))`` is ``forward(x)``; and features mode as the
    machinery runs it (each task's loss backpropagated only to a detached z and to that task's
    own parameters, then z.backward of the summed z-gradients) gives every parameter the
    gradient of one backward of the summed losses through the whole model: no parameter sits
    after z without belonging to exactly one task."""
    model = build(arch).train()
    cfg, image = make_cfg(arch), torch.randn(2, 3, *SIZE)
    batch = batch_for(cfg)
    sum(compute_losses(model(image), batch, cfg).values()).backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    z = model.forward_features(image)
    zd = z.detach().requires_grad_()
    losses = compute_losses(model.forward_heads(zd, image.shape[-2:]), batch, cfg)
    for task in model.tasks:
        inputs = [zd, *model.task_parameters(task)]
        torch.autograd.backward(losses[task], inputs=inputs, retain_graph=True)
    z.backward(zd.grad)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, full[name], atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad():
        model.eval()
        ref, split = model(image), model.forward_heads(model.forward_features(image), SIZE)
    assert all(torch.equal(ref[t], split[t]) for t in model.tasks)


def test_cross_stitch_refuses_features_mode_and_trains_in_params_mode() -> None:
    from cvmtl.balancers import build_balancer
    from cvmtl.engine.step import train_step

    cfg = make_cfg("cross_stitch", "tasks=[seg,depth]", "train.amp=none")
    model = build("cross_stitch", "tasks=[seg,depth]")
    with pytest.raises(ValueError, match="loss.grad_source=params"):
        model.forward_features(torch.randn(1, 3, *SIZE))
    batch, opt = batch_for(cfg), torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="loss.grad_source=params"):
        train_step(model, batch, build_balancer("mgda", cfg.tasks), opt, None, cfg)
    cfg.loss.grad_source = "params"
    out = train_step(model, batch, build_balancer("mgda", cfg.tasks), opt, None, cfg)
    assert not out.skipped and set(out.losses) == {"seg", "depth"}


@pytest.mark.parametrize("arch,amp", [("padnet", "bf16"), ("mtinet", "none")])
def test_gradient_balancer_in_features_mode_steps(arch: str, amp: str) -> None:
    """MGDA on the shared representation (aux losses included), under bf16 autocast too."""
    from cvmtl.balancers import build_balancer
    from cvmtl.engine.step import train_step

    cfg = make_cfg(arch, "tasks=[seg,depth]", f"train.amp={amp}", "loss.grad_source=features")
    model = build(arch, "tasks=[seg,depth]")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = train_step(model, batch_for(cfg), build_balancer("mgda", cfg.tasks), opt, None, cfg)
    assert not out.skipped, out.reason
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    for part in (
        "backbone.",
        "neck.initial.",
        "heads.seg.aux",
        "heads.depth.distill",
        "heads.depth.final",
    ):
        assert any(n.startswith(part) for n in moved), part


def test_cross_stitch_units_start_as_the_paper_says() -> None:
    model = build("cross_stitch")  # 3 tasks: self 0.9, the others 0.1 / 2 each
    columns = model.backbone.columns
    assert len(model.backbone.stitches) == len(columns["seg"].strides) - 1 == 3
    for unit in model.backbone.stitches.values():
        a = unit.alpha.detach()
        assert torch.allclose(a.diagonal(dim1=0, dim2=1), torch.full_like(a[0], 0.9).T)
        assert torch.allclose(a.sum(dim=1), torch.ones_like(a[:, 0]))
    seg, depth = columns["seg"].state_dict(), columns["depth"].state_dict()
    assert all(torch.equal(seg[k], depth[k]) for k in seg)  # copies start equal
    single = build("cross_stitch", "tasks=[depth]")
    assert len(single.backbone.stitches) == 0


# every family of the model tests but the plain ViT (one stride: refused below)
STITCHABLE = [p for p in BACKBONES if p.id != "vit_tiny"]


@pytest.mark.parametrize("name,kwargs", STITCHABLE)
def test_cross_stitch_runs_every_hierarchical_family_stage_by_stage(name, kwargs) -> None:
    torch.manual_seed(0)
    cfg = make_cfg(
        "cross_stitch", f"model.backbone={name}", "tasks=[seg,depth]", "data.crop=[64,64]"
    )
    model = build_model(cfg, kwargs).train()
    stitched, column = model.backbone, model.backbone.columns["seg"]
    # the levels timm's features_only model reports (>= stride 4), a stitch after each but the last
    assert (stitched.channels, stitched.strides) == (column.channels, column.strides)
    assert list(stitched.stitches) == stitched.taps[:-1] and len(stitched.taps) == len(
        column.strides
    )
    image = torch.randn(2, 3, 64, 64)
    out = model(image)
    sum(o.square().mean() for o in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:10]  # every stage ran, stitch units included
    with torch.no_grad():  # identity stitches: each column gives timm's own levels
        for unit in stitched.stitches.values():
            unit.alpha.copy_(torch.eye(2)[:, :, None].expand_as(unit.alpha))
        model.eval()
        for task, levels in zip(cfg.tasks, stitched(image)):
            expected = stitched.columns[task](image)  # TimmBackbone: body(x), levels >= stride 4
            assert [lv.shape for lv in levels] == [e.shape for e in expected]
            assert [64 // lv.shape[-1] for lv in levels] == column.strides
            for got, want in zip(levels, expected):
                torch.testing.assert_close(got, want)


def test_cross_stitch_says_why_a_backbone_has_no_stages() -> None:
    from types import SimpleNamespace

    from cvmtl.models.arch.cross_stitch import stages

    vit = make_cfg("cross_stitch", "model.backbone=vit_tiny_patch16_224", "tasks=[seg,depth]")
    with pytest.raises(ValueError, match="plain ViT: every block is at one stride .* no stage"):
        build_model(vit, {"depth": 3})
    one_call = SimpleNamespace(body=torch.nn.Identity(), pyramid=None)  # levels from one call
    with pytest.raises(ValueError, match="timm gives 'x' as a Identity, whose levels come out of"):
        stages(one_call, "x")


def test_deeplab_is_dilated_and_refuses_what_timm_cannot_dilate() -> None:
    model = build("deeplab", "tasks=[depth]")
    assert model.backbone.strides[-1] == 8 and model.size_divisor == 8
    assert model.forward_features(torch.randn(1, 3, *SIZE)).shape[-2:] == (4, 6)
    with pytest.raises(ValueError, match="can dilate"):
        build_model(make_cfg("deeplab", "model.backbone=vit_tiny_patch16_224"), {"depth": 1})


@pytest.mark.parametrize("arch", ["padnet", "mtinet"])
def test_aux_losses_scale_with_aux_weight(arch: str) -> None:
    model = build(arch).train()
    cfg = make_cfg(arch)
    batch = batch_for(cfg)
    with torch.no_grad():
        out = model(batch["image"])
    final = {t: out[t] for t in cfg.tasks}
    plain = compute_losses(final, batch, cfg)
    cfg.loss.aux_weight = 0.0
    zero = compute_losses(out, batch, cfg)
    cfg.loss.aux_weight = 0.25
    got = compute_losses(out, batch, cfg)
    for t in cfg.tasks:
        assert torch.equal(zero[t], plain[t])
        aux = sum(compute_losses({t: a}, batch, cfg)[t] for a in aux_list(out, t))
        torch.testing.assert_close(got[t], plain[t] + 0.25 * aux)
        assert float(aux) > 0
    assert LOSS_AUX == AUX


@pytest.mark.parametrize("arch", ["mtan", "padnet"])
def test_state_dict_names_are_stable_for_init_from(arch: str, tmp_path) -> None:
    model = build(arch)
    torch.save({"model": model.state_dict()}, tmp_path / "m.pt")
    other = build_model(make_cfg(arch), SHALLOW)
    assert load_matching(other, tmp_path / "m.pt") == []
    want = model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in other.state_dict().items())


def test_soft_sharing_is_for_fpn_only() -> None:
    with pytest.raises(ValueError, match="model.arch=fpn only"):
        build("mtan", "model.sharing=soft")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from enginekit import make_tiny_dataset

    counts = (("train", 4), ("val", 2))
    return make_tiny_dataset(tmp_path_factory.mktemp("data"), counts=counts, hw=(32, 32))


@pytest.mark.parametrize("arch", ARCHS)
def test_two_step_fit(arch: str, tiny_data, tmp_path) -> None:
    """fit(): 1 step, then resumed to 2 (validation, checkpoints); the checkpoint reloads into
    the same arch."""
    from enginekit import tiny_config

    from cvmtl.engine.restore import load_model
    from cvmtl.engine.trainer import fit

    cfg = tiny_config(
        tiny_data, tmp_path, model__arch=arch, train__batch_size=2, train__max_steps=2,
        model__neck_channels=16, model__head_channels=8, model__backbone="resnet10t",
        tasks="[seg,depth]",
    )  # fmt: skip
    cfg.train.max_steps = 1
    assert fit(cfg)["step"] == 1
    cfg.train.max_steps = 2
    result = fit(cfg, resume=True)
    assert result["step"] == 2 and "seg" in result["val"]
    model, _ = load_model(result["run_dir"] + "/last.pt", (), "cpu")
    assert type(model).arch == arch


@pytest.mark.slow  # the dynamo ONNX exporter: ~20 s on a busy 2-core box
def test_padnet_onnx_export_has_final_predictions_only(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from cvmtl.export import export_model, verify_export

    model = build("padnet").eval()
    path = export_model(model, "onnx", tmp_path / "m.onnx", SIZE)
    report = verify_export(model, path, "onnx", [SIZE, (29, 61)])  # dynamic H, W
    assert all(set(r) == set(model.tasks) for r in report.values())
    assert max(d for r in report.values() for d in r.values()) < 1e-4


def test_refusals_come_before_any_forward_pass() -> None:
    """cross_stitch + a gradient balancer in features mode is refused when the step is chosen
    (build_run does it once, before training); affinity refuses architectures without the
    backbone -> neck stages it measures."""
    from cvmtl.balancers import build_balancer
    from cvmtl.engine.step import select_step
    from cvmtl.workflows.affinity import compute_affinity

    cfg = make_cfg("cross_stitch", "tasks=[seg,depth]")
    model = build("cross_stitch", "tasks=[seg,depth]")
    with pytest.raises(ValueError, match="model.arch=cross_stitch has not: use loss.grad_source"):
        select_step(build_balancer("mgda", cfg.tasks), cfg, model)
    cfg.loss.grad_source = "params"
    select_step(build_balancer("mgda", cfg.tasks), cfg, model)
    with pytest.raises(ValueError, match="affinity: model.arch=mtan"):
        compute_affinity(
            build("mtan", "tasks=[seg,depth]"), [], lambda p, b: {}, ["seg", "depth"], 0.1
        )
