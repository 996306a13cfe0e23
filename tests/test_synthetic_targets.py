"""Edge and saliency targets of the procedural renderer: hand-made maps, rendered scenes, files."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from cvmtl.data.io import decode, read_split, write_mask_png
from cvmtl.data.synthetic import generate_dataset, render_sample, scene_rng
from cvmtl.data.synthetic_layout import build_scene
from cvmtl.data.synthetic_render import NROOM
from cvmtl.data.synthetic_targets import (
    STRUCTURAL,
    boundary_edges,
    centre_weight,
    object_table,
    salient_object,
)

SIZE = (96, 128)  # the demo size


@pytest.fixture(scope="module")
def scenes() -> list[dict]:
    return [render_sample(7, "test", i, SIZE, extras=True) for i in range(6)]


def _pairs(key: np.ndarray):
    """(first, second, differ) for every horizontal and vertical pair of 4-neighbours."""
    for a, b in ((np.s_[:, :-1], np.s_[:, 1:]), (np.s_[:-1], np.s_[1:])):
        yield a, b, key[a] != key[b]


def test_boundary_edges_by_hand():
    key = np.zeros((6, 7), np.int64)
    key[1:4, 2:6] = 1  # a 3x4 square
    square = key == 1
    # In front of the background: its own outer ring of pixels (10), nothing outside.
    depth = np.where(square, 1.0, 2.0)
    ring = square.copy()
    ring[2, 3:5] = False
    assert (boundary_edges(key, depth) == ring).all() and ring.sum() == 10
    # Behind it (seen through a hole): the background's 4-neighbours of the square (14, no
    # diagonal corners).
    outside = np.zeros_like(square)
    outside[0, 2:6] = outside[4, 2:6] = True
    outside[1:4, 1] = outside[1:4, 6] = True
    assert (boundary_edges(key, np.where(square, 3.0, 2.0)) == outside).all()
    # Same depth: the larger key owns the boundary.
    assert (boundary_edges(key, np.ones((6, 7))) == ring).all()
    # A 1 px wide pole in front of a wall is its own pixels: 1 px, not a 3 px band.
    pole = np.zeros((6, 7), np.int64)
    pole[:, 3] = 5
    edge = boundary_edges(pole, np.where(pole == 5, 1.0, 2.0))
    assert (edge == (pole == 5)).all()
    # Two regions side by side: one straight 1 px line on the nearer side.
    half = np.zeros((4, 6), np.int64)
    half[:, 3:] = 1
    edge = boundary_edges(half, np.where(half == 1, 2.0, 1.0))
    assert edge[:, 2].all() and edge.sum() == 4


def test_salient_object_by_hand():
    # Pixel centres of a 4x4 image at -0.75, -0.25, 0.25, 0.75 half-image units; sigma 0.5:
    # weight exp(-2 r^2): corner exp(-2.25), next to the centre exp(-0.25), edge middle exp(-1.25).
    w = centre_weight(4, 4)
    assert w[0, 0] == pytest.approx(math.exp(-2.25)) and w[1, 1] == pytest.approx(math.exp(-0.25))
    assert w[0, 1] == pytest.approx(math.exp(-1.25)) and np.allclose(w, w[::-1, ::-1])
    obj = np.zeros((4, 4), np.int64)  # 0: a room face, never salient
    obj[0] = 1  # top row: 2 exp(-2.25) + 2 exp(-1.25) = 0.7838
    obj[1, 1] = 2  # one central pixel: exp(-0.25) = 0.7788
    obj[2, 1:3] = obj[1, 2] = 3  # central, but structure (a door)
    thing = np.array([False, True, True, False])
    assert (salient_object(obj, thing) == (obj == 1)).all()  # bigger wins, narrowly
    obj[0, 1:3] = 0  # only the two top corners left: 0.2108 < 0.7788
    assert (salient_object(obj, thing) == (obj == 2)).all()
    assert not salient_object(obj, np.zeros(4, bool)).any()  # no thing in view: empty


def _keys(s: dict) -> np.ndarray:
    return s["object"] * 256 + s["seg_clean"]


def test_rendered_edges_are_thin_object_boundaries(scenes):
    within_class = 0
    for s in scenes:
        edge, key, depth = s["edge"], _keys(s), s["depth_clean"]
        assert edge.dtype == bool and 0.01 < edge.mean() < 0.2
        on_boundary = np.zeros_like(edge)
        for a, b, diff in _pairs(key):
            on_boundary[a] |= diff
            on_boundary[b] |= diff
            assert (edge[a] | edge[b])[diff].all()  # every boundary is drawn...
            near_a = diff & (depth[a] < depth[b] - 0.05)  # ...on the occluding side
            near_b = diff & (depth[b] < depth[a] - 0.05)
            assert edge[a][near_a].all() and edge[b][near_b].all()
            within_class += (diff & (s["seg_clean"][a] == s["seg_clean"][b])).sum()
        # Every edge pixel has a 4-neighbour of another label or object.
        assert not (edge & ~on_boundary).any()
        # One side only: about half of the two-sided band (thin objects are both sides).
        assert edge.sum() < 0.65 * on_boundary.sum()
    assert within_class > 100  # object boundaries inside one class (wall corners, chairs) too


def test_rendered_saliency_is_one_object(scenes):
    for i, s in enumerate(scenes):
        mask, obj = s["saliency"], s["object"]
        assert mask.dtype == bool and mask.any()
        (k,) = np.unique(obj[mask])
        assert (mask == (obj == k)).all()  # the whole visible object, nothing else
        _, thing = object_table(build_scene(scene_rng(7, "test", i)), NROOM)
        assert thing[k] and not set(np.unique(s["seg_clean"][mask])) & STRUCTURAL
        # It is connected in the image (one prop, not scattered pixels).
        _, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        assert np.bincount(lab[mask]).max() >= 0.95 * mask.sum()
        # The largest centre-weighted area among the things in view, object by object.
        weight = centre_weight(*SIZE)
        scores = {int(j): weight[obj == j].sum() for j in np.unique(obj) if thing[j]}
        assert max(scores, key=scores.get) == k


def test_props_on_a_surface_are_separate_objects():
    seen = 0
    for i in range(12):
        scene = build_scene(scene_rng(0, "train", i))
        obj, _ = object_table(scene, NROOM)
        ids = {}
        for j, p in enumerate(scene.prims):
            assert ids.setdefault((p.inst, p.group), obj[NROOM + j]) == obj[NROOM + j]
        assert len(set(ids.values())) == len(ids)  # one id per (object, prop)
        groups = {}
        for inst, group in ids:
            groups.setdefault(inst, set()).add(group)
        seen += sum(len(g) > 1 for g in groups.values())
    assert seen >= 5  # tabletop and shelf props do occur


def test_write_mask_png(tmp_path):
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2] = True
    write_mask_png(tmp_path / "m.png", mask)
    stored = decode(tmp_path / "m.png")
    assert stored.dtype == np.uint8 and stored.shape == (5, 7)
    assert set(np.unique(stored)) == {0, 255} and ((stored > 127) == mask).all()
    with pytest.raises(ValueError):
        write_mask_png(tmp_path / "bad.png", np.zeros((2, 2, 3)))


def test_written_maps_match_the_render(tmp_path):
    generate_dataset(tmp_path, {"val": 3}, (48, 64), seed=2, workers=1, progress=False)
    for sid in read_split(tmp_path / "splits" / "val.txt"):
        s = render_sample(2, "val", int(sid.split("_")[1]), (48, 64))
        for name in ("edge", "saliency"):
            stored = decode(tmp_path / name / f"{sid}.png")
            assert stored.dtype == np.uint8 and set(np.unique(stored)) <= {0, 255}
            assert ((stored > 127) == s[name]).all()


def test_five_task_config_is_the_demo_plus_edge_and_saliency():
    import yaml

    from cvmtl.configs import find_config

    demo = yaml.safe_load(find_config("synthetic_demo").read_text())
    five = yaml.safe_load(find_config("synthetic_5task").read_text())
    assert five["tasks"] == demo["tasks"] + ["edge", "saliency"]
    for section in ("data", "model", "train"):  # same data, model and budget as the demo
        assert five[section] == demo[section], section
    # Fixed weights (the demo's balancer, FairGrad, was measured on its 3 tasks only): the demo's
    # earlier {depth 0.5, normal 3} and MTL-PyTorch's edge / saliency weights.
    assert five["loss"]["balancer"] == "fixed"
    weights = five["loss"]["balancer_args"]["weights"]
    assert weights == {"depth": 0.5, "normal": 3.0, "edge": 50.0, "saliency": 5.0}
    assert five["loss"]["grad_source"] == demo["loss"]["grad_source"]
    # The tolerance allows the 1 px (1.41 px diagonal) side offset at 96x128, not 2 px.
    diagonal = math.hypot(*demo["data"]["crop"])
    assert math.sqrt(2) < five["eval"]["edge_max_dist"] * diagonal < 2
