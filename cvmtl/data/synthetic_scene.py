"""Scene primitives and furniture builders for the synthetic renderer.

World frame: x and y span the floor (the room is [0, lx] x [0, ly]), z points up, units are metres.
Objects are built in a local frame (x across, y from front (-) to back (+), z up, origin on the
floor at the footprint centre) and placed with a position and a yaw; the back faces the wall.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cvmtl.data.nyuv2 import NYU13_CLASSES
from cvmtl.data.synthetic_texture import Material, sample_material

CLASSES = tuple(NYU13_CLASSES)  # the renderer writes the order the readers use
C = {name: i for i, name in enumerate(CLASSES)}


@dataclass
class Prim:
    """A box, vertical cylinder ('cyl') or ellipsoid ('ell'): centre, half extents, yaw (rad)."""

    kind: str
    center: np.ndarray
    half: np.ndarray
    yaw: float
    cls: int
    mat: Material
    inst: int  # the object (one Builder) it belongs to
    no_depth: bool = False  # glass: the sensor sees through it (depth invalid)
    group: int = 0  # a separate prop within the object (props on one surface share a Builder)


@dataclass
class Scene:
    size: np.ndarray  # lx, ly, h
    room_mats: list[Material]  # floor, ceiling, wall x=0, x=lx, y=0, y=ly
    prims: list[Prim] = field(default_factory=list)
    lights: list[tuple[str, np.ndarray, float]] = field(default_factory=list)
    ambient: float = 0.3
    cam_pos: np.ndarray = field(default_factory=lambda: np.zeros(3))
    cam_rot: np.ndarray = field(default_factory=lambda: np.eye(3))  # columns: cam x, y, z in world
    footprints: list[tuple[float, float, float, float]] = field(default_factory=list)


def place_camera(scene: Scene, r: np.random.Generator) -> None:
    """Hand-held pose: near a wall (as in NYUv2), away from furniture, looking into the room at
    something (a random object or the room centre), slightly downward."""
    lx, ly, h = scene.size
    big = {C[k] for k in ("bed", "chair", "sofa", "table", "furniture")}
    targets = [p.center for p in scene.prims if p.cls in big and p.center[2] < 1.2]
    targets = targets or [scene.size / 2]
    pos = np.array([lx / 2, ly / 2, 0.0])
    for _ in range(40):
        k = int(r.integers(4))
        off = r.uniform(0.45, 1.3)  # clear of wall cabinets (0.35 m deep)
        a = r.uniform(0.3, (ly if k < 2 else lx) - 0.3)
        cand = np.array([{0: off, 1: lx - off}.get(k, a), {2: off, 3: ly - off}.get(k, a), 0.0])
        if not (0.45 < cand[0] < lx - 0.45 and 0.45 < cand[1] < ly - 0.45):
            continue
        if not any(
            f[0] - 0.3 < cand[0] < f[2] + 0.3 and f[1] - 0.3 < cand[1] < f[3] + 0.3
            for f in scene.footprints
        ):
            pos = cand
            break
    for _ in range(10):  # a target far enough to frame part of the room
        tgt = targets[int(r.integers(len(targets)))] if r.random() < 0.85 else scene.size / 2
        dist = np.hypot(*(tgt[:2] - pos[:2]))
        if dist > 1.5:
            break
    pos[2] = r.uniform(1.0, 1.7)
    yaw = np.arctan2(tgt[1] - pos[1], tgt[0] - pos[0]) + r.normal(0, 0.15)
    pitch = np.clip(np.arctan2(tgt[2] - pos[2], max(dist, 0.5)) + r.normal(-0.05, 0.1), -0.7, 0.1)
    roll = r.normal(0, 0.03)
    f = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    right = np.cross(f, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(f, right)
    cr, sr = np.cos(roll), np.sin(roll)
    right, down = cr * right + sr * down, -sr * right + cr * down
    scene.cam_pos = pos
    scene.cam_rot = np.stack([right, down, f], axis=1)


class Builder:
    """Collects primitives of one object in its local frame, then places them in the world."""

    def __init__(self, scene: Scene, rng: np.random.Generator) -> None:
        self.scene, self.rng = scene, rng
        self.parts: list[tuple[str, tuple, tuple, int, Material, int]] = []
        self.inst = len(scene.prims) + 1

    def part(
        self, cls: str, c: tuple, size: tuple, mat: Material, kind: str = "box", group: int = 0
    ) -> None:
        """Add a primitive; ``group`` > 0 marks a separate prop (its own instance) of the object."""
        self.parts.append((kind, c, size, C[cls], mat, group))

    def place(self, x: float, y: float, yaw: float, z: float = 0.0, no_depth: bool = False) -> None:
        cy, sy = np.cos(yaw), np.sin(yaw)
        for kind, c, size, cls, mat, group in self.parts:
            wx = x + cy * c[0] - sy * c[1]
            wy = y + sy * c[0] + cy * c[1]
            self.scene.prims.append(
                Prim(
                    kind,
                    np.array([wx, wy, z + c[2]]),
                    np.asarray(size, float) / 2,
                    yaw,
                    cls,
                    mat,
                    self.inst,
                    no_depth,
                    group,
                )
            )
        self.parts = []


def _mat(rng: np.random.Generator, cls: str, special: str = "") -> Material:
    return sample_material(rng, cls, special)


# ---- furniture (local frame, footprint centred at the origin; returns width, depth, height) ----


def bed(b: Builder, r: np.random.Generator) -> tuple[float, float, float]:
    w, d, h = r.uniform(0.9, 1.8), r.uniform(1.9, 2.15), r.uniform(0.35, 0.55)
    frame, sheet = _mat(r, "bed"), _mat(r, "bed")
    b.part("bed", (0, 0, h * 0.3), (w, d, h * 0.6), frame)
    b.part("bed", (0, -0.05, h * 0.8), (w - 0.04, d - 0.12, h * 0.4), sheet)
    hb = r.uniform(0.8, 1.2)
    b.part("bed", (0, d / 2 - 0.04, hb / 2), (w + 0.04, 0.08, hb), frame)
    if r.random() < 0.7:  # blanket over the lower part
        b.part("bed", (0, -d * 0.2, h + 0.02), (w + 0.02, d * 0.6, 0.06), _mat(r, "bed"))
    pm = _mat(r, "objects")
    n = 1 if w < 1.2 else 2
    for i in range(n):
        px = (i - (n - 1) / 2) * w / n
        b.part("objects", (px, d / 2 - 0.3, h + 0.07), (w / n * 0.8, 0.35, 0.16), pm, "ell")
    return w, d, h


def sofa(b: Builder, r: np.random.Generator, w: float | None = None) -> tuple[float, float, float]:
    w = w or r.uniform(1.5, 2.4)
    d, sh, bh = r.uniform(0.8, 0.95), r.uniform(0.38, 0.46), r.uniform(0.75, 0.95)
    m = _mat(r, "sofa")
    at = r.uniform(0.1, 0.22)
    b.part("sofa", (0, 0, sh / 2), (w, d, sh), m)
    b.part("sofa", (0, d / 2 - 0.1, bh / 2), (w, 0.2, bh), m)
    ah = r.uniform(0.55, 0.7)
    for sx in (-1, 1):
        b.part("sofa", (sx * (w / 2 - at / 2), 0, ah / 2), (at, d, ah), m)
    if r.random() < 0.6:
        pm = _mat(r, "objects")
        for sx in (-1, 1):
            b.part(
                "objects",
                (sx * (w / 2 - at - 0.2), d / 2 - 0.3, sh + 0.2),
                (0.4, 0.14, 0.4),
                pm,
                "ell",
            )
    return w, d, bh


def chair(b: Builder, r: np.random.Generator) -> tuple[float, float, float]:
    w, d, sh = r.uniform(0.4, 0.5), r.uniform(0.4, 0.5), r.uniform(0.42, 0.48)
    m = _mat(r, "chair")
    lm = m if r.random() < 0.6 else _mat(r, "chair")
    t, lg = 0.04, r.uniform(0.025, 0.045)
    b.part("chair", (0, 0, sh - t / 2), (w, d, t), m)
    for sx in (-1, 1):
        for sy in (-1, 1):
            b.part(
                "chair", (sx * (w / 2 - lg), sy * (d / 2 - lg), (sh - t) / 2), (lg, lg, sh - t), lm
            )
    bh = r.uniform(0.35, 0.5)
    b.part("chair", (0, d / 2 - 0.02, sh + bh / 2), (w, 0.04, bh), m)
    return w, d, sh + bh


def table(b: Builder, r: np.random.Generator, kind: str = "dining") -> tuple[float, float, float]:
    if kind == "coffee":
        w, d, h = r.uniform(0.8, 1.3), r.uniform(0.45, 0.7), r.uniform(0.38, 0.5)
    elif kind == "desk":
        w, d, h = r.uniform(1.0, 1.6), r.uniform(0.55, 0.8), r.uniform(0.72, 0.77)
    else:
        w, d, h = r.uniform(0.9, 1.8), r.uniform(0.75, 1.0), r.uniform(0.72, 0.77)
    m = _mat(r, "table")
    t = r.uniform(0.025, 0.06)
    b.part("table", (0, 0, h - t / 2), (w, d, t), m)
    lm = m if r.random() < 0.7 else _mat(r, "table")
    if kind == "desk" and r.random() < 0.5:  # panel sides
        for sx in (-1, 1):
            b.part("table", (sx * (w / 2 - 0.02), 0, (h - t) / 2), (0.04, d, h - t), lm)
    else:
        lg = r.uniform(0.04, 0.07)
        for sx in (-1, 1):
            for sy in (-1, 1):
                b.part(
                    "table",
                    (sx * (w / 2 - lg), sy * (d / 2 - lg), (h - t) / 2),
                    (lg, lg, h - t),
                    lm,
                )
    return w, d, h


def cabinet(
    b: Builder, r: np.random.Generator, kind: str = "dresser"
) -> tuple[float, float, float]:
    sizes = {
        "nightstand": ((0.4, 0.55), (0.35, 0.45), (0.45, 0.65)),
        "dresser": ((0.8, 1.4), (0.4, 0.55), (0.7, 1.1)),
        "wardrobe": ((0.8, 1.6), (0.5, 0.65), (1.8, 2.2)),
        "counter": ((1.6, 3.0), (0.55, 0.65), (0.86, 0.92)),
        "fridge": ((0.6, 0.8), (0.6, 0.7), (1.6, 1.9)),
        "tvstand": ((1.0, 1.8), (0.35, 0.5), (0.4, 0.6)),
    }[kind]
    w, d, h = (r.uniform(*s) for s in sizes)
    m = _mat(r, "furniture")
    b.part("furniture", (0, 0, h / 2), (w, d, h), m)
    # Fronts (drawers / doors) in another shade, so that edges show the structure.
    fm = m if r.random() < 0.5 else _mat(r, "furniture")
    cols = max(1, int(w / r.uniform(0.4, 0.7)))
    rows = 1 if kind in ("wardrobe", "fridge") else int(r.integers(1, 4))
    gap = 0.015
    fh = (h - 0.1) / rows
    for i in range(cols):
        for j in range(rows):
            cx = -w / 2 + (i + 0.5) * w / cols
            b.part(
                "furniture",
                (cx, -d / 2 - 0.01, 0.08 + (j + 0.5) * fh),
                (w / cols - gap, 0.02, fh - gap),
                fm,
            )
            hm = _mat(r, "furniture")
            b.part(
                "furniture",
                (cx, -d / 2 - 0.03, 0.08 + (j + 0.5) * fh + fh * 0.3),
                (0.1, 0.02, 0.02),
                hm,
            )
    if kind == "counter":  # worktop overhang
        b.part("furniture", (0, -0.02, h + 0.015), (w + 0.02, d + 0.04, 0.03), _mat(r, "furniture"))
        h += 0.03
    return w, d, h


def bookshelf(b: Builder, r: np.random.Generator) -> tuple[float, float, float]:
    w, d, h = r.uniform(0.6, 1.4), r.uniform(0.28, 0.4), r.uniform(1.0, 2.1)
    m = _mat(r, "furniture")
    t = 0.025
    for sx in (-1, 1):
        b.part("furniture", (sx * (w / 2 - t / 2), 0, h / 2), (t, d, h), m)
    b.part("furniture", (0, d / 2 - 0.005, h / 2), (w, 0.01, h), m)
    n = max(2, int(h / r.uniform(0.3, 0.4)))
    step = (h - t) / n
    for k in range(n + 1):
        b.part("furniture", (0, 0, k * step + t / 2), (w - 2 * t, d, t), m)
    for k in range(n):
        z0 = k * step + t
        x = -w / 2 + t + r.uniform(0, 0.1)
        while True:
            if r.random() < 0.08:  # a gap or a small object
                if r.random() < 0.5:
                    bw = r.uniform(0.06, 0.15)
                    if x + bw > w / 2 - t:
                        break
                    oh = r.uniform(0.05, min(0.2, step - 0.05))
                    b.part(
                        "objects",
                        (x + bw / 2, 0, z0 + oh / 2),
                        (bw, d * 0.5, oh),
                        _mat(r, "objects"),
                        "cyl" if r.random() < 0.5 else "box",
                        group=len(b.parts),  # a prop of its own (the part index is unique)
                    )
                else:
                    bw = r.uniform(0.05, 0.3)
                x += bw
                continue
            bw = r.uniform(0.015, 0.06)
            if x + bw > w / 2 - t:
                break
            bh = r.uniform(0.6, 0.95) * (step - t)
            bd = r.uniform(0.6, 0.95) * d
            b.part(
                "books", (x + bw / 2, -d / 2 + bd / 2, z0 + bh / 2), (bw, bd, bh), _mat(r, "books")
            )
            x += bw + (0.002 if r.random() < 0.8 else r.uniform(0.01, 0.05))
    return w, d, h
