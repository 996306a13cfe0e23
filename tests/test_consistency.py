"""The depth-normal consistency term (``loss.consistency``) against planes built by hand."""

import math

import pytest
import torch
from tinymtl import make_batch, tiny_cfg

from cvmtl.config import ConfigError, load_config
from cvmtl.loss_terms import depth_normal_terms, surface_mask
from cvmtl.losses import compute_losses

H, W = 24, 32


def plane_depth(normal, offset=3.0, f=40.0, cx=None, cy=None) -> torch.Tensor:
    """z(u, v) of the plane n . X = offset seen by a pinhole camera (focal f, centre cx, cy):
    X = z ((u - cx) / f, (v - cy) / f, 1), so z = offset / (n . ((u - cx) / f, (v - cy) / f, 1))."""
    cx = W / 2 if cx is None else cx
    cy = H / 2 if cy is None else cy
    v, u = torch.meshgrid(
        torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij"
    )
    nx, ny, nz = normal
    return (offset / (nx * (u - cx) / f + ny * (v - cy) / f + nz)).float()


def normal_map(normal, batch=1) -> torch.Tensor:
    n = torch.tensor(normal, dtype=torch.float32)
    return (n / n.norm()).view(1, 3, 1, 1).expand(batch, 3, H, W).clone()


TILTED = (0.4, -0.3, 0.866)


def test_the_true_plane_costs_nothing_at_any_focal_length_and_centre():
    n = torch.tensor(TILTED) / torch.tensor(TILTED).norm()
    normals = normal_map(TILTED)
    labeled = torch.ones(1, dtype=torch.bool)
    for f, cx, cy in ((40.0, None, None), (55.0, 3.0, 20.0), (25.0, 30.0, 1.0)):  # zoom, crop
        z = plane_depth(n.double(), f=f, cx=cx, cy=cy)[None, None]
        terms = depth_normal_terms(z, normals, z, labeled)
        assert terms.shape == (1, 1, H, W)
        assert terms.abs().max() < 1e-3  # the cosine's eps: 1e-6 against |grad| ~ 3e-3


def test_a_wrongly_tilted_prediction_costs_one_minus_the_cosine():
    n = torch.tensor(TILTED).double()
    normals = normal_map(TILTED)
    labels = plane_depth(n / n.norm())[None, None]
    # Tilted the other way in x: grad(1/z) ∝ (-nx, ny) instead of (nx, ny).
    wrong = torch.tensor([-0.4, -0.3, 0.866]).double()
    pred = plane_depth(wrong / wrong.norm())[None, None]
    terms = depth_normal_terms(pred, normals, labels, torch.ones(1, dtype=torch.bool))
    a, b = torch.tensor([-0.4, -0.3]), torch.tensor([0.4, -0.3])
    expected = 1 - (a @ b) / (a.norm() * b.norm())  # 1 - cos between the two (n_x, n_y)
    inside = terms[0, 0, 1:-1, 1:-1]
    torch.testing.assert_close(inside, torch.full_like(inside, float(expected)), atol=1e-4, rtol=0)


def test_the_axis_convention_is_read_from_the_labels():
    """A format whose normals' x / y point the other way: the term still sees the plane as
    consistent (the sign comes from the labeled depth)."""
    n = torch.tensor(TILTED).double()
    z = plane_depth(n / n.norm())[None, None]
    flipped = normal_map(TILTED)
    flipped[:, :2] *= -1
    terms = depth_normal_terms(z, flipped, z, torch.ones(1, dtype=torch.bool))
    assert terms.abs().max() < 1e-3  # the cosine's eps: 1e-6 against |grad| ~ 3e-3


def test_the_mask_keeps_tilted_surface_interiors_only():
    normals = normal_map(TILTED)
    normals[:, :, :, W // 2 :] = normal_map((0.0, 0.05, 1.0))[:, :, :, W // 2 :]  # faces the camera
    normals[:, :, 5, 3] = 0  # an unlabeled pixel
    mask = surface_mask(normals, torch.ones(1, dtype=torch.bool))[0]
    assert not mask[:, W // 2 :].any()  # facing the camera: no gradient direction
    assert not mask[:, W // 2 - 1].any()  # next to the edge between the surfaces
    assert not mask[0].any() and not mask[:, 0].any()  # the border
    assert not mask[5, 3] and not mask[4, 3] and not mask[5, 2]  # the unlabeled one, neighbours
    assert mask[1:-1, 1 : W // 2 - 1].sum() == (H - 2) * (W // 2 - 2) - 5


def _batch_on_planes(n: int = 2) -> dict:
    """Random depth labels (some missing) on tilted-plane normal labels."""
    batch = make_batch(n=n, size=H)
    batch["image"] = torch.zeros(n, 3, H, W)
    g = torch.Generator().manual_seed(0)
    batch["depth"] = torch.rand(n, 1, H, W, generator=g) * 4 + 0.5
    batch["depth"][torch.rand(n, 1, H, W, generator=g) < 0.2] = 0
    batch["normal"] = normal_map(TILTED, batch=n)
    batch["seg"] = torch.zeros(n, H, W, dtype=torch.long)
    return batch


def _cfg(tasks, **loss):
    cfg = tiny_cfg(**loss)
    cfg.tasks = list(tasks)
    return cfg


def test_the_depth_loss_adds_the_weighted_terms_over_its_own_pixel_count():
    batch = _batch_on_planes()
    g = torch.Generator().manual_seed(1)
    preds = {
        "depth": (torch.rand(2, 1, H, W, generator=g) * 4 + 0.5).requires_grad_(),
        "normal": torch.randn(2, 3, H, W, generator=g, requires_grad=True),
    }
    plain = compute_losses(preds, batch, _cfg(["depth", "normal"]))
    with_term = compute_losses(
        preds, batch, _cfg(["depth", "normal"], consistency={"depth_normal": 0.5})
    )
    valid = batch["depth"] > 0
    labeled = torch.ones(2, dtype=torch.bool)
    extra = depth_normal_terms(preds["depth"], batch["normal"], batch["depth"], labeled)
    assert extra.sum() > 0
    expected = plain["depth"] + 0.5 * extra.sum() / valid.sum()
    torch.testing.assert_close(with_term["depth"], expected)
    torch.testing.assert_close(with_term["normal"], plain["normal"])
    # The term moves the depth prediction only: the normals are labels here, not predictions.
    with_term["depth"].backward()
    assert preds["depth"].grad.abs().sum() > 0 and preds["normal"].grad is None


def test_samples_without_normal_labels_have_no_term():
    batch = _batch_on_planes()
    batch["has"]["normal"] = torch.tensor([True, False])
    pred = torch.rand(2, 1, H, W, generator=torch.Generator().manual_seed(2)) + 0.5
    cfg = _cfg(["depth", "normal"], consistency={"depth_normal": 1.0})
    both = compute_losses({"depth": pred, "normal": batch["normal"]}, batch, cfg)["depth"]
    first = {k: v[:1] for k, v in batch.items() if k != "has"}
    first["has"] = {t: torch.ones(1, dtype=torch.bool) for t in batch["has"]}
    alone = compute_losses({"depth": pred[:1], "normal": batch["normal"][:1]}, first, cfg)["depth"]
    valid = batch["depth"] > 0
    # Same terms (sample 0's), over the two samples' depth pixels instead of the first one's.
    torch.testing.assert_close(
        both * valid.sum(),
        alone * valid[:1].sum() + (pred[1:] - batch["depth"][1:]).abs()[valid[1:]].sum(),
    )


def test_a_model_without_normals_has_no_term():
    batch = _batch_on_planes()
    pred = {"depth": torch.rand(batch["depth"].shape) + 0.5}
    plain = compute_losses(pred, batch, _cfg(["depth"]))
    weighted = compute_losses(pred, batch, _cfg(["depth"], consistency={"depth_normal": 1.0}))
    assert torch.equal(plain["depth"], weighted["depth"])


def test_the_gradient_turns_a_prediction_toward_the_labeled_tilt():
    """A few gradient steps on the term alone rotate a flat-ish prediction's gradient toward
    the normals' direction."""
    n = torch.tensor(TILTED).double()
    normals = normal_map(TILTED)
    labels = plane_depth(n / n.norm())[None, None]
    pred = (
        torch.full_like(labels, 3.0)
        + 0.01 * torch.randn(labels.shape, generator=torch.Generator().manual_seed(0))
    ).requires_grad_()
    opt = torch.optim.Adam([pred], lr=1e-2)
    labeled = torch.ones(1, dtype=torch.bool)
    first = depth_normal_terms(pred, normals, labels, labeled).mean().item()
    for _ in range(50):
        opt.zero_grad()
        depth_normal_terms(pred, normals, labels, labeled).mean().backward()
        opt.step()
    last = depth_normal_terms(pred, normals, labels, labeled).mean().item()
    assert math.isfinite(last) and last < 0.5 * first


@pytest.mark.parametrize(
    "overrides",
    [
        ["loss.consistency.depth_normal=-1"],
        ["loss.depth=silog", "loss.consistency.depth_normal=1"],
        ["loss.consistency.seg_surface=1"],
    ],
)
def test_bad_weights_are_refused_at_load(overrides):
    with pytest.raises(ConfigError, match="loss.consistency"):
        load_config("synthetic_demo", overrides)
