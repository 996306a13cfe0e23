"""Placement bookkeeping for room composition: where an object fits against a wall or on the floor.

:class:`Layout` keeps the occupied floor footprints and wall rectangles, so that furniture does not
overlap and wall items (windows, pictures) stay clear of each other.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cvmtl.data.synthetic_props import tabletop_props
from cvmtl.data.synthetic_scene import Builder, Scene

# Yaw that turns an object's back (+y local) toward each wall: x=0, x=lx, y=0, y=ly.
WALL_YAW = (np.pi / 2, -np.pi / 2, np.pi, 0.0)


class Layout:
    """Placement bookkeeping: floor footprints and occupied rectangles on each wall."""

    def __init__(self, scene: Scene, rng: np.random.Generator) -> None:
        self.scene, self.r = scene, rng
        self.lx, self.ly, self.h = scene.size
        self.wall_used: list[list[tuple[float, float, float, float]]] = [[] for _ in range(4)]

    def wall_len(self, k: int) -> float:
        return float(self.ly if k < 2 else self.lx)

    def wall_pose(self, k: int, a: float, d: float) -> tuple[float, float, float]:
        """World x, y, yaw of an object of depth d whose back touches wall k at position a."""
        x, y = {0: (d / 2, a), 1: (self.lx - d / 2, a), 2: (a, d / 2), 3: (a, self.ly - d / 2)}[k]
        return x, y, WALL_YAW[k]

    def free_floor(self, fp: tuple[float, float, float, float], margin: float = 0.05) -> bool:
        x0, y0, x1, y1 = fp
        if x0 < -1e-6 or y0 < -1e-6 or x1 > self.lx + 1e-6 or y1 > self.ly + 1e-6:
            return False
        return all(
            x0 >= f[2] + margin or x1 <= f[0] - margin or y0 >= f[3] + margin or y1 <= f[1] - margin
            for f in self.scene.footprints
        )

    def free_wall(self, k: int, a0: float, a1: float, z0: float, z1: float) -> bool:
        if a0 < 0.05 or a1 > self.wall_len(k) - 0.05:
            return False
        return all(a0 >= u[1] or a1 <= u[0] or z0 >= u[3] or z1 <= u[2] for u in self.wall_used[k])

    @staticmethod
    def footprint(x: float, y: float, yaw: float, w: float, d: float) -> tuple:
        c, s = abs(np.cos(yaw)), abs(np.sin(yaw))
        hx, hy = (c * w + s * d) / 2, (s * w + c * d) / 2
        return (x - hx, y - hy, x + hx, y + hy)

    def against_wall(self, fn: Callable, z: float | None = None, tries: int = 20) -> tuple | None:
        """Build with ``fn`` and put it against a wall; on the floor unless ``z`` (wall-mounted)."""
        b = Builder(self.scene, self.r)
        w, d, h = fn(b, self.r)
        for _ in range(tries):
            k = int(self.r.integers(4))
            a = self.r.uniform(w / 2, self.wall_len(k) - w / 2) if self.wall_len(k) > w else -1
            if a < 0:
                continue
            x, y, yaw = self.wall_pose(k, a, d)
            z0 = 0.0 if z is None else z
            if not self.free_wall(k, a - w / 2, a + w / 2, z0, z0 + h):
                continue
            fp = self.footprint(x, y, yaw, w, d)
            if z is None and not self.free_floor(fp):
                continue
            self.wall_used[k].append((a - w / 2, a + w / 2, z0, z0 + h))
            if z is None:
                self.scene.footprints.append(fp)
            b.place(x, y, yaw, z0)
            return x, y, yaw, w, d, z0 + h, k  # h -> the top height
        return None

    def free(self, fn: Callable, x: float, y: float, yaw: float, register: bool = True) -> tuple:
        """Build with ``fn`` and place at (x, y, yaw) if the floor there is free."""
        b = Builder(self.scene, self.r)
        w, d, h = fn(b, self.r)
        fp = self.footprint(x, y, yaw, w, d)
        if register and not self.free_floor(fp):
            return None
        if register:
            self.scene.footprints.append(fp)
        b.place(x, y, yaw)
        return x, y, yaw, w, d, h

    def props_on(self, pose: tuple | None, n: int) -> None:
        """Small props on top of a placed object (pose from against_wall / free)."""
        if pose is None or n <= 0:
            return
        x, y, yaw, w, d, h = pose[:6]
        b = Builder(self.scene, self.r)
        tabletop_props(b, self.r, w, d, n)
        b.place(x, y, yaw, h)
