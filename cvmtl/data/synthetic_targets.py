"""Edge and saliency targets of a rendered scene, from its clean label and object maps.

Objects: every room face (floor, ceiling, 4 walls) is an object of its own, and so is every placed
piece of furniture or wall item (one ``Builder``) and every separate prop on a surface or a shelf
(a ``Prim.group``). Parts of one object (the pillows of a bed, the books of a bookshelf) share it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from cvmtl.data.synthetic_scene import C, Scene

# Structure, not things: a door (wall), a rug (floor), curtains and blinds (window) are never
# the salient object, nor is any object with such a part.
STRUCTURAL = frozenset(C[k] for k in ("wall", "floor", "ceiling", "window"))
SALIENCY_SIGMA = 0.5  # centre weight exp(-r^2 / 2 sigma^2), r = offset / half the image size


def object_table(scene: Scene, nroom: int) -> tuple[np.ndarray, np.ndarray]:
    """Per primitive id (``nroom`` room faces, then ``scene.prims``) its object id (0..K-1), and
    per object id whether it may be salient (a thing, not a room face or structure)."""
    prims = scene.prims
    ids: dict[tuple[int, int], int] = {}  # in order of first appearance: deterministic
    keys = [(-1, f) for f in range(nroom)] + [(p.inst, p.group) for p in prims]
    obj = np.array([ids.setdefault(k, len(ids)) for k in keys], np.int64)
    bad_inst = {p.inst for p in prims if p.cls in STRUCTURAL}
    thing = np.zeros(len(ids), bool)
    for i, p in enumerate(prims):
        thing[obj[nroom + i]] = p.inst not in bad_inst
    return obj, thing


def boundary_edges(key: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Thin boundaries of a label map: bool HxW.

    Wherever two 4-neighbours have different ``key`` values, exactly one of the two is marked:
    the nearer one (smaller ``depth``; on a tie the larger key), i.e. the boundary belongs to the
    occluding side, as contour ownership goes. A straight boundary thus gives a 1 px line, and a
    1 px wide object in front of a wall gives its own pixels, not a 3 px band.
    """
    edge = np.zeros(key.shape, bool)
    for a, b in ((np.s_[:, :-1], np.s_[:, 1:]), (np.s_[:-1], np.s_[1:])):
        diff = key[a] != key[b]
        da, db = depth[a], depth[b]
        a_owns = (da < db) | ((da == db) & (key[a] > key[b]))
        edge[a] |= diff & a_owns
        edge[b] |= diff & ~a_owns
    return edge


@lru_cache(maxsize=8)
def centre_weight(h: int, w: int) -> np.ndarray:
    """Gaussian weight of each pixel by its distance to the image centre (float64 HxW)."""
    y = (np.arange(h) + 0.5) / h * 2 - 1
    x = (np.arange(w) + 0.5) / w * 2 - 1
    r2 = y[:, None] ** 2 + x[None, :] ** 2
    return np.exp(-r2 / (2 * SALIENCY_SIGMA**2))


def salient_object(obj_map: np.ndarray, thing: np.ndarray) -> np.ndarray:
    """Mask (bool HxW) of the salient object: among the visible things (objects that are not
    room faces, doors, rugs, windows or curtains), the one with the largest centre-weighted
    visible area, i.e. the sum over its pixels of exp(-r^2 / 2 sigma^2) with r the offset from
    the image centre in half-image units (sigma 0.5). Big and central wins; the whole visible
    object is the mask (all its parts, also where an occluder splits it). Empty when no thing
    is in view (a bare wall)."""
    h, w = obj_map.shape
    score = np.bincount(obj_map.ravel(), centre_weight(h, w).ravel(), minlength=len(thing))
    score = np.where(thing, score[: len(thing)], 0.0)
    best = int(np.argmax(score))  # the first on an exact tie: deterministic
    if score[best] <= 0:
        return np.zeros((h, w), bool)
    return obj_map == best


def scene_targets(
    scene: Scene, pid: np.ndarray, seg_clean: np.ndarray, depth_clean: np.ndarray, nroom: int
) -> dict[str, np.ndarray]:
    """``edge`` (label or object boundaries, see boundary_edges), ``saliency`` (see
    salient_object), both bool HxW, and the per-pixel ``object`` id map (int64)."""
    obj, thing = object_table(scene, nroom)
    obj_map = obj[pid]
    # One key per (object, class): class changes inside an object (pillow on a bed) are edges.
    key = obj_map * 256 + seg_clean
    return {
        "edge": boundary_edges(key, depth_clean),
        "saliency": salient_object(obj_map, thing),
        "object": obj_map,
    }
