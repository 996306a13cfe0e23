"""Builders of wall items (windows, pictures, TVs, doors, shelves) and small props."""

from __future__ import annotations

import numpy as np

from cvmtl.data.synthetic_scene import Builder, _mat


def wall_item(kind: str, r: np.random.Generator):
    """Builder functions for thin wall-mounted items (depth ~ a few cm)."""

    def fn(b: Builder, r: np.random.Generator = r) -> tuple[float, float, float]:
        if kind == "window":
            w, h = r.uniform(0.7, 1.8), r.uniform(0.9, 1.5)
            b.part("window", (0, 0, h / 2), (w, 0.03, h), _mat(r, "window", "window"))
            return w, 0.03, h
        if kind == "blinds":
            w, h = r.uniform(0.7, 1.8), r.uniform(0.9, 1.5)
            m = _mat(r, "window")
            m.kind, m.angle, m.scale = "stripes", np.pi / 2, r.uniform(0.03, 0.08)
            b.part("window", (0, 0, h / 2), (w, 0.04, h), m)
            return w, 0.04, h
        if kind == "picture":
            w, h = r.uniform(0.25, 1.1), r.uniform(0.25, 0.9)
            b.part("picture", (0, 0, h / 2), (w, 0.025, h), _mat(r, "picture", "picture"))
            return w, 0.025, h
        if kind == "tv":
            w = r.uniform(0.7, 1.4)
            h = w * 9 / 16
            b.part("tv", (0, 0, h / 2), (w, 0.06, h), _mat(r, "tv", "tv"))
            return w, 0.06, h
        if kind == "door":  # doors are "wall" in the NYUv2-13 mapping
            w, h = r.uniform(0.75, 0.95), r.uniform(1.95, 2.1)
            b.part("wall", (0, 0, h / 2), (w, 0.04, h), _mat(r, "furniture"))
            b.part("objects", (w / 2 - 0.1, -0.04, 1.0), (0.12, 0.04, 0.03), _mat(r, "objects"))
            return w, 0.04, h
        if kind == "shelf":  # a board on the wall (furniture); props are added on top
            w = r.uniform(0.5, 1.2)
            b.part("furniture", (0, 0, 0.0125), (w, 0.25, 0.025), _mat(r, "furniture"))
            return w, 0.25, 0.025
        if kind == "curtain":
            w, h = r.uniform(0.3, 0.6), r.uniform(1.6, 2.3)
            m = _mat(r, "window")
            m.kind, m.angle, m.scale = "stripes", 0.0, r.uniform(0.05, 0.15)
            b.part("window", (0, 0, h / 2), (w, 0.06, h), m)
            return w, 0.06, h
        if kind == "clock":
            s = r.uniform(0.2, 0.4)
            b.part("objects", (0, 0, s / 2), (s, 0.04, s), _mat(r, "objects"))
            return s, 0.04, s
        if kind == "upper":  # wall cabinet
            w, h = r.uniform(0.6, 1.8), r.uniform(0.5, 0.8)
            b.part("furniture", (0, 0, h / 2), (w, 0.35, h), _mat(r, "furniture"))
            return w, 0.35, h
        raise ValueError(kind)

    return fn


def floor_object(kind: str):
    """Builder of a free-standing floor item: "plant", "lamp" or a box / bin."""

    def fn(b: Builder, r: np.random.Generator) -> tuple[float, float, float]:
        if kind == "plant":
            pr, ph = r.uniform(0.12, 0.25), r.uniform(0.2, 0.45)
            b.part("objects", (0, 0, ph / 2), (2 * pr, 2 * pr, ph), _mat(r, "objects"), "cyl")
            fs = r.uniform(0.35, 0.8)
            m = _mat(r, "objects")
            m.c1 = np.array([0.1, r.uniform(0.25, 0.5), 0.1])
            m.kind = "speckle"
            b.part("objects", (0, 0, ph + fs * 0.45), (fs, fs, fs), m, "ell")
            return max(2 * pr, fs), max(2 * pr, fs), ph + fs
        if kind == "lamp":  # floor lamp
            lh, sr = r.uniform(1.2, 1.7), r.uniform(0.15, 0.25)
            b.part("objects", (0, 0, 0.015), (0.3, 0.3, 0.03), _mat(r, "objects"), "cyl")
            b.part("objects", (0, 0, lh / 2), (0.03, 0.03, lh), _mat(r, "objects"), "cyl")
            b.part("objects", (0, 0, lh), (2 * sr, 2 * sr, 0.3), _mat(r, "objects"), "cyl")
            return 2 * sr, 2 * sr, lh + 0.15
        s = r.uniform(0.2, 0.6, 3)
        b.part(
            "objects",
            (0, 0, s[2] / 2),
            tuple(s),
            _mat(r, "objects"),
            "cyl" if r.random() < 0.3 else "box",
        )
        return s[0], s[1], s[2]

    return fn


def tabletop_props(b: Builder, r: np.random.Generator, w: float, d: float, n: int) -> None:
    """Books and small objects on a surface of size w x d (local frame origin on the surface)."""
    for _ in range(n):
        x, y = r.uniform(-w / 2 + 0.1, w / 2 - 0.1), r.uniform(-d / 2 + 0.1, d / 2 - 0.1)
        u = r.random()
        g = len(b.parts) + 1  # each prop is its own instance (edge and saliency targets)
        if u < 0.3:  # a stack of lying books
            z = 0.0
            for _ in range(int(r.integers(1, 5))):
                bt = r.uniform(0.015, 0.05)
                b.part(
                    "books",
                    (x, y, z + bt / 2),
                    (r.uniform(0.15, 0.3), r.uniform(0.12, 0.22), bt),
                    _mat(r, "books"),
                    group=g,
                )
                z += bt
        elif u < 0.55:  # cup, vase, bottle, bin
            rad, hh = r.uniform(0.03, 0.1), r.uniform(0.06, 0.35)
            b.part("objects", (x, y, hh / 2), (2 * rad, 2 * rad, hh), _mat(r, "objects"), "cyl", g)
        elif u < 0.7:  # lamp: base + shade
            hh = r.uniform(0.25, 0.45)
            b.part("objects", (x, y, hh / 2), (0.04, 0.04, hh), _mat(r, "objects"), "cyl", g)
            sr = r.uniform(0.1, 0.18)
            b.part("objects", (x, y, hh), (2 * sr, 2 * sr, sr * 1.3), _mat(r, "objects"), "cyl", g)
        elif u < 0.85:  # box
            s = r.uniform(0.06, 0.3, 3)
            b.part("objects", (x, y, s[2] / 2), tuple(s), _mat(r, "objects"), group=g)
        else:  # bowl / ball / fruit
            s = r.uniform(0.06, 0.25)
            b.part("objects", (x, y, s * 0.3), (s, s, s * 0.6), _mat(r, "objects"), "ell", g)
