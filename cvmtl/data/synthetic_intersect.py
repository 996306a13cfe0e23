"""Ray / primitive intersection in a primitive's local frame: box, ellipsoid, vertical cylinder.

Normals and face codes come from a ``detail(mask)`` callback rather than with the hit distances:
the caster only needs them for the rays where this primitive turns out to be the nearest.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# (t [N], detail(mask) -> (local normals [M, 3], face codes [M]))
Hit = tuple[np.ndarray, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]]


def intersect(kind: str, o: np.ndarray, d: tuple, h: np.ndarray) -> Hit:
    """Nearest hit of rays (local frame: origin o [3], direction components d = (dx, dy, dz), each
    [N]) with a centred primitive of half extents h.

    Returns t [N] (inf on a miss) and ``detail(mask) -> (local normals [M, 3], face codes [M])``
    for the rays in mask (face 0..5 box faces, 6 curved side, 7 cylinder cap). Works on 1-D
    component arrays: numpy reductions over a trailing axis of 3 are slow.
    """
    # Rays parallel to a slab or missing a quadric divide by zero / take sqrt(< 0): inf and nan
    # are expected there and masked out.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == "box":
            return _hit_box(o, d, h)
        if kind == "ell":
            return _hit_ellipsoid(o, d, h)
        return _hit_cylinder(o, d, h)  # vertical (elliptic) cylinder


def _hit_box(o: np.ndarray, d: tuple, h: np.ndarray) -> Hit:
    """Slab test: entry t and per-axis entry distances (the largest names the face hit)."""
    tmins, tmaxs = [], []
    for k, dk in enumerate(d):
        inv = 1.0 / dk
        t1, t2 = (-h[k] - o[k]) * inv, (h[k] - o[k]) * inv
        tmins.append(np.minimum(t1, t2))
        tmaxs.append(np.maximum(t1, t2))
    tn = np.maximum(np.maximum(tmins[0], tmins[1]), tmins[2])
    tf = np.minimum(np.minimum(tmaxs[0], tmaxs[1]), tmaxs[2])
    t = np.where((tn <= tf) & (tn > 1e-6), tn, np.inf)

    def detail(m):
        tm = np.stack([x[m] for x in tmins], 1)
        axis = tm.argmax(1)
        dd = np.stack([x[m] for x in d], 1)
        sgn = -np.sign(dd[np.arange(len(axis)), axis])
        nl = np.zeros((len(axis), 3))
        nl[np.arange(len(axis)), axis] = sgn
        return nl, axis * 2 + (sgn > 0)

    return t, detail


def _hit_ellipsoid(o: np.ndarray, d: tuple, h: np.ndarray) -> Hit:
    """Ray / unit sphere in coordinates scaled by the half extents (near root only)."""
    dx, dy, dz = d
    ox, oy, oz = o / h
    sx, sy, sz = dx / h[0], dy / h[1], dz / h[2]
    a = sx * sx + sy * sy + sz * sz
    b = sx * ox + sy * oy + sz * oz
    c = ox * ox + oy * oy + oz * oz - 1
    disc = b * b - a * c
    t = (-b - np.sqrt(disc)) / a
    t = np.where((disc > 0) & (t > 1e-6), t, np.inf)

    def detail(m):
        tm = t[m]
        p = np.stack([ox + tm * sx[m], oy + tm * sy[m], oz + tm * sz[m]], 1)
        return p / h, np.full(len(tm), 6)

    return t, detail


def _hit_cylinder(o: np.ndarray, d: tuple, h: np.ndarray) -> Hit:
    """Vertical elliptic cylinder: the curved side within |z| <= h_z, or the cap facing the ray
    origin when it lies above or below the cylinder."""
    dx, dy, dz = d
    ox, oy = o[0] / h[0], o[1] / h[1]
    sx, sy = dx / h[0], dy / h[1]
    hz = h[2]
    a = sx * sx + sy * sy
    b = sx * ox + sy * oy
    c = ox * ox + oy * oy - 1
    disc = b * b - a * c
    ts = (-b - np.sqrt(disc)) / a
    zs = o[2] + ts * dz
    ts = np.where((disc > 0) & (ts > 1e-6) & (np.abs(zs) <= hz), ts, np.inf)
    cap = hz if o[2] > 0 else -hz
    tc = (cap - o[2]) / dz
    px, py = ox + tc * sx, oy + tc * sy
    tc = np.where((tc > 1e-6) & (px * px + py * py <= 1) & (abs(o[2]) > hz), tc, np.inf)
    t = np.minimum(ts, tc)

    def detail(m):
        side = ts[m] <= tc[m]
        tm = np.where(side, ts[m], 0.0)
        nl = np.stack([(ox + tm * sx[m]) / h[0], (oy + tm * sy[m]) / h[1], 0 * tm], 1)
        nl[~side] = [0.0, 0.0, np.sign(cap)]
        return nl, np.where(side, 6, 7)

    return t, detail
